"""Reconstruction on data like users have (issue 32): ``python benchmarks/bench_reconstruct.py --realistic``.

**MRI, simulated multi-coil k-space** (no raw data can be downloaded here). Each clean image is the magnitude of a
real MR slice (pydicom-data's ``MR2_UNCR`` shoulder and ``MR-SIEMENS-DICOM-WithOverlays`` abdomen, slices of the
shared ``example_mr_sm.nii.gz``), padded to a square, resampled to ``--size`` px (default :data:`MRI_SIZE`) and
scaled to a maximum of 1. It becomes a complex image with a smooth synthetic phase (:func:`smooth_phase`), is
multiplied by :data:`COILS` coil sensitivities (``sigpy.mri.birdcage_maps``: coils on a ring of radius
:data:`COIL_RADIUS` half fields of view, normalised to a root-sum-of-squares of 1, so the true magnitude is the
clean image itself), Fourier transformed (centred, orthonormal, as the package and fastMRI) and given complex white
Gaussian noise in every coil: standard deviation (of the complex value) = the mean clean magnitude inside the body
over ``--snr`` (default :data:`SNR`), i.e. the SNR of the fully sampled, optimally coil-combined image. fastMRI-style
line masks (the package's :func:`~dd_medical.core.operators.equispaced_mask` / ``random_mask``, MONAI's
convention: columns are phase encodes) at 4x (8% fully sampled centre) and 8x (4%), a new mask per slice. Each case
is written as a fastMRI ``.h5`` (:func:`write_fastmri_h5`; ``--h5-dir``, else a temporary folder) and the decoder
reads it back with :func:`dd_medical.io.raw.read_raw`, as ``dd-medical reconstruct scan.h5`` does.

**MRI methods.** ``fully sampled RSS``: the noisy fully sampled k-space (the noise ceiling, not a method);
``zero-filled RSS``; with ESPIRiT coil maps (:func:`espirit_maps`, estimated from the fully sampled centre lines):
``SENSE`` (``sigpy.mri.app.SenseRecon``, Tikhonov weight), ``l1-wavelet`` (``L1WaveletRecon``, Daubechies-4) and
``TV`` (``TotalVariationRecon``), iterations :data:`MRI_ITERATIONS`; ``dd-medical``: :func:`dd_medical.reconstruct`
with the ``reconstruct/mri`` defaults on what :func:`~dd_medical.io.raw.read_raw` makes of the ``.h5`` file: one
complex image per slice through ESPIRiT coil maps estimated from the same centre lines
(:class:`~dd_medical.core.operators.sense.SensitivityFourier`); ``--coil-maps none``: every coil image fitted and
combined by root-sum-of-squares (the package's model before SENSE).

**CT, simulated low-dose sparse-view scans.** Each clean slice (HU) is centre-cropped to a square and resampled to
twice ``--size`` (default :data:`CT_SIZE`; sources of 512 px are interpolated up, so the fine grid holds no more
detail than the source, only a different discretisation), converted to attenuation relative to water, projected
with scikit-image's ``radon`` (not the package's projector) at ``V`` views over 180 degrees, resampled onto the
detector of the package's :class:`~dd_medical.core.operators.ParallelBeamRadon` for the ``--size`` grid (bins one
image pixel wide, each the mean over its width; :func:`to_detector` aligns the rotation axes, which scikit-image
puts on a pixel centre and the package on the image centre), scaled to line integrals (water
:data:`MU_WATER_PER_MM` / mm) and turned into counts: ``Poisson(I0 exp(-p))`` plus Gaussian electronic noise of
:data:`ELECTRONIC_COUNTS` counts, clipped to >= 1, ``-log(counts / I0)``, ``I0`` photons per detector bin
(:data:`DOSES`). Views :data:`VIEWS`.

**CT methods.** ``FBP ramp`` / ``FBP Hann``: scikit-image's ``iradon`` (its rotation axis moved onto the package's
by a sub-bin shift of each view, :func:`skimage_fbp`); ``TV``: isotropic TV-regularised least squares with
non-negativity by PDHG (:func:`tv_weighted`: ``benchmarks/baselines.py``'s ``tv_reconstruct`` with data weights in
its proximal step; no library on PyPI runs it on this projector), its data term weighted by the inverse variance of
each ray from its measured count (:func:`count_weights`; ``--ct-weighting none``: one weight for all rays),
:data:`CT_TV_ITERATIONS` iterations; ``dd-medical``: :func:`dd_medical.reconstruct` with the
``reconstruct/ct`` defaults on the same operator weighted by the detected counts as the package weighs a scan's
counts (:meth:`~dd_medical.core.operators.ParallelBeamRadon.with_counts`: rays short of photons count in proportion
to their counts, rays starved of them (under ``STARVED_COUNTS``) not at all, the rest alike;
``--decoder-weighting capped-all``: the starved rays kept, in proportion to their counts; ``counts``: every ray by its
counts, ``ray_weights``; ``none``: every ray alike, as for a sinogram read without its counts).

**Calibration.** Every regularisation weight is chosen on separate calibration images (:func:`mri_images`,
:func:`ct_images`: never a test image; slices of the same shared volumes away from the test slices where the shared
data exist): the weight of the grid with the best mean body PSNR over them, per setting (``calibrated``). The
``oracle`` rows take the best weight on the test slice itself (an upper bound, not a method).

**Scores.** MRI: the magnitude against the true magnitude (data range 1); CT: HU on the [-1000, 1000] window mapped
to [0, 1] (and PSNR on the soft-tissue window [-160, 240]). PSNR and SSIM inside a body mask (they lead: the
background of a magnitude image is noise that no method should be scored on) and over the whole image. Mean +-
standard error over the test slices; wins: slices where dd-medical's body PSNR was higher than the row's.

**Safety rail** (issue 32): with at least two decoders per slice (MRI's default; CT with ``--ensemble 2``),
``dd_medical.reconstruct(..., uncertainty=True)``'s per-pixel spread of the members, averaged over the body and over
the image (also relative to the reconstruction's mean in the body), is recorded per slice with whether the decoder
fell below the cheap baseline (zero-filled; the better of the two FBPs); the record's ``rail`` table says how well the
spread separates those slices.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dd_medical.core.operators import (
    FULL_WEIGHT_COUNTS,
    SUBPIXELS,
    ParallelBeamRadon,
    attenuation_to_hu,
    equispaced_mask,
    hu_to_attenuation,
    random_mask,
)
from dd_medical.simulation import ELECTRONIC_COUNTS, MU_WATER_PER_MM, photon_noise  # noqa: F401 (documented)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# ----------------------------------------------------------------------------------------------------------------
# Settings

MRI_SIZE, CT_SIZE = 320, 512
QUICK_MRI_SIZE, QUICK_CT_SIZE = 48, 32
COILS, QUICK_COILS = 16, 4
#: Radius of the ring of birdcage coils, in half fields of view (``sigpy.mri.birdcage_maps``' ``r``; sigpy's default
#: 1.5 puts the coils far outside the body and gives maps too smooth to unfold much).
COIL_RADIUS = 1.2
#: Clean-image SNR: mean magnitude in the body over the standard deviation of the complex noise of each coil.
SNR = 30.0
ACCELERATIONS = (4, 8)
#: fastMRI's fully sampled centre fraction per acceleration.
CENTRE_FRACTION = {4: 0.08, 8: 0.04}
MASKS = {"equispaced": equispaced_mask, "random": random_mask}
#: sigpy's regularisation weights tried (for images of maximum 1 and orthonormal FFTs): log grids, ~3x apart.
MRI_GRIDS = {
    "SENSE": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    "l1-wavelet": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    "TV": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
}
MRI_ITERATIONS = {"SENSE": 100, "l1-wavelet": 200, "TV": 300}

DOSES = {"1e5 photons": 1e5, "1e4 photons": 1e4}
VIEWS = (60, 120)
#: TV weights tried for CT (attenuation relative to water; data term in units of the noise variance, so about
#: half the number of rays whatever the size and dose).
CT_TV_WEIGHTS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
CT_TV_ITERATIONS = 2000
WIDE, SOFT = (-1000.0, 1000.0), (-160.0, 240.0)

#: Test and calibration slices of the shared volumes (slice indices), in the order ``--slices`` takes them.
MR_VOLUME_TEST, MR_VOLUME_CALIBRATION = (5, 9, 13, 17, 7, 15), (3, 11)
CT_BODY_TEST, CT_HEAD_TEST = (6, 12, 18), (10, 16, 22)
CT_CALIBRATION = (("ct_body_j2k", 2), ("ct_head_gantry_tilt", 4))

MRI_METHODS = ("fully sampled RSS", "zero-filled RSS", "SENSE", "l1-wavelet", "TV", "dd-medical")
CT_METHODS = ("FBP ramp", "FBP Hann", "TV", "dd-medical")
DECODER = "dd-medical"


@dataclass
class Options:
    """What :func:`run_mri` and :func:`run_ct` measure; ``decoder``: :class:`~dd_medical.core.config.FitConfig`
    overrides (``None`` values ignored) of the ``reconstruct/mri`` and ``reconstruct/ct`` defaults."""

    only: str | None = None
    mri_size: int = MRI_SIZE
    ct_size: int = CT_SIZE
    slices: int = 6
    quick: bool = False
    coils: int = COILS
    coil_radius: float = COIL_RADIUS
    snr: float = SNR
    accelerations: tuple[int, ...] = ACCELERATIONS
    masks: tuple[str, ...] = tuple(MASKS)
    views: tuple[int, ...] = VIEWS
    doses: dict[str, float] = field(default_factory=lambda: dict(DOSES))
    mri_grids: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(MRI_GRIDS))
    mri_iterations: dict[str, int] = field(default_factory=lambda: dict(MRI_ITERATIONS))
    ct_tv_weights: tuple[float, ...] = CT_TV_WEIGHTS
    ct_tv_iterations: int = CT_TV_ITERATIONS
    ct_weighting: str = "counts"
    coil_maps: str = "espirit"
    decoder_weighting: str = "capped"
    decoder: dict[str, object] = field(default_factory=dict)
    decoder_rows: bool = True
    workers: int = 1
    device: str = "cpu"
    seed: int = 0
    h5_dir: Path | None = None
    shared: Path = SHARED


def quick_options(**changes: object) -> Options:
    """A smoke run (not a measurement): tiny images, 4 coils, one setting per modality, short grids and fits."""
    base = Options(mri_size=QUICK_MRI_SIZE, ct_size=QUICK_CT_SIZE, slices=1, quick=True, coils=QUICK_COILS,
                   accelerations=(4,), masks=("equispaced",), views=(60,), doses={"1e5 photons": 1e5},
                   mri_grids={k: v[1:3] for k, v in MRI_GRIDS.items()},
                   mri_iterations={k: 20 for k in MRI_ITERATIONS}, ct_tv_weights=(10.0, 30.0), ct_tv_iterations=100,
                   decoder=dict(channels=8, iterations=30))
    for key, value in changes.items():
        setattr(base, key, value)
    return base


# ----------------------------------------------------------------------------------------------------------------
# Data: (name, image) pairs


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(image.astype(np.float64), (size, size), order=1, anti_aliasing=image.shape[0] > size,
                  preserve_range=True).astype(np.float32)


def _square(image: np.ndarray, fill: float) -> np.ndarray:
    """``image`` padded (with ``fill``) to a square about its centre."""
    h, w = image.shape
    n = max(h, w)
    out = np.full((n, n), fill, np.float32)
    out[(n - h) // 2 : (n - h) // 2 + h, (n - w) // 2 : (n - w) // 2 + w] = image
    return out


def magnitude(image: np.ndarray, size: int) -> np.ndarray:
    """A clean MR magnitude ``(size, size)`` float32 of maximum 1 from a stored slice (negative values set to 0,
    padded with 0 to a square, resampled)."""
    out = np.maximum(_resize(_square(np.maximum(image, 0), 0.0), size), 0.0)
    return (out / max(float(out.max()), 1e-12)).astype(np.float32)


def _pydicom_pixels(name: str, frame: int | None = None) -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    pixels = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float32)
    return pixels if frame is None else pixels[frame]


def _mr_volume(shared: Path) -> np.ndarray | None:
    path = shared / "ct_body_j2k_nifti" / "example_mr_sm.nii.gz"
    if not path.is_file():
        return None
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)


def mri_images(size: int, slices: int, quick: bool, shared: Path = SHARED
               ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """``(test, calibration)`` clean magnitudes ``(size, size)`` in [0, 1]: the test slices are ``MR2_UNCR``
    (shoulder), the ``MR-SIEMENS`` abdomen and :data:`MR_VOLUME_TEST` of the shared MR volume (the first ``slices``);
    calibration: :data:`MR_VOLUME_CALIBRATION` of the shared volume (without it, pydicom-data's ``MR_small`` and
    ``emri_small[0]``). ``quick``: the shoulder, calibrated on the abdomen."""
    shoulder = ("MR2_UNCR", magnitude(_pydicom_pixels("MR2_UNCR.dcm"), size))
    abdomen = ("MR-SIEMENS abdomen", magnitude(_pydicom_pixels("MR-SIEMENS-DICOM-WithOverlays.dcm"), size))
    if quick:
        return [shoulder], [abdomen]
    volume = _mr_volume(shared)
    if volume is None:
        print(f"{shared}/ct_body_j2k_nifti/example_mr_sm.nii.gz not found: MRI calibrated on MR_small, emri_small")
        calibration = [("MR_small", magnitude(_pydicom_pixels("MR_small.dcm"), size)),
                       ("emri_small[0]", magnitude(_pydicom_pixels("emri_small.dcm", 0), size))]
        return [shoulder, abdomen][:slices], calibration
    test = [shoulder, abdomen] + [(f"example_mr_sm[{z}]", magnitude(volume[z], size)) for z in MR_VOLUME_TEST]
    calibration = [(f"example_mr_sm[{z}]", magnitude(volume[z], size)) for z in MR_VOLUME_CALIBRATION]
    return test[:slices], calibration


def _fine_hu(hu: np.ndarray, spacing_mm: float, size: int) -> tuple[np.ndarray, float]:
    """A CT slice centre-cropped to a square and resampled to ``2 size`` px; the reconstruction grid's pixel (mm)."""
    n = min(hu.shape)
    top, left = (hu.shape[0] - n) // 2, (hu.shape[1] - n) // 2
    fine = _resize(np.maximum(hu[top : top + n, left : left + n], -1000.0), 2 * size)
    return fine, spacing_mm * n / size


def _pydicom_ct(name: str, frame: int | None = None) -> tuple[np.ndarray, float]:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file(name))
    if frame is None:
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        return hu, float(ds.PixelSpacing[0])
    groups = ds.SharedFunctionalGroupsSequence[0]
    transform = groups.PixelValueTransformationSequence[0]
    hu = ds.pixel_array[frame].astype(np.float32) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    return hu, float(groups.PixelMeasuresSequence[0].PixelSpacing[0])


def ct_images(size: int, slices: int, quick: bool, shared: Path = SHARED
              ) -> tuple[list[tuple[str, np.ndarray, float]], list[tuple[str, np.ndarray, float]]]:
    """``(test, calibration)`` as ``(name, fine HU (2 size, 2 size), pixel mm of the size grid)``: test slices
    ``693_UNCR`` and the shared body and head CTs (:data:`CT_BODY_TEST`, :data:`CT_HEAD_TEST`, alternating; the
    first ``slices``), calibration :data:`CT_CALIBRATION` (without the shared data: ``eCT_Supplemental``'s two
    frames). ``quick``: ``CT_small``, calibrated on ``693_UNCR``."""
    first = ("693_UNCR", *_fine_hu(*_pydicom_ct("693_UNCR.dcm"), size))
    if quick:
        return [("CT_small", *_fine_hu(*_pydicom_ct("CT_small.dcm"), size))], [first]
    from dd_medical.io import read_volume

    volumes = {name: read_volume(shared / name) for name in ("ct_body_j2k", "ct_head_gantry_tilt")
               if (shared / name).is_dir()}
    if len(volumes) < 2:
        print(f"{shared} CT volumes not found: CT tested on 693_UNCR alone, calibrated on eCT_Supplemental")
        calibration = [(f"eCT_Supplemental[{f}]", *_fine_hu(*_pydicom_ct("eCT_Supplemental.dcm", f), size))
                       for f in (0, 1)]
        return [first], calibration

    def take(name: str, z: int) -> tuple[str, np.ndarray, float]:
        vol = volumes[name]
        return (f"{name}[{z}]", *_fine_hu(vol.array[z], float(vol.spacing[0]), size))

    order = [("ct_body_j2k", z) for z in CT_BODY_TEST]
    order = [x for pair in zip(order, [("ct_head_gantry_tilt", z) for z in CT_HEAD_TEST], strict=True) for x in pair]
    test = [first] + [take(*item) for item in order[: max(slices - 1, 0)]]
    return test[:slices], [take(*item) for item in CT_CALIBRATION]


# ----------------------------------------------------------------------------------------------------------------
# MRI simulation


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2D FFT over the last two axes (the package's, fastMRI's and sigpy's convention)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def ifft2c(k: np.ndarray) -> np.ndarray:
    """The inverse of :func:`fft2c`."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def coil_maps(coils: int, size: int, radius: float = COIL_RADIUS) -> np.ndarray:
    """Birdcage coil sensitivities ``(coils, size, size)`` complex64 (``sigpy.mri.birdcage_maps``), normalised to a
    root-sum-of-squares of 1 at every pixel."""
    import sigpy.mri

    maps = sigpy.mri.birdcage_maps((coils, size, size), r=radius)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(axis=0))).astype(np.complex64)


def smooth_phase(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth phase ``(size, size)`` in radians: a random constant plus a random second-order polynomial of the
    coordinates (in [-1, 1]) with coefficients up to pi / 2 (so up to about +-pi across the field of view)."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    a = rng.uniform(-1, 1, 4) * math.pi / 2
    return rng.uniform(-math.pi, math.pi) + a[0] * x + a[1] * y + a[2] * x * y + a[3] * (x**2 - y**2)


def mr_body_mask(truth: np.ndarray) -> np.ndarray:
    """The body of a clean magnitude ``(N, N)``: smoothed magnitude above 5% of its 99th percentile, largest
    component, holes filled."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(truth, max(1.0, truth.shape[0] / 128))
    labels, n = ndimage.label(smooth > 0.05 * np.percentile(truth, 99))
    if not n:
        return np.ones(truth.shape, bool)
    sizes = ndimage.sum(np.ones_like(truth), labels, range(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


@dataclass
class MriCase:
    """One simulated scan: ``kspace`` ``(coils, N, N)`` complex64 (measured lines only, zeros elsewhere), the noisy
    fully sampled k-space ``full``, the line ``mask`` ``(N,)`` 0/1, the clean magnitude ``truth``, its ``body``
    mask, the noise standard deviation ``sigma`` and the fully sampled centre lines."""

    name: str
    kspace: np.ndarray
    full: np.ndarray
    mask: np.ndarray
    truth: np.ndarray
    body: np.ndarray
    sigma: float
    centre_lines: int
    acceleration: float


def simulate_mri(name: str, truth: np.ndarray, maps: np.ndarray, acceleration: int, mask_kind: str, snr: float,
                 seed: int) -> MriCase:
    """Multi-coil k-space of ``truth`` ``(N, N)`` (see the module docstring); ``seed`` draws the phase, the mask and
    the noise."""
    rng = np.random.default_rng(seed)
    size = truth.shape[-1]
    image = truth * np.exp(1j * smooth_phase(size, rng))
    body = mr_body_mask(truth)
    sigma = float(truth[body].mean()) / snr
    clean = fft2c(maps * image[None])
    noise = rng.standard_normal((2, *clean.shape)) * (sigma / math.sqrt(2))
    full = (clean + noise[0] + 1j * noise[1]).astype(np.complex64)
    fraction = CENTRE_FRACTION.get(acceleration, 0.08)
    mask = MASKS[mask_kind](size, acceleration, fraction, seed)
    return MriCase(name, (full * mask[None, None, :]).astype(np.complex64), full, mask, truth, body, sigma,
                   int(round(size * fraction)), float(acceleration))


def rss(coil_images: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares magnitude over the first axis (coils)."""
    return np.sqrt((np.abs(coil_images) ** 2).sum(axis=0)).astype(np.float32)


def _ismrmrd_header(height: int, width: int, centre: int) -> bytes:
    size = f"<matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>"
    fov = f"<fieldOfView_mm><x>{height}</x><y>{width}</y><z>1</z></fieldOfView_mm>"
    return ('<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
            f"<encoding><encodedSpace>{size}{fov}</encodedSpace><reconSpace>{size}{fov}</reconSpace>"
            f"<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{width - 1}</maximum>"
            f"<center>{centre}</center></kspace_encoding_step_1></encodingLimits></encoding>"
            "</ismrmrdHeader>").encode()


def write_fastmri_h5(path: Path, kspace: np.ndarray, mask: np.ndarray, *, acceleration: float, centre_lines: int,
                     reconstruction_rss: np.ndarray | None = None) -> Path:
    """Write k-space ``(slices, coils, H, W)`` complex as a fastMRI-style HDF5 file (atomically): ``kspace``
    complex64, ``mask`` ``(W,)`` bool, ``ismrmrd_header`` (the matrix size and the centre line), optionally
    ``reconstruction_rss`` ``(slices, H, W)`` float32, and the attributes ``acquisition``, ``acceleration``,
    ``num_low_frequency`` (and ``max``/``norm`` of the RSS). No patient attribute."""
    import h5py

    from dd_medical.io.atomic import atomic_output_file

    kspace = np.asarray(kspace, np.complex64)
    if kspace.ndim != 4 or np.asarray(mask).shape != (kspace.shape[-1],):
        raise ValueError(f"k-space must be (slices, coils, H, W) with a (W,) mask, got {kspace.shape} and "
                         f"{np.asarray(mask).shape}")
    with atomic_output_file(path, overwrite=True) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("mask", data=np.asarray(mask) != 0)
        f.create_dataset("ismrmrd_header", data=_ismrmrd_header(kspace.shape[2], kspace.shape[3],
                                                                kspace.shape[3] // 2))
        f.attrs["acquisition"] = "simulated multi-coil (benchmarks/realistic.py)"
        f.attrs["acceleration"] = float(acceleration)
        f.attrs["num_low_frequency"] = int(centre_lines)
        if reconstruction_rss is not None:
            target = np.asarray(reconstruction_rss, np.float32)
            f.create_dataset("reconstruction_rss", data=target)
            f.attrs["max"] = float(target.max())
            f.attrs["norm"] = float(np.linalg.norm(target))
    return Path(path)


# ----------------------------------------------------------------------------------------------------------------
# MRI baselines (sigpy)


def espirit_maps(kspace: np.ndarray, centre_lines: int) -> np.ndarray:
    """ESPIRiT coil maps ``(coils, H, W)`` complex of undersampled k-space ``(coils, H, W)`` from its ``centre_lines``
    central columns: the package's :func:`~dd_medical.core.operators.sense.espirit_slice` (sigpy's algorithm with a
    rectangular calibration region)."""
    from dd_medical.core.operators.sense import espirit_slice

    first = kspace.shape[-1] // 2 - centre_lines // 2
    return espirit_slice(kspace, first, first + centre_lines)


def sigpy_recon(method: str, kspace: np.ndarray, maps: np.ndarray, mask: np.ndarray, weight: float,
                iterations: int) -> np.ndarray:
    """The magnitude ``(H, W)`` of sigpy's ``SenseRecon`` / ``L1WaveletRecon`` / ``TotalVariationRecon``
    (``method`` "SENSE", "l1-wavelet", "TV") of ``kspace`` ``(coils, H, W)`` with ``maps`` and the line ``mask``;
    the same inputs give the same result (sigpy's random start is seeded)."""
    import sigpy.mri.app as app

    cls = {"SENSE": app.SenseRecon, "l1-wavelet": app.L1WaveletRecon, "TV": app.TotalVariationRecon}[method]
    weights = np.broadcast_to(mask[None, :], kspace.shape[1:]).astype(np.float32)
    state = np.random.get_state()  # sigpy's step size: a power iteration from numpy's global random start
    np.random.seed(0)
    try:
        result = cls(kspace.astype(np.complex128), maps.astype(np.complex128), lamda=weight, weights=weights,
                     max_iter=iterations, show_pbar=False).run()
    finally:
        np.random.set_state(state)
    return np.abs(result).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# CT simulation and baselines


def angles(views: int) -> np.ndarray:
    """``views`` angles evenly over 180 degrees (degrees)."""
    return np.linspace(0.0, 180.0, views, endpoint=False)


def ct_operator(size: int, views: int) -> ParallelBeamRadon:
    """The operator ``dd-medical`` reconstructs with, as :func:`dd_medical.io.raw.read_raw` builds it for a
    sinogram: :data:`~dd_medical.core.operators.SUBPIXELS` sub-pixels, the default detector count."""
    return ParallelBeamRadon(angles(views), size, subpixels=SUBPIXELS)


def fine_sinogram(fine: np.ndarray, views: int) -> np.ndarray:
    """scikit-image's ``radon`` ``(bins, views)`` of a fine image ``(2N, 2N)`` (in fine pixels)."""
    from skimage.transform import radon

    return radon(fine.astype(np.float64), angles(views), circle=False)


def to_detector(fine_sino: np.ndarray, size: int, views: int, detectors: int, axis_offset: float = 0.25
                ) -> np.ndarray:
    """The fine sinogram ``(bins, views)`` of a ``2 size`` px image on the detector of :func:`ct_operator`:
    ``(views, detectors)`` line integrals in pixels of the ``size`` grid, each bin the mean over its width.

    scikit-image rotates about the centre of fine pixel ``size`` (``axis_offset`` = 1/4 of a coarse pixel right and
    below the image centre, the package's axis); a point at ``u`` on the package's detector is at
    ``2 (u - axis_offset (cos t - sin t))`` fine bins from scikit-image's centre bin. ``axis_offset=0`` ignores it
    (the geometry check's misaligned case).
    """
    bins = fine_sino.shape[0]
    u = np.arange(detectors) - (detectors - 1) / 2
    j = np.arange(bins) - bins // 2
    out = np.zeros((views, detectors))
    for v, theta in enumerate(np.deg2rad(angles(views))):
        centre = 2 * (u - axis_offset * (math.cos(theta) - math.sin(theta)))
        column = fine_sino[:, v]
        out[v] = 0.25 * (np.interp(centre - 0.5, j, column, left=0, right=0)
                         + np.interp(centre + 0.5, j, column, left=0, right=0))  # mean of 2 fine bins x 1/2 px
    return out


def measure(line: np.ndarray, photons: float, pixel_mm: float, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """Noisy line integrals (same units as ``line``, relative attenuation x pixels) and the detected counts."""
    noisy, counts = photon_noise(torch.from_numpy(np.asarray(line, np.float64))[None, None], photons, pixel_mm, rng)
    return noisy[0, 0].numpy(), counts[0]


def _shift_views(sino: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``out[v, j] = sino[v, j + shifts[v]]`` by a Fourier shift along the detector (zero-padded)."""
    n = sino.shape[1]
    size = int(2 ** np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(sino, n=size, axis=1) * np.exp(2j * np.pi * np.fft.rfftfreq(size)[None] * shifts[:, None])
    return np.fft.irfft(spectrum, n=size, axis=1)[:, :n]


def skimage_fbp(sino: np.ndarray, size: int, filter_name: str = "ramp", align: bool = True) -> np.ndarray:
    """scikit-image's ``iradon`` ``(size, size)`` of a sinogram ``(views, detectors)`` in the package's geometry.

    ``iradon`` puts the rotation axis on pixel ``size // 2`` and the detector centre on bin ``detectors // 2``; each
    view is shifted by the difference first (``align=False``: not, the geometry check's misaligned case)."""
    from skimage.transform import iradon

    views, detectors = sino.shape
    theta = np.deg2rad(angles(views))
    e = (size - 1) / 2 - size // 2
    shifts = -e * (np.cos(theta) - np.sin(theta)) + (detectors - 1) / 2 - detectors // 2
    aligned = _shift_views(sino, shifts) if align else sino
    return iradon(aligned.T, angles(views), output_size=size, filter_name=filter_name.lower(), circle=False
                  ).astype(np.float32)


def tv_weighted(operator, measurements: torch.Tensor, data_weights: torch.Tensor | None, weight: float,
                iterations: int, nonnegative: bool = True) -> torch.Tensor:
    """``argmin_x 0.5 sum_i w_i ((A x)_i - y_i)^2 + weight * TV(x)`` (isotropic TV, ``x >= 0`` if ``nonnegative``):
    ``baselines.tv_reconstruct`` with the data weights ``w`` (``None``: all 1). Returns ``(B, C, H, W)``."""
    from baselines import tv_reconstruct

    return tv_reconstruct(operator, measurements, weight, iterations, nonnegative, data_weights=data_weights)


def count_weights(counts: np.ndarray, photons: float, pixel_mm: float, weighted: bool = True) -> np.ndarray:
    """Data weights ``(views, detectors)`` of line integrals measured as ``counts``: the inverse variance of each,
    ``counts (mu_water pixel_mm)^2`` (the variance of ``-log(counts / I0)`` is about ``1 / counts``), so that the data
    term is about half the number of rays whatever the dose and size. ``weighted=False``: every ray gets the mean of
    those over the rays that crossed the object (fewer than 90% of ``photons`` detected), an unweighted data term
    on the same scale."""
    inverse_variance = counts.astype(np.float64) * (MU_WATER_PER_MM * pixel_mm) ** 2
    if weighted:
        return inverse_variance.astype(np.float32)
    through = counts < 0.9 * photons
    level = float(inverse_variance[through].mean()) if through.any() else float(inverse_variance.mean())
    return np.full(counts.shape, level, np.float32)


def decoder_operator(operator: ParallelBeamRadon, counts: np.ndarray, weighting: str) -> ParallelBeamRadon:
    """The decoder rows' forward model of a scan's ``counts`` (:data:`DECODER_WEIGHTING`)."""
    if weighting == "capped":
        return operator.with_counts(counts)
    if weighting == "capped-all":
        return operator.with_ray_weights(np.minimum(counts, FULL_WEIGHT_COUNTS))
    return operator.with_ray_weights(counts if weighting == "counts" else None)


def tv_ct(operator: ParallelBeamRadon, sino: np.ndarray, weights: np.ndarray | None, weight: float, iterations: int,
          device: torch.device) -> np.ndarray:
    """Isotropic TV with non-negativity ``(N, N)`` (relative attenuation) of ``sino`` ``(views, detectors)``
    (:func:`tv_weighted`; ``weights``: :func:`count_weights`, or ``None``: all 1)."""
    y = torch.from_numpy(np.asarray(sino, np.float32))[None, None].to(device)
    w = None if weights is None else torch.from_numpy(np.asarray(weights, np.float32))[None, None].to(device)
    return tv_weighted(operator, y, w, weight, iterations)[0, 0].cpu().numpy()


def geometry_check(fine_hu: np.ndarray, size: int, views: int, operator: ParallelBeamRadon | None = None) -> dict:
    """How well the simulated scan matches the package's operator, noise-free: the relative L2 difference between
    the simulated sinogram and the operator's projection of the reference (``aligned``; ``misaligned``: rotation axes
    not aligned, :func:`to_detector` with ``axis_offset=0``), and the PSNR (dB, data range of the reference, relative
    attenuation) of the reference's FBPs: the operator's ramp FBP of the simulated sinogram, scikit-image's aligned
    and not aligned (:func:`skimage_fbp`)."""
    from dd_medical.metrics import psnr

    op = operator or ct_operator(size, views)
    fine = hu_to_attenuation(fine_hu)
    reference = fine.reshape(size, 2, size, 2).mean(axis=(1, 3))
    sino_fine = fine_sinogram(fine, views)
    line = to_detector(sino_fine, size, views, op.detectors)
    shifted = to_detector(sino_fine, size, views, op.detectors, axis_offset=0.0)
    with torch.no_grad():
        projected = op.forward(torch.from_numpy(reference)[None, None])[0, 0].numpy()
        op_fbp = op.fbp(torch.from_numpy(line.astype(np.float32))[None, None])[0, 0].numpy()
    span = float(reference.max() - reference.min())

    def score(image: np.ndarray) -> float:
        return float(psnr(image[None], reference[None], span)[0])

    return {"views": views, "size": size,
            "sinogram_difference_aligned": float(np.linalg.norm(line - projected) / np.linalg.norm(projected)),
            "sinogram_difference_misaligned": float(np.linalg.norm(shifted - projected) / np.linalg.norm(projected)),
            "fbp_psnr_operator": score(op_fbp), "fbp_psnr_skimage": score(skimage_fbp(line, size)),
            "fbp_psnr_skimage_misaligned": score(skimage_fbp(line, size, align=False))}


def ct_body_mask(reference_hu: np.ndarray) -> np.ndarray:
    """Anatomy above -500 HU, largest component, holes filled (``benchmarks/lowdose.py``'s body mask)."""
    from lowdose import _body_mask

    return _body_mask(reference_hu[None])[0]


# ----------------------------------------------------------------------------------------------------------------
# Scores


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return 10 * math.log10(1.0 / max(float(np.mean((a[mask] - b[mask]) ** 2)), 1e-12))


def _ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    _, full = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0, full=True)
    return float(full[mask].mean())


def scores(image: np.ndarray, truth: np.ndarray, body: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM (data range 1) of ``image`` against ``truth`` inside ``body`` and over the whole image."""
    everywhere = np.ones(truth.shape, bool)
    return {"psnr_body": _psnr(image, truth, body), "ssim_body": _ssim(image, truth, body),
            "psnr_image": _psnr(image, truth, everywhere), "ssim_image": _ssim(image, truth, everywhere)}


def _window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.clip((hu - low) / (high - low), 0.0, 1.0)


def ct_scores(hu: np.ndarray, reference_hu: np.ndarray, body: np.ndarray) -> dict[str, float]:
    """:func:`scores` on the [-1000, 1000] HU window in [0, 1], and ``psnr_soft_body`` on [-160, 240] HU."""
    out = scores(_window(hu, WIDE), _window(reference_hu, WIDE), body)
    out["psnr_soft_body"] = _psnr(_window(hu, SOFT), _window(reference_hu, SOFT), body)
    return out


# ----------------------------------------------------------------------------------------------------------------
# The decoder


def decoder_config(task: str, options: Options):
    """The :class:`~dd_medical.core.config.FitConfig` of ``dd-medical``: the task's defaults with
    ``options.decoder``'s overrides, and ``ensemble=2`` in a quick CT run (so that the spread is exercised)."""
    from dd_medical import presets

    overrides = dict(options.decoder)
    if options.quick and task == "reconstruct/ct":
        overrides.setdefault("ensemble", 2)
    return presets.resolve(task, seed=options.seed, **overrides)


def _members(config) -> int:
    return config.ensemble * (2 if config.architecture == "both" else 1)


def run_decoder(measurements, operator, config, device: str) -> tuple[np.ndarray, np.ndarray | None, float, dict]:
    """``dd_medical.reconstruct`` of one slice: ``(image (H, W), members' spread (H, W) or None, seconds, check)``;
    ``check``: the reconstruction check's data misfit, disagreement and flag (``check_misfit``,
    ``check_disagreement``, ``flagged``)."""
    import dd_medical

    t0 = time.perf_counter()
    result, check = dd_medical.reconstruct(measurements, operator, config=config, device=device, progress=False,
                                           uncertainty=_members(config) >= 2, report=True)
    seconds = time.perf_counter() - t0
    image, spread = result if isinstance(result, tuple) else (result, None)
    (only,) = check.slices
    figures = {"check_misfit": only.excess, "check_disagreement": only.disagreement, "flagged": only.unreliable}
    return np.asarray(image)[0], None if spread is None else np.asarray(spread)[0], seconds, figures


def _rail(spread: np.ndarray | None, image: np.ndarray, body: np.ndarray, unit: float) -> dict[str, float | None]:
    """The spread's mean in the body and over the image (``unit`` converts to the reported unit), and relative to
    the reconstruction's mean in the body."""
    if spread is None:
        return {"spread_body": None, "spread_image": None, "spread_relative": None}
    mean = float(np.abs(image[body]).mean())
    return {"spread_body": float(spread[body].mean()) * unit, "spread_image": float(spread.mean()) * unit,
            "spread_relative": float(spread[body].mean()) / mean if mean > 0 else None}


# ----------------------------------------------------------------------------------------------------------------
# The runs


def _print(row: dict) -> None:
    weight = "" if row.get("weight") is None else f" w={row['weight']:g}"
    spread = "" if row.get("spread_relative") is None else f"  spread {100 * row['spread_relative']:.2f}%"
    print(f"    {row['role'][:5]} {row['image']:<24} {row['method'] + weight:<26} body PSNR {row['psnr_body']:6.2f} "
          f"SSIM {row['ssim_body']:.3f} | image {row['psnr_image']:6.2f} / {row['ssim_image']:.3f}  "
          f"{row['seconds']:7.1f} s{spread}", flush=True)


def _timed_recon(task: tuple) -> tuple[np.ndarray, float]:
    """:func:`sigpy_recon` of ``task`` (its arguments) and its seconds (a pool's unit of work)."""
    t0 = time.perf_counter()
    image = sigpy_recon(*task)
    return image, time.perf_counter() - t0


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[object]:
    """A process pool of ``workers`` (spawned) for the sigpy grids, or ``None`` for one worker."""
    if workers <= 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@contextlib.contextmanager
def _h5_folder(options: Options) -> Iterator[Path]:
    if options.h5_dir is not None:
        options.h5_dir.mkdir(parents=True, exist_ok=True)
        yield options.h5_dir
        return
    with tempfile.TemporaryDirectory(prefix="realistic_h5_") as folder:
        yield Path(folder)


def run_mri(options: Options, checkpoint: Callable[[list[dict], list[dict]], None] | None = None
            ) -> tuple[list[dict], list[dict]]:
    """MRI: ``(rows, grid)``; rows of the test slices (baselines without weights and the decoder), grid rows of the
    weighted baselines at every weight (calibration and test slices). ``checkpoint(rows, grid)`` after every image."""
    from dd_medical.io.raw import read_raw

    size = options.mri_size
    test, calibration = mri_images(size, options.slices, options.quick, options.shared)
    maps_true = coil_maps(options.coils, size, options.coil_radius)
    rows: list[dict] = []
    grid: list[dict] = []
    print(f"\nMRI {size} px, {options.coils} coils, SNR {options.snr:g}; test {[n for n, _ in test]}, calibration "
          f"{[n for n, _ in calibration]}", flush=True)
    with _h5_folder(options) as folder, _pool(options.workers) as pool:
        for acceleration in options.accelerations:
            for kind in options.masks:
                setting = f"MRI {acceleration}x {kind}"
                print(f"  {setting}", flush=True)
                images = [("calibration", i, n, m) for i, (n, m) in enumerate(calibration)]
                images += [("test", i, n, m) for i, (n, m) in enumerate(test)]
                for role, index, name, truth in images:
                    seed = options.seed * 100_000 + acceleration * 1000 + (100 if kind == "random" else 0) + index
                    seed += 50 if role == "calibration" else 0
                    case = simulate_mri(name, truth, maps_true, acceleration, kind, options.snr, seed)
                    base = dict(modality="MRI", setting=setting, role=role, image=name, size=size,
                                coils=options.coils, snr=options.snr, sigma=case.sigma,
                                acceleration_measured=float(case.mask.size / case.mask.sum()))

                    def add(target: list[dict], method: str, image: np.ndarray, seconds: float, case=case,
                            base=base, **extra: object) -> dict:
                        row = dict(base, method=method, seconds=seconds, **scores(image, case.truth, case.body),
                                   **extra)
                        target.append(row)
                        _print(row)
                        return row

                    if role == "test":
                        add(rows, "fully sampled RSS", rss(ifft2c(case.full)), 0.0)
                        t0 = time.perf_counter()
                        zero = rss(ifft2c(case.kspace))
                        add(rows, "zero-filled RSS", zero, time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    maps = espirit_maps(case.kspace, case.centre_lines)
                    espirit_seconds = time.perf_counter() - t0
                    tasks = [(method, case.kspace, maps, case.mask, weight, options.mri_iterations[method])
                             for method, weights in options.mri_grids.items() for weight in weights]
                    results = pool.map(_timed_recon, tasks) if pool is not None else map(_timed_recon, tasks)
                    for (method, *_, weight, _), (image, seconds) in zip(tasks, results, strict=True):
                        add(grid, method, image, seconds + espirit_seconds, weight=weight)
                    if role == "test" and options.decoder_rows:
                        path = folder / f"mri_{acceleration}x_{kind}_{index}.h5"
                        write_fastmri_h5(path, case.kspace[None], case.mask, acceleration=acceleration,
                                         centre_lines=case.centre_lines,
                                         reconstruction_rss=rss(ifft2c(case.full))[None])
                        measurements, operator, _ = read_raw(path, coil_maps=options.coil_maps)
                        config = decoder_config(f"reconstruct/{operator.kind}", options)
                        image, spread, seconds, check = run_decoder(measurements, operator, config, options.device)
                        add(rows, DECODER, image, seconds, **_rail(spread, image, case.body, 1.0), **check)
                    if checkpoint is not None:
                        checkpoint(rows, grid)
    return rows, grid


def run_ct(options: Options, checkpoint: Callable[[list[dict], list[dict]], None] | None = None,
           checks: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """CT: ``(rows, grid)`` as :func:`run_mri`; one :func:`geometry_check` per view count on the first test slice,
    appended to ``checks``."""
    from dd_medical.pipeline import on_device, resolve_device

    size = options.ct_size
    test, calibration = ct_images(size, options.slices, options.quick, options.shared)
    config = decoder_config("reconstruct/ct", options)
    dev = resolve_device(options.device)
    rows: list[dict] = []
    grid: list[dict] = []
    checks = [] if checks is None else checks
    print(f"\nCT {size} px (scanned at {2 * size}); test {[n for n, *_ in test]}, calibration "
          f"{[n for n, *_ in calibration]}", flush=True)
    for views in options.views:
        t0 = time.perf_counter()
        op = ct_operator(size, views)
        print(f"  {views} views: operator built in {time.perf_counter() - t0:.0f} s", flush=True)
        checks.append(geometry_check(test[0][1], size, views, op))
        print(f"    geometry: {checks[-1]}", flush=True)
        images = [("calibration", i, *c) for i, c in enumerate(calibration)]
        images += [("test", i, *c) for i, c in enumerate(test)]
        for role, index, name, fine_hu, pixel_mm in images:
            fine = hu_to_attenuation(fine_hu)
            reference_hu = attenuation_to_hu(fine.reshape(size, 2, size, 2).mean(axis=(1, 3)))
            body = ct_body_mask(reference_hu)
            line = to_detector(fine_sinogram(fine, views), size, views, op.detectors)
            for dose, photons in options.doses.items():
                setting = f"CT {views} views {dose}"
                rng = np.random.default_rng([options.seed, views, int(photons), index, int(role == "test")])
                sino, counts = measure(line, photons, pixel_mm, rng)
                base = dict(modality="CT", setting=setting, role=role, image=name, size=size, views=views,
                            photons=photons, pixel_mm=pixel_mm)

                def add(target: list[dict], method: str, mu: np.ndarray, seconds: float, base=base,
                        reference_hu=reference_hu, body=body, **extra: object) -> dict:
                    row = dict(base, method=method, seconds=seconds,
                               **ct_scores(attenuation_to_hu(np.maximum(mu, 0.0)), reference_hu, body), **extra)
                    target.append(row)
                    _print(row)
                    return row

                if role == "test":
                    for filter_name in ("ramp", "Hann"):
                        t0 = time.perf_counter()
                        add(rows, f"FBP {filter_name}", skimage_fbp(sino, size, filter_name),
                            time.perf_counter() - t0)
                with on_device(op, dev):
                    for weight in options.ct_tv_weights:
                        t0 = time.perf_counter()
                        weights = count_weights(counts, photons, pixel_mm, options.ct_weighting == "counts")
                        mu = tv_ct(op, sino, weights, weight, options.ct_tv_iterations, dev)
                        add(grid, "TV", mu, time.perf_counter() - t0, weight=weight)
                if role == "test" and options.decoder_rows:
                    model = decoder_operator(op, counts, options.decoder_weighting)
                    mu, spread, seconds, check = run_decoder(sino[None, None], model, config, options.device)
                    add(rows, DECODER, mu, seconds, **_rail(spread, mu, body, 1000.0), **check)
            if checkpoint is not None:
                checkpoint(rows, grid)
    return rows, grid


# ----------------------------------------------------------------------------------------------------------------
# Calibration, summary


def pick(grid: list[dict]) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """The ``(calibrated)`` and ``(oracle)`` rows of the test slices from the grid rows, and the calibrated weights
    ``{setting: {method: weight}}``: calibrated = the weight with the best mean body PSNR over the calibration
    images of the setting; oracle = the best on the test slice itself."""
    rows, chosen = [], {}
    for setting, method in dict.fromkeys((r["setting"], r["method"]) for r in grid):
        mine = [r for r in grid if r["setting"] == setting and r["method"] == method]
        calibration = [r for r in mine if r["role"] == "calibration"]
        weights = list(dict.fromkeys(r["weight"] for r in mine))
        best = None
        if calibration:
            mean = {w: np.mean([r["psnr_body"] for r in calibration if r["weight"] == w]) for w in weights}
            best = max((w for w in weights if not np.isnan(mean[w])), key=mean.get, default=None)
        if best is not None:
            chosen.setdefault(setting, {})[method] = best
        for image in dict.fromkeys(r["image"] for r in mine if r["role"] == "test"):
            tests = {r["weight"]: r for r in mine if r["role"] == "test" and r["image"] == image}
            oracle = max(tests.values(), key=lambda r: r["psnr_body"])
            rows.append(dict(oracle, method=f"{method} (oracle)", at_grid_edge=oracle["weight"] in
                             (min(weights), max(weights))))
            if best is not None and best in tests:
                rows.append(dict(tests[best], method=f"{method} (calibrated)",
                                 at_grid_edge=best in (min(weights), max(weights))))
    return rows, chosen


def _mean_se(values: list[float], spec: str) -> str:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return ""
    if len(v) == 1:
        return format(v[0], spec)
    return f"{format(v.mean(), spec)} ± {format(v.std(ddof=1) / math.sqrt(len(v)), spec)}"


SUMMARY_COLUMNS = ("setting", "method", "n", "PSNR body (dB)", "SSIM body", "PSNR image (dB)", "SSIM image",
                   "weight", "s / slice", "dd-medical wins (body PSNR)")


def _order(methods: tuple[str, ...]) -> list[str]:
    out = []
    for m in methods:
        out += [f"{m} (calibrated)", f"{m} (oracle)"] if m in ("SENSE", "l1-wavelet", "TV") else [m]
    return out


def summarise(rows: list[dict]) -> list[list]:
    """One row per setting and method: mean +- standard error over the test slices, the weight (calibrated: the one
    chosen; oracle: the range picked; "grid edge" when a pick is the smallest or largest weight tried: the grid
    should be widened), seconds, and how often dd-medical's body PSNR beat the row's."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        ours = {r["image"]: r["psnr_body"] for r in mine if r["method"] == DECODER}
        order = _order(MRI_METHODS if setting.startswith("MRI") else CT_METHODS)
        for method in order + sorted({r["method"] for r in mine} - set(order)):
            these = [r for r in mine if r["method"] == method]
            if not these:
                continue
            picked = sorted({r["weight"] for r in these if r.get("weight") is not None})
            weight = "" if not picked else format(picked[0], "g") if len(picked) == 1 else \
                f"{picked[0]:g}-{picked[-1]:g}"
            if any(r.get("at_grid_edge") for r in these):
                weight += " (grid edge)"
            pairs = [(ours[r["image"]], r["psnr_body"]) for r in these if r["image"] in ours]
            wins = "" if method == DECODER or not pairs else f"{sum(a > b for a, b in pairs)}/{len(pairs)}"
            cell = lambda key, spec, these=these: _mean_se([r.get(key) for r in these], spec)  # noqa: E731
            out.append([setting, method, len(these), cell("psnr_body", ".2f"), cell("ssim_body", ".3f"),
                        cell("psnr_image", ".2f"), cell("ssim_image", ".3f"), weight, cell("seconds", ".1f"),
                        wins])
    return out


RAIL_WHAT = ("The safety rail: per setting, the test slices where dd-medical's body PSNR fell below the cheap "
             "baseline's (zero-filled; the better FBP), how many of those and of the others the reconstruction "
             "check flagged as unreliable, and (with two or more decoders per slice) the members' spread.")
RAIL_COLUMNS = ("setting", "slices", "below baseline", "flagged: below", "flagged: others",
                "spread, below (% of mean)", "spread, others (% of mean)", "AUC (spread flags below)",
                "Spearman (spread vs gain)")


def _baseline_psnr(rows: list[dict], setting: str, image: str) -> float | None:
    names = ("zero-filled RSS",) if setting.startswith("MRI") else ("FBP ramp", "FBP Hann")
    values = [r["psnr_body"] for r in rows if r["setting"] == setting and r["image"] == image and r["method"] in names]
    return max(values) if values else None


def flag_below_baseline(rows: list[dict]) -> None:
    """Set ``below_baseline`` and ``gain_db`` (body PSNR over the cheap baseline: zero-filled; the better FBP) on
    every decoder row."""
    for r in rows:
        if r["method"] == DECODER:
            base = _baseline_psnr(rows, r["setting"], r["image"])
            r["gain_db"] = None if base is None else r["psnr_body"] - base
            r["below_baseline"] = None if base is None else bool(r["psnr_body"] < base)


def rail(rows: list[dict]) -> list[list]:
    """Per setting: slices, how many fell below the baseline, how many of those and of the others the reconstruction
    check flagged (``k/n``), the relative spread of both, the AUC of the relative spread as a detector of "below"
    (1: every below slice spreads more than every other one), and the Spearman correlation of the spread with the
    gain (negative: more spread, less gain); the spread's columns are empty with one decoder per slice."""
    from scipy.stats import spearmanr

    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        ours = [r for r in rows if r["setting"] == setting and r["method"] == DECODER
                and r.get("below_baseline") is not None]
        if not ours:
            continue
        flags = [f"{sum(bool(r.get('flagged')) for r in group)}/{len(group)}" if group else ""
                 for group in ([r for r in ours if r["below_baseline"]], [r for r in ours if not r["below_baseline"]])]
        spread = [r for r in ours if r.get("spread_relative") is not None]
        below = [100 * r["spread_relative"] for r in spread if r["below_baseline"]]
        others = [100 * r["spread_relative"] for r in spread if not r["below_baseline"]]
        auc = ""
        if below and others:
            auc = format(np.mean([(b > o) + 0.5 * (b == o) for b in below for o in others]), ".2f")
        rho = ""
        if len(spread) >= 3:
            value = spearmanr([r["spread_relative"] for r in spread], [r["gain_db"] for r in spread]).statistic
            rho = "" if not np.isfinite(value) else format(float(value), "+.2f")
        out.append([setting, len(ours), sum(r["below_baseline"] for r in ours), *flags, _mean_se(below, ".2f"),
                    _mean_se(others, ".2f"), auc, rho])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--realistic (multi-coil MRI and low-dose CT, benchmarks/realistic.py)")
    group.add_argument("--realistic", action="store_true",
                       help="the realistic benchmark: multi-coil MRI (fastMRI-style .h5), low-dose sparse-view CT, "
                            "calibrated baselines (--only mri|ct, --size, --slices, --quick); --json auto: "
                            "benchmarks/measured/reconstruction_realistic[_mri|_ct]_<machine>.json")
    group.add_argument("--slices", type=int, default=None, help="test slices per modality (default 6; --quick 1)")
    group.add_argument("--quick", action="store_true",
                       help="a smoke run: 48 px MRI with 4 coils and 32 px CT, one setting each, short fits")
    group.add_argument("--coils", type=int, default=None, help=f"MRI coils (default {COILS}; --quick {QUICK_COILS})")
    group.add_argument("--coil-radius", type=float, default=COIL_RADIUS,
                       help=f"MRI: radius of the coil ring in half fields of view (default {COIL_RADIUS:g})")
    group.add_argument("--snr", type=float, default=SNR, help=f"MRI clean-image SNR (default {SNR:g})")
    group.add_argument("--accelerations", type=int, nargs="+", default=None, help="MRI accelerations (default 4 8)")
    group.add_argument("--masks", nargs="+", choices=list(MASKS), default=None, help="MRI masks (default both)")
    group.add_argument("--photons", type=float, nargs="+", default=None,
                       help="CT photons per detector bin (default 1e5 1e4)")
    group.add_argument("--tv-iterations", type=int, default=None,
                       help=f"CT TV-PDHG iterations (default {CT_TV_ITERATIONS})")
    group.add_argument("--ct-weighting", choices=("counts", "none"), default="counts",
                       help="CT TV data term: weighted by the measured counts (default) or not")
    group.add_argument("--decoder-weighting", choices=tuple(DECODER_WEIGHTING), default="capped",
                       help="CT decoder: rays short of photons weighted by their counts, starved ones left out, the "
                            "rest alike (ParallelBeamRadon.with_counts, the default); the same with the starved rays "
                            "kept (capped-all); every ray by its counts (ray_weights); or every ray alike (a sinogram "
                            "read without its counts)")
    group.add_argument("--coil-maps", choices=("espirit", "none"), default="espirit",
                       help="MRI decoder: one complex image through ESPIRiT coil maps (SENSE, the package's model for "
                            "multi-coil k-space), or every coil image fitted and combined by root-sum-of-squares")
    group.add_argument("--workers", type=int, default=1,
                       help="processes that run the MRI baselines' weight grids side by side (sigpy runs on the CPU, "
                            "one core each; default 1)")
    group.add_argument("--no-decoder", action="store_true",
                       help="baselines only (to re-run or extend them; the decoder's rows are the slow part)")
    group.add_argument("--h5-dir", type=Path, default=None,
                       help="keep the simulated MRI scans here as fastMRI .h5 files (default: a temporary folder)")
    group.add_argument("--note", default="", help="a sentence appended to the record's description")


WHAT_MRI = ("simulated multi-coil MRI ({coils} coils, complex noise at SNR {snr:g}, fastMRI-style masks, {mri} px) "
            "from real slices, with sigpy's zero-filled, SENSE, l1-wavelet and TV (ESPIRiT maps)")
WHAT_CT = ("simulated low-dose sparse-view CT (Poisson counts plus electronic noise, projected with scikit-image from "
           "a grid twice as fine, {ct} px) from real slices, with scikit-image FBP and count-weighted TV-PDHG")
DECODER_WEIGHTING = {"capped": "rays weighted by their counts capped at 100, rays under 30 counts left out "
                                "(ParallelBeamRadon.with_counts)",
                     "capped-all": "rays weighted by their counts capped at 100, starved rays kept",
                     "counts": "every ray weighted by its counts", "none": "every ray alike"}
WHAT = ("Calibrated rows take the weight best on separate calibration images; oracle rows the best on the test slice "
        "(upper bounds). Scores inside the body lead; mean ± standard error over the test slices; the last column "
        "counts the slices where dd-medical's body PSNR was higher.")


def what(options: Options) -> str:
    """The record's description of what was run (only the modalities of ``options.only``)."""
    parts = [t for k, t in (("mri", WHAT_MRI), ("ct", WHAT_CT)) if options.only in (None, k)]
    text = " and ".join(parts).format(coils=options.coils, snr=options.snr, mri=options.mri_size, ct=options.ct_size)
    if options.only in (None, "ct"):
        text += f"; dd-medical's CT data term: {DECODER_WEIGHTING[options.decoder_weighting]}"
    return f"{text[0].upper()}{text[1:]}. {WHAT}"


def options_from(args: argparse.Namespace) -> Options:
    """:class:`Options` from the parsed command line of ``bench_reconstruct.py``."""
    options = quick_options() if args.quick else Options()
    if args.only == "inpaint":
        raise SystemExit("--realistic runs mri and ct only")
    options.only = args.only
    if args.size is not None:
        options.mri_size = options.ct_size = args.size
    if args.slices is not None:
        options.slices = args.slices
    if args.coils is not None:
        options.coils = args.coils
    options.snr, options.coil_radius = args.snr, args.coil_radius
    if args.accelerations:
        options.accelerations = tuple(args.accelerations)
    if args.masks:
        options.masks = tuple(args.masks)
    if args.views:
        options.views = tuple(args.views)
    if args.photons:
        options.doses = {f"{p:.0e} photons".replace("e+0", "e"): p for p in args.photons}
    if args.tv_iterations is not None:
        options.ct_tv_iterations = args.tv_iterations
    options.ct_weighting, options.coil_maps = args.ct_weighting, args.coil_maps
    options.decoder_weighting = args.decoder_weighting
    architecture = None if args.architectures == "default" else args.architectures
    if architecture is not None and architecture not in ("deep", "conv", "both"):
        raise SystemExit("--realistic takes one of --architectures default, deep, conv or both")
    options.decoder = {**options.decoder, **{k: v for k, v in (("iterations", args.iterations),
                                                               ("ensemble", args.ensemble),
                                                               ("architecture", architecture)) if v is not None}}
    options.device, options.seed, options.h5_dir = args.device, args.seed, args.h5_dir
    options.decoder_rows, options.workers = not args.no_decoder, args.workers
    return options


def main(args: argparse.Namespace, argv: list[str] | None) -> None:
    from machine import json_path, machine_description, machine_tag, write_json

    options = options_from(args)
    torch.set_num_threads(args.threads)
    name = "reconstruction_realistic" + (f"_{options.only}" if options.only else "") + ("_quick" if options.quick
                                                                                          else "")
    json_file = json_path(args.json, name, options.device)
    print(f"machine: {machine_description(options.device)}")
    t_start = time.perf_counter()
    sizes = {"mri": f"MRI {options.mri_size} px", "ct": f"CT {options.ct_size} px"}
    title = "Reconstruction on realistic data: " + ", ".join(v for k, v in sizes.items() if options.only in (None, k))
    if options.quick:
        title += " (quick smoke run, not a measurement)"
    done: dict[str, tuple[list[dict], list[dict]]] = {}
    checks: list[dict] = []

    def record() -> dict:
        rows = [r for part in done.values() for r in part[0]]
        grid = [r for part in done.values() for r in part[1]]
        picked, chosen = pick(grid)
        rows = rows + picked
        flag_below_baseline(rows)
        clean = lambda r: {k: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
                           for k, v in r.items()}
        described = what(options)
        rail_rows = rail(rows)
        tables = [dict(what=RAIL_WHAT, columns=list(RAIL_COLUMNS), rows=rail_rows)] if rail_rows else []
        return dict(title=title, topic="reconstruction", lead=not options.quick,
                    what=described + (f" {args.note}" if args.note else ""), machine=machine_tag(options.device),
                    source="benchmarks/realistic.py", columns=list(SUMMARY_COLUMNS), rows=summarise(rows),
                    rail_columns=list(RAIL_COLUMNS), rail_rows=rail_rows, tables=tables, calibrated_weights=chosen,
                    geometry=checks, options={k: (str(v) if isinstance(v, Path) else v)
                                              for k, v in asdict(options).items()},
                    decoder={task: asdict(decoder_config(task, options))
                             for task in ("reconstruct/mri", "reconstruct/sense", "reconstruct/ct")},
                    raw=[clean(r) for r in rows], grid=[clean(r) for r in grid])

    def save(key: str) -> Callable[[list[dict], list[dict]], None]:
        def checkpoint(rows: list[dict], grid: list[dict]) -> None:
            done[key] = (rows, grid)
            write_json(json_file, record(), options.device, argv)
        return checkpoint

    if options.only in (None, "mri"):
        done["mri"] = run_mri(options, save("mri"))
    if options.only in (None, "ct"):
        done["ct"] = run_ct(options, save("ct"), checks)
    final = record()
    print("\n| " + " | ".join(SUMMARY_COLUMNS) + " |\n|" + "---|" * len(SUMMARY_COLUMNS))
    for row in final["rows"]:
        print("| " + " | ".join(str(c) for c in row) + " |")
    if final["rail_rows"]:
        print("\n| " + " | ".join(RAIL_COLUMNS) + " |\n|" + "---|" * len(RAIL_COLUMNS))
        for row in final["rail_rows"]:
            print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"calibrated weights: {final['calibrated_weights']}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if json_file is not None:
        write_json(json_file, final, options.device, argv)
        print(f"wrote {json_file}")
