"""How to fit: the one settings object every door resolves (:func:`dd_medical.presets.resolve`) and ``fit`` reads."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ARCHITECTURES = ("deep", "conv", "both")
RESULTS = ("average", "best", "last")
STOPPING = ("fixed", "discrepancy", "sure", "holdout")
#: With ``blocks=None`` the depth follows the noise level of the slices (their estimated noise standard deviation in
#: the fit's [0, 1] scale): strong noise gets the paper's low capacity (6 blocks: five upsamplings), weaker noise
#: fewer upsamplings from a larger input, so that anatomy is not smoothed away with the noise. ``(noise at least,
#: blocks)``, first match.
DEPTH_BY_NOISE = ((0.04, 6), (0.015, 5), (0.0, 4))
#: ... and at most as deep as keeps the fixed input at least this many pixels on the slice's shorter side.
MIN_INPUT_SIDE = 4


@dataclass
class FitConfig:
    """Settings of a fit. Named settings per task are in :mod:`dd_medical.presets`; these defaults are the paper's
    decoder with the package's denoising rules.

    Args:
        channels: ``k``, channels per block (default 64, the paper's).
        blocks: decoder depth; ``None`` (default): from the noise level of the slices (:meth:`depth`: 6 as in the
            paper for strong noise, down to 4 for weak noise), so that weakly noisy slices keep their anatomy.
        iterations: Adam steps per slice; an upper bound when a stopping rule ends a slice earlier (default 2000).
        learning_rate: Adam step size (default 0.01, the paper's).
        final_learning_rate: if set, the step size decays geometrically from ``learning_rate`` (first step) to
            this value (last step); ``None`` (default) keeps it constant.
        seed: base seed; decoder ``m`` of slice ``i`` is drawn from the seeds of ``(seed, i, m)``
            (:func:`~dd_medical.core.decoder.slice_generator`), so a slice's result does not depend on the batch.
        ensemble: decoders fitted per slice from different random starts; their estimates are averaged (default 2).
        result: the estimate each decoder returns (:mod:`dd_medical.core.estimators`): ``"average"`` (default), a
            moving average of its iterates with decay ``min(average_decay, t / (t + average_warmup))`` at step ``t``;
            ``"best"``, its lowest-loss iterate (the reference code's choice); ``"last"``, its final iterate.
        average_decay: see ``result`` (default 0.98).
        average_warmup: see ``result`` (default 20; 0 gives a plain exponential average).
        stopping: when a slice stops (:mod:`dd_medical.core.stopping`): ``"fixed"`` runs ``iterations`` steps;
            ``"discrepancy"`` (default) stops once the estimate explains the measurements down to the noise,
            misfit <= ``discrepancy_factor * sigma^2`` (Morozov's discrepancy principle); ``"sure"`` keeps the
            estimate of lowest Monte-Carlo SURE (Ramani, Blu & Unser 2008), probed with a twin of every decoder, and
            stops ``sure_patience`` steps after its last minimum; ``"holdout"`` keeps a random 1/16 of the pixels out
            of the fit and the estimate of lowest error on them, and stops 200 steps after its last minimum (no
            noise level needed; :class:`~dd_medical.core.stopping.Holdout`). These rules need image-shaped
            measurements (denoising); ``sigma`` is estimated from them (:func:`~dd_medical.core.noise.estimate_sigma`).
        discrepancy_factor: see ``stopping`` (default 0.96).
        sure_epsilon: SURE's probe step relative to ``sigma`` (default 0.1).
        sure_patience: see ``stopping`` (default 150 steps).
        architecture: ``"deep"`` (the paper's decoder, default), ``"conv"`` (ConvDecoder) or, for reconstruction,
            ``"both"``: ``ensemble`` decoders of each kind per slice, all averaged.
        amp: bf16 autocast on CUDA (default ``True``; ignored on a CPU).
        compile: on CUDA, run the decoders' forward through ``torch.compile`` (same function; each new batch shape
            is compiled first). Ignored on a CPU. Default ``False``.
        loss_every: read the loss back and test the stopping rule every N steps (default 10).
        slab: 2.5D denoising of volumes: each decoder fits ``slab`` adjacent slices (odd) as its channels, one slab
            centred on every slice, and a slice is the mean of every slab estimate that holds it. Default 1 (2D).
        norm_first: normalise, then ReLU, in every block (default ``False``: the paper's denoising order).
        input_noise: if > 0, Gaussian noise of this standard deviation is added to every decoder's fixed input at
            every step, shrunk x0.7 every 500 steps (:class:`~dd_medical.core.perturbations.InputNoise`; the
            reference code's compression recipe). Default 0.
        tv_weight: if > 0, this weight times the anisotropic total variation of each decoder's image (a sum over
            pixels, channel-averaged, in the fit's [0, 1]-like scale) is added to its data term. Default 0.
        detail_threshold: denoising: the structure the fit left in a slice's residual, its starlet coefficients
            above this many times the noise of their scale, is added back to the result
            (:func:`~dd_medical.core.detail.return_detail`), so that anatomy the decoder could not hold is not
            erased. Default 3.0 (Starck & Murtagh's ``k``); 0 turns it off.
    """

    channels: int = 64
    blocks: int | None = None
    iterations: int = 2000
    learning_rate: float = 0.01
    final_learning_rate: float | None = None
    seed: int = 0
    ensemble: int = 2
    result: Literal["average", "best", "last"] = "average"
    average_decay: float = 0.98
    average_warmup: int = 20
    stopping: Literal["fixed", "discrepancy", "sure", "holdout"] = "discrepancy"
    discrepancy_factor: float = 0.96
    sure_epsilon: float = 0.1
    sure_patience: int = 150
    architecture: Literal["deep", "conv", "both"] = "deep"
    amp: bool = True
    compile: bool = False
    loss_every: int = 10
    slab: int = 1
    norm_first: bool = False
    input_noise: float = 0.0
    tv_weight: float = 0.0
    detail_threshold: float = 3.0

    def __post_init__(self) -> None:
        if self.slab < 1 or self.slab % 2 == 0:
            raise ValueError(f"slab must be an odd number >= 1 (slices per decoder), got {self.slab}")
        if min(self.channels, self.blocks or 1, self.iterations, self.ensemble, self.loss_every) < 1:
            raise ValueError("channels, blocks, iterations, ensemble and loss_every must be >= 1")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be > 0")
        if self.final_learning_rate is not None and not self.final_learning_rate > 0:
            raise ValueError("final_learning_rate must be > 0 (or None)")
        if not 0 <= self.average_decay < 1:
            raise ValueError("average_decay must be in [0, 1)")
        if self.average_warmup < 0:
            raise ValueError("average_warmup must be >= 0")
        if not self.tv_weight >= 0:
            raise ValueError("tv_weight must be >= 0")
        if not self.detail_threshold >= 0:
            raise ValueError("detail_threshold must be >= 0 (0: off)")
        if not self.input_noise >= 0:
            raise ValueError("input_noise must be >= 0")
        if not self.sure_epsilon > 0 or self.sure_patience < 1:
            raise ValueError("sure_epsilon must be > 0 and sure_patience >= 1")
        if self.architecture == "auto":
            raise ValueError("architecture='auto' was removed (it kept the worse decoder kind in 3 of 6 measured "
                             "fits); use 'both' (both kinds averaged), 'deep' or 'conv'")
        for name, value, allowed in (("result", self.result, RESULTS), ("stopping", self.stopping, STOPPING),
                                     ("architecture", self.architecture, ARCHITECTURES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    def depth(self, height: int, width: int, noise: float | None = None) -> int:
        """The number of blocks for ``(height, width)`` slices whose noise standard deviation is ``noise`` (in the
        fit's [0, 1] scale; ``None``: unknown, taken as strong): ``blocks`` if set, else the first match of
        :data:`DEPTH_BY_NOISE`, at most as deep as keeps the fixed input, ``ceil(side / 2**(blocks - 1))``, at least
        :data:`MIN_INPUT_SIDE` pixels on the shorter side (at least 2). ConvDecoder (input 1/16 of the slice): 6."""
        if self.blocks is not None:
            return self.blocks
        if self.architecture == "conv":
            return 6
        level = float("inf") if noise is None else noise
        blocks = next(b for floor, b in DEPTH_BY_NOISE if level >= floor)
        while blocks > 2 and math.ceil(min(height, width) / 2 ** (blocks - 1)) < MIN_INPUT_SIDE:
            blocks -= 1
        return blocks
