"""A benchmark that looks like a scanner (issue 28): ``python benchmarks/bench_quality.py --lowdose``.

**Scan.** Each clean slice (HU) is the anatomy on a grid twice as fine as the image the methods see. Low-contrast
lesions are planted in it first (below). It is converted to attenuation relative to water
(:func:`~dd_medical.core.operators.hu_to_attenuation`), forward-projected with scikit-image's ``radon`` (an
interpolating projector, not the package's ``ParallelBeamRadon``) over ``round(pi / 2 * N)`` views of 180 degrees
(``N``: the image size; detector bins one fine pixel wide), scaled to line integrals (water 0.02 / mm), and turned
into counts: ``Poisson(I0 exp(-p))`` plus Gaussian electronic noise of :data:`ELECTRONIC_COUNTS` counts, clipped to
>= 1, ``-log(counts / I0)``. Pairs of detector bins are averaged (bins one image pixel wide) and scikit-image's
``iradon`` reconstructs the ``N x N`` image with the ramp filter (FBP), back to HU. The same pipeline without noise
gives the noise-free FBP (used only for the oracle noise spectrum). ``I0`` (photons per ray): 1e5 and 2e4.

**Scored against the anatomy**, the image the scan was simulated from (block-averaged to the image grid), inside a
body mask (anatomy above -500 HU, largest component, holes filled): PSNR and SSIM on the [-1000, 1000] HU window and
on the soft-tissue window [-160, 240] HU (both mapped to [0, 1]; SSIM averaged over the mask); the lesion contrast
kept (%: lesion mean minus the mean of a 2-6 px ring of soft tissue around it, over the same in the anatomy) and
CNR (that contrast over the ring's standard deviation); the mean-HU bias in fat and in soft tissue (eroded masks of
the anatomy); seconds per slice.

**Lesions.** In every slice, :data:`LESIONS` (diameter mm, contrast HU) are placed at random (fixed seed per slice)
in homogeneous soft tissue of the anatomy (10-110 HU smoothed, room for the ring); in volumes they are spheres that
reach the neighbouring slices. The phantom brings its own liver lesions (:func:`dd_medical.phantom.make_phantom`),
spheres that need several slices: a stack of 2 slices has none.

**Methods**, all on the [-1000, 1000] window in [0, 1]:

* ``dd-medical``: the package defaults (``FitConfig()``), slice by slice; ``dd-medical slab 5``: volumes only,
  each decoder fits 5 adjacent slices.
* ``BM3D`` / ``BM4D`` given the noise power spectrum: ``estimated PSD`` from the noisy image alone
  (:func:`estimated_psd`), ``oracle PSD`` from the true noise of the same scan (:func:`oracle_psd`, an oracle);
  ``BM3D (white, estimated sigma)``: the white-noise use the earlier benchmarks made.
* ``TV``: scikit-image's Chambolle TV; ``anisotropic diffusion``: SimpleITK's curvature anisotropic diffusion (3D
  Slicer's denoiser). ``calibrated``: the parameter with the best mean PSNR on the *other* datasets at the same dose
  (on the other slices when only one dataset runs); ``oracle``: the best on the test slice itself (an oracle).

Mean +- standard error over slices x seeds, and win counts of dd-medical against each baseline (PSNR, wide window).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from resample import block_mean

from dd_medical.core.config import FitConfig
from dd_medical.core.intensity import Window
from dd_medical.core.operators import attenuation_to_hu, hu_to_attenuation
from dd_medical.simulation import ELECTRONIC_COUNTS, MU_WATER_PER_MM, photon_counts  # noqa: F401 (documented)

DOSES = {"1e5 photons": 1e5, "2e4 photons": 2e4}
WIDE, SOFT = Window(-1000.0, 1000.0), Window(-160.0, 240.0)
#: Planted lesions per slice: (diameter in mm, contrast in HU).
LESIONS = ((8.0, -10.0), (6.0, -15.0), (5.0, 20.0))
TISSUE_RANGE_HU = (10.0, 110.0)
RING_PX = (2, 6)
TV_WEIGHTS = (0.004, 0.008, 0.012, 0.018, 0.025, 0.035, 0.05, 0.07, 0.1)
DIFFUSION_GRID = tuple((c, i) for c in (0.5, 1.0, 2.0) for i in (2, 5, 10, 20))
SEEDS = (0, 1, 2)
#: The FBP filter (scikit-image's ``iradon``): the ramp keeps the most detail, and the most noise.
FILTER = "ramp"
DATASET_NAMES = ("ct_body_j2k", "ct_head_gantry_tilt", "693_UNCR", "eCT_Supplemental", "phantom", "CT_small")
#: Method names ``--methods`` can pick (prefixes of the rows' names).
FAMILIES = ("dd-medical", "dd-medical slab 5", "BM3D", "BM4D", "TV", "anisotropic diffusion")


@dataclass
class Case:
    """Clean anatomy ``fine`` (D, 2N, 2N) HU on the fine grid, its pixel size (mm), slice distance (mm, ``None``
    for a stack of unrelated slices), and lesion masks on the image grid (filled by :func:`prepare`)."""

    name: str
    fine: np.ndarray
    pixel_mm: float
    slice_mm: float | None
    lesions: np.ndarray | None = None  # (D, N, N) int: 0 none, k > 0 lesion k
    planted: dict[int, float] = field(default_factory=dict)  # lesion label -> planted contrast (HU)
    anatomy: np.ndarray | None = None  # (D, N, N) HU, the fine anatomy (with lesions) block-averaged
    body: np.ndarray | None = None
    tissue: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Data


def _block(image: np.ndarray, factor: int) -> np.ndarray:
    return (image if factor == 1 else block_mean(image, factor)).astype(np.float32)


def _to_fine(hu: np.ndarray, pixel_mm: float, size: int) -> tuple[np.ndarray, float]:
    """Centre-crop ``(D, H, W)`` to a square and block-average it to ``2 size`` px (an integer factor)."""
    hu = hu if hu.ndim == 3 else hu[None]
    n = min(hu.shape[-2:])
    top, left = (hu.shape[-2] - n) // 2, (hu.shape[-1] - n) // 2
    hu = hu[:, top : top + n, left : left + n]
    factor = n // (2 * size)
    if factor < 1 or n % (2 * size):
        crop = 2 * size * max(factor, 1)
        off = (n - crop) // 2
        hu, n = hu[:, off : off + crop, off : off + crop], crop
        factor = max(factor, 1)
    return _block(hu, factor), pixel_mm * factor


def load_cases(size: int, slices: int, quick: bool, shared: Path) -> list[Case]:
    """The clean datasets on a ``2 size`` px fine grid: the shared body CT (a volume of ``slices`` slices), the
    shared head CT (``slices`` slices), pydicom-data's 512 px CT slices (693_UNCR, eCT_Supplemental) and the phantom;
    ``quick``: CT_small and a 2-slice phantom only."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_rescale

    from dd_medical.phantom import PIXEL_MM, SLICE_MM, make_phantom

    cases = []
    if quick:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)[None]
        cases.append(Case("CT_small", *_to_fine(hu, float(ds.PixelSpacing[0]), size), None))
    else:
        for name in ("ct_body_j2k", "ct_head_gantry_tilt"):
            folder = shared / name
            if not folder.exists():
                print(f"{folder} not found: skipped")
                continue
            from dd_medical.io import read_volume

            vol = read_volume(folder)
            first = max(0, vol.shape[0] // 2 - slices // 2)
            fine, pixel = _to_fine(vol.array[first : first + slices], float(vol.spacing[0]), size)  # (x, y, z)
            cases.append(Case(name, fine, pixel, float(vol.spacing[2]) if name == "ct_body_j2k" else None))
        ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
        hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)[None]
        cases.append(Case("693_UNCR", *_to_fine(hu, float(ds.PixelSpacing[0]), size), None))
        ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
        groups = ds.SharedFunctionalGroupsSequence[0]
        frames = ds.pixel_array.astype(np.float32)
        transform = groups.PixelValueTransformationSequence[0]
        hu = frames * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
        cases.append(Case("eCT_Supplemental", *_to_fine(hu, float(groups.PixelMeasuresSequence[0].PixelSpacing[0]),
                                                         size), None))
    phantom = make_phantom(depth=2 if quick else slices, size=2 * size, seed=0)
    case = Case("phantom", phantom.hu.astype(np.float32), PIXEL_MM, SLICE_MM)  # 0.7 mm at any size
    labels = np.zeros(phantom.hu.shape, np.int32)
    for key, mask in phantom.masks.items():
        if key.startswith("lesion_") and mask.any():
            labels[mask] = int(key.split("_")[1]) + 1
            case.planted[int(key.split("_")[1]) + 1] = float(phantom.lesions[int(key.split("_")[1])].contrast_hu)
    case.lesions = labels  # the phantom's own lesions: spheres, placed only where the slices hold them
    cases.append(case)
    return cases


def _body_mask(anatomy: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    out = np.zeros(anatomy.shape, bool)
    for k, image in enumerate(anatomy):
        labels, n = ndimage.label(image > -500)
        if n:
            sizes = ndimage.sum(np.ones_like(image), labels, range(1, n + 1))
            out[k] = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    return out


def _disk_cover(shape: tuple[int, int], cy: float, cx: float, radius: float) -> np.ndarray:
    """Fraction of each pixel inside the disk (4 x 4 sub-samples per pixel)."""
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    yy = np.arange(shape[0])[:, None, None, None] + sub[None, None, :, None]
    xx = np.arange(shape[1])[None, :, None, None] + sub[None, None, None, :]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).mean(axis=(2, 3))


def prepare(case: Case, seed: int = 0) -> None:
    """Plant :data:`LESIONS` (real data), then the image-grid anatomy, body and tissue masks of ``case``."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    depth, n = case.fine.shape[0], case.fine.shape[-1] // 2
    if case.lesions is None:  # real data: plant lesions in homogeneous soft tissue
        case.lesions = np.zeros((depth, n, n), np.int32)
        coarse = _block(case.fine, 2)
        smooth = ndimage.gaussian_filter(coarse, (0, 1.5, 1.5))
        local_std = np.sqrt(np.maximum(ndimage.uniform_filter(coarse**2, (1, 9, 9))
                                       - ndimage.uniform_filter(coarse, (1, 9, 9)) ** 2, 0))
        tissue = (smooth > TISSUE_RANGE_HU[0]) & (smooth < TISSUE_RANGE_HU[1]) & (local_std < 25)
        label = 0
        pixel = 2 * case.pixel_mm
        for k in range(depth):
            for diameter, contrast in LESIONS:
                radius = diameter / 2 / pixel  # image pixels
                room = ndimage.binary_erosion(tissue[k] & (case.lesions[k] == 0),
                                              iterations=int(math.ceil(radius)) + RING_PX[1] + 1)
                candidates = np.argwhere(room)
                if not len(candidates):
                    continue
                cy, cx = candidates[rng.integers(len(candidates))]
                label += 1
                case.planted[label] = contrast
                reach = 0 if case.slice_mm is None else int(diameter / 2 // case.slice_mm)
                for dz in range(-reach, reach + 1):
                    z = k + dz
                    if not 0 <= z < depth:
                        continue
                    r = math.sqrt(max((diameter / 2) ** 2 - (dz * (case.slice_mm or 0)) ** 2, 0)) / pixel
                    if r < 0.75:
                        continue
                    cover = _disk_cover((2 * n, 2 * n), 2 * cy + 0.5, 2 * cx + 0.5, 2 * r)
                    case.fine[z] += contrast * cover
                    core = _disk_cover((n, n), cy, cx, r) >= 1.0
                    case.lesions[z][core & (case.lesions[z] == 0)] = label
    else:  # the phantom's masks are on the fine grid: a lesion pixel of the image is one of 4 fine lesion pixels
        fine = case.lesions
        labels = np.zeros((depth, n, n), np.int32)
        for lab in case.planted:
            core = _block((fine == lab).astype(np.float32), 2) >= 1.0
            labels[core] = lab
        case.lesions = labels
    case.anatomy = _block(case.fine, 2)
    case.body = _body_mask(case.anatomy)
    smooth = ndimage.gaussian_filter(case.anatomy, (0, 1, 1))
    erode = ndimage.generate_binary_structure(2, 1)[None]
    case.tissue = {
        "fat": ndimage.binary_erosion((smooth > -150) & (smooth < -50) & case.body, erode, 2),
        "soft tissue": ndimage.binary_erosion((smooth > 10) & (smooth < 90) & case.body & (case.lesions == 0),
                                              erode, 2),
    }


# ----------------------------------------------------------------------------------------------------------------
# Scan


def _views(n: int) -> np.ndarray:
    return np.linspace(0.0, 180.0, int(round(math.pi / 2 * n)), endpoint=False)


def sinogram(case: Case) -> np.ndarray:
    """Line integrals ``(D, bins, views)`` (dimensionless) of the fine anatomy, scikit-image's radon."""
    from skimage.transform import radon

    theta = _views(case.fine.shape[-1] // 2)
    scale = MU_WATER_PER_MM * case.pixel_mm
    return np.stack([radon(np.maximum(hu_to_attenuation(s), 0.0), theta, circle=False) * scale for s in case.fine])


def scan(case: Case, line: np.ndarray, photons: float | None, seed: int) -> np.ndarray:
    """The ramp-filtered FBP ``(D, N, N)`` in HU of ``line`` (noise-free if ``photons`` is ``None``)."""
    from skimage.transform import iradon

    n = case.fine.shape[-1] // 2
    theta = _views(n)
    if photons is not None:
        rng = np.random.default_rng(seed)
        line = -np.log(photon_counts(line, photons, rng) / photons)
    bins = line.shape[1] // 2 * 2
    coarse = line[:, :bins].reshape(line.shape[0], bins // 2, 2, line.shape[2]).mean(axis=2)
    mu = np.stack([iradon(s, theta, output_size=n, filter_name=FILTER, circle=False) for s in coarse])
    return attenuation_to_hu(mu / (2 * case.pixel_mm) / MU_WATER_PER_MM).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Noise power spectra (bm3d's convention: E|fft2(noise)|^2, whose mean is the variance x the pixel count)


def _smooth_periodic(psd: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(psd, sigma, mode="wrap")


def oracle_psd(noise: np.ndarray, body: np.ndarray) -> np.ndarray:
    """An oracle: the noise spectrum inside the body, from the true noise ``(D, N, N)`` of this very scan: the mean
    periodogram of the noise times the body mask ``(D, N, N)``, over the body's share of the image (the noise of
    FBP is stronger through the body than in the air around it), smoothed over 2 frequency bins."""
    masked = noise * body
    return _smooth_periodic(np.mean(np.abs(np.fft.fft2(masked)) ** 2, axis=0) / max(float(body.mean()), 1e-6), 2.0)


#: :func:`estimated_psd`: tile side in pixels, and the quantile of the tiles' periodograms taken at each frequency.
PSD_TILE, PSD_QUANTILE = 16, 0.1


def estimated_psd(noisy: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The noise spectrum ``(N, N)`` from the noisy images ``(D, N, N)`` alone: at every frequency, the
    :data:`PSD_QUANTILE` quantile over the half-overlapping :data:`PSD_TILE`-px tiles inside the body (each minus its
    least-squares plane) of their periodograms, over ``-ln(1 - q)`` (that quantile of an exponential variable over
    its mean), smoothed, and scaled to the image's size. A low quantile leaves out the tiles where an edge or texture
    adds power at that frequency; where few tiles are free of structure (sharp, low-noise images) it still
    over-estimates: the records give the ratio to the oracle's (``psd_estimate_ratio``)."""
    from scipy import ndimage

    n, patch = noisy.shape[-1], PSD_TILE
    yy, xx = np.mgrid[:patch, :patch].astype(np.float64)
    basis = np.stack([np.ones_like(yy).ravel(), yy.ravel(), xx.ravel()], 1)
    tiles = [image[top : top + patch, left : left + patch]
             for image, mask in zip(noisy, body, strict=True)
             for top in range(0, n - patch + 1, patch // 2)
             for left in range(0, n - patch + 1, patch // 2)
             if mask[top : top + patch, left : left + patch].all()]
    if not tiles:
        raise ValueError("no tile of the image lies inside the body: cannot estimate the noise spectrum")
    flat = np.stack(tiles).astype(np.float64).reshape(len(tiles), -1)
    flat -= flat @ np.linalg.pinv(basis).T @ basis.T  # each tile minus its least-squares plane
    periodograms = np.abs(np.fft.fft2(flat.reshape(-1, patch, patch))) ** 2
    level = np.quantile(periodograms, PSD_QUANTILE, axis=0) / -np.log1p(-PSD_QUANTILE)
    small = np.fft.fftshift(_smooth_periodic(level, 1.0))
    big = ndimage.zoom(small, n / patch, order=1, mode="nearest", grid_mode=True)
    return np.fft.ifftshift(big) * (n * n) / (patch * patch)


# ----------------------------------------------------------------------------------------------------------------
# Scores


def _ssim_in(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(np.mean([structural_similarity(x, y, data_range=1.0, full=True)[1][m].mean()
                          for x, y, m in zip(a, b, mask, strict=True) if m.any()]))


def _psnr_in(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean([10 * math.log10(1.0 / max(float(np.mean((x[m] - y[m]) ** 2)), 1e-12))
                          for x, y, m in zip(a, b, mask, strict=True) if m.any()]))


def lesion_scores(image: np.ndarray, case: Case, soft: np.ndarray) -> tuple[list[float], list[float]]:
    """Per lesion: contrast in ``image`` over the same in the anatomy (%), and CNR."""
    from scipy import ndimage

    kept, cnrs = [], []
    for lab, _contrast in case.planted.items():
        lesion = case.lesions == lab
        if lesion.sum() < 1:
            continue
        struct = ndimage.generate_binary_structure(2, 1)[None]
        ring = (ndimage.binary_dilation(lesion, struct, RING_PX[1]) & ~ndimage.binary_dilation(lesion, struct,
                                                                                               RING_PX[0]))
        ring &= soft & (case.lesions == 0)
        if ring.sum() < 8:
            continue
        reference = float(case.anatomy[lesion].mean() - case.anatomy[ring].mean())
        if abs(reference) < 3:
            continue
        contrast = float(image[lesion].mean() - image[ring].mean())
        kept.append(100.0 * contrast / reference)
        std = float(image[ring].std())
        cnrs.append(contrast * math.copysign(1, reference) / std if std > 1e-6 else float("nan"))
    return kept, cnrs


def score(image_hu: np.ndarray, case: Case, scan_hu: np.ndarray) -> dict:
    """The scores of a ``(D, N, N)`` HU image against ``case``'s anatomy (see the module docstring), and
    ``psnr_scan``: the wide-window PSNR against the noise-free FBP ``scan_hu`` (denoising alone: the FBP's own blur
    and streaks are not held against the method)."""
    from scipy import ndimage

    soft_tissue = ndimage.gaussian_filter(case.anatomy, (0, 1, 1))
    soft_mask = (soft_tissue > -20) & (soft_tissue < 140)
    out = {}
    for name, window in (("wide", WIDE), ("soft", SOFT)):
        a, b = window.to_unit(image_hu), window.to_unit(case.anatomy)
        out[f"psnr_{name}"] = _psnr_in(a, b, case.body)
        out[f"ssim_{name}"] = _ssim_in(a, b, case.body)
    out["psnr_scan"] = _psnr_in(WIDE.to_unit(image_hu), WIDE.to_unit(scan_hu), case.body)
    kept, cnrs = lesion_scores(image_hu, case, soft_mask)
    out["lesion_kept_pct"] = float(np.mean(kept)) if kept else None
    out["cnr"] = float(np.nanmean(cnrs)) if cnrs else None
    for tissue, mask in case.tissue.items():
        out[f"bias_{tissue.replace(' ', '_')}_hu"] = (float(image_hu[mask].mean() - case.anatomy[mask].mean())
                                                      if mask.sum() >= 20 else None)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Methods: each maps the noisy [0, 1] stack (D, N, N) to a denoised one


def decoder(config: FitConfig, device: str) -> Callable[[np.ndarray], np.ndarray]:
    from dd_medical.pipeline import denoise_volume

    return lambda noisy: denoise_volume(noisy, config, device=device, progress=False, window=Window(0.0, 1.0))


def _numpy2_shim() -> None:
    """bm3d 4.0.3 / bm4d 4.2.5 (the latest) call ``np.trapz``, which numpy 2.4 removed (renamed ``trapezoid``);
    their coloured-noise path fails without it."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid


def bm3d_psd(noisy: np.ndarray, psd: np.ndarray) -> np.ndarray:
    import bm3d

    _numpy2_shim()

    return np.stack([np.asarray(bm3d.bm3d(s, sigma_psd=psd), np.float32) for s in noisy])


def bm4d_psd(noisy: np.ndarray, psd: np.ndarray) -> np.ndarray:
    import bm4d

    _numpy2_shim()

    depth = noisy.shape[0]
    psd3 = np.repeat(psd[:, :, None], depth, axis=2) * depth  # independent slices: flat along z
    out = bm4d.bm4d(np.transpose(noisy, (1, 2, 0)), sigma_psd=psd3)
    return np.transpose(np.asarray(out, np.float32), (2, 0, 1))


def tv(noisy: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return np.stack([denoise_tv_chambolle(s, weight=weight) for s in noisy]).astype(np.float32)


def diffusion_slice(noisy: np.ndarray, params: tuple[float, int]) -> np.ndarray:
    """SimpleITK's curvature anisotropic diffusion (3D Slicer's denoiser) of a 2D [0, 1] image, time step 0.0625
    (Slicer's default); ``params``: (conductance, iterations)."""
    import SimpleITK as sitk

    conductance, iterations = params
    flt = sitk.CurvatureAnisotropicDiffusionImageFilter()
    flt.SetTimeStep(0.0625)
    flt.SetConductanceParameter(float(conductance))
    flt.SetNumberOfIterations(int(iterations))
    return sitk.GetArrayFromImage(flt.Execute(sitk.GetImageFromArray(noisy.astype(np.float32))))


def diffusion(noisy: np.ndarray, params: tuple[float, int]) -> np.ndarray:
    """:func:`diffusion_slice` of every slice of ``(D, H, W)``."""
    return np.stack([diffusion_slice(s, params) for s in noisy])


# ----------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    size: int = 256
    slices: int = 8
    seeds: tuple[int, ...] = SEEDS
    doses: dict[str, float] = field(default_factory=lambda: dict(DOSES))
    quick: bool = False
    device: str = "auto"
    methods: tuple[str, ...] | None = None
    datasets: tuple[str, ...] | None = None
    #: Rows of an earlier run by (dataset, dose, seed, method): copied for the methods not run now.
    kept: dict[tuple, list[dict]] = field(default_factory=dict)
    kept_grid: dict[tuple, list[dict]] = field(default_factory=dict)
    shared: Path = Path(__file__).resolve().parents[2] / "shared" / "data"


def _fit_config(quick: bool) -> FitConfig:
    if quick:  # a smoke run, not a measurement
        return replace(FitConfig(), channels=16, blocks=3, iterations=40, ensemble=1)
    return FitConfig()


def run(options: Options, checkpoint: Callable[[list[dict], list[dict]], None] | None = None
        ) -> tuple[list[dict], list[dict], list[tuple[str, np.ndarray]]]:
    """Every method on every case, dose and seed: ``(rows, grid_rows, figure panels)``. ``rows``: one per case,
    slice stack, dose, seed and method (scores of the whole stack: means over its slices); ``grid_rows``: TV and
    diffusion at every parameter, from which the calibrated and oracle rows are picked (:func:`pick`).
    ``checkpoint(rows, grid_rows)`` is called after every dataset and dose (a long run leaves its results so far)."""
    cases = load_cases(options.size, options.slices, options.quick, options.shared)
    if options.datasets:
        cases = sorted((c for c in cases if c.name in options.datasets), key=lambda c: options.datasets.index(c.name))
    config = _fit_config(options.quick)
    ours = decoder(config, options.device)
    slab = decoder(replace(config, slab=5 if not options.quick else 3), options.device)
    rows, grid_rows, panels = [], [], []

    def wanted(name: str) -> bool:
        return options.methods is None or any(name == m or name.startswith(m + " (") for m in options.methods)

    for case in cases:
        prepare(case)
        t0 = time.perf_counter()
        line = sinogram(case)
        clean_fbp = scan(case, line, None, 0)
        print(f"\n{case.name} {case.anatomy.shape}, {2 * case.pixel_mm:.2f} mm pixels, {len(case.planted)} lesions; "
              f"projected in {time.perf_counter() - t0:.0f} s", flush=True)
        volume = case.slice_mm is not None and case.anatomy.shape[0] >= 5
        for dose, photons in options.doses.items():
            for seed in options.seeds:
                noisy_hu = scan(case, line, photons, 1000 * seed + 17)
                noise_hu = float(np.std((noisy_hu - clean_fbp)[case.body]))
                noisy = WIDE.to_unit(noisy_hu)
                base = dict(dataset=case.name, slices=int(case.anatomy.shape[0]), dose=dose, photons=photons,
                            seed=seed, noise_std_hu=noise_hu, pixel_mm=2 * case.pixel_mm)
                print(f"  {dose}, seed {seed}: FBP noise {noise_hu:.1f} HU in the body", flush=True)
                psd_true = oracle_psd(noisy - WIDE.to_unit(clean_fbp), case.body)
                psd_est = estimated_psd(noisy, case.body)
                base["psd_estimate_ratio"] = float(psd_est.mean() / psd_true.mean())
                methods = _methods(noisy, psd_est, psd_true, ours, slab if volume else None)
                key = (case.name, dose, seed)
                for name, make in methods.items():
                    if not (name == "noisy FBP" or wanted(name)):
                        rows += [dict(r, psd_estimate_ratio=base["psd_estimate_ratio"])
                                 for r in options.kept.get(key + (name,), [])]
                        continue
                    t0 = time.perf_counter()
                    out = np.clip(make(), 0, 1)
                    seconds = (time.perf_counter() - t0) / case.anatomy.shape[0]
                    rows.append(dict(base, method=name, seconds=seconds, **score(WIDE.from_unit(out), case, clean_fbp)))
                    _print(rows[-1])
                    if seed == options.seeds[0]:
                        panels.append((f"{case.name} {dose} {name}", WIDE.from_unit(out[out.shape[0] // 2])))
                for family, grid, fn in (("TV", TV_WEIGHTS, tv), ("anisotropic diffusion", DIFFUSION_GRID, diffusion)):
                    if not wanted(family):
                        grid_rows += options.kept_grid.get(key + (family,), [])
                        continue
                    for param in grid:
                        t0 = time.perf_counter()
                        out = np.clip(fn(noisy, param), 0, 1)
                        seconds = (time.perf_counter() - t0) / case.anatomy.shape[0]
                        grid_rows.append(dict(base, method=family, param=list(np.atleast_1d(param)),
                                              seconds=seconds, **score(WIDE.from_unit(out), case, clean_fbp)))
            if checkpoint is not None:
                checkpoint(rows + pick(grid_rows), grid_rows)
        if options.seeds:
            panels.append((f"{case.name} anatomy", case.anatomy[case.anatomy.shape[0] // 2]))
    rows += pick(grid_rows)
    return rows, grid_rows, panels


def _methods(noisy: np.ndarray, psd_est: np.ndarray, psd_true: np.ndarray, ours: Callable[[np.ndarray], np.ndarray],
             slab: Callable[[np.ndarray], np.ndarray] | None) -> dict[str, Callable[[], np.ndarray]]:
    """Row name -> a thunk making that row's image from ``noisy`` (volumes: ``slab`` given, with BM4D rows)."""
    methods: dict[str, Callable[[], np.ndarray]] = {
        "noisy FBP": lambda: noisy,
        "dd-medical": lambda: ours(noisy),
        "BM3D (estimated PSD)": lambda: bm3d_psd(noisy, psd_est),
        "BM3D (oracle PSD)": lambda: bm3d_psd(noisy, psd_true),
        "BM3D (white, estimated sigma)": lambda: bm3d_psd(noisy, np.full_like(psd_est, psd_est.mean())),
    }
    if slab is not None:
        methods["dd-medical slab 5"] = lambda: slab(noisy)
        methods["BM4D (estimated PSD)"] = lambda: bm4d_psd(noisy, psd_est)
        methods["BM4D (oracle PSD)"] = lambda: bm4d_psd(noisy, psd_true)
    return methods


def pick(grid_rows: list[dict]) -> list[dict]:
    """The calibrated rows (the parameter with the best mean wide-window PSNR on the other datasets at the same
    dose; on the other seeds of the same dataset when it is alone) and the oracle rows (best on the row itself)."""
    out = []
    keys = {(r["method"], r["dose"]) for r in grid_rows}
    for family, dose in sorted(keys):
        rows = [r for r in grid_rows if r["method"] == family and r["dose"] == dose]
        params = sorted({tuple(r["param"]) for r in rows})
        for case_seed in sorted({(r["dataset"], r["seed"]) for r in rows}):
            mine = {tuple(r["param"]): r for r in rows if (r["dataset"], r["seed"]) == case_seed}
            others = [r for r in rows if r["dataset"] != case_seed[0]] or \
                [r for r in rows if (r["dataset"], r["seed"]) != case_seed]
            best_oracle = max(mine.values(), key=lambda r: r["psnr_wide"])
            out.append(dict(best_oracle, method=f"{family} (oracle)"))
            if others:
                mean = {p: np.mean([r["psnr_wide"] for r in others if tuple(r["param"]) == p]) for p in params}
                chosen = max(mean, key=mean.get)
                out.append(dict(mine[chosen], method=f"{family} (calibrated)"))
    return out


def _print(row: dict) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    print(f"    {row['method']:<30} PSNR {row['psnr_wide']:6.2f} / soft {row['psnr_soft']:6.2f} dB  "
          f"SSIM {row['ssim_wide']:.3f}  lesions {fmt(row['lesion_kept_pct'], '5.0f')}%  CNR {fmt(row['cnr'], '.2f')}"
          f"  bias soft {fmt(row.get('bias_soft_tissue_hu'), '+.1f')} HU  {row['seconds']:.1f} s/slice", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Summary


SUMMARY_COLUMNS = ("dose", "method", "n", "PSNR wide (dB)", "PSNR soft (dB)", "PSNR vs noise-free FBP (dB)",
                   "SSIM wide", "SSIM soft", "lesion contrast kept (%)", "CNR", "bias soft tissue (HU)",
                   "bias fat (HU)", "s / slice", "dd-medical wins (PSNR)")


def _mean_se(values: list[float | None], spec: str) -> str:
    v = np.array([x for x in values if x is not None], float)
    if not len(v):
        return ""
    if len(v) == 1:
        return format(v[0], spec)
    return f"{format(v.mean(), spec)} ± {format(v.std(ddof=1) / math.sqrt(len(v)), spec)}"


def summarise(rows: list[dict]) -> list[list]:
    """One row per dose and method: mean +- standard error over (dataset, seed) stacks, and how often dd-medical's
    wide-window PSNR beat that method's on the same stack."""
    out = []
    ours = {(r["dataset"], r["dose"], r["seed"]): r["psnr_wide"] for r in rows if r["method"] == "dd-medical"}
    order = ["noisy FBP", "dd-medical", "dd-medical slab 5", "BM3D (estimated PSD)", "BM3D (oracle PSD)",
             "BM3D (white, estimated sigma)", "BM4D (estimated PSD)", "BM4D (oracle PSD)", "TV (calibrated)",
             "TV (oracle)", "anisotropic diffusion (calibrated)", "anisotropic diffusion (oracle)"]
    for dose in dict.fromkeys(r["dose"] for r in rows):
        for method in order:
            mine = [r for r in rows if r["dose"] == dose and r["method"] == method]
            if not mine:
                continue
            pairs = [(ours[(r["dataset"], dose, r["seed"])], r["psnr_wide"]) for r in mine
                     if (r["dataset"], dose, r["seed"]) in ours]
            wins = "" if method == "dd-medical" else f"{sum(a > b for a, b in pairs)}/{len(pairs)}"
            cell = lambda key, spec, mine=mine: _mean_se([r.get(key) for r in mine], spec)  # noqa: E731
            out.append([dose, method, len(mine), cell("psnr_wide", ".2f"), cell("psnr_soft", ".2f"),
                        cell("psnr_scan", ".2f"), cell("ssim_wide", ".3f"), cell("ssim_soft", ".3f"),
                        cell("lesion_kept_pct", ".0f"), cell("cnr", ".2f"),
                        _mean_se([r.get("bias_soft_tissue_hu") for r in mine], "+.1f"),
                        _mean_se([r.get("bias_fat_hu") for r in mine], "+.1f"),
                        _mean_se([r["seconds"] for r in mine], ".1f"), wins])
    return out


def save_panels(panels: list[tuple[str, np.ndarray]], path: Path, columns: int) -> None:
    """A labelled PNG grid of the middle slices on the soft-tissue window (each 192 px)."""
    from PIL import Image, ImageDraw

    tile, label = 192, 14
    rows = math.ceil(len(panels) / columns)
    canvas = Image.new("L", (columns * tile, rows * (tile + label)), 255)
    draw = ImageDraw.Draw(canvas)
    for i, (name, image_hu) in enumerate(panels):
        r, c = divmod(i, columns)
        shown = (np.clip(SOFT.to_unit(image_hu), 0, 1) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(shown).resize((tile, tile), Image.BILINEAR),
                     (c * tile, r * (tile + label) + label))
        draw.text((c * tile + 2, r * (tile + label) + 1), name[-32:], fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--lowdose (the scanner-like benchmark)")
    group.add_argument("--size", type=int, default=None, help="image size N in px (default 256; --quick 48)")
    group.add_argument("--seeds", type=int, nargs="+", default=None, help="noise seeds (default 0 1 2; --quick 0)")
    group.add_argument("--datasets", nargs="+", choices=DATASET_NAMES, default=None,
                       help="datasets to run, in this order (default all)")
    group.add_argument("--keep-from", type=Path, default=None,
                       help="an earlier --lowdose JSON of the same settings: the rows of the methods not given to "
                            "--methods are copied from it instead of being run again (a long run resumed or extended)")
    group.add_argument("--note", default="", help="a sentence appended to the record's description (what this run "
                                                  "left out, say)")
    group.add_argument("--doses", nargs="+", choices=list(DOSES), default=None, help="doses (default both)")


WHAT = ("Real CT slices (the shared body CT as a volume of 8 slices, the shared head CT, pydicom-data's 512 px CT "
        "slices) and the phantom, with low-contrast lesions planted (5-8 mm, 10-20 HU), scanned in simulation: "
        "projected from a grid twice as fine with a projector that is not the package's, Poisson counts at two doses "
        "plus electronic noise, ramp-filtered FBP. Every method is scored against the anatomy the scan was made from, "
        "inside the body: PSNR and SSIM on the [-1000, 1000] and soft-tissue [-160, 240] HU windows, lesion contrast "
        "kept, CNR, mean-HU bias. Mean ± standard error over slice stacks and noise seeds; the last column counts the "
        "stacks where dd-medical's PSNR was higher. Oracle rows were tuned on the test image itself (upper bounds); "
        "calibrated rows on the other datasets.")


def main(args: argparse.Namespace, argv: list[str] | None) -> None:
    from machine import json_path, machine_description, write_json

    options = Options(size=args.size or (48 if args.quick else 256), slices=2 if args.quick else args.volume_slices,
                      seeds=tuple(args.seeds if args.seeds is not None else ((0,) if args.quick else SEEDS)),
                      doses={d: DOSES[d] for d in (args.doses or (["1e5 photons"] if args.quick else list(DOSES)))},
                      quick=args.quick, device=args.device, methods=tuple(args.methods) if args.methods else None,
                      datasets=tuple(args.datasets) if args.datasets else None)
    if args.keep_from is not None:
        import json

        earlier = json.loads(args.keep_from.read_text())
        for target, rows in ((options.kept, earlier["raw"]), (options.kept_grid, earlier["grid"])):
            for r in rows:
                if not r["method"].endswith(("(calibrated)", "(oracle)")):  # picked again from the grid
                    target.setdefault((r["dataset"], r["dose"], r["seed"], r["method"]), []).append(r)
    json_file = json_path(args.json, f"quality_lowdose_{options.size}", args.device)
    print(f"machine: {machine_description(args.device)}")
    t0 = time.perf_counter()
    title = f"Low-dose CT like a scanner makes it, {options.size} px, scored against the anatomy"
    if options.quick:
        title += " (quick smoke run, not a measurement)"

    def save(rows: list[dict], grid_rows: list[dict]) -> None:
        if json_file is None:
            return
        clean = lambda r: {k: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
                           for k, v in r.items()}
        what = WHAT + (f" {args.note}" if args.note else "")
        write_json(json_file, dict(title=title, topic="denoising", lead=not options.quick, what=what,
                                   machine=args.machine_tag, source="benchmarks/lowdose.py",
                                   columns=list(SUMMARY_COLUMNS), rows=summarise(rows),
                                   raw=[clean(r) for r in rows], grid=[clean(r) for r in grid_rows]),
                   args.device, argv)

    rows, grid_rows, panels = run(options, save)
    summary = summarise(rows)
    print("\n| " + " | ".join(SUMMARY_COLUMNS) + " |\n|" + "---|" * len(SUMMARY_COLUMNS))
    for row in summary:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.figure:
        save_panels(panels, args.figure, columns=len({p[0].rsplit(' ', 1)[0] for p in panels[:12]}) or 6)
        print(f"wrote {args.figure}")
    if json_file is not None:
        save(rows, grid_rows)
        print(f"wrote {json_file}")
