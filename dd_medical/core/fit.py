"""The one optimisation loop: Adam over the decoders of a batch of slices, through a forward model.

``fit`` minimises ``sum_i data_loss(A(G_i(w_i)), y_i) [+ tv_weight * TV(G_i(w_i))]`` over ``B x ensemble``
independent decoders. The loss is a sum over decoders and Adam is elementwise, so a slice's result depends on its
own measurements and seeds only, not on the batch. What varies between fits is passed in as small objects: an
estimator (:mod:`.estimators`), a stopping rule (:mod:`.stopping`), perturbations (:mod:`.perturbations`) and a
weight hook (e.g. the codec's fake quantisation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import FitConfig
from .decoder import BatchedDeepDecoder, WeightHook, instance_axis, slice_generator
from .estimators import make_estimator, merge_states
from .operators import ForwardModel
from .perturbations import make_perturbations
from .stopping import make_stopping

#: On a CPU, the decoders of one pass hold at most this many full-resolution activation elements
#: (``instances * channels * H * W``; 16 MiB of float32), so that a pass stays in the cache.
CPU_PASS_ELEMENTS = 1 << 22
#: On CUDA, a pass holds at least this many (256M: 16 decoders at 512x512, k=64), so each kernel has work enough.
CUDA_PASS_ELEMENTS = 1 << 28


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        image: ``(B, C, H, W)`` float32 on the CPU, the ensemble's estimate (in [0, 1] for a sigmoid output).
        weights: the decoders' ``state_dict`` as one :class:`BatchedDeepDecoder` of ``B * ensemble`` instances,
            slice-major, on the CPU (``result="best"``: those of each decoder's best iterate).
        loss_history: ``(N, B)`` data misfit per slice (ensemble mean) every ``loss_every`` steps.
        iterations: ``(B,)`` steps run per slice (fewer than the budget where a stopping rule ended it).
        seconds: wall time of the loop.
        members: with ``keep_members=True``, each ensemble member's estimate ``(B, ensemble, C, H, W)`` (of the step
            its slice stopped at); ``image`` is their mean.
    """

    image: torch.Tensor
    weights: dict[str, torch.Tensor]
    loss_history: np.ndarray
    iterations: np.ndarray
    seconds: float
    members: torch.Tensor | None = None


def instances_per_pass(instances: int, channels: int, height: int, width: int, device: torch.device) -> int:
    """How many decoders one forward/backward pass evaluates (:data:`CPU_PASS_ELEMENTS`, :data:`CUDA_PASS_ELEMENTS`).
    The passes of one step give the result of a single pass."""
    per_instance = channels * height * width
    if device.type == "cpu":
        return max(1, min(instances, CPU_PASS_ELEMENTS // per_instance))
    passes = max(1, instances * per_instance // CUDA_PASS_ELEMENTS)
    return -(-instances // passes)  # equal passes of at least CUDA_PASS_ELEMENTS (or all instances)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """``(B,)`` anisotropic total variation of ``(B, C, H, W)``: the sum over pixels of ``|x[i+1, j] - x[i, j]| +
    |x[i, j+1] - x[i, j]|``, averaged over the channels, in the images' units."""
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().sum(dim=(-2, -1))
            + (images[..., :, 1:] - images[..., :, :-1]).abs().sum(dim=(-2, -1))).mean(dim=1)


class Decoders:
    """The ``N`` decoders of a fit, evaluated in passes of at most ``group`` instances; a pass whose slices have all
    stopped is skipped (its last output stands in)."""

    def __init__(self, generators: list[torch.Generator], image_shape: tuple[int, int, int], config: FitConfig,
                 output: str, device: torch.device, group: int, hook: WeightHook | None) -> None:
        channels, height, width = image_shape
        self.group, self.hook = group, hook
        self.models = [BatchedDeepDecoder(len(gens), height, width, config.channels, config.depth(height, width),
                                          channels, gens,
                                          output=output, architecture=config.architecture,
                                          norm_first=config.norm_first).to(device)
                       for gens in (generators[i:i + group] for i in range(0, len(generators), group))]
        self.live = [True] * len(self.models)
        self.outputs: list[torch.Tensor | None] = [None] * len(self.models)
        self.compiled = config.compile and device.type == "cuda"

    def of_pass(self, items: Sequence, g: int) -> Sequence:
        """The entries of per-decoder ``items`` that belong to pass ``g``."""
        return items[g * self.group:(g + 1) * self.group]

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Start from the weights of ``state`` (a state dict of all ``N`` instances)."""
        for g, model in enumerate(self.models):
            axis = {k: instance_axis(k) for k in state}
            model.load_state_dict({k: v.narrow(axis[k], g * self.group, model.batch) for k, v in state.items()})

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for m in self.models for p in m.parameters()]

    def __call__(self, everything: bool = False) -> torch.Tensor:
        """``(N, C, H, W)``: every live pass evaluated (``everything``: every pass)."""
        if len(self.models) == 1:
            return self.models[0](compiled=self.compiled, hook=self.hook)
        for g, m in enumerate(self.models):
            if everything or self.live[g] or self.outputs[g] is None:
                self.outputs[g] = m(compiled=self.compiled, hook=self.hook)
        out = torch.cat(self.outputs)
        self.outputs = [o.detach() for o in self.outputs]
        return out

    def set_live(self, running: torch.Tensor) -> None:
        """Evaluate only the passes holding a decoder whose ``running`` entry (``(N,)`` bool) is set."""
        running = running.cpu()
        self.live = [bool(self.of_pass(running, g).any()) for g in range(len(self.models))]

    def where(self, mask: torch.Tensor, previous: list[dict[str, torch.Tensor]] | None) -> list[dict]:
        """Per pass, the current parameters of the decoders where ``mask`` (``(N,)``) is set, else ``previous``'s."""
        states = []
        for g, model in enumerate(self.models):
            chosen = self.of_pass(mask, g)
            state = {}
            for name, t in model.named_parameters():
                if previous is None:
                    state[name] = t.detach().clone()
                    continue
                axis = instance_axis(name.split(".")[0])
                keep = chosen.view([-1 if d == axis else 1 for d in range(t.dim())])
                state[name] = torch.where(keep, t.detach(), previous[g][name])
            states.append(state)
        return states

    def state(self) -> dict[str, torch.Tensor]:
        return merge_states([{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models])


def _check(config: FitConfig, indices: list[int], y: torch.Tensor) -> None:
    if config.architecture not in ("deep", "conv"):
        raise ValueError(f"fit() takes architecture 'deep' or 'conv', not {config.architecture!r}")
    if len(indices) != y.shape[0]:
        raise ValueError(f"{len(indices)} slice indices for {y.shape[0]} measurements")


def _decoders(config: FitConfig, indices: list[int], image_shape: tuple[int, int, int], twins: int, output: str,
              device: torch.device, pass_size: int | None, initial_weights: dict[str, torch.Tensor] | None,
              hook: WeightHook | None) -> Decoders:
    """Decoder ``(i, m, t)`` (slice, member, twin) drawn from ``slice_generator(seed, i, m)``: a twin is its
    member's copy."""
    generators = [slice_generator(config.seed, i, m) for i in indices for m in range(config.ensemble)
                  for _ in range(twins)]
    group = pass_size or instances_per_pass(len(generators), config.channels, *image_shape[1:], device)
    decoders = Decoders(generators, image_shape, config, output, device, group, hook)
    if initial_weights is not None:
        decoders.load(initial_weights)
    return decoders


def _losses(decoders: Decoders, operator: ForwardModel, targets: torch.Tensor, config: FitConfig, estimator,
            step: int, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass: the ``(N,)`` data misfits and objectives (``weights``: each measurement's, 0 or 1, for
    image-shaped measurements, whose ``targets`` the stopping rule has weighted already); the estimator sees the
    iterate first."""
    device = targets.device
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
        images = decoders()
    predicted = images.float()
    measured = operator(predicted)
    losses = operator.data_loss(measured, targets) if weights is None else \
        operator.data_loss(measured * weights, targets)
    objective = losses + config.tv_weight * total_variation(predicted) if config.tv_weight > 0 else losses
    with torch.no_grad():
        estimator.update(step, predicted.detach(), objective.detach(), decoders)
    return losses, objective


def _step_size(config: FitConfig, step: int) -> float:
    ratio = config.final_learning_rate / config.learning_rate
    return config.learning_rate * ratio ** (step / max(1, config.iterations - 1))


def fit(
    operator: ForwardModel,
    measurements: torch.Tensor,
    config: FitConfig | None = None,
    *,
    slice_indices: Sequence[int] | None = None,
    noise_sigma: torch.Tensor | float | None = None,
    device: str | torch.device = "cpu",
    callback: Callable[[int, int], None] | None = None,
    pass_size: int | None = None,
    keep_members: bool = False,
    initial_weights: dict[str, torch.Tensor] | None = None,
    weight_hook: WeightHook | None = None,
) -> FitResult:
    """Fit ``B x config.ensemble`` decoders so that ``operator(G(w))`` explains ``measurements``.

    Args:
        operator: a :class:`~dd_medical.core.operators.ForwardModel` (moved to ``device``).
        measurements: ``y`` batched over its first axis ``B`` (denoising: ``(B, C, H, W)`` in [0, 1]).
        config: :class:`FitConfig` (defaults if ``None``); ``architecture`` ``"deep"`` or ``"conv"``.
        slice_indices: global index of each slice, for its seeds (default ``0 .. B-1``).
        noise_sigma: noise standard deviation of ``y`` (scalar or ``(B,)``) for the stopping rules; estimated
            from ``y`` when ``None``.
        device: where to fit.
        callback: ``callback(done, total)`` after every step.
        pass_size: decoders per forward/backward pass (default :func:`instances_per_pass`); no effect on results.
        keep_members: also return every member's estimate (``FitResult.members``).
        initial_weights: start from these weights (a ``FitResult.weights`` of the same decoders) instead of the
            seeds' draws.
        weight_hook: applied to every weight tensor in the forward pass (:data:`~dd_medical.core.decoder.WeightHook`).
    """
    config = config or FitConfig()
    device = torch.device(device)
    y, operator = measurements.to(device), operator.to(device)
    indices = list(range(y.shape[0])) if slice_indices is None else list(slice_indices)
    image_shape = operator.image_shape(y)
    stopping, estimator, perturbations = make_stopping(config, operator, y), make_estimator(config), \
        make_perturbations(config)
    _check(config, indices, y)
    decoders = _decoders(config, indices, image_shape, stopping.twins, operator.output, device, pass_size,
                         initial_weights, weight_hook)
    for perturbation in perturbations:
        perturbation.start(decoders, indices, config, stopping.twins)
    per_slice = config.ensemble * stopping.twins
    targets = stopping.start(y, y.repeat_interleave(per_slice, dim=0) if per_slice > 1 else y, image_shape,
                             noise_sigma, indices, config)
    optimiser = torch.optim.Adam(decoders.parameters(), lr=config.learning_rate, fused=device.type == "cuda")
    history: list[torch.Tensor] = []
    by_decoder = (y.shape[0], config.ensemble, stopping.twins)  # the decoders' order: slice, member, twin

    t0 = time.perf_counter()
    for step in range(config.iterations):
        for perturbation in perturbations:
            perturbation.apply(step, decoders)
        if config.final_learning_rate is not None:
            for param_group in optimiser.param_groups:
                param_group["lr"] = _step_size(config, step)
        optimiser.zero_grad(set_to_none=True)
        losses, objective = _losses(decoders, operator, targets, config, estimator, step, stopping.weights)
        objective.sum().backward()
        optimiser.step()
        if step % config.loss_every == 0 or step == config.iterations - 1:
            history.append(losses.detach().view(by_decoder)[..., 0].mean(dim=1).cpu())
            with torch.no_grad():
                if not stopping.check(step, estimator.value.view(*by_decoder, *image_shape), operator, y):
                    break
            if len(decoders.models) > 1:
                decoders.set_live(stopping.active.repeat_interleave(per_slice))
        if callback is not None:
            callback(step + 1, config.iterations)
    seconds = time.perf_counter() - t0
    for perturbation in perturbations:
        perturbation.restore(decoders)
    with torch.no_grad():
        estimator.finish(decoders)
        each = stopping.result(estimator.value.view(*by_decoder, *image_shape)[:, :, 0])
    return FitResult(image=each.mean(dim=1).cpu(), weights=estimator.weights(decoders),
                     loss_history=torch.stack(history).numpy(), iterations=stopping.stopped_at.numpy(),
                     seconds=seconds, members=each.cpu() if keep_members else None)
