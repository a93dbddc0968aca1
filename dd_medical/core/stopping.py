"""When a slice's fit ends: after a fixed number of steps, at the noise level (discrepancy), at the lowest SURE, or
at the lowest error on pixels held out of the fit.

A rule sees, every ``loss_every`` steps, the estimates of every decoder as ``(B, members, twins, C, H, W)`` and
decides which slices stop; a stopped slice keeps its members' estimates of then (``frozen``), and the passes whose
slices have all stopped are no longer evaluated.
"""

from __future__ import annotations

import torch

from .config import FitConfig
from .decoder import slice_generator
from .noise import estimate_sigma, signal_mask
from .operators import ForwardModel, mean_squared_residual

_PROBE = 1 << 20  # member offset of the SURE probes' seeds
_HOLDOUT = 1 << 21  # member offset of the held-out pixels' seeds
#: The share of a slice's noise-carrying pixels the hold-out rule keeps out of the fit, raised for small slices to
#: hold at least ``HOLDOUT_PIXELS`` (at most a quarter) ...
HOLDOUT_FRACTION = 1 / 16
HOLDOUT_PIXELS = 512
#: ... and the steps it goes on after the last minimum of their error.
HOLDOUT_PATIENCE = 200


class FixedSteps:
    """Every slice runs all the steps."""

    twins = 1  # decoders fitted per ensemble member
    weights: torch.Tensor | None = None  # per decoder (N, C, H, W): each pixel's weight in the data term

    def start(self, y: torch.Tensor, targets: torch.Tensor, image_shape: tuple[int, int, int],
              noise_sigma: torch.Tensor | float | None, indices: list[int], config: FitConfig) -> torch.Tensor:
        """Set up for measurements ``y`` ``(B, ...)`` and images ``(B, *image_shape)``; ``targets`` are the
        measurements of every decoder (slice-major); returns those each decoder is fitted to."""
        batch = y.shape[0]
        self.active = torch.ones(batch, dtype=torch.bool, device=y.device)
        self.frozen = None
        self.stopped_at = torch.full((batch,), config.iterations, dtype=torch.long)
        return targets

    def check(self, step: int, estimates: torch.Tensor, operator: ForwardModel, y: torch.Tensor) -> bool:
        """Stop the slices the rule ends at ``step``; whether any slice goes on."""
        return True

    def result(self, members: torch.Tensor) -> torch.Tensor:
        """The returned members' images ``(B, members, C, H, W)`` from their final estimates."""
        if self.frozen is None:
            return members
        return torch.where(self.active[:, None, None, None, None], members, self.frozen)

    def _stop(self, step: int, newly: torch.Tensor) -> bool:
        self.active &= ~newly
        self.stopped_at[newly.cpu()] = step + 1
        return bool(self.active.any())


class LowestScore:
    """Each slice's members at the lowest score seen so far, and which slices are ``patience`` steps past it: what the
    rules that keep a minimum (SURE, hold-out) share."""

    def __init__(self, batch: int, members_shape: tuple[int, ...], device: torch.device, patience: float) -> None:
        self.members = torch.zeros((batch, *members_shape), device=device)
        self.score = torch.full((batch,), float("inf"), device=device)
        self.at = torch.zeros(batch, dtype=torch.long)  # the step after each slice's lowest (0: none yet)
        self.patience = patience

    def update(self, step: int, members: torch.Tensor, score: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Keep ``members`` ``(B, M, C, H, W)`` of the ``active`` slices whose ``score`` ``(B,)`` is their lowest
        yet; returns the active slices now ``patience`` steps past their lowest."""
        newly_best = active & (score < self.score)
        self.score = torch.where(newly_best, score, self.score)
        self.members[newly_best] = members[newly_best]
        self.at[newly_best.cpu()] = step + 1
        return active & ((step + 1 - self.at).to(score.device) >= self.patience)


class _NoiseLevelRule(FixedSteps):
    """A rule that needs the noise level ``sigma`` of the measurements: given, or estimated from them."""

    def start(self, y, targets, image_shape, noise_sigma, indices, config):
        targets = super().start(y, targets, image_shape, noise_sigma, indices, config)
        self.mask = signal_mask(y.float().cpu()).to(y.device)  # the pixels that carry noise
        sigma = estimate_sigma(y.float().cpu(), self.mask.cpu()) if noise_sigma is None else \
            torch.as_tensor(noise_sigma, dtype=torch.float32)
        self.sigma = sigma.to(y.device).expand(y.shape[0]).float()
        self.frozen = torch.zeros((y.shape[0], config.ensemble, *image_shape), device=y.device)
        return targets


class Discrepancy(_NoiseLevelRule):
    """Stop a slice once its estimate explains the measurements down to the noise: the mean squared misfit
    ``|A x - y|^2`` over the pixels that carry noise (:func:`~dd_medical.core.noise.signal_mask`) is at most
    ``factor * sigma^2`` (Morozov's discrepancy principle)."""

    def __init__(self, factor: float = 0.96) -> None:
        self.factor = factor

    def start(self, y, targets, image_shape, noise_sigma, indices, config):
        targets = super().start(y, targets, image_shape, noise_sigma, indices, config)
        self.threshold = self.factor * self.sigma**2
        return targets

    def check(self, step, estimates, operator, y):
        members = estimates[:, :, 0]
        weights = self.mask.float()
        misfit = ((operator.forward(members.mean(dim=1)) - y).pow(2) * weights).flatten(1).sum(1) \
            / weights.flatten(1).sum(1)
        newly = self.active & (misfit <= self.threshold)
        self.frozen[newly] = members[newly]
        return self._stop(step, newly)


class Sure(_NoiseLevelRule):
    """Keep each slice's estimate of lowest Monte-Carlo SURE (Stein's unbiased risk estimate of its mean squared
    error against the unknown clean image; Ramani, Blu & Unser 2008) and stop ``patience`` steps after it.

    Every decoder has a twin (same seed) fitted to ``y + epsilon * sigma * b`` with a fixed random probe ``b``; the
    divergence term is ``b . (twin - decoder) / (epsilon * sigma)``. Denoising only (the identity operator).
    """

    twins = 2

    def __init__(self, epsilon: float = 0.1, patience: int = 150) -> None:
        self.epsilon, self.patience = epsilon, patience

    def start(self, y, targets, image_shape, noise_sigma, indices, config):
        targets = super().start(y, targets, image_shape, noise_sigma, indices, config)
        members = config.ensemble
        self.probes = torch.stack([torch.randn(y.shape[1:], generator=slice_generator(config.seed, i, _PROBE + m))
                                   for i in indices for m in range(members)]).to(y.device)  # (B * members, C, H, W)
        self.steps = (self.epsilon * self.sigma).repeat_interleave(members)[:, None, None, None]
        targets = targets.clone()
        targets[1::2] += self.steps * self.probes
        self.lowest = LowestScore(y.shape[0], (members, *image_shape), y.device, self.patience)
        self.frozen = self.lowest.members
        return targets

    def check(self, step, estimates, operator, y):
        batch, members = estimates.shape[:2]
        current = estimates[:, :, 0].mean(dim=1)
        pairs = estimates.flatten(0, 1)  # (B * members, 2, C, H, W)
        divergence = (self.probes * (pairs[:, 1] - pairs[:, 0])).flatten(1).mean(dim=1) / self.steps.flatten()
        # SURE of the member mean, up to the constant -sigma^2: misfit + 2 sigma^2 divergence / N.
        risk = mean_squared_residual(current, y) + 2 * self.sigma**2 * divergence.view(batch, members).mean(1)
        return self._stop(step, self.lowest.update(step, estimates[:, :, 0], risk, self.active))

    def result(self, members):
        return self.frozen


class Holdout(FixedSteps):
    """Keep each slice's estimate of lowest error on held-out pixels and stop ``patience`` steps after it.

    A random :data:`HOLDOUT_FRACTION` of the slice's noise-carrying pixels (:func:`~dd_medical.core.noise.signal_mask`;
    at least :data:`HOLDOUT_PIXELS` of them, at most a quarter; the same for its members, drawn from the slice's seed)
    has weight 0 in every decoder's data term. Their noise is then independent of the fit (for white noise), so the
    mean squared error between the estimate and the held-out measurements is the estimate's error there plus a
    constant: its minimum over the steps is the estimate closest to the clean image there, found without a noise
    level (hold-out validation; for single-image priors, Li et al., "Self-validation: early stopping for
    single-instance deep generative priors", BMVC 2021). The estimate at a held-out pixel is the decoder's, fitted to
    its neighbours. Correlated noise is partly predictable from the neighbours, so there the rule stops later.
    Denoising only (the identity operator).
    """

    def __init__(self, fraction: float = HOLDOUT_FRACTION, patience: int = HOLDOUT_PATIENCE) -> None:
        self.fraction, self.patience = fraction, patience

    def start(self, y, targets, image_shape, noise_sigma, indices, config):
        targets = super().start(y, targets, image_shape, noise_sigma, indices, config)
        carries = signal_mask(y.float().cpu()).all(1)  # (B, H, W)
        draws = torch.stack([torch.rand(y.shape[-2:], generator=slice_generator(config.seed, i, _HOLDOUT))
                             for i in indices])
        share = (HOLDOUT_PIXELS / carries.flatten(1).sum(1).clamp_min(1)).clamp(self.fraction, 0.25)
        held = (carries & (draws < share[:, None, None]))[:, None].expand(y.shape).to(y.device)
        self.held = held.float()
        self.weights = (~held).float().repeat_interleave(config.ensemble, dim=0)
        self.lowest = LowestScore(y.shape[0], (config.ensemble, *image_shape), y.device, self.patience)
        self.frozen = self.lowest.members
        return targets * self.weights  # the held-out pixels' measurements, once: the fit weights only its estimate

    def check(self, step, estimates, operator, y):
        members = estimates[:, :, 0]
        error = ((members.mean(dim=1) - y).pow(2) * self.held).flatten(1).sum(1) \
            / self.held.flatten(1).sum(1).clamp_min(1)
        return self._stop(step, self.lowest.update(step, members, error, self.active))

    def result(self, members):
        return self.frozen


def make_stopping(config: FitConfig, operator: ForwardModel, y: torch.Tensor) -> FixedSteps:
    """The rule ``config.stopping`` names; ``ValueError`` where it cannot serve these measurements."""
    if config.stopping == "fixed":
        return FixedSteps()
    if y.shape[1:] != operator.image_shape(y) or y.is_complex():
        raise ValueError(f"stopping={config.stopping!r} needs image-shaped, real measurements (denoising); use "
                         "stopping='fixed'")
    if config.stopping == "discrepancy":
        return Discrepancy(config.discrepancy_factor)
    if config.stopping == "holdout":
        return Holdout(HOLDOUT_FRACTION, HOLDOUT_PATIENCE)
    return Sure(config.sure_epsilon, config.sure_patience)
