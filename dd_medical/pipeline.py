"""Volume-level denoising: slices -> batches sized to the device -> fitting -> slices -> volume."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from .decoder import size_ladder
from .errors import InputError
from .fitting import COMBINED_ARCHITECTURES, FitConfig, fit
from .intensity import Window, default_window
from .operators import Identity

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float], None]
"""Called with the fraction of the work done, in [0, 1]."""

_BYTES_PER_ACTIVATION = 4 * 6  # float32; ~6 saved tensors per element and block (conv, upsample, relu, norm, grads)
_CPU_MAX_BATCH = 16


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available (use --device auto or cpu)")
    return dev


def bytes_per_slice(height: int, width: int, channels: int, blocks: int) -> int:
    """Rough memory (bytes) one slice needs while fitting: activations kept for the backward pass."""
    pixels = sum(h * w for h, w in size_ladder(height, width, blocks)) + height * width  # last block at full size
    return pixels * channels * _BYTES_PER_ACTIVATION


def auto_batch_size(num_slices: int, height: int, width: int, config: FitConfig, device: torch.device) -> int:
    """Slices per pass: as many as fit in ~70% of the free device memory (at most 16 on a CPU)."""
    need = bytes_per_slice(height, width, config.channels, config.blocks) * config.ensemble
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


def fit_in_chunks(
    operator,
    measurements: torch.Tensor,
    config: FitConfig,
    dev: torch.device,
    batch_size: int,
    *,
    progress: bool = True,
    callback: ProgressCallback | None = None,
    desc: str = "fitting",
    first_index: int = 0,
    sink: Callable[[int, int, torch.Tensor], None] | None = None,
    keep_members: bool = False,
) -> torch.Tensor | None:
    """Fit ``measurements`` ``(D, ...)`` through ``operator`` ``batch_size`` slices at a time -> ``(D, C, H, W)`` CPU
    (``keep_members``: each ensemble member's estimate, ``(D, ensemble, C, H, W)``).

    Slice ``i`` uses the seeds of ``(config.seed, first_index + i)``; on out-of-memory the batch is halved and the
    chunk retried. A tqdm bar (``progress``) and ``callback(fraction_done)`` report progress. ``measurements``
    may be any object with ``shape`` and ``[start:stop]`` giving a tensor (built lazily, chunk by chunk). With
    ``sink``, each chunk's images go to ``sink(start, stop, images)`` instead of the returned tensor (``None``).
    """
    depth = measurements.shape[0]
    out: torch.Tensor | None = None
    b = batch_size
    bar = tqdm(total=depth, disable=not progress, desc=desc,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} slices [{elapsed}<{remaining}]")
    done = 0.0
    start = 0
    while start < depth:
        stop = min(depth, start + b)

        def on_iteration(it: int, total: int, n: int = stop - start) -> None:
            nonlocal done
            step = n / total
            done += step
            bar.update(step)
            if callback is not None:
                callback(min(1.0, done / depth))

        before = done
        try:
            result = fit(
                operator, measurements[start:stop], config,
                slice_indices=range(first_index + start, first_index + stop), device=dev, callback=on_iteration,
                keep_members=keep_members,
            )
        except torch.OutOfMemoryError as err:
            bar.update(before - done)
            done = before
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            if b == 1:
                shape = "x".join(str(s) for s in measurements.shape[1:])
                raise InputError(
                    f"out of memory fitting one slice ({shape} measurements) with {config.channels} channels on "
                    f"{dev}; use fewer channels or --device cpu"
                ) from err
            b = max(1, b // 2)
            log.warning("out of memory on %s: retrying with %d slices at a time", dev, b)
            continue
        images = result.members if keep_members else result.image
        if sink is not None:
            sink(start, stop, images)
        else:
            if out is None:
                out = torch.empty((depth, *images.shape[1:]), dtype=torch.float32)
            out[start:stop] = images
        bar.update(stop - done)  # a stopping rule may have ended the chunk early
        done = float(stop)
        if callback is not None:
            callback(done / depth)
        start = stop
    bar.close()
    return out


def slab_indices(depth: int, slab: int) -> np.ndarray:
    """``(D, s)`` slice indices of the slab centred on each slice: ``i - r .. i + r`` (``r = slab // 2``, at most
    ``D - 1``), mirrored at the ends of the volume (slice ``-1`` is slice ``1``)."""
    r = min(slab // 2, depth - 1)
    j = np.arange(depth)[:, None] + np.arange(-r, r + 1)[None]
    j = np.where(j < 0, -j, j)
    return np.where(j > depth - 1, 2 * (depth - 1) - j, j)


class _Slabs:
    """The slabs centred on slices ``first .. stop - 1`` of ``unit`` ``(D, 1, H, W)``, built chunk by chunk."""

    def __init__(self, unit: torch.Tensor, index: np.ndarray, first: int, stop: int) -> None:
        self.unit, self.index, self.first = unit[:, 0], index, first
        self.shape = (stop - first, index.shape[1], *unit.shape[2:])

    def __getitem__(self, part: slice) -> torch.Tensor:
        rows = self.index[self.first:self.first + self.shape[0]][part]
        return self.unit[torch.from_numpy(rows)]


def denoise_volume(
    hu: np.ndarray,
    config: FitConfig | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    *,
    window: Window | None = None,
    modality: str = "CT",
    batch_size: int | None = None,
    callback: ProgressCallback | None = None,
    first_index: int = 0,
    strategy: str = "batched",
    subset: tuple[int, int] | None = None,
) -> np.ndarray:
    """Denoise a volume slice by slice with one untrained Deep Decoder per slice.

    Args:
        hu: ``(D, H, W)`` (or ``(H, W)``) in HU for CT, stored values for MR; not modified.
        config: :class:`FitConfig` (the package defaults if ``None``).
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: show a tqdm bar with slices done and an ETA.
        window: intensity window mapped to [0, 1]; default :func:`default_window` (CT: full range, no clipping).
        modality: ``"CT"`` or ``"MR"`` (chooses the default window).
        batch_size: slices fitted at once; default from free device memory. On out-of-memory it is halved.
        callback: ``callback(fraction_done)`` after every iteration, for GUIs.
        first_index: index of the first slice within its whole volume (for the per-slice seeds), so that a chunk
            of a volume denoised on its own, with the whole volume's ``window``, equals the same slices of the
            whole-volume result.
        strategy: ``"batched"`` (default) fits ``batch_size`` slices per pass; ``"sequential"`` is the reference
            way, kept as a baseline: one decoder per slice, one slice after another (batch size 1), fp32
            (``config.amp`` ignored), through the same :func:`~dd_medical.fitting.fit`.
        subset: ``(start, stop)``: return only slices ``start:stop``, equal to the same slices of the whole
            result (with ``config.slab > 1`` the slabs that reach into them are fitted, the other slices serve as
            their context). Default: all slices.

    With ``config.slab = s > 1`` (2.5D) a decoder is fitted to the ``s`` slices around each slice (its output
    channels; mirrored at the ends) and each slice is the mean of every slab estimate that holds it
    (:func:`slab_indices`).

    Returns ``(D, H, W)`` float32 in the input's units (``(H, W)`` for a 2D input). Slice (or slab centre) ``i``
    is fitted with its own seed derived from ``(config.seed, first_index + i)``, so results do not depend on the
    batch size.
    """
    config = config or FitConfig()
    if strategy not in ("batched", "sequential"):
        raise ValueError(f"strategy must be 'batched' or 'sequential', got {strategy!r}")
    if strategy == "sequential":
        config, batch_size = replace(config, amp=False), 1
    squeeze = np.ndim(hu) == 2
    slices = check_slices(hu)
    window = window or default_window(slices, modality)
    dev = resolve_device(device)
    depth, height, width = slices.shape
    unit = torch.from_numpy(window.to_unit(slices))[:, None]  # (D, 1, H, W) in [0, 1]
    b = batch_size or auto_batch_size(depth, height, width, config, dev)
    log.info("denoising %d slices of %dx%d on %s, %d at a time, config %s", depth, height, width, dev, b,
             asdict(config))

    start, stop = (0, depth) if subset is None else (int(subset[0]), int(subset[1]))
    if not 0 <= start < stop <= depth:
        raise ValueError(f"subset {subset} is not a non-empty slice range of a {depth}-slice volume")
    if config.slab == 1 or depth == 1:
        images = fit_in_chunks(Identity(), unit[start:stop], config, dev, b, progress=progress, callback=callback,
                               desc="denoising", first_index=first_index + start)
        result = images[:, 0]
    else:
        index = slab_indices(depth, config.slab)
        r = index.shape[1] // 2
        first, last = max(0, start - r), min(depth, stop + r)  # centres of every slab holding a wanted slice
        # Sums over the slabs of slices start..stop-1 only (slabs also cover up to r slices beyond them).
        total = torch.zeros((stop - start, height, width), dtype=torch.float32)
        count = np.zeros(stop - start, dtype=np.int64)

        def add(a: int, z: int, estimates: torch.Tensor) -> None:  # estimates (z - a, s, H, W) of centres a..z-1
            rows = index[first + a:first + z].ravel()
            keep = (rows >= start) & (rows < stop)
            total.index_add_(0, torch.from_numpy(rows[keep] - start), estimates.flatten(0, 1)[torch.from_numpy(keep)])
            np.add.at(count, rows[keep] - start, 1)

        fit_in_chunks(Identity(), _Slabs(unit, index, first, last), config, dev, b, progress=progress,
                      callback=callback, desc="denoising", first_index=first_index + first, sink=add)
        result = total / torch.from_numpy(count).float()[:, None, None]
    out = window.from_unit(result.numpy()).astype(np.float32, copy=False)
    return out[0] if squeeze else out


#: The decoders ``architecture="both"`` averages and ``"auto"`` chooses between (MRI reconstruction).
AUTO_CANDIDATES = ("deep", "conv")


def _fit_candidates(operator, y: torch.Tensor, config: FitConfig, dev: torch.device, batch_size: int,
                    progress: bool, callback: ProgressCallback | None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """MRI ``architecture="both"/"auto"``: fit ``ensemble`` (at least 2) decoders of each candidate kind per slice.
    Returns each architecture's ensemble means ``(D, C, H, W)`` and its members' disagreement on the unmeasured
    k-space ``(D,)`` (:meth:`~dd_medical.operators.CartesianFourier.disagreement`)."""
    candidates = AUTO_CANDIDATES
    config = replace(config, ensemble=max(2, config.ensemble))
    means, spreads = {}, {}
    for n, architecture in enumerate(candidates):
        def part(fraction: float, n: int = n) -> None:
            if callback is not None:
                callback((n + fraction) / len(candidates))

        members = fit_in_chunks(operator, y, replace(config, architecture=architecture), dev, batch_size,
                                progress=progress, callback=part, desc=f"reconstructing ({architecture})",
                                keep_members=True)
        with torch.no_grad():
            spreads[architecture] = torch.cat([operator.disagreement(members[i:i + 16].to(dev)).cpu()
                                               for i in range(0, members.shape[0], 16)])
        means[architecture] = members.mean(dim=1)
    return means, spreads


def reconstruct_volume(
    measurements,
    operator,
    config: FitConfig | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    *,
    batch_size: int | None = None,
    callback: ProgressCallback | None = None,
    data_consistency: bool = True,
    report: dict | None = None,
) -> np.ndarray:
    """Reconstruct slices from undersampled measurements with one untrained Deep Decoder per slice as the prior.

    Minimises ``||A(G(w)) - y||^2`` over the decoder weights ``w`` (Heckel & Soltanolkotabi 2020).

    Args:
        measurements: batched over slices, first axis ``D`` (numpy or torch): MRI k-space ``(D, coils, H, W, 2)``
            or complex ``(D, coils, H, W)``; CT sinogram ``(D, 1, views, detectors)``; masked images
            ``(D, C, H, W)``; compressive measurements ``(D, m)``. Not modified.
        operator: a forward model of :mod:`dd_medical.operators`.
        config: :class:`FitConfig`; default ``RECONSTRUCTION_DEFAULTS`` for the operator (MRI: linear output,
            the decoder fits ``2*coils`` real/imaginary channels).
        device, progress, batch_size, callback: as for :func:`denoise_volume`.
        data_consistency: MRI only: the result keeps the measured k-space samples and takes the decoder's k-space
            only where nothing was measured (measured on the benchmark: +0.9 dB at 4x).
        report: if a dict, filled with ``"architecture"``, the decoder used per slice (``"both"``: averaged), and
            for MRI with ``architecture="both"`` (the MRI default) or ``"auto"`` also ``"disagreement"`` (per
            candidate, its members' spread on the unmeasured k-space per slice), ``"auto"`` (the kind with the lower
            spread per slice, the one ``"auto"`` keeps) and ``"candidates"`` (per candidate, its ``(D, H, W)``
            result, as returned).

    An MRI config with ``output="sigmoid"`` is fitted with ``output="linear"`` (coil images are signed; not for a
    ``real`` operator, whose object is a non-negative image); every
    fit runs ``config.iterations`` steps (``stopping="fixed"``: the discrepancy rule needs image-shaped data), in
    float32 (``amp`` ignored: bf16 was measured for denoising only).

    Returns ``(D, H, W)`` float32 in the measurements' own scale: RSS magnitude (MRI), attenuation (CT), image
    (inpainting, compressive sensing). The measurements are divided by the maximum of the baseline reconstruction
    (zero-filled / FBP) so the decoder works in about [0, 1], and the result is scaled back. Slice ``i`` uses
    seeds from ``(config.seed, i)``, so results do not depend on the batch size. Bad input raises
    :class:`InputError` before any fitting.
    """
    from .reconstruction import default_config, magnitude_image, operator_kind, prepare_measurements

    y = prepare_measurements(measurements, operator)
    config = config or default_config(operator)
    if operator_kind(operator) == "mri" and not operator.real and config.output != "linear":  # signed re/im images
        config = replace(config, output="linear")
    if config.stopping != "fixed":  # the discrepancy rule estimates the noise from image-shaped measurements
        log.info("reconstruction runs a fixed number of iterations (stopping=%r ignored)", config.stopping)
        config = replace(config, stopping="fixed")
    if config.amp:  # bf16 autocast was measured for denoising only
        log.info("reconstruction fits in float32 (amp ignored)")
        config = replace(config, amp=False)
    dev = resolve_device(device)
    channels, height, width = operator.image_shape(y)
    with torch.no_grad():
        scale = max(float(magnitude_image(operator, operator.baseline(y[i:i + 16].to(dev))).max())
                    for i in range(0, y.shape[0], 16))
    if not scale > 0:
        raise InputError("measurements are all zero: nothing to reconstruct")
    b = batch_size or auto_batch_size(y.shape[0], height, width, config, dev)
    log.info("reconstructing %d slices of %dx%d (%d channels) with %s on %s, %d at a time, config %s",
             y.shape[0], height, width, channels, type(operator).__name__, dev, b, asdict(config))

    def finish(images: torch.Tensor) -> np.ndarray:
        if data_consistency and operator_kind(operator) == "mri":
            with torch.no_grad():
                result = operator.consistent_magnitude(images, y / scale)[:, 0]
        else:
            result = magnitude_image(operator, images)
        return (result.numpy() * scale).astype(np.float32)

    report = {} if report is None else report
    if config.architecture in COMBINED_ARCHITECTURES and operator_kind(operator) == "mri":
        means, spreads = _fit_candidates(operator, y / scale, config, dev, b, progress, callback)
        choice = torch.stack([spreads[a] for a in AUTO_CANDIDATES]).argmin(dim=0)  # (D,)
        report["disagreement"] = {a: spreads[a].tolist() for a in AUTO_CANDIDATES}
        report["candidates"] = {a: finish(means[a]) for a in AUTO_CANDIDATES}
        report["auto"] = [AUTO_CANDIDATES[int(c)] for c in choice]
        if config.architecture == "both":  # every member of both kinds averaged (equal ensembles: mean of means)
            report["architecture"] = ["both"] * y.shape[0]
            log.info("averaging the decoders of both kinds (%s) on every slice", ", ".join(AUTO_CANDIDATES))
            return finish(torch.stack([means[a] for a in AUTO_CANDIDATES]).mean(dim=0))
        report["architecture"] = report["auto"]
        log.info("decoder per slice (the one whose decoders disagree least on the unmeasured k-space): %s",
                 ", ".join(f"{a} {report['architecture'].count(a)}" for a in AUTO_CANDIDATES))
        stacked = np.stack([report["candidates"][a] for a in AUTO_CANDIDATES])  # (candidates, D, H, W)
        return stacked[choice.numpy(), np.arange(stacked.shape[1])]
    if config.architecture in COMBINED_ARCHITECTURES:  # not MRI: the paper's decoder
        config = replace(config, architecture="deep")
    report["architecture"] = [config.architecture] * y.shape[0]
    return finish(fit_in_chunks(operator, y / scale, config, dev, b, progress=progress, callback=callback,
                                desc="reconstructing"))
