"""Perturbations applied to the decoders before every step of a fit."""

from __future__ import annotations

import torch

from .config import FitConfig
from .decoder import slice_generator

_INPUT_NOISE = 2 << 20  # member offset of the input-noise generators' seeds


class InputNoise:
    """Gaussian noise of standard deviation ``std`` added to every decoder's fixed input (uniform in [0, 0.1)) at
    every step, shrunk by ``decay`` every ``every`` steps (the reference code's compression recipe:
    reinhardh/supplement_deep_decoder, ``include/compression.py``). Each decoder draws from its own generator, so a
    slice's draws do not depend on the batch; after the fit the inputs are restored, and the returned weights go
    with the unperturbed input."""

    def __init__(self, std: float, decay: float = 0.7, every: int = 500) -> None:
        self.std, self.decay, self.every = std, decay, every

    def start(self, decoders, indices: list[int], config: FitConfig, twins: int) -> None:
        self.fixed = [m.net_input.clone() for m in decoders.models]
        self.generators = [slice_generator(config.seed, i, _INPUT_NOISE + m) for i in indices
                           for m in range(config.ensemble) for _ in range(twins)]

    def apply(self, step: int, decoders) -> None:
        std = self.std * self.decay ** (step // self.every)
        for g, m in enumerate(decoders.models):
            draws = [torch.randn(m.net_input.shape[1:], generator=gen) for gen in decoders.of_pass(self.generators, g)]
            m.net_input.copy_(self.fixed[g] + std * torch.stack(draws).to(m.net_input.device))

    def restore(self, decoders) -> None:
        with torch.no_grad():
            for m, fixed in zip(decoders.models, self.fixed, strict=True):
                m.net_input.copy_(fixed)


def make_perturbations(config: FitConfig) -> list[InputNoise]:
    """The perturbations ``config`` asks for (``input_noise``)."""
    return [InputNoise(config.input_noise)] if config.input_noise > 0 else []
