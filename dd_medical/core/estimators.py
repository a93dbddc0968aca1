"""What each decoder of a fit returns, updated with every iterate: a moving average, the best or the last iterate.

An estimator sees every iterate's images ``(N, C, H, W)`` (one per decoder) and objective ``(N,)`` before the step
that follows them, and holds one estimate per decoder (:attr:`value`).
"""

from __future__ import annotations

import torch

from .config import FitConfig
from .decoder import instance_axis


class Estimator:
    """Base: :meth:`update` with every iterate, :meth:`finish` once after the last step."""

    value: torch.Tensor

    def update(self, step: int, images: torch.Tensor, objective: torch.Tensor, decoders) -> None:
        raise NotImplementedError

    def finish(self, decoders) -> None:
        """Called after the last step, with the decoders' final weights (and unperturbed inputs)."""

    def weights(self, decoders) -> dict[str, torch.Tensor]:
        """The weights that go with the estimate (a state dict of all decoders, on the CPU): the final ones."""
        return decoders.state()


class Average(Estimator):
    """Moving average of the iterates with a window that grows with the step: decay ``min(decay, t / (t + warmup))``
    at step ``t`` (``warmup`` 0: a plain exponential average). It removes Adam's iterate-to-iterate swing."""

    def __init__(self, decay: float = 0.98, warmup: int = 20) -> None:
        self.decay, self.warmup = decay, warmup

    def update(self, step: int, images: torch.Tensor, objective: torch.Tensor, decoders) -> None:
        if step == 0:
            self.value = images.clone()
            return
        d = min(self.decay, step / (step + self.warmup)) if self.warmup else self.decay
        self.value.mul_(d).add_(images, alpha=1 - d)


class Best(Estimator):
    """Each decoder's lowest-objective iterate, and its weights (the reference code's choice; the codec's
    quantisation-aware refinement keeps the best quantised weights this way)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | None = None
        self.state: list[dict[str, torch.Tensor]] | None = None

    def update(self, step: int, images: torch.Tensor, objective: torch.Tensor, decoders) -> None:
        if self.loss is None:
            self.loss = torch.full_like(objective, float("inf"))
            self.value = torch.zeros_like(images)
        better = objective < self.loss
        self.loss = torch.where(better, objective, self.loss)
        self.value = torch.where(better[:, None, None, None], images, self.value)
        self.state = decoders.where(better, self.state)

    def weights(self, decoders) -> dict[str, torch.Tensor]:
        """The weights of each decoder's best iterate (the fixed inputs: the decoders' own, unperturbed)."""
        final = decoders.state()
        if self.state is None:
            return final
        best = merge_states([{k: v.cpu() for k, v in s.items()} for s in self.state])
        return {k: best.get(k, v) for k, v in final.items()}


class Last(Estimator):
    """Each decoder's final iterate: after the last step, the image of the returned weights."""

    def update(self, step: int, images: torch.Tensor, objective: torch.Tensor, decoders) -> None:
        self.value = images

    def finish(self, decoders) -> None:
        self.value = decoders(everything=True).float()


def make_estimator(config: FitConfig) -> Estimator:
    """The estimator ``config.result`` names."""
    if config.result == "average":
        return Average(config.average_decay, config.average_warmup)
    return Best() if config.result == "best" else Last()


def merge_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of several :class:`~dd_medical.core.decoder.BatchedDeepDecoder` as one of all their
    instances."""
    if len(states) == 1:
        return states[0]
    return {key: torch.cat([s[key] for s in states], dim=instance_axis(key)) for key in states[0]}
