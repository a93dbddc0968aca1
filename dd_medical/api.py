"""One-call API: ``dd_medical.denoise(array_or_path, ...)``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .fitting import FitConfig
from .intensity import Window
from .pipeline import denoise_volume
from .volume import Volume


def denoise(
    image: np.ndarray | torch.Tensor | Volume | str | Path,
    *,
    config: FitConfig | None = None,
    iterations: int | None = None,
    channels: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    window: tuple[float, float] | Window | None = None,
    modality: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray | Volume:
    """Denoise a CT/MR slice or volume with untrained Deep Decoders (one per slice).

    Args:
        image: ``(H, W)`` or ``(D, H, W)`` array in HU (CT) or stored values (MR); a :class:`Volume`; or a path
            to a DICOM series folder or a NIfTI/NRRD/MHA file. Never modified.
        config: full :class:`FitConfig`; ``iterations``, ``channels`` and ``seed`` override its fields.
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        window: ``(low, high)`` in HU mapped to [0, 1]; default: the volume's full range (CT), percentiles (MR).
        modality: ``"CT"`` or ``"MR"``; default the volume's own, else CT.
        batch_size: slices fitted at once (default: from free device memory).
        progress: show a progress bar.

    Returns a float32 array of the input's shape for array input, else a :class:`Volume` with the same geometry.
    """
    config = config or FitConfig()
    overrides = {k: v for k, v in (("iterations", iterations), ("channels", channels), ("seed", seed)) if v is not None}
    config = replace(config, **overrides)
    if isinstance(window, tuple):
        window = Window(*window)
    if isinstance(image, (str, Path)):
        from .io import read_volume

        image = read_volume(image)
    if isinstance(image, Volume):
        out = denoise_volume(
            image.array, config, device, progress, window=window, modality=modality or image.modality,
            batch_size=batch_size,
        )
        return image.with_array(out)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return denoise_volume(array, config, device, progress, window=window, modality=modality or "CT",
                          batch_size=batch_size)


def denoise_file(
    input_path: str | Path,
    output_path: str | Path,
    config: FitConfig | None = None,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    window: tuple[float, float] | None = None,
    progress: bool = True,
) -> str:
    """Read ``input_path`` (DICOM folder/file or image file), denoise it, write ``output_path``; returns a summary.

    ``output_path`` with an image extension (.nii.gz, .nrrd, .mha, ...) is written as that format; otherwise it is
    a folder that receives a derived DICOM series. It must not exist yet (or be an empty folder): this is checked
    before any fitting. The output appears only once complete; the input is never modified.
    """
    from .io import is_image_path, read_volume, write_image, write_series
    from .noise import estimate_sigma

    config = config or FitConfig()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and (output_path.is_file() or any(output_path.iterdir())):
        raise InputError("output already exists (refusing to overwrite)", output_path)
    if output_path.resolve() == input_path.resolve():
        raise InputError("output is the input (inputs are never modified)", output_path)
    volume = read_volume(input_path)
    t0 = time.perf_counter()
    result = denoise(volume, config=config, device=device, window=window, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    if is_image_path(output_path):
        write_image(result, output_path)
    else:
        write_series(
            result, output_path,
            series_description=f"DD denoised (k={config.channels}, {config.ensemble} decoders)",
            derivation_description=derivation_description(config),
        )
    units = "HU" if volume.modality == "CT" else "units"
    before = float(estimate_sigma(volume.array[:, None]).median())
    after = float(estimate_sigma(result.array[:, None]).median())
    depth, height, width = volume.shape
    return (
        f"denoised {depth} slice(s) of {height}x{width} in {seconds:.1f} s; noise estimate {before:.1f} -> "
        f"{after:.1f} {units}; wrote {output_path}"
    )


def derivation_description(config: FitConfig) -> str:
    """What was done, for DICOM DerivationDescription: method, version and parameters."""
    from . import __version__

    method = {"deep": "Untrained Deep Decoder denoising (Heckel & Hand 2019)",
              "conv": "Untrained ConvDecoder denoising (Darestani & Heckel 2021)",
              "auto": "Untrained Deep Decoder or ConvDecoder (chosen per slice) denoising",
              "both": "Untrained Deep Decoder and ConvDecoder (averaged) denoising"}[config.architecture]
    return (
        f"{method}, dd-medical {__version__}: k={config.channels}, "
        f"blocks={config.blocks}, iterations<={config.iterations}, Adam lr={config.learning_rate}, "
        f"stopping={config.stopping}, result={config.result}, seed={config.seed}"
        + (f", TV weight={config.tv_weight:g}" if config.tv_weight > 0 else "")
    )


def denoise_array(
    array: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    strength: str = "medium",
    iterations: int | None = None,
    channels: int | None = None,
    blocks: int | None = None,
    ensemble: int | None = None,
    slab: int | None = None,
    fp32: bool = False,
    compile: bool = False,
    device: str = "auto",
    seed: int = 0,
    modality: str = "CT",
    callback: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Denoise a ``(D, H, W)`` volume given as numpy with its voxel spacing: the entry point of the 3D Slicer plugin.

    ``array`` is in Slicer's KJI order (``slicer.util.arrayFromVolume``: slice, row, column), HU for CT and
    stored values for MR; it is not modified. ``spacing`` is ``(x, y, z)`` in mm (column, row, slice, as
    ``volumeNode.GetSpacing()``); it must be three positive numbers and is checked, but the denoising is per slice.

    Args:
        strength: ``"low"``, ``"medium"`` or ``"high"``: the :func:`dd_medical.fitting.preset` of that name
            (fitting stops once the residual is 0.92x / 0.96x / 1.0x the estimated noise variance).
        iterations, channels, blocks, ensemble, slab: override the preset's :class:`FitConfig` fields when not
            ``None`` (``slab``: odd number of adjacent slices each decoder fits together, 2.5D; 1 is slice by slice).
        fp32: on CUDA, fit in float32 instead of the default bf16 autocast (no effect on a CPU).
        compile: on CUDA, fuse the decoder's kernels with ``torch.compile`` (``FitConfig.compile``; no effect on a
            CPU).
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        seed: base seed; the same seed, input and device give the same output.
        modality: ``"CT"`` or ``"MR"`` (chooses the default intensity window).
        callback: ``callback(fraction_done)`` with values rising in [0, 1], for progress bars.

    Returns a ``(D, H, W)`` float32 array in the input's units. Raises :class:`InputError` for a wrong shape,
    spacing, strength or decoder setting (an even ``slab``, for one).
    """
    from .fitting import preset

    strengths = ("low", "medium", "high")
    if strength not in strengths:
        raise InputError(f"strength must be one of {', '.join(strengths)}, got {strength!r}")
    values = np.asarray(array)
    if values.ndim != 3:
        raise InputError(f"expected a (D, H, W) volume, got shape {values.shape}")
    try:
        spacing_mm = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as err:
        raise InputError(f"spacing must be three numbers (x, y, z) in mm, got {spacing!r}") from err
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise InputError(f"spacing must be three positive numbers (x, y, z) in mm, got {spacing!r}")
    overrides = {
        name: value
        for name, value in (("iterations", iterations), ("channels", channels), ("blocks", blocks),
                            ("ensemble", ensemble), ("slab", slab))
        if value is not None
    }
    if fp32:
        overrides["amp"] = False
    if compile:
        overrides["compile"] = True
    try:
        config = preset(strength, seed=int(seed), **overrides)
    except ValueError as err:
        raise InputError(str(err)) from err
    return denoise_volume(values, config, device, False, modality=modality, callback=callback)
