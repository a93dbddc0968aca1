"""Denoising quality on CT (issue 8): dd-medical against BM3D, BM4D, NLM, TV, Slicer's anisotropic diffusion and the
reference-style decoder, on real slices, the ``../shared/data`` series and the phantom, at two kinds of noise.

Data (``--only``, repeatable; default all):

* ``ct_small``: pydicom's ``CT_small.dcm`` (128 x 128, 0.66 mm pixels).
* ``693``: pydicom's ``693_UNCR.dcm``, a centre crop of ``--crop`` pixels (default 256; ``--crop 0``: all 512).
* ``shared``: ``../shared/data/ct_body_j2k`` (a DICOM CT series, read with :func:`dd_medical.io.read_volume`), its
  ``--volume-slices`` central slices, centre-cropped like 693; skipped when the folder is missing.
* ``phantom``: :func:`dd_medical.phantom.make_phantom` (``--volume-slices`` x 128 x 128, 0.7 mm pixels), with its
  masks of uniform tissue and of small low-contrast liver lesions.

Noise:

* Gaussian, ``--sigmas`` (default 15 25 50, in 1/255) on the window [-1000, 1000] HU mapped to [0, 1], seed 0,
  clipped to [0, 1] (as ``bench_denoise.py``). The clean reference is the windowed image.
* Simulated low-dose CT, ``--photons`` (default 1e5 2e4 incident photons per detector bin and view): HU ->
  attenuation relative to water (:func:`~dd_medical.core.operators.hu_to_attenuation`) -> parallel-beam sinogram
  (:class:`~dd_medical.core.operators.ParallelBeamRadon`, ``ceil(1.5 N)`` views over 180 degrees for an ``N x N``
  image, detector bins 1 pixel wide, ``subpixels=2``) -> line integrals ``p = sinogram * MU_WATER_PER_MM *
  pixel_mm`` (water 0.02 / mm, about 70 keV; ``pixel_mm`` from the DICOM PixelSpacing) -> counts
  ``Poisson(I0 exp(-p))``, clipped to >= 1 -> ``-log(counts / I0)`` -> filtered back-projection
  (``operator.baseline``, ramp) -> HU. The clean reference is the FBP of the noise-free sinogram, so only the
  noise differs. The noise std (HU, noisy - clean)
  is printed: about 30-40 HU at 1e5 photons for a 256 px body slice, 2.2x that at 2e4. Cropped images are
  simulated as if the crop were the whole object (shorter rays, so somewhat less noise than in the full slice).

Methods (each maps the noisy [0, 1] image ``(H, W)`` or volume ``(D, H, W)`` to a denoised one; 2D methods work
slice by slice):

* ``dd-medical 2D``: :func:`~dd_medical.pipeline.denoise_volume` with ``FitConfig()`` defaults but ``slab=1``:
  slice by slice.
* ``dd-medical volumetric``: the package defaults with ``slab=5`` (``--slab 5``; 2.5D, each decoder fits 5
  adjacent slices; volumes only, on a single slice it is the 2D row).
* ``BM3D``: ``bm3d.bm3d`` with the true sigma (Gaussian rows) or the one estimated by
  :func:`dd_medical.core.noise.estimate_sigma` (low-dose rows, where it is not known).
* ``BM4D``: ``bm4d.bm4d`` (volumes only; skipped in ``--quick`` and for volumes thinner than its blocks), sigma as
  for BM3D.
* ``NLM``: as in ``bench_denoise.py`` (skimage, h = 0.8 x the estimated sigma).
* ``TV (oracle weight)``: skimage's Chambolle TV, the weight picked against the clean image from ``bench_denoise.py``'s
  grid plus 0.005 and 0.01 (the low-dose noise is weaker than the Gaussian one).
* ``anisotropic diffusion (oracle)``: SimpleITK's ``CurvatureAnisotropicDiffusionImageFilter`` (3D Slicer's default
  denoiser), time step 0.0625, conductance and iterations picked from a small grid against the clean image: an
  oracle, i.e. an upper bound for that method.
* ``reference-style decoder``: ``REFERENCE`` from ``bench_denoise.py`` (k=64, 6 blocks, 2,000 fixed iterations,
  lowest-loss iterate).

Columns: PSNR and SSIM (:mod:`dd_medical.metrics`, [0, 1] window, data range 1; volumes: mean over slices), wall
seconds per method; low-dose rows also ``psnr_image`` / ``ssim_image``, against the image itself instead of the
noise-free FBP (a denoiser can be closer to the image than that FBP is). On the phantom also: ``bias_hu``, the largest
``|mean(denoised) - mean(clean)|`` over the uniform tissues inside the window (fat, soft tissue, lung, liver, aorta,
cancellous bone; masks eroded by 2 px; bar < 2 HU), and ``bias_tissue``, where it occurs (Gaussian rows: the lung at
-850 HU is biased already in the noisy image, whose noise is clipped at -1000 HU; on small phantoms the noisy row's
"bias" is mostly noise left in small masks); ``contrast_hu``, the mean over lesions of lesion mean - mean of the liver
ring 2-6 px around it; ``cnr``, the mean of contrast / std of that liver ring (the clean row has no noise, so only its
contrast is given). A good denoiser keeps the contrast and raises the CNR above the noisy one.

``--figure``: a PNG grid, two rows per dataset and noise: noisy | each method | clean (middle slice of volumes), then
the difference maps (method - clean, grey = 0, +-0.2 saturates). ``--json``: ``machine``, ``machine_tag``,
``command``, ``date`` (``benchmarks/machine.py``), ``columns``, ``rows`` (missing numbers as ``null``), ``figure``
(rows, cols, panel size); ``--json auto`` writes ``benchmarks/measured/quality_<machine>.json``. ``--quick``: a
smoke run, not a measurement: 48 px crops, 2-slice volumes, a 48 px phantom, tiny decoders (k=16, 4 blocks, 60
iterations, ensemble 1), sigma 25 and 1e5 photons only, a small diffusion grid, no BM4D.

    python benchmarks/bench_quality.py --quick --json q.json --figure q.png     # smoke run, < 60 s on one CPU core
    python benchmarks/bench_quality.py --only phantom --photons 1e5 --sigmas 25 # one dataset
    python benchmarks/bench_quality.py --device cuda --json quality.json --figure quality.png   # the full table
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lowdose  # noqa: E402
from bench_denoise import REFERENCE, SHARED, WINDOW, decoder_method, gaussian_noise, nlm, oracle  # noqa: E402
from machine import json_help, json_path, machine_description, machine_tag, write_json  # noqa: E402

from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.noise import estimate_sigma  # noqa: E402
from dd_medical.core.operators import ParallelBeamRadon, attenuation_to_hu, hu_to_attenuation  # noqa: E402
from dd_medical.metrics import psnr, ssim  # noqa: E402
from dd_medical.phantom import PIXEL_MM, TISSUE_HU, make_phantom  # noqa: E402
from dd_medical.simulation import MU_WATER_PER_MM  # noqa: E402

DATASETS = ("ct_small", "693", "shared", "phantom")
METHODS = ("dd-medical 2D", "dd-medical volumetric", "BM3D", "BM4D", "NLM", "TV (oracle weight)",
           "anisotropic diffusion (oracle)", "reference-style decoder")
COLUMNS = ("dataset", "shape", "noise", "level", "noise_std_hu", "method", "status", "psnr", "ssim", "seconds",
           "bias_hu", "bias_tissue", "contrast_hu", "cnr", "psnr_image", "ssim_image")
QUICK_CROP = 48
QUICK_SLICES = 2
#: Uniform phantom tissues for the bias: inside the window (air, rib and cortical bone sit on or past its edges) and
#: large (lung vessels are 1-2 px disks, whose loss of contrast is blur, not bias).
BIAS_TISSUES = tuple(name for name, hu in TISSUE_HU.items()
                     if WINDOW.low + 50 < hu < WINDOW.high - 50 and name != "lung_vessel")
BIAS_ERODE_PX = 2
BIAS_MIN_PIXELS = 20
BIAS_BAR_HU = 2.0
#: TV weights tried by the oracle: ``bench_denoise.py``'s grid plus two weaker ones for the low-dose noise (~0.015).
TV_WEIGHTS = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15]
PANEL_PX = 96
LABEL_PX = 14

Method = Callable[[np.ndarray], np.ndarray]


@dataclass
class Dataset:
    """A clean image in HU: ``hu`` ``(H, W)`` or ``(D, H, W)``, pixel size in mm, and the phantom masks if any."""

    name: str
    hu: np.ndarray
    pixel_mm: float
    masks: dict[str, np.ndarray] | None = None
    lesion_masks: list[np.ndarray] | None = None


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` pixels of the last two axes (unchanged if ``size`` is 0 or not smaller)."""
    h, w = image.shape[-2:]
    if size <= 0 or size >= min(h, w):
        return image
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def load_datasets(only: list[str], crop: int, volume_slices: int, quick: bool) -> list[Dataset]:
    """The clean datasets in HU; quick mode crops everything to 48 px and keeps 2 slices of the volumes."""
    crop = QUICK_CROP if quick else crop
    slices = QUICK_SLICES if quick else volume_slices
    out = []
    for name, file, cropped in (("ct_small", "CT_small.dcm", quick), ("693", "693_UNCR.dcm", True)):
        if name in only:
            ds = pydicom.dcmread(get_testdata_file(file))
            hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)
            out.append(Dataset(name, center_crop(hu, crop) if cropped else hu, float(ds.PixelSpacing[0])))
    if "shared" in only:
        folder = SHARED / "ct_body_j2k"
        if folder.exists():
            from dd_medical.io import read_volume

            vol = read_volume(folder)
            first = max(0, vol.shape[0] // 2 - slices // 2)
            hu = center_crop(vol.array[first : first + slices], crop)
            out.append(Dataset("shared/ct_body_j2k", np.ascontiguousarray(hu, np.float32), float(vol.spacing[0])))
        else:
            print(f"{folder} not found: the shared volume is skipped")
    if "phantom" in only:
        phantom = make_phantom(depth=max(slices, 1), size=QUICK_CROP if quick else 128, seed=0)
        lesions = [m for key, m in phantom.masks.items() if key.startswith("lesion_") and m.any()]
        out.append(Dataset("phantom", phantom.hu, PIXEL_MM, phantom.masks, lesions))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Noise


@functools.lru_cache(maxsize=2)
def scanner(shape: tuple[int, int]) -> ParallelBeamRadon:
    """The parallel-beam geometry for an ``(H, W)`` image: ``ceil(1.5 max(H, W))`` views over 180 degrees, each
    pixel projected as 2 x 2 sub-pixels (the pixel-driven projector's moire would otherwise be in the references:
    ramp FBP of ``CT_small.dcm``'s noise-free sinogram 30.5 dB against the image, 35.1 with sub-pixels; cached:
    building the system matrix takes ~5 s at 128 px and minutes at 512 px on one CPU core)."""
    views = int(math.ceil(1.5 * max(shape)))
    return ParallelBeamRadon(np.linspace(0.0, 180.0, views, endpoint=False), shape, subpixels=2)


def low_dose(hu: np.ndarray, photons: float | None, pixel_mm: float, seed: int = 0) -> np.ndarray:
    """FBP in HU ``(H, W)`` of a simulated parallel-beam scan of ``hu`` ``(H, W)`` (see the module docstring).

    ``photons``: incident photons per detector bin and view (``None``: noise-free, the clean reference);
    ``pixel_mm``: pixel size in mm; ``seed``: of the Poisson draw.
    """
    operator = scanner(tuple(hu.shape))
    scale = MU_WATER_PER_MM * pixel_mm  # sinogram of relative attenuation (pixel units) -> line integral
    mu = torch.from_numpy(hu_to_attenuation(hu))[None, None]
    line = operator.forward(mu) * scale
    if photons is not None:
        generator = torch.Generator().manual_seed(seed)
        counts = torch.poisson(photons * torch.exp(-line.double()), generator=generator).clamp(min=1.0)
        line = (-torch.log(counts / photons)).float()
    return attenuation_to_hu(operator.baseline(line)[0, 0].numpy() / scale)


def low_dose_volume(hu: np.ndarray, photons: float | None, pixel_mm: float, seed: int = 0) -> np.ndarray:
    """:func:`low_dose` of each slice of ``(D, H, W)`` (or of one ``(H, W)``), slice ``k`` with seed ``seed + k``."""
    if hu.ndim == 2:
        return low_dose(hu, photons, pixel_mm, seed)
    return np.stack([low_dose(s, photons, pixel_mm, seed + k) for k, s in enumerate(hu)])


# ----------------------------------------------------------------------------------------------------------------
# Methods


def slicewise(make: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Apply a 2D ``make(noisy, clean)`` to every slice of a volume (``clean`` only feeds oracles)."""

    def run(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
        if noisy.ndim == 2:
            return make(noisy, clean)
        return np.stack([make(n, c) for n, c in zip(noisy, clean, strict=True)])

    return run


diffusion = lowdose.diffusion_slice  # SimpleITK curvature anisotropic diffusion of a 2D [0, 1] image


def sigma_for(noisy: np.ndarray, known: float | None) -> float:
    """The noise std in [0, 1] units given to BM3D/BM4D: ``known``, else the median of the per-slice estimates."""
    if known is not None:
        return known
    return float(np.median(np.atleast_1d(estimate_sigma(noisy).numpy())))


def quality_methods(device: str, quick: bool, known_sigma: float | None,
                    volume: bool) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray] | None]:
    """Method name -> ``fn(noisy, clean)`` (``clean`` only for oracles); ``None`` for a method not implemented."""
    ours, reference = replace(FitConfig(), slab=1), REFERENCE
    volumetric = replace(FitConfig(), slab=5)
    grid: list[tuple[float, int]] = [(c, i) for c in (0.5, 1.0, 2.0, 3.0) for i in (1, 3, 6, 12, 24)]
    if quick:  # tiny decoders and a small grid: a smoke run, not a measurement
        ours = replace(FitConfig(), channels=16, blocks=4, iterations=60, ensemble=1, slab=1)
        volumetric = replace(ours, slab=3)
        reference = replace(REFERENCE, channels=16, blocks=4, iterations=60)
        grid = [(c, i) for c in (1.0, 3.0) for i in (1, 3, 10)]
    ours_run, reference_run = decoder_method(ours, device), decoder_method(reference, device)
    volumetric_run = decoder_method(volumetric, device)

    def bm3d_run(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
        import bm3d

        sigma = sigma_for(noisy, known_sigma)
        return slicewise(lambda n, c: np.asarray(bm3d.bm3d(n, sigma_psd=sigma), np.float32))(noisy, clean)

    def bm4d_run(noisy: np.ndarray, clean: np.ndarray) -> np.ndarray:
        import bm4d

        return np.asarray(bm4d.bm4d(noisy, sigma_psd=sigma_for(noisy, known_sigma)), np.float32)

    def tv(noisy: np.ndarray, weight: float) -> np.ndarray:
        from skimage.restoration import denoise_tv_chambolle

        return denoise_tv_chambolle(noisy, weight=weight)

    out: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray] | None] = {
        "dd-medical 2D": lambda noisy, clean: ours_run(noisy),
        "BM3D": bm3d_run,
    }
    if volume:
        out["dd-medical volumetric"] = lambda noisy, clean: volumetric_run(noisy)
        out["BM4D"] = bm4d_run
    out["NLM"] = slicewise(lambda n, c: nlm(n))
    out["TV (oracle weight)"] = slicewise(lambda n, c: oracle(tv, TV_WEIGHTS, c)(n))
    out["anisotropic diffusion (oracle)"] = slicewise(lambda n, c: oracle(diffusion, grid, c)(n))
    out["reference-style decoder"] = lambda noisy, clean: reference_run(noisy)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Phantom measurements


def tissue_bias_hu(image_hu: np.ndarray, clean_hu: np.ndarray, masks: dict[str, np.ndarray]) -> tuple[float, str]:
    """``(bias in HU, tissue)``: the largest ``|mean(image) - mean(clean)|`` over the uniform tissues of
    :data:`BIAS_TISSUES`, each mask eroded in-plane by :data:`BIAS_ERODE_PX` pixels (away from edges, where blur is
    not bias) and kept if :data:`BIAS_MIN_PIXELS` pixels remain; and the tissue where it occurs."""
    biases = []
    for tissue in BIAS_TISSUES:
        mask = _erode(masks[tissue], BIAS_ERODE_PX)
        if mask.sum() >= BIAS_MIN_PIXELS:
            biases.append((abs(float(image_hu[mask].mean() - clean_hu[mask].mean())), tissue))
    return max(biases) if biases else (float("nan"), "")


def _in_plane(ndim: int) -> np.ndarray:
    """A 3x3 cross in the image plane, as a structuring element for ``(H, W)`` or ``(D, H, W)`` masks."""
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
    return cross if ndim == 2 else cross[None]


def _erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, _in_plane(mask.ndim), pixels)


def _ring(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Pixels of the same slices between ``inner`` and ``outer`` pixels (city-block distance) around ``mask``."""
    from scipy.ndimage import binary_dilation

    struct = _in_plane(mask.ndim)
    return binary_dilation(mask, struct, outer) & ~binary_dilation(mask, struct, inner)


def lesion_contrast(image_hu: np.ndarray, liver: np.ndarray,
                    lesions: list[np.ndarray]) -> tuple[float, float]:
    """``(contrast in HU, CNR)``, means over lesions: lesion mean - liver-ring mean, over the ring's std."""
    contrasts, cnrs = [], []
    for lesion in lesions:
        ring = _ring(lesion, 2, 6) & liver
        if ring.sum() < 8:
            continue
        contrast = float(image_hu[lesion].mean() - image_hu[ring].mean())
        std = float(image_hu[ring].std())
        contrasts.append(contrast)
        cnrs.append(contrast / std if std > 1e-3 else float("nan"))
    if not contrasts:
        return float("nan"), float("nan")
    return float(np.mean(contrasts)), float(np.mean(cnrs))


# ----------------------------------------------------------------------------------------------------------------
# Figure


def save_figure(panels: list[list[tuple[str, np.ndarray]]], path: Path) -> tuple[int, int]:
    """Write a PNG grid (PIL) of ``panels`` rows of ``(label, image)``; images in [0, 1] or signed differences.

    Each panel is :data:`PANEL_PX` square under a :data:`LABEL_PX` label strip; difference maps (labels starting
    with "diff") are shown as 0.5 + 2.5 * difference (grey = no difference, +-0.2 saturates). Returns (rows, cols).
    """
    from PIL import Image, ImageDraw

    rows, cols = len(panels), max(len(row) for row in panels)
    canvas = Image.new("L", (cols * PANEL_PX, rows * (PANEL_PX + LABEL_PX)), 255)
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(panels):
        for c, (label, image) in enumerate(row):
            shown = 0.5 + 2.5 * image if label.startswith("diff") else image
            tile = Image.fromarray((np.clip(shown, 0, 1) * 255).astype(np.uint8)).resize((PANEL_PX, PANEL_PX))
            x, y = c * PANEL_PX, r * (PANEL_PX + LABEL_PX)
            canvas.paste(tile, (x, y + LABEL_PX))
            draw.text((x + 2, y + 1), label[:16], fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return rows, cols


def middle(image: np.ndarray) -> np.ndarray:
    """The middle slice of a volume (the image itself for 2D)."""
    return image[image.shape[0] // 2] if image.ndim == 3 else image


# ----------------------------------------------------------------------------------------------------------------
# Main


def run_case(data: Dataset, noise: str, level: float, args: argparse.Namespace, rows: list[dict],
             panels: list[list[tuple[str, np.ndarray]]]) -> None:
    """Denoise one dataset at one noise setting with every method; append its rows and two figure rows."""
    if noise == "gaussian":
        clean = WINDOW.to_unit(data.hu)
        noisy, known = gaussian_noise(clean, level / 255), level / 255
        clean_hu = data.hu
    else:
        clean_hu = low_dose_volume(data.hu, None, data.pixel_mm)
        clean = WINDOW.to_unit(clean_hu)
        noisy, known = WINDOW.to_unit(low_dose_volume(data.hu, level, data.pixel_mm)), None
    # low-dose rows: also against the image itself, which the noise-free FBP blurs and streaks (35 dB off at 128 px)
    truth = WINDOW.to_unit(data.hu) if noise == "low-dose" else None
    noisy_hu = WINDOW.from_unit(noisy)
    noise_std = float(np.std(noisy_hu - WINDOW.from_unit(clean)))
    base = dict(dataset=data.name, shape=list(data.hu.shape), noise=noise, level=level, noise_std_hu=noise_std)
    print(f"\n{data.name} {'x'.join(map(str, data.hu.shape))}, {noise} {level:g}: noise std {noise_std:.1f} HU",
          flush=True)

    def phantom_fields(image_hu: np.ndarray) -> dict:
        if data.masks is None:
            return {}
        contrast, cnr = lesion_contrast(image_hu, data.masks["liver"], data.lesion_masks or [])
        bias, tissue = tissue_bias_hu(image_hu, clean_hu, data.masks)
        return dict(bias_hu=bias, bias_tissue=tissue, contrast_hu=contrast, cnr=cnr)

    def add(method: str, image: np.ndarray | None, seconds: float, status: str = "ok") -> None:
        row = dict(base, method=method, status=status, psnr=None, ssim=None, seconds=seconds)
        if image is not None:
            row.update(psnr=float(np.mean(psnr(image, clean))), ssim=float(np.mean(ssim(image, clean))))
            if truth is not None:
                row.update(psnr_image=float(np.mean(psnr(image, truth))), ssim_image=float(np.mean(ssim(image, truth))))
            row.update(phantom_fields(WINDOW.from_unit(image)))
        rows.append(row)
        extra = "".join(f"  {k} {row[k]:.2f}" for k in ("bias_hu", "contrast_hu", "cnr", "psnr_image") if k in row)
        numbers = f"PSNR {row['psnr']:6.2f} dB  SSIM {row['ssim']:.4f}  {seconds:7.1f} s" if image is not None else ""
        print(f"  {method:<32} {numbers or status}{extra}", flush=True)

    clean_row = phantom_fields(WINDOW.from_unit(clean))
    if clean_row:
        rows.append(dict(base, method="clean", status="reference", psnr=None, ssim=None, seconds=0.0,
                         bias_hu=0.0, bias_tissue="", contrast_hu=clean_row["contrast_hu"], cnr=None))
        print(f"  {'clean':<32} contrast_hu {clean_row['contrast_hu']:.2f}")
    add("noisy", noisy, 0.0)
    images, diffs = [("noisy", middle(noisy))], [("diff noisy", middle(noisy - clean))]
    volume = data.hu.ndim == 3
    for method, fn in quality_methods(args.device, args.quick, known, volume).items():
        if args.methods and method not in args.methods:
            continue
        if fn is None:
            add(method, None, 0.0, "not implemented in dd_medical")
            continue
        if method == "BM4D" and args.quick:
            add(method, None, 0.0, "skipped (slow; off in --quick)")
            continue
        t0 = time.perf_counter()
        try:
            out = np.clip(fn(noisy, clean), 0, 1).astype(np.float32)
        except ValueError as error:  # bm4d: "Image cannot be smaller than block size!" (volumes under ~5 slices)
            if method != "BM4D":
                raise
            add(method, None, 0.0, f"skipped ({error})")
            continue
        add(method, out, time.perf_counter() - t0)
        label = method.split(" (")[0]
        images.append((label, middle(out)))
        diffs.append((f"diff {label}", middle(out - clean)))
    images.append(("clean", middle(clean)))
    panels += [[(f"{data.name} {noise} {level:g}"[:16], middle(noisy))] + images[1:], diffs]


def _fmt(row: dict, key: str, spec: str) -> str:
    """``row[key]`` formatted with ``spec``; empty when missing or None."""
    value = row.get(key)
    return "" if value is None else format(value, spec)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 48 px crops, 2 slices, tiny decoders, one sigma and one photon count")
    parser.add_argument("--only", action="append", choices=DATASETS, help="dataset to run (repeatable)")
    parser.add_argument("--sigmas", type=float, nargs="*", default=None, help="Gaussian sigmas in 1/255")
    parser.add_argument("--photons", type=float, nargs="*", default=None, help="low-dose photons per ray")
    parser.add_argument("--methods", nargs="+", choices=METHODS + lowdose.FAMILIES,
                        help="run only these methods (--lowdose: names starting with these)")
    parser.add_argument("--lowdose", action="store_true",
                        help="the scanner-like benchmark of benchmarks/lowdose.py (its own data, methods and scores)")
    parser.add_argument("--crop", type=int, default=256, help="centre crop of 693 and the shared slices (0: none)")
    parser.add_argument("--volume-slices", type=int, default=8, help="central slices of the volumes")
    parser.add_argument("--json", type=Path, help=json_help("quality"))
    parser.add_argument("--figure", type=Path, help="write a PNG figure here")
    parser.add_argument("--device", default="auto")
    lowdose.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.sigmas is None:
        args.sigmas = [25.0] if args.quick else [15.0, 25.0, 50.0]
    if args.photons is None:
        args.photons = [1e5] if args.quick else [1e5, 2e4]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.lowdose:
        args.machine_tag = machine_tag(args.device)
        lowdose.main(args, None if argv is None else [__file__, *argv])
        return
    json_file = json_path(args.json, "quality", args.device)
    machine = machine_description(args.device)
    print(f"machine: {machine}")
    rows: list[dict] = []
    panels: list[list[tuple[str, np.ndarray]]] = []
    t_start = time.perf_counter()
    for data in load_datasets(args.only or list(DATASETS), args.crop, args.volume_slices, args.quick):
        for noise, levels in (("gaussian", args.sigmas), ("low-dose", args.photons)):
            for level in levels:
                run_case(data, noise, level, args, rows, panels)

    print("\n| dataset | noise | noise std (HU) | method | PSNR (dB) | SSIM | time (s) | bias (HU) | contrast (HU) "
          "| CNR | low-dose: PSNR / SSIM against the image |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['noise']} {r['level']:g} | {r['noise_std_hu']:.1f} | {r['method']} | "
              f"{_fmt(r, 'psnr', '.2f') or r['status']} | {_fmt(r, 'ssim', '.4f')} | {r['seconds']:.1f} | "
              f"{_fmt(r, 'bias_hu', '.2f')} {r.get('bias_tissue') or ''} | {_fmt(r, 'contrast_hu', '.2f')} | "
              f"{_fmt(r, 'cnr', '.2f')} | {_fmt(r, 'psnr_image', '.2f')} {_fmt(r, 'ssim_image', '.4f')} |")
    print(f"\ntotal {time.perf_counter() - t_start:.1f} s")
    figure = None
    if args.figure:
        n_rows, n_cols = save_figure(panels, args.figure)
        figure = dict(path=str(args.figure), rows=n_rows, cols=n_cols, panel_px=PANEL_PX, label_px=LABEL_PX)
    if json_file is not None:
        rows = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
        write_json(json_file, dict(machine=machine, quick=args.quick, columns=list(COLUMNS), bias_bar_hu=BIAS_BAR_HU,
                                   figure=figure, rows=rows), args.device,
                   None if argv is None else [__file__, *argv])
        print(f"wrote {json_file}")


if __name__ == "__main__":
    main()
