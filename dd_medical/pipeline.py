"""Volumes through the engine: slices (or slabs) -> device-sized batches (out of memory: halve) -> fit -> volume.

Everything here is modality-blind: what a modality needs is a method of its forward model
(:class:`~dd_medical.core.operators.ForwardModel`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from functools import partial
from typing import TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from .core.config import FitConfig
from .core.decoder import size_ladder
from .core.detail import keep_anatomy
from .core.fit import fit
from .core.intensity import Window, default_window, resolve_modality
from .core.noise import estimate_sigma
from .core.operators import ForwardModel, Identity
from .core.reconstruction_check import (
    ReconstructionCheck,
    data_misfit,
    disagreement,
    gathered,
    member_scatter,
)
from .core.uncertainty import Calibration, load_calibration
from .errors import InputError

log = logging.getLogger(__name__)

#: Progress: ``True`` a bar, ``False`` nothing, ``None`` a bar only on a terminal, or ``callback(fraction_done)``.
Progress = bool | None | Callable[[float], None]
T = TypeVar("T")

_BYTES_PER_ACTIVATION = 4 * 6  # float32; ~6 saved tensors per element and block (conv, upsample, relu, norm, grads)
_CPU_MAX_BATCH = 16
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; :class:`InputError`
    for anything else or for a GPU that is not there."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE.fullmatch(text):
        raise InputError(f"unknown device {text!r}; use auto, cpu, cuda or cuda:N")
    dev = torch.device(text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {text!r} was asked for but no CUDA GPU is available (use --device auto or cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {text!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def bytes_per_slice(height: int, width: int, channels: int, blocks: int) -> int:
    """Rough memory (bytes) one decoder needs while fitting: activations kept for the backward pass."""
    pixels = sum(h * w for h, w in size_ladder(height, width, blocks)) + height * width  # last block at full size
    return pixels * channels * _BYTES_PER_ACTIVATION


def auto_batch_size(num_slices: int, height: int, width: int, config: FitConfig, device: torch.device) -> int:
    """Slices per batch: as many as fit in ~70% of the free device memory (at most 16 on a CPU)."""
    need = bytes_per_slice(height, width, config.channels, config.depth(height, width)) * config.ensemble
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cap = num_slices
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = 4 << 30
        cap = _CPU_MAX_BATCH
    return int(max(1, min(num_slices, cap, (0.7 * free) // need)))


def check_slices(array: np.ndarray, name: str = "input") -> np.ndarray:
    """Validate a ``(D, H, W)`` (or ``(H, W)``) real, finite array; returns it as ``(D, H, W)`` float32."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"expected a 2D slice (H, W) or a volume (D, H, W), got shape {arr.shape}", None)
    if np.iscomplexobj(arr):
        raise InputError(f"{name} is complex; denoising needs real values (HU or magnitude)")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise InputError(f"{name} has non-numeric dtype {arr.dtype}")
    if min(arr.shape[1:]) < 8:
        raise InputError(f"slices of {arr.shape[1]}x{arr.shape[2]} pixels are too small (need at least 8x8)")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains {int(np.size(arr) - np.isfinite(arr).sum())} NaN/Inf values")
    return arr.astype(np.float32, copy=False)


#: A run on the CPU estimated to take longer than this (seconds) is announced once, naming faster choices.
LONG_RUN_S = 600.0
#: Seconds of fitting measured before that estimate is made.
PROBE_S = 5.0
#: The faster choices that warning names, by task.
FASTER = {"denoise": "the 'fast' preset (fewer channels and iterations, one decoder), fewer iterations, or a CUDA GPU",
          "reconstruct": "fewer iterations, or a CUDA GPU",
          "compress": "the 'decay' recipe (2000 steps), fewer iterations, or a CUDA GPU"}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


class Tracker:
    """Progress over ``total`` units (slices): a tqdm bar and/or ``callback(fraction_done)`` (see :data:`Progress`).

    The fraction only rises and stays in [0, 1] (a batch retried after running out of memory redoes slices already
    counted). On a CPU, ``faster`` (a phrase naming faster choices) is given once in a logged warning when the run,
    extrapolated from :data:`PROBE_S` seconds of measured iterations, would take longer than :data:`LONG_RUN_S`.
    ``clock``: seconds, monotonic (a fake one in tests).
    """

    def __init__(self, total: float, desc: str, progress: Progress, *, device: torch.device | None = None,
                 faster: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.desc = float(total), 0.0, desc
        self.callback = progress if callable(progress) else None
        disable = True if self.callback is not None or progress is False else None if progress is None else False
        self.bar = tqdm(total=int(total), desc=desc, disable=disable, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {total} slices [{elapsed}<{remaining}]")
        self.clock, self.faster = clock, faster
        self.probe: tuple[float, float] | None = None  # (time, done) of the first progress, after the setup
        self.estimating = device is not None and device.type == "cpu" and bool(faster)

    def to(self, done: float) -> None:
        """Set the units done; less than already done changes nothing."""
        done = min(self.total, float(done))
        if done <= self.done:
            return
        self.done = done
        self.bar.n = min(self.bar.total, done)  # exact: repeated increments could round past the total
        self.bar.update(0)  # tqdm redraws at most every 0.1 s
        if self.callback is not None:
            self.callback(self.done / self.total if self.total else 1.0)
        if self.estimating:
            self._estimate()

    def _estimate(self) -> None:
        """Once :data:`PROBE_S` seconds have been measured: warn if the rest would take more than :data:`LONG_RUN_S`."""
        if self.probe is None:
            self.probe = (self.clock(), self.done)
            return
        start, done_then = self.probe
        elapsed = self.clock() - start
        if elapsed < PROBE_S:
            return
        self.estimating = False
        rest = (self.total - self.done) * elapsed / (self.done - done_then)
        if rest > LONG_RUN_S:
            with tqdm.external_write_mode():
                log.warning("%s on the CPU may take up to ~%s more (estimated from the first %.0f s); faster: %s",
                            self.desc, _duration(rest), elapsed, self.faster)

    def close(self) -> None:
        self.bar.close()


def in_batches(total: int, batch_size: int, device: torch.device, work: Callable[[int, int], T], *,
               what: str = "") -> Iterator[tuple[int, int, T]]:
    """``(start, stop, work(start, stop))`` over consecutive batches of ``range(total)``; on CUDA out-of-memory the
    batch is halved and retried (:class:`InputError` naming ``what`` when one item does not fit)."""
    start, size = 0, batch_size
    while start < total:
        stop = min(total, start + size)
        try:
            value = work(start, stop)
        except torch.OutOfMemoryError as err:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if size == 1:
                raise InputError(f"out of memory {what} on {device}; use fewer channels or --device cpu") from err
            size = max(1, size // 2)
            log.warning("out of memory on %s: retrying with %d slices at a time", device, size)
            continue
        yield start, stop, value
        start = stop


def fit_slices(operator: ForwardModel, measurements, config: FitConfig, device: torch.device, batch_size: int,
               tracker: Tracker, *, first_index: int = 0,
               sink: Callable[[int, int, torch.Tensor], None] | None = None,
               keep_members: bool = False) -> torch.Tensor | None:
    """Fit ``measurements`` ``(D, ...)`` batch by batch -> ``(D, C, H, W)`` on the CPU (``keep_members``: every
    member's estimate, ``(D, members, C, H, W)``; or, with ``sink``, each batch's images to ``sink(start, stop,
    images)``). Slice ``i`` has the seeds of ``(config.seed, first_index + i)``. ``measurements`` may be any object
    with ``shape`` and ``[start:stop]`` (built lazily, batch by batch); each batch is fitted with
    ``operator.slices(start, stop)`` (``operator`` is the model of all of ``measurements``)."""
    depth, out = measurements.shape[0], None
    offset = tracker.done

    def work(start: int, stop: int) -> torch.Tensor:
        tracker.to(offset + start)

        def step(it: int, total: int) -> None:
            tracker.to(offset + start + (stop - start) * it / total)

        result = fit(operator.slices(start, stop), measurements[start:stop], config,
                     slice_indices=range(first_index + start, first_index + stop), device=device, callback=step,
                     keep_members=keep_members)
        log.info("slices %d-%d: steps run %s (of at most %d), %.0f s", first_index + start, first_index + stop - 1,
                 " ".join(map(str, result.iterations.tolist())), config.iterations, result.seconds)
        return result.members if keep_members else result.image

    shape = "x".join(str(s) for s in measurements.shape[1:])
    for start, stop, images in in_batches(depth, batch_size, device, work,
                                          what=f"fitting one slice ({shape}) with {config.channels} channels"):
        if sink is not None:
            sink(start, stop, images)
        else:
            out = torch.empty((depth, *images.shape[1:]), dtype=torch.float32) if out is None else out
            out[start:stop] = images
        tracker.to(offset + stop)  # a stopping rule may have ended the batch early
    return out


def slab_indices(depth: int, slab: int) -> np.ndarray:
    """``(D, s)`` slice indices of the slab centred on each slice: ``i - r .. i + r`` (``r = slab // 2``, at most
    ``D - 1``), mirrored at the ends of the volume (slice ``-1`` is slice ``1``)."""
    r = min(slab // 2, depth - 1)
    j = np.arange(depth)[:, None] + np.arange(-r, r + 1)[None]
    j = np.where(j < 0, -j, j)
    return np.where(j > depth - 1, 2 * (depth - 1) - j, j)


class _Slabs:
    """The slabs centred on slices ``first .. stop - 1`` of ``unit`` ``(D, 1, H, W)``, built batch by batch."""

    def __init__(self, unit: torch.Tensor, index: np.ndarray, first: int, stop: int) -> None:
        self.unit, self.index, self.first = unit[:, 0], index, first
        self.shape = (stop - first, index.shape[1], *unit.shape[2:])

    def __getitem__(self, part: slice) -> torch.Tensor:
        rows = self.index[self.first:self.first + self.shape[0]][part]
        return self.unit[torch.from_numpy(rows)]


def _denoise_slabs(unit: torch.Tensor, config: FitConfig, dev: torch.device, batch_size: int, tracker: Tracker,
                   start: int, stop: int, spread: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Slices ``start:stop`` ``(n, H, W)`` as the mean of the estimates of every slab that holds them; with
    ``spread``, also the sample standard deviation of every member's estimate of them (else ``None``)."""
    depth, height, width = unit.shape[0], *unit.shape[2:]
    index = slab_indices(depth, config.slab)
    r = index.shape[1] // 2
    first, last = max(0, start - r), min(depth, stop + r)  # centres of every slab holding a wanted slice
    total = torch.zeros((stop - start, height, width), dtype=torch.float32)
    count = np.zeros(stop - start, dtype=np.int64)
    squares = torch.zeros((stop - start, height, width), dtype=torch.float64) if spread else None
    members = np.zeros(stop - start, dtype=np.int64)

    def add(a: int, z: int, estimates: torch.Tensor) -> None:  # estimates (z - a, [M,] s, H, W) of centres a..z-1
        rows = index[first + a:first + z].ravel()
        keep = (rows >= start) & (rows < stop)
        if spread:  # (n, M, s, H, W): every member of every slab
            each = estimates.transpose(1, 2).flatten(0, 1)[torch.from_numpy(keep)]  # (kept, M, H, W)
            target = torch.from_numpy(rows[keep] - start)
            squares.index_add_(0, target, each.double().pow(2).sum(dim=1))
            np.add.at(members, rows[keep] - start, estimates.shape[1])
            estimates = estimates.mean(dim=1)
        total.index_add_(0, torch.from_numpy(rows[keep] - start), estimates.flatten(0, 1)[torch.from_numpy(keep)])
        np.add.at(count, rows[keep] - start, 1)

    fit_slices(Identity(), _Slabs(unit, index, first, last), config, dev, batch_size, tracker, first_index=first,
               sink=add, keep_members=spread)
    mean = total / torch.from_numpy(count).float()[:, None, None]
    if not spread:
        return mean, None
    n = torch.from_numpy(members).double()[:, None, None]
    variance = (squares - n * mean.double() ** 2) / (n - 1)
    return mean, variance.clamp(min=0).sqrt().float()


def _denoise_slices(unit: torch.Tensor, config: FitConfig, dev: torch.device, batch_size: int, tracker: Tracker,
                    start: int, spread: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Slices ``unit`` ``(n, 1, H, W)`` (the first is slice ``start``) -> their ensemble means ``(n, H, W)`` and, with
    ``spread``, the members' sample standard deviation (else ``None``)."""
    if not spread:
        return fit_slices(Identity(), unit, config, dev, batch_size, tracker, first_index=start)[:, 0], None
    mean = torch.empty(unit.shape[0], *unit.shape[2:])
    sd = torch.empty_like(mean)

    def add(a: int, z: int, members: torch.Tensor) -> None:  # (z - a, M, 1, H, W)
        mean[a:z] = members.mean(dim=1)[:, 0]
        sd[a:z] = members.std(dim=1)[:, 0]

    fit_slices(Identity(), unit, config, dev, batch_size, tracker, first_index=start, sink=add, keep_members=True)
    return mean, sd


def denoise_volume(
    values: np.ndarray,
    config: FitConfig,
    device: str | torch.device = "auto",
    *,
    window: Window | None = None,
    modality: str = "CT",
    batch_size: int | None = None,
    progress: Progress = None,
    slices: tuple[int, int] | None = None,
    uncertainty: bool = False,
    calibration: Calibration | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Denoise ``values`` ``(D, H, W)`` (or ``(H, W)``; HU for CT, stored values for MR; not modified) with untrained
    decoders, one per slice (or slab, ``config.slab``), fitted to the slices mapped to [0, 1] by ``window`` (default
    :func:`~dd_medical.core.intensity.default_window` for ``modality``).

    ``slices=(start, stop)`` returns only those slices, equal to the same slices of the whole result (the other
    slices are context for slabs). Returns float32 in the input's units, of the input's shape (or ``(stop - start,
    H, W)``). Slice ``i`` has the seeds of ``(config.seed, i)``, so ``batch_size`` changes nothing but memory. A
    slice whose result is not faithful to its input gets the structure of its residual back
    (:func:`~dd_medical.core.detail.keep_anatomy` at ``config.detail_threshold``; 0: never).

    ``uncertainty=True`` returns ``(image, sd)``: ``sd`` (same shape and units) is the calibrated standard deviation
    of each voxel's error, from the spread of the ensemble's members (:mod:`dd_medical.core.uncertainty`;
    ``calibration``: another map than the package's). It needs ``config.ensemble >= 2``.
    """
    squeeze = np.ndim(values) == 2
    stack = check_slices(values)
    window = window or default_window(stack, resolve_modality(modality, stack))
    dev = resolve_device(device)
    depth, height, width = stack.shape
    start, stop = (0, depth) if slices is None else (int(slices[0]), int(slices[1]))
    if not 0 <= start < stop <= depth:
        raise InputError(f"slices {slices} are not a non-empty range of a {depth}-slice volume")
    if uncertainty and config.ensemble < 2:
        raise InputError(f"an uncertainty map needs an ensemble of at least 2 decoders per slice (ensemble is "
                         f"{config.ensemble}); use ensemble=2 or more")
    unit = torch.from_numpy(window.to_unit(stack))[:, None]  # (D, 1, H, W) in [0, 1]
    if config.blocks is None:  # the depth follows the noise level of the whole volume (chunks agree with it)
        noise = float(estimate_sigma(unit).median())
        config = replace(config, blocks=config.depth(height, width, noise))
        log.info("noise %.4g of the window: decoders of %d blocks", noise, config.blocks)
    b = batch_size or auto_batch_size(depth, height, width, config, dev)
    log.info("denoising %d slices of %dx%d on %s, %d at a time, config %s", stop - start, height, width, dev, b,
             asdict(config))
    tracker = Tracker(stop - start, "denoising", progress, device=dev, faster=FASTER["denoise"])
    try:
        if config.slab == 1 or depth == 1:
            result, spread = _denoise_slices(unit[start:stop], config, dev, b, tracker, start, uncertainty)
        else:
            result, spread = _denoise_slabs(unit, config, dev, b, tracker, start, stop, uncertainty)
    finally:
        tracker.close()
    kept = [keep_anatomy(y, x, config.detail_threshold) for y, x in zip(unit[start:stop, 0], result, strict=True)]
    result = torch.stack([image for image, _ in kept])
    restored = [start + i for i, (_, used) in enumerate(kept) if used > 0]
    if restored:
        log.info("structure returned from the residual of %d slice(s) not faithful to their input: %s", len(restored),
                 ", ".join(map(str, restored[:8])) + (", ..." if len(restored) > 8 else ""))
    out = window.from_unit(result.numpy()).astype(np.float32, copy=False)
    if not uncertainty:
        return out[0] if squeeze else out
    noise = estimate_sigma(unit[start:stop])
    residual = unit[start:stop, 0] - result  # input minus the result returned, as the map is calibrated
    sd = ((calibration or load_calibration())(spread, noise, residual, result) * window.width).numpy()
    return (out[0], sd[0]) if squeeze else (out, sd)


@contextlib.contextmanager
def on_device(operator: ForwardModel, device: torch.device) -> Iterator[ForwardModel]:
    """``operator`` moved to ``device`` for the block, and back where it was after."""
    home = operator.device
    try:
        yield operator.to(device)
    finally:
        operator.to(home)


def _baseline_peak(operator: ForwardModel, y: torch.Tensor, dev: torch.device, a: int, z: int) -> torch.Tensor:
    """The largest value of the cheap baseline's image of slices ``a:z`` of ``y`` (the reconstruction's scale)."""
    model = operator.slices(a, z)
    return model.to_image(model.baseline(y[a:z].to(dev))).max()


def _fit_kind(operator: ForwardModel, y: torch.Tensor, config: FitConfig, dev: torch.device, b: int,
              tracker: Tracker, keep_members: bool, scatter: torch.Tensor | None) -> torch.Tensor:
    """One decoder kind's mean ``(D, C, H, W)`` over ``y`` (``keep_members``: its members ``(D, ensemble, C, H,
    W)``); with ``scatter`` ``(D,)``, the members' scatter on the unmeasured part is added to it batch by batch
    (:func:`~dd_medical.core.reconstruction_check.member_scatter`) and the members are not kept."""
    if scatter is None:
        return fit_slices(operator, y, config, dev, b, tracker, keep_members=keep_members)
    mean = torch.empty((y.shape[0], *operator.image_shape(y)), dtype=torch.float32)

    def add(a: int, z: int, members: torch.Tensor) -> None:  # (z - a, ensemble, C, H, W)
        mean[a:z] = members.mean(dim=1)
        scatter[a:z] += member_scatter(operator.slices(a, z), members)

    fit_slices(operator, y, config, dev, b, tracker, sink=add, keep_members=True)
    return mean


def _check(operator: ForwardModel, y: torch.Tensor, images: torch.Tensor, means: list[torch.Tensor],
           members: torch.Tensor | None, scatter: torch.Tensor | None, ensemble: int, decoders: int,
           dev: torch.device, b: int) -> ReconstructionCheck:
    """The :class:`ReconstructionCheck` of the fitted mean ``images`` ``(D, C, H, W)`` against ``y`` (the fit's scale):
    its data misfit, the noise floor of ``y`` and, with two or more decoders, their disagreement, from the kept
    ``members`` or from ``scatter`` within the kinds plus the scatter between the kinds' ``means`` (each holds
    ``ensemble``)."""
    def figures(a: int, z: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        model = operator.slices(a, z)
        misfit = data_misfit(model, y[a:z], images[a:z])
        if decoders < 2:
            return misfit, None
        if members is not None:
            scattered = member_scatter(model, members[a:z])
        else:
            scattered = scatter[a:z] + (ensemble * member_scatter(
                model, torch.stack([m[a:z] for m in means], dim=1)) if len(means) > 1 else 0.0)
        return misfit, disagreement(model, images[a:z], scattered, decoders)

    parts = [r for *_, r in in_batches(y.shape[0], b, dev, figures, what="checking one slice")]
    floor = operator.noise_floor(y)  # the measurements' own noise, where the model can estimate it (MRI, CT counts)
    return gathered(torch.cat([m for m, _ in parts]), None if decoders < 2 else torch.cat([d for _, d in parts]),
                    decoders, operator.baseline_name, noise_floor=floor)


def reconstruct_volume(
    measurements,
    operator: ForwardModel,
    config: FitConfig,
    device: str | torch.device = "auto",
    *,
    batch_size: int | None = None,
    progress: Progress = None,
    data_consistency: bool = True,
    uncertainty: bool = False,
    check: bool = False,
) -> (np.ndarray | tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, ReconstructionCheck]
      | tuple[tuple[np.ndarray, np.ndarray], ReconstructionCheck]):
    """Reconstruct slices from measurements (first axis ``D``; not modified) with untrained decoders as the prior:
    minimise ``|A(G(w)) - y|^2`` over the weights (Heckel & Soltanolkotabi 2020).

    The measurements are divided by the maximum of the operator's baseline (zero-filled, FBP) so the decoder works
    in about [0, 1], and the result is scaled back. ``config.architecture="both"`` fits ``ensemble`` decoders of each
    kind and averages all of them. ``data_consistency``: the operator's ``finalize`` (MRI: keep the measured
    k-space). Returns ``(D, H, W)`` float32 in the measurements' own scale (``operator.to_image``).

    ``uncertainty=True`` returns ``(image, spread)``: ``spread`` is the per-pixel sample standard deviation of the
    members' images (each finalised and made an image as the mean is), in the image's scale. It is not calibrated
    (reconstruction has no noise level to calibrate against). It needs at least two decoders per slice.

    ``check=True`` returns ``(result, check)``: ``check`` is the
    :class:`~dd_medical.core.reconstruction_check.ReconstructionCheck` of every slice (members are not kept for it).
    """
    y = operator.prepare(measurements)
    dev = resolve_device(device)
    kinds = ("deep", "conv") if config.architecture == "both" else (config.architecture,)
    decoders = config.ensemble * len(kinds)
    if uncertainty and decoders < 2:
        raise InputError("an uncertainty map needs at least 2 decoders per slice (ensemble is 1); use ensemble=2 "
                         "or more, or architecture='both'")
    with on_device(operator, dev):
        scale = max(float(r) for *_, r in in_batches(y.shape[0], 16, dev, partial(_baseline_peak, operator, y, dev)))
        if not scale > 0:
            raise InputError("measurements are all zero: nothing to reconstruct")
        channels, height, width = operator.image_shape(y)
        b = batch_size or auto_batch_size(y.shape[0], height, width, config, dev)
        log.info("reconstructing %d slices of %dx%d (%d channels) with %s on %s, %d at a time, config %s",
                 y.shape[0], height, width, channels, type(operator).__name__, dev, b, asdict(config))
        # the members' scatter within each kind, gathered batch by batch (uncertainty keeps the members instead)
        scatter = torch.zeros(y.shape[0], dtype=torch.float64) if check and decoders >= 2 and not uncertainty else None
        tracker = Tracker(y.shape[0] * len(kinds), "reconstructing", progress, device=dev,
                          faster=FASTER["reconstruct"])
        try:
            fits = [_fit_kind(operator, y / scale, replace(config, architecture=k), dev, b, tracker, uncertainty,
                              scatter) for k in kinds]
        finally:
            tracker.close()
        members = torch.cat(fits, dim=1) if uncertainty else None  # (D, M, C, H, W)
        means = [f.mean(dim=1) for f in fits] if uncertainty else fits
        images = means[0] if len(means) == 1 else torch.stack(means).mean(dim=0)
        report = _check(operator, y / scale, images, means, members, scatter, config.ensemble, decoders, dev,
                        b) if check else None

        def image_of(part: torch.Tensor, a: int, z: int) -> torch.Tensor:
            part, model = part.to(dev), operator.slices(a, z)
            if data_consistency:
                part = model.finalize(part, (y[a:z] / scale).to(dev))
            return model.to_image(part).cpu()

        def finish(a: int, z: int) -> torch.Tensor:
            return image_of(images[a:z], a, z)

        result = torch.cat([r for *_, r in in_batches(y.shape[0], b, dev, finish, what="finishing one slice")])
        out = (result.numpy() * scale).astype(np.float32)
        if not uncertainty:
            return (out, report) if check else out

        def spread(a: int, z: int) -> torch.Tensor:
            each = torch.stack([image_of(members[a:z, m], a, z) for m in range(members.shape[1])], dim=1)
            return each.std(dim=1)

        sd = torch.cat([r for *_, r in in_batches(y.shape[0], b, dev, spread, what="finishing one slice")])
    both = out, (sd.numpy() * scale).astype(np.float32)
    return (both, report) if check else both
