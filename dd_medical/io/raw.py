"""Raw measurements from files: k-space (fastMRI HDF5, ``.npy``), sinograms and masks (``.npy``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core.operators import SUBPIXELS, ForwardModel, ParallelBeamRadon
from ..core.operators.sense import kspace_model
from ..errors import InputError

HDF5_SUFFIXES = (".h5", ".hdf5")
RAW_SUFFIXES = (*HDF5_SUFFIXES, ".npy")


def is_raw_path(path: str | Path) -> bool:
    """Whether ``path`` is a file whose extension marks raw measurements (:data:`RAW_SUFFIXES`)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in RAW_SUFFIXES


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


def read_raw(
    path: str | Path,
    *,
    mask_path: str | Path | None = None,
    views: int | None = None,
    arc_deg: float = 180.0,
    image_size: int | None = None,
    coil_maps: str = "espirit",
    counts_path: str | Path | None = None,
) -> tuple[torch.Tensor, ForwardModel, str]:
    """Raw measurements and their forward model from a file: ``(measurements, operator, modality)``.

    k-space (``.h5``/``.hdf5`` fastMRI, complex ``.npy`` or real ``.npy`` with a last axis of 2) is sampled with the
    mask of ``mask_path``, else the file's, else the sampled columns (:func:`infer_line_mask`); modality ``"MR"``.
    Its model is :func:`~dd_medical.core.operators.sense.kspace_model`'s: for multi-coil k-space one complex image
    per slice through ESPIRiT coil sensitivities from the fully sampled centre columns (needs sigpy: the ``mri``
    extra), unless ``coil_maps="none"``; for one coil (or ``"none"``) every coil image fitted and combined by
    root-sum-of-squares. A real ``.npy`` sinogram ``(D, views, detectors)`` gives a
    :class:`ParallelBeamRadon` with ``views`` (must match the file) evenly over ``arc_deg`` degrees and an image of
    ``image_size`` (default: the largest square the detector covers), with :data:`SUBPIXELS`; modality ``"OT"``.
    ``counts_path``: a sinogram's detected photon counts, ``.npy`` of the sinogram's shape (or one
    ``(views, detectors)`` for every slice): its rays are weighted by them
    (:meth:`~dd_medical.core.operators.ParallelBeamRadon.with_counts`).
    """
    input_path, mask_path = Path(path), None if mask_path is None else Path(mask_path)
    if not input_path.exists():
        raise InputError("path does not exist", input_path)
    if input_path.suffix.lower() not in RAW_SUFFIXES:
        raise InputError("raw measurements must be .h5/.hdf5 (fastMRI k-space) or .npy (k-space or sinogram)",
                         input_path)
    suffix = input_path.suffix.lower()
    if suffix == ".npy":
        array = _load_npy(input_path)
        is_kspace = np.iscomplexobj(array) or (array.ndim >= 4 and array.shape[-1] == 2)
    else:
        is_kspace = True
    if is_kspace:
        kspace, file_mask = load_kspace(input_path)
        mask = load_mask(mask_path) if mask_path else file_mask if file_mask is not None else infer_line_mask(kspace)
        try:
            op = kspace_model(kspace, mask, coil_maps)
        except InputError as err:
            raise InputError(err.problem, input_path) from None
        return op.prepare(kspace, input_path), op, "MR"
    sino = load_sinogram(input_path)
    if views is not None and views != sino.shape[1]:
        raise InputError(f"sinogram has {sino.shape[1]} views but --views {views} was given", input_path)
    detectors = sino.shape[2]
    size = image_size or int((detectors - 2) / np.sqrt(2))
    if size < 8:
        raise InputError(f"sinogram with {detectors} detector bins is too small for an image", input_path)
    op = ParallelBeamRadon(np.linspace(0.0, arc_deg, sino.shape[1], endpoint=False), size, detectors=detectors,
                           subpixels=SUBPIXELS)
    if counts_path is not None:
        op = _with_counts(op, Path(counts_path), sino.shape)
    return op.prepare(sino, input_path), op, "OT"


def _with_counts(op: ParallelBeamRadon, path: Path, shape: tuple[int, ...]) -> ParallelBeamRadon:
    """``op`` weighted by the counts in ``path`` (``.npy``, real, the sinogram's ``shape`` or one slice's)."""
    if not path.exists():
        raise InputError("path does not exist", path)
    if path.suffix.lower() != ".npy":
        raise InputError("counts must be a .npy array", path)
    counts = _load_npy(path)
    if np.iscomplexobj(counts) or tuple(counts.shape) not in (tuple(shape), tuple(shape[1:])):
        raise InputError(f"counts must be real, of the sinogram's shape {tuple(shape)} or {tuple(shape[1:])}; got "
                         f"{counts.dtype} {counts.shape}", path)
    try:
        return op.with_counts(counts)
    except InputError as err:
        raise InputError(err.problem, path) from None
