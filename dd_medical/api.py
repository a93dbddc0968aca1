"""One function per job: :func:`denoise`, :func:`reconstruct`, :func:`compress`, :func:`decompress`.

Arrays in give arrays out; paths in give a :class:`~dd_medical.volume.Volume` out. Settings come from
:func:`dd_medical.presets.resolve`: a ``preset`` name, or a full ``config``, with ``FitConfig`` fields as keyword
overrides (``iterations=500``, ``seed=3``, ...). ``progress``: ``None`` a bar on a terminal only, ``True`` always,
``False`` never, or ``callback(fraction_done)``.

```python
import dd_medical

clean_hu = dd_medical.denoise(noisy_hu)                         # (H, W) or (D, H, W) HU -> same shape, HU
volume = dd_medical.denoise("ct_series/", "high", seed=1)        # a DICOM folder or NIfTI/NRRD/MHA -> Volume
image = dd_medical.reconstruct(kspace, CartesianFourier(mask))   # (D, coils, H, W, 2) -> (D, H, W) magnitude
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .codec.encode import Compressed
from .codec.encode import compress as encode_volume
from .codec.encode import decompress as decode_bytes
from .core.config import FitConfig
from .core.fidelity import FidelityReport, check_fidelity
from .core.intensity import Window, resolve_modality
from .core.noise import estimate_sigma
from .core.operators import ForwardModel
from .core.reconstruction_check import ReconstructionCheck
from .errors import InputError
from .io import read_volume
from .io.raw import read_raw
from .pipeline import Progress, denoise_volume, on_device, reconstruct_volume, resolve_device
from .presets import resolve
from .simulation import Simulation, simulate
from .volume import Volume

__all__ = ["Compressed", "FidelityReport", "Simulation", "baseline", "check", "compress", "decompress", "denoise",
           "estimate_noise", "modality_of", "reconstruct", "resolve_device", "simulate"]

ImageInput = np.ndarray | torch.Tensor | Volume | str | Path


def _as_volume_or_array(image: ImageInput) -> Volume | np.ndarray:
    if isinstance(image, (str, Path)):
        return read_volume(image)
    if isinstance(image, Volume):
        return image
    return image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)


def denoise(
    image: ImageInput,
    preset: str | None = None,
    *,
    config: FitConfig | None = None,
    device: str = "auto",
    progress: Progress = None,
    window: tuple[float, float] | Window | None = None,
    modality: str | None = None,
    batch_size: int | None = None,
    uncertainty: bool = False,
    **overrides: object,
) -> np.ndarray | Volume | tuple[np.ndarray, np.ndarray] | tuple[Volume, Volume]:
    """Denoise a CT/MR slice or volume with untrained Deep Decoders (Heckel & Hand 2019), one per slice.

    Args:
        image: ``(H, W)`` or ``(D, H, W)`` array in HU (CT) or stored values (MR); a :class:`Volume`; or a path to a
            DICOM series folder or a NIfTI/NRRD/MHA file. Never modified.
        preset: a ``denoise`` preset (:func:`dd_medical.presets.presets`; default ``"medium"``).
        config: a full :class:`FitConfig` instead of a preset.
        device: ``"auto"`` (CUDA if present, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        window: ``(low, high)`` mapped to [0, 1] for the fit, in the image's units (HU for CT, stored values for
            MR); default: the full range (CT), robust percentiles (MR).
        modality: ``"CT"`` or ``"MR"``; default: the volume's own; for a volume (or file) that does not record it
            (``"OT"``), CT when any value is negative, else MR (:func:`~dd_medical.core.intensity.resolve_modality`);
            for an array, CT.
        batch_size: slices fitted at once (memory only; default from free device memory).
        progress: a bar (``True``; ``None``: on a terminal only), nothing (``False``) or ``callback(fraction)``.
        uncertainty: also return the calibrated per-voxel standard deviation of the error, from the spread of the
            ensemble's members (:mod:`dd_medical.core.uncertainty`; needs ``ensemble >= 2``, the default).
        overrides: :class:`FitConfig` fields.

    Returns float32 of the input's shape and units for an array, else a :class:`Volume` with the same geometry; with
    ``uncertainty=True``, ``(image, sd)``, the map of the same kind, shape and units (HU for CT).
    """
    config = resolve("denoise", preset, config, **overrides)
    window = Window(*window) if isinstance(window, (tuple, list)) else window
    image = _as_volume_or_array(image)
    volume = image if isinstance(image, Volume) else None
    values = volume.array if volume is not None else image
    out = denoise_volume(values, config, device, window=window, batch_size=batch_size, progress=progress,
                         modality=modality or (volume.modality if volume is not None else "CT"),
                         uncertainty=uncertainty)
    if volume is None:
        return out
    return tuple(volume.with_array(a) for a in out) if uncertainty else volume.with_array(out)


def reconstruct(
    measurements: np.ndarray | torch.Tensor | str | Path,
    operator: ForwardModel | None = None,
    preset: str | None = None,
    *,
    config: FitConfig | None = None,
    device: str = "auto",
    progress: Progress = None,
    data_consistency: bool = True,
    batch_size: int | None = None,
    uncertainty: bool = False,
    report: bool = False,
    **overrides: object,
) -> (np.ndarray | Volume | tuple[np.ndarray, np.ndarray] | tuple[Volume, Volume]
      | tuple[np.ndarray | Volume | tuple[np.ndarray, np.ndarray] | tuple[Volume, Volume], ReconstructionCheck]):
    """Reconstruct slices from undersampled measurements, untrained decoders as the prior (Heckel &
    Soltanolkotabi 2020; Darestani & Heckel 2021).

    Args:
        measurements: batched over slices (first axis ``D``): MRI k-space ``(D, coils, H, W, 2)`` or complex
            ``(D, coils, H, W)``; a CT sinogram ``(D, 1, views, detectors)``; masked images ``(D, C, H, W)``;
            compressive measurements ``(D, m)``. Or a path to raw data (:func:`dd_medical.io.raw.read_raw`:
            fastMRI ``.h5``, ``.npy`` k-space or sinogram), whose forward model is built from the file.
        operator: the forward model (:mod:`dd_medical.core.operators`); required for arrays.
        preset: a preset of the task ``"reconstruct/" + operator.kind`` (default: its ``"default"``).
        config: a full :class:`FitConfig` instead of a preset.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        progress: a bar (``True``; ``None``: on a terminal only), nothing (``False``) or ``callback(fraction)``.
        batch_size: slices fitted at once (memory only).
        overrides: :class:`FitConfig` fields.
        data_consistency: the operator's ``finalize`` (MRI: keep the measured k-space samples).
        uncertainty: also return the members' per-pixel standard deviation, in the image's scale (not calibrated;
            needs at least two decoders per slice).
        report: also return the :class:`~dd_medical.core.reconstruction_check.ReconstructionCheck` of every slice:
            the fit's data misfit, the decoders' disagreement where the measurements say nothing (with two or more
            decoders per slice), and whether the slice is flagged as unreliable (it may be worse than the cheap
            baseline).

    Returns ``(D, H, W)`` float32 in the measurements' scale (MRI: RSS magnitude; CT: attenuation), or a
    :class:`Volume` for a path; with ``uncertainty=True``, ``(image, spread)`` of the same kind; with
    ``report=True``, ``(that result, check)``.
    """
    modality = None
    if isinstance(measurements, (str, Path)):
        if operator is not None:
            raise InputError("a raw file brings its own forward model; pass the measurements as an array to use "
                             "another operator", measurements)
        measurements, operator, modality = read_raw(measurements)
    if operator is None:
        raise InputError("reconstruct needs the forward model of the measurements (operator=...)")
    config = resolve(f"reconstruct/{operator.kind}", preset, config, **overrides)
    result = reconstruct_volume(measurements, operator, config, device, batch_size=batch_size, progress=progress,
                                data_consistency=data_consistency, uncertainty=uncertainty, check=report)
    result, check = result if report else (result, None)
    if modality is not None:
        result = (tuple(Volume(r, modality=modality) for r in result) if uncertainty
                  else Volume(result, modality=modality))
    return (result, check) if report else result


def baseline(measurements: np.ndarray | torch.Tensor, operator: ForwardModel, device: str = "cpu") -> np.ndarray:
    """The forward model's cheap reconstruction (zero-filled RSS for MRI, ramp FBP for CT), ``(D, H, W)`` float32 in
    the scale :func:`reconstruct` returns."""
    y = operator.prepare(measurements)
    dev = resolve_device(device)
    with torch.no_grad(), on_device(operator, dev):
        return operator.to_image(operator.baseline(y.to(dev))).cpu().numpy().astype(np.float32)


def compress(
    image: Volume | np.ndarray | str | Path,
    preset: str | None = None,
    *,
    config: FitConfig | None = None,
    bits: int = 8,
    refine_iterations: int | None = None,
    window: tuple[float, float] | Window | None = None,
    device: str = "auto",
    progress: Progress = None,
    batch_size: int | None = None,
    modality: str | None = None,
    **overrides: object,
) -> Compressed:
    """Encode a volume as a ``.ddc`` file's bytes (lossy; :mod:`dd_medical.codec`): one fitted decoder per slice,
    ``bits``-bit (8 or 16) weights after ``refine_iterations`` of quantisation-aware refinement (default a tenth of
    the fit's steps).

    ``image``: a :class:`Volume`, a ``(D, H, W)`` array (HU for CT) or a path. ``preset``: ``"reference"`` (the
    default: the reference code's recipe, 15,000 steps) or ``"decay"`` (2,000 steps, for quick encodes).
    ``window``: the intensity window encoded (default: the full range; robust percentiles for MR). ``modality``:
    ``"CT"`` or ``"MR"`` (default: as for :func:`denoise`). ``progress``: as for :func:`denoise`. Returns
    :class:`Compressed` (``.data`` the file's bytes, ``.volume`` the decoded volume, ``.psnr`` per slice on the
    window).
    """
    config = resolve("compress", preset, config, **overrides)
    image = _as_volume_or_array(image)
    volume = image if isinstance(image, Volume) else Volume(image, modality="CT")
    return encode_volume(volume, config, bits=bits, refine_iterations=refine_iterations, window=window,
                         device=device, batch_size=batch_size, progress=progress, modality=modality)


def decompress(data: bytes | str | Path, *, device: str = "cpu") -> Volume:
    """Decode a ``.ddc`` file (its bytes or its path) into a :class:`Volume` (HU for CT, geometry restored).

    ``device="cpu"`` (default) reproduces exactly the image :func:`compress` measured; a GPU is faster, equal to
    float rounding. A damaged, truncated or unknown-version file raises :class:`InputError` naming it.
    """
    path = None
    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise InputError("no such .ddc file" if not path.exists() else "not a file", path)
        data = path.read_bytes()
    return decode_bytes(data, path=path, device=device)


def modality_of(image: Volume | np.ndarray, modality: str | None = None) -> str:
    """The modality :func:`denoise` and :func:`compress` window ``image`` by (and whose units it is in: HU for CT,
    stored values otherwise): ``modality`` if given, else a volume's own, else for a volume that does not record it
    (``"OT"``: NIfTI, NRRD) :func:`~dd_medical.core.intensity.resolve_modality`'s rule (CT when any value is negative,
    else MR), and CT for an array."""
    if isinstance(image, Volume):
        return resolve_modality(modality or image.modality, image.array)
    return resolve_modality(modality or "CT", image)


def estimate_noise(image: Volume | np.ndarray) -> float:
    """The median over slices of the noise's standard deviation estimated from each, at every scale (white and
    correlated noise alike; clipped and padded pixels left out: :func:`~dd_medical.core.noise.estimate_sigma`), in
    the image's units (HU for CT)."""
    values = image.array if isinstance(image, Volume) else np.asarray(image, dtype=np.float32)
    stack = values[None, None] if values.ndim == 2 else values[:, None]
    return float(estimate_sigma(stack).median())


def check(before: Volume | np.ndarray, after: Volume | np.ndarray) -> FidelityReport:
    """Check a result against its input, slice by slice (:func:`dd_medical.core.fidelity.check_fidelity`): the residual
    ``before - after`` of a faithful denoiser looks like the input's noise, about as large and unrelated to edges.
    ``FidelityReport.passed`` is False, and ``.summary()`` says where and how much, when anatomy may have been removed.
    """
    values = [v.array if isinstance(v, Volume) else np.asarray(v, dtype=np.float32) for v in (before, after)]
    return check_fidelity(*values)
