"""Reconstruction from undersampled measurements: raw data loading, retrospective simulation, checks, baselines.

The Deep Decoder is the prior (Heckel & Soltanolkotabi, ICML 2020; Darestani & Heckel 2021): fit its weights so
that ``A(G(w))`` explains the measurements ``y``. The fitting itself is :func:`dd_medical.pipeline.reconstruct_volume`.

```python
from dd_medical.reconstruction import simulate
from dd_medical.pipeline import reconstruct_volume

sim = simulate(mr_slices, "mri", acceleration=4, center_fraction=0.08)      # (D, H, W) magnitude images
image = reconstruct_volume(sim.measurements, sim.operator)                  # (D, H, W) RSS magnitude
```
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .fitting import FitConfig
from .operators import (
    CartesianFourier,
    GaussianProjection,
    Identity,
    ParallelBeamRadon,
    PixelMask,
    equispaced_mask,
    random_mask,
    variable_density_mask,
)

#: Total-variation weight of the CT default (:attr:`FitConfig.tv_weight`). Scanned on a finer grid than the
#: reconstruction's (no inverse crime), 60 views, 4,000 steps, the best weight was 0.012 (693_UNCR.dcm) to 0.025 (the
#: shared body and head slices) at 128 px, +1.3 to +2.9 dB over none, and 0.025 at 64 px. With 12,000 steps the
#: default gains 2.4 to 3.6 dB over none there, but loses 5.2 dB on a scan simulated with the reconstruction's own
#: operator (the inverse crime: no model error to suppress). README "Reconstruction".
CT_TV_WEIGHT = 0.02

#: Decoder settings per forward model, tuned on the reconstruction benchmark (``benchmarks/bench_reconstruct.py``).
#: MRI fits two decoders of each architecture per slice, the paper's and ConvDecoder, and averages all four
#: (``architecture="both"``): neither kind wins on every slice or seed, and on the benchmark the average beat keeping
#: the kind whose decoders disagree least (``"auto"``) by 0.6 dB on average over six 4x fits (README "Reconstruction").
#: MRI fits signed real/imaginary coil images (``output="linear"``); CT and inpainting fit [0, 1] images. float32
#: on CUDA too (``amp=False``): bf16 was measured for denoising only.
RECONSTRUCTION_DEFAULTS: dict[str, FitConfig] = {
    "mri": FitConfig(channels=64, blocks=6, iterations=1000, learning_rate=0.01, ensemble=2, output="linear",
                     stopping="fixed", amp=False, architecture="both"),
    "ct": FitConfig(channels=64, blocks=6, iterations=12000, learning_rate=0.01, final_learning_rate=0.001, ensemble=1,
                    stopping="fixed", amp=False, tv_weight=CT_TV_WEIGHT),
    "inpaint": FitConfig(channels=64, blocks=6, iterations=1000, learning_rate=0.01, ensemble=1, stopping="fixed",
                         amp=False),
    "cs": FitConfig(channels=32, blocks=5, iterations=1000, learning_rate=0.01, ensemble=1, stopping="fixed",
                    amp=False),
}

#: Sub-pixels per pixel side of the CT operator that reconstructs real sinograms and scans simulated on a finer grid
#: (``simulate(downsample=2)``): the pixel-driven projector with one point per pixel is ~1.2% off the line integrals
#: of its own pixels (moire), an error a fit cannot explain. Measured on 693_UNCR.dcm at 128 px, 60 views, scanned
#: at 256 px: TV 32.48 -> 37.57 dB, the decoder (4,000 steps) 30.49 -> 32.98, for ~8% more time (README).
#: ``simulate`` without ``downsample`` keeps one sub-pixel for both sides (the benchmark's inverse-crime table).
CT_SUBPIXELS = 2

MASK_MAKERS = {"equispaced": equispaced_mask, "random": random_mask, "variable-density": variable_density_mask}

HDF5_SUFFIXES = (".h5", ".hdf5")


def operator_kind(operator) -> str:
    """``"mri"``, ``"ct"``, ``"inpaint"`` or ``"cs"`` for the forward models of :mod:`dd_medical.operators`."""
    for cls, name in ((CartesianFourier, "mri"), (ParallelBeamRadon, "ct"), (PixelMask, "inpaint"),
                      (GaussianProjection, "cs"), (Identity, "inpaint")):
        if isinstance(operator, cls):
            return name
    raise InputError(f"unknown forward model {type(operator).__name__}")


def default_config(operator, **overrides) -> FitConfig:
    """A copy of ``RECONSTRUCTION_DEFAULTS`` for this operator's kind with ``overrides`` applied.

    MRI of a real-valued object (``CartesianFourier(real=True)``) fits a non-negative image: sigmoid output."""
    config = RECONSTRUCTION_DEFAULTS[operator_kind(operator)]
    if isinstance(operator, CartesianFourier) and operator.real:
        config = replace(config, output="sigmoid")
    return replace(config, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Measurement checks


def prepare_measurements(measurements, operator, path: str | Path | None = None) -> torch.Tensor:
    """Validate measurements batched over slices and return them as a float32 CPU tensor.

    MRI k-space may be complex ``(D, coils, H, W)`` (or ``(D, H, W)`` for one coil) or real in MONAI's layout
    ``(D, coils, H, W, 2)``; complex is converted to the latter. Every other operator takes real values. A single
    slice without the ``D`` axis is accepted. Raises :class:`InputError` (before any fitting) for complex data
    where real is expected, NaN/Inf, or a shape that does not match the mask or geometry.
    """
    t = measurements.detach().cpu() if isinstance(measurements, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(measurements))
    is_mri = isinstance(operator, CartesianFourier)
    if t.is_complex():
        if not is_mri:
            raise InputError(f"measurements are complex but {type(operator).__name__} expects real values", path)
        if t.ndim == 3 and operator.coils == 1:
            t = t[:, None]
        elif t.ndim == 2 and operator.coils == 1:
            t = t[None, None]
        t = torch.view_as_real(t.to(torch.complex64).contiguous())
    elif t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                                             torch.int64, torch.uint8)):
        raise InputError(f"measurements have unsupported dtype {t.dtype}", path)
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"measurements contain {int((~torch.isfinite(t)).sum())} NaN/Inf values", path)
    expected_ndim = {"mri": 5, "ct": 4, "inpaint": 4, "cs": 2}[operator_kind(operator)]
    if t.ndim == expected_ndim - 1:  # one slice without its batch axis
        t = t[None]
    if isinstance(operator, (PixelMask, Identity)) and t.ndim == 3:  # (D, H, W) images
        t = t[:, None]
    if isinstance(operator, ParallelBeamRadon) and t.ndim == 3:  # (D, views, detectors)
        t = t[:, None]
    try:
        operator.image_shape(t)
    except InputError as err:
        raise InputError(err.problem, path) from None
    if t.shape[0] == 0:
        raise InputError("no slices in the measurements", path)
    return t


def magnitude_image(operator, images: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` result images from fitted/baseline images ``(B, C, H, W)``: RSS for MRI, channel 0 else."""
    if isinstance(operator, CartesianFourier):
        return operator.magnitude(images)[:, 0]
    return images[:, 0]


# ----------------------------------------------------------------------------------------------------------------
# Raw data


def _read_hdf5(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError("reading HDF5 k-space needs h5py: pip install 'dd-medical[mri]' (or h5py)", path) from err
    try:
        with h5py.File(path, "r") as f:
            if "kspace" not in f:
                raise InputError("HDF5 file has no 'kspace' dataset (fastMRI layout expected)", path)
            kspace = f["kspace"][()]
            mask = f["mask"][()] if "mask" in f else None
    except OSError as err:
        raise InputError(f"cannot read HDF5 file ({err.__class__.__name__})", path) from None
    return kspace, mask


def load_kspace(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read k-space from fastMRI-style HDF5 (``kspace``, slices x coils x H x W, complex; optional ``mask``) or
    ``.npy`` (complex ``(D, coils, H, W)``/``(D, H, W)``/``(H, W)``, or real ``(..., 2)`` in MONAI's layout).

    Returns complex64 ``(D, coils, H, W)`` and the file's ``(W,)`` mask (or ``None``).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path)
    mask = None
    if path.suffix.lower() in HDF5_SUFFIXES:
        kspace, mask = _read_hdf5(path)
    elif path.suffix.lower() == ".npy":
        kspace = _load_npy(path)
    else:
        raise InputError("k-space must be an .h5/.hdf5 (fastMRI) or .npy file", path)
    if not np.iscomplexobj(kspace):
        if kspace.ndim >= 3 and kspace.shape[-1] == 2:
            kspace = kspace[..., 0] + 1j * kspace[..., 1]
        else:
            raise InputError(f"k-space must be complex or real with a last axis of 2, got real {kspace.shape}", path)
    kspace = np.asarray(kspace, dtype=np.complex64)
    while kspace.ndim < 4:
        kspace = kspace[None] if kspace.ndim == 2 else kspace[:, None]
    if kspace.ndim != 4:
        raise InputError(f"k-space must be (slices, coils, H, W), got shape {kspace.shape}", path)
    if not np.all(np.isfinite(kspace)):
        raise InputError("k-space contains NaN/Inf values", path)
    return kspace, None if mask is None else np.asarray(mask, dtype=np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"not a readable .npy array ({err.__class__.__name__})", path) from None


def load_sinogram(path: str | Path) -> np.ndarray:
    """Read a real ``.npy`` sinogram ``(D, views, detectors)`` (or ``(views, detectors)``) as float32."""
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path)
    sino = _load_npy(path)
    if np.iscomplexobj(sino):
        raise InputError("sinogram is complex; CT measurements must be real", path)
    if sino.ndim == 2:
        sino = sino[None]
    if sino.ndim != 3:
        raise InputError(f"sinogram must be (slices, views, detectors), got shape {sino.shape}", path)
    return sino.astype(np.float32)


def infer_line_mask(kspace: np.ndarray) -> np.ndarray:
    """``(W,)`` mask of the k-space columns that hold any non-zero sample (for zero-filled raw data)."""
    return (np.abs(kspace) > 0).any(axis=tuple(range(kspace.ndim - 1))).astype(np.float32)


def load_mask(path: str | Path) -> np.ndarray:
    """A mask from ``.npy``: ``(W,)`` k-space lines or ``(H, W)``; must be real."""
    path = Path(path)
    if not path.exists():
        raise InputError("path does not exist", path)
    mask = _load_npy(path)
    if np.iscomplexobj(mask) or mask.ndim not in (1, 2):
        raise InputError(f"mask must be real (W,) or (H, W), got {mask.dtype} {mask.shape}", path)
    return mask.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Retrospective simulation


@dataclass
class Simulation:
    """Measurements simulated from known images, for validation.

    Attributes:
        measurements: batched over slices (``(D, 1, H, W, 2)`` k-space, ``(D, 1, views, detectors)`` sinogram,
            ``(D, 1, H, W)`` masked images).
        operator: the forward model that produced them.
        reference: ``(D, H, W)`` float32, the ground truth in the reconstruction's scale.
        to_input_units: maps a reconstruction (reconstruction scale) back to the input's units (e.g. HU).
    """

    measurements: torch.Tensor
    operator: object
    reference: np.ndarray
    to_input_units: Callable[[np.ndarray], np.ndarray]


def hu_to_attenuation(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation relative to water: ``max(HU + 1000, 0) / 1000`` (air 0, water 1)."""
    return (np.maximum(np.asarray(hu, dtype=np.float32) + 1000.0, 0.0) / 1000.0).astype(np.float32)


def attenuation_to_hu(mu: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hu_to_attenuation` (for values >= -1000 HU)."""
    return (np.asarray(mu, dtype=np.float32) * 1000.0 - 1000.0).astype(np.float32)


def simulate(
    images: np.ndarray,
    kind: str,
    *,
    modality: str = "CT",
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    mask_type: str = "equispaced",
    mask: np.ndarray | None = None,
    views: int = 60,
    arc_deg: float = 180.0,
    missing: float = 0.5,
    seed: int = 0,
    real_object: bool = False,
    downsample: int = 1,
) -> Simulation:
    """Simulate measurements of ``images`` ``(D, H, W)`` (or ``(H, W)``).

    Args:
        kind: ``"mri"`` (single-coil Cartesian k-space of the image as a real object), ``"ct"`` (parallel-beam
            sinogram with ``views`` angles evenly over ``arc_deg`` degrees: 180 for sparse view, less for limited
            angle) or ``"inpaint"`` (``missing`` fraction of pixels removed at random).
        modality: ``"CT"`` images (and ``"OT"`` ones with negative values) are HU and are converted to attenuation
            (:func:`hu_to_attenuation`) before measuring; others must be non-negative (MR magnitude) and are
            measured as they are.
        acceleration, center_fraction, mask_type: k-space mask (``"equispaced"``, ``"random"``,
            ``"variable-density"``), or ``mask`` given explicitly (``(W,)`` or ``(H, W)``).
        seed: seed of the mask (MRI offset/lines, inpainting pixels).
        real_object: MRI: reconstruct with ``CartesianFourier(real=True)``, i.e. use the knowledge that the
            simulated object (a magnitude image) is real and non-negative. Off by default: scanner data has phase.
        downsample: CT: the scan is measured on the images' own pixel grid, with ``downsample`` times as many
            detector bins, summed back in groups, and the returned operator reconstructs on a grid ``downsample``
            times coarser (``(H / s, W / s)``, with :data:`CT_SUBPIXELS` sub-pixels; ``reference`` is the ``s x s``
            block average of ``images``; the fine grid is projected with 2x2 sub-pixels). With
            ``s >= 2`` the measurements hold detail and a discretisation the reconstruction's model does not
            share, so simulating and reconstructing do not use the same discrete operator (the "inverse crime"
            that flatters every method on ``s = 1``, the default). ``H`` and ``W`` must be multiples of ``s``.
    """
    from .pipeline import check_slices

    slices = check_slices(images, "image")
    depth, height, width = slices.shape
    if int(downsample) != downsample or downsample < 1:
        raise InputError(f"downsample must be a whole number >= 1, got {downsample}")
    downsample = int(downsample)
    if downsample > 1 and kind != "ct":
        raise InputError(f"downsample applies to CT simulation only (got {kind!r})")
    if height % downsample or width % downsample:
        raise InputError(f"image size {height}x{width} is not a multiple of downsample {downsample}")
    if modality.upper() == "CT" or (modality.upper() == "OT" and slices.min() < 0):  # HU
        reference, back = hu_to_attenuation(slices), attenuation_to_hu
    else:
        if slices.min() < 0:
            raise InputError(f"{modality} images hold negative values; simulation expects magnitudes >= 0")
        reference, back = slices, (lambda a: np.asarray(a, dtype=np.float32))
    x = torch.from_numpy(reference)[:, None]
    if kind == "mri":
        if mask is None:
            if mask_type not in MASK_MAKERS:
                raise InputError(f"unknown mask type {mask_type!r}; choose one of {', '.join(MASK_MAKERS)}")
            mask = MASK_MAKERS[mask_type](width, acceleration, center_fraction, seed)
        op = CartesianFourier(mask, coils=1, real=real_object)
        op.image_shape(torch.zeros(1, 1, height, width, 2))  # mask vs image size
        y = op.forward(x if real_object else torch.cat([x, torch.zeros_like(x)], dim=1))
    elif kind == "ct":
        if views < 1:
            raise InputError(f"CT simulation needs at least one view, got {views}")
        if not 0 < arc_deg <= 360:
            raise InputError(f"arc must be in (0, 360] degrees, got {arc_deg}")
        angles = np.linspace(0.0, arc_deg, views, endpoint=False)
        s = downsample
        op = ParallelBeamRadon(angles, (height // s, width // s), subpixels=1 if s == 1 else CT_SUBPIXELS)
        if s == 1:
            y = op.forward(x)
        else:  # measure the fine grid (2x2 sub-pixels) with s bins per coarse bin; s fine bins sum to one (/ s^2)
            fine = ParallelBeamRadon(angles, (height, width), detectors=s * op.detectors, precondition=False,
                                     subpixels=2)
            y = fine.forward(x).reshape(depth, 1, views, op.detectors, s).sum(-1) / s**2
            reference = reference.reshape(depth, height // s, s, width // s, s).mean(axis=(2, 4))
    elif kind == "inpaint":
        if not 0 <= missing < 1:
            raise InputError(f"missing fraction must be in [0, 1), got {missing}")
        keep = np.random.default_rng(seed).uniform(size=(height, width)) >= missing
        op = PixelMask(keep if mask is None else mask)
        y = op.forward(x)
    else:
        raise InputError(f"unknown simulation {kind!r}; choose mri, ct or inpaint")
    return Simulation(y, op, reference, back)


# ----------------------------------------------------------------------------------------------------------------
# TV-regularised least squares (the classical baseline)


def _grad(x: torch.Tensor) -> torch.Tensor:
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.stack([gx, gy])


def _grad_adjoint(g: torch.Tensor) -> torch.Tensor:
    gx, gy = g[0], g[1]
    out = torch.zeros_like(gx)
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    return out


def operator_norm(operator, measurements: torch.Tensor, iterations: int = 30, seed: int = 0) -> float:
    """Largest singular value of ``operator`` (power iteration on ``A^T A``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(operator.adjoint(measurements[:1]).shape, generator=gen).to(measurements.device)
    norm = 1.0
    for _ in range(iterations):
        x = operator.adjoint(operator.forward(x))
        norm = float(x.norm())
        x = x / max(norm, 1e-12)
    return float(np.sqrt(norm))


def tv_reconstruct(
    operator,
    measurements: torch.Tensor,
    weight: float,
    iterations: int = 300,
    nonnegative: bool = False,
) -> torch.Tensor:
    """TV-regularised least squares by PDHG (Chambolle & Pock 2011):
    ``argmin_x 0.5 ||A x - y||^2 + weight * TV(x)`` with isotropic TV coupled over the image channels.

    ``measurements`` batched ``(B, ...)``; returns ``(B, C, H, W)``. ``nonnegative`` adds ``x >= 0``.
    """
    with torch.no_grad():
        # Solve the equivalent problem with A' = A / c, y' = y / c, weight' = weight / c^2 (c = ||A||), so that
        # the data and TV blocks are balanced: ||[A'; grad]|| <= 3.
        c = operator_norm(operator, measurements.float())
        y = measurements.float() / c
        weight = weight / c**2
        tau = sigma = 1.0 / 3.0
        x = operator.adjoint(y).clone() / c
        x_bar = x.clone()
        p = torch.zeros_like(y)
        q = torch.zeros_like(_grad(x))
        for _ in range(iterations):
            p = (p + sigma * (operator.forward(x_bar) / c - y)) / (1 + sigma)
            q = q + sigma * _grad(x_bar)
            q_norm = q.pow(2).sum(dim=(0, 2), keepdim=True).sqrt()  # over gradient directions and channels
            q = q / torch.clamp(q_norm / weight, min=1.0)
            x_new = x - tau * (operator.adjoint(p) / c + _grad_adjoint(q))
            if nonnegative:
                x_new = x_new.clamp_min(0)
            x_bar = 2 * x_new - x
            x = x_new
    return x


# ----------------------------------------------------------------------------------------------------------------
# Files in, files out (used by the CLI)


def _read_raw(input_path: Path, mask_path: Path | None, views: int | None, arc_deg: float, image_size: int | None):
    """Raw measurements from .h5/.npy: (measurements, operator, modality)."""
    suffix = input_path.suffix.lower()
    if suffix == ".npy":
        array = _load_npy(input_path)
        is_kspace = np.iscomplexobj(array) or (array.ndim >= 4 and array.shape[-1] == 2)
    else:
        is_kspace = True
    if is_kspace:
        kspace, file_mask = load_kspace(input_path)
        mask = load_mask(mask_path) if mask_path else file_mask if file_mask is not None else infer_line_mask(kspace)
        op = CartesianFourier(mask, coils=kspace.shape[1])
        return prepare_measurements(kspace, op, input_path), op, "MR"
    sino = load_sinogram(input_path)
    if views is not None and views != sino.shape[1]:
        raise InputError(f"sinogram has {sino.shape[1]} views but --views {views} was given", input_path)
    detectors = sino.shape[2]
    size = image_size or int((detectors - 2) / np.sqrt(2))
    if size < 8:
        raise InputError(f"sinogram with {detectors} detector bins is too small for an image", input_path)
    op = ParallelBeamRadon(np.linspace(0.0, arc_deg, sino.shape[1], endpoint=False), size, detectors=detectors,
                           subpixels=CT_SUBPIXELS)
    return prepare_measurements(sino, op, input_path), op, "OT"


def reconstruct_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    simulate_kind: str | None = None,
    config: FitConfig | None = None,
    overrides: dict | None = None,
    acceleration: float = 4.0,
    center_fraction: float = 0.08,
    mask_type: str = "equispaced",
    mask_path: str | Path | None = None,
    views: int | None = None,
    arc_deg: float = 180.0,
    missing: float = 0.5,
    image_size: int | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    real_object: bool = False,
) -> str:
    """Reconstruct ``input_path`` into ``output_path`` (image file by extension, else a derived DICOM series).

    Raw data (``.h5``/``.hdf5`` k-space, ``.npy`` k-space or sinogram) is reconstructed as given; with
    ``simulate_kind`` (``"mri"``, ``"ct"``, ``"inpaint"``) the input is any image or DICOM series, measurements
    are simulated from it and the summary gives PSNR/SSIM of the decoder and of the baseline against it.
    ``config`` (default :data:`RECONSTRUCTION_DEFAULTS` for the operator) is updated with ``overrides``.
    ``real_object``: see :func:`simulate`.
    Everything is checked before fitting; the output appears only once complete.
    """
    from .api import derivation_description
    from .io import is_image_path, read_volume, write_image, write_series
    from .metrics import psnr, ssim
    from .pipeline import reconstruct_volume
    from .volume import Volume

    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and (output_path.is_file() or any(output_path.iterdir())):
        raise InputError("output already exists (refusing to overwrite)", output_path)
    if output_path.resolve() == input_path.resolve():
        raise InputError("output is the input (inputs are never modified)", output_path)
    if not input_path.exists():
        raise InputError("path does not exist", input_path)
    raw = input_path.is_file() and input_path.suffix.lower() in (*HDF5_SUFFIXES, ".npy")
    if simulate_kind is None and not raw:
        raise InputError("not raw measurements (.h5/.npy); to simulate from an image use --simulate mri|ct|inpaint",
                         input_path)
    like = None
    seed = (overrides or {}).get("seed", config.seed if config else 0)
    if simulate_kind is not None:
        if raw:
            raise InputError("--simulate needs an image or DICOM series, not raw measurements", input_path)
        like = read_volume(input_path)
        mask = load_mask(mask_path) if mask_path else None
        sim = simulate(like.array, simulate_kind, modality=like.modality, acceleration=acceleration,
                       center_fraction=center_fraction, mask_type=mask_type, mask=mask,
                       views=60 if views is None else views, arc_deg=arc_deg, missing=missing, seed=seed,
                       real_object=real_object)
        measurements, op, modality = sim.measurements, sim.operator, like.modality
    else:
        measurements, op, modality = _read_raw(input_path, Path(mask_path) if mask_path else None, views, arc_deg,
                                               image_size)
    config = replace(config or default_config(op), **(overrides or {}))
    t0 = time.perf_counter()
    report: dict = {}
    result = reconstruct_volume(measurements, op, config, device=device, progress=progress, batch_size=batch_size,
                                report=report)
    seconds = time.perf_counter() - t0
    used = sorted(set(report["architecture"]))
    if len(used) == 1:  # the description names the decoder every slice used
        config = replace(config, architecture=used[0])
    decoders = ", ".join(f"{name} {report['architecture'].count(name)}" for name in used)
    quality = ""
    if simulate_kind is not None:
        with torch.no_grad():
            base = magnitude_image(op, op.baseline(measurements)).numpy()
        span = float(sim.reference.max() - sim.reference.min()) or 1.0
        ref = sim.reference
        quality = (f"; PSNR {psnr(result, ref, span).mean():.2f} dB, SSIM {ssim(result, ref, span).mean():.3f} "
                   f"(baseline {psnr(base, ref, span).mean():.2f} dB, {ssim(base, ref, span).mean():.3f})")
        result = sim.to_input_units(result)
        out_volume = like.with_array(result)
    else:
        out_volume = Volume(result, modality=modality)
    if is_image_path(output_path):
        write_image(out_volume, output_path)
    else:
        description = derivation_description(config).replace("denoising", f"reconstruction ({operator_kind(op)})")
        write_series(out_volume, output_path, series_description="DD reconstruction",
                     derivation_description=description)
    depth, height, width = out_volume.shape
    return (f"reconstructed {depth} slice(s) of {height}x{width} in {seconds:.1f} s (decoder per slice: {decoders})"
            f"{quality}; wrote {output_path}")
