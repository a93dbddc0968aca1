"""A noise-free, chest-like CT phantom in Hounsfield units: the ground truth for denoising tests and demos.

Axial slices in LPS display convention (top of the image = anterior, image left = patient right), from the liver
dome (first slice, inferior) upwards into the lungs (last slice, superior), with the anatomy changing smoothly
along z: air, a body ellipse with a subcutaneous fat rim, soft tissue, two lungs holding small vessels, the liver,
the descending aorta, a vertebra with its spinous process, ribs and sternum, and small low-contrast liver lesions.
Edges carry partial-volume values (each pixel averages 2x2 sub-samples). :func:`make_phantom` also returns a mask
of the uniform pixels of each tissue and each lesion, for bias, noise and contrast-to-noise measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dd_medical.volume import Volume

#: Hounsfield units of each tissue of the phantom.
TISSUE_HU: dict[str, float] = {
    "air": -1000.0,
    "fat": -100.0,
    "soft_tissue": 40.0,
    "lung": -850.0,
    "lung_vessel": 200.0,
    "liver": 60.0,
    "aorta": 200.0,
    "cancellous_bone": 700.0,
    "cortical_bone": 1200.0,
    "rib": 1000.0,
}
_TISSUES = list(TISSUE_HU)
_LABEL = {name: i for i, name in enumerate(_TISSUES)}
_LESION_LABEL0 = 100  # lesion i has label 100 + i

#: Default geometry of the phantom series: in-plane pixel size and slice distance in millimetres.
PIXEL_MM = 0.7
SLICE_MM = 2.5

# Lesions at the reference size of 128 pixels: radius in pixels and contrast in HU above the liver.
_LESION_SPECS = ((2.0, 10.0), (3.0, 12.0), (3.5, 15.0), (4.0, 18.0), (5.0, 20.0))
_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Lesion:
    """A spherical low-contrast liver lesion.

    Attributes:
        center: ``(z, y, x)`` voxel indices of the centre (z an integer slice index).
        radius_px: in-plane radius in pixels at the centre slice.
        radius_mm: radius in millimetres (the sphere's cross-section shrinks on neighbouring slices).
        contrast_hu: value above the surrounding liver, in HU.
    """

    center: tuple[float, float, float]
    radius_px: float
    radius_mm: float
    contrast_hu: float


@dataclass
class Phantom:
    """The phantom and its ground-truth regions.

    Attributes:
        hu: ``(D, H, W)`` float32 Hounsfield units, noise-free.
        masks: tissue name (see :data:`TISSUE_HU`) or ``"lesion_<i>"`` -> ``(D, H, W)`` bool mask of the pixels
            entirely inside that region (no partial volume), so ``hu[mask]`` is constant.
        lesions: the lesions, in the order of their ``lesion_<i>`` masks.
        spacing: ``(x, y, z)`` voxel size in millimetres.
    """

    hu: np.ndarray
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    lesions: list[Lesion] = field(default_factory=list)
    spacing: tuple[float, float, float] = (PIXEL_MM, PIXEL_MM, SLICE_MM)


def make_phantom(depth: int = 8, size: int = 128, seed: int = 0) -> Phantom:
    """Build the ``(depth, size, size)`` phantom; the same arguments always give the same phantom.

    ``seed`` moves the lung vessels and the lesions; the gross anatomy is fixed. Pixel size 0.7 mm and slice
    distance 2.5 mm are assumed for the lesion sizes (:data:`PIXEL_MM`, :data:`SLICE_MM`).
    """
    if depth < 1 or size < 32:
        raise ValueError(f"phantom needs depth >= 1 and size >= 32, got depth={depth}, size={size}")
    rng = np.random.default_rng(seed)
    scale = size / 128.0
    vessels = _lung_vessels(rng, scale)
    labels_fine = np.stack([_paint_slice(_t(k, depth), size * _SUPERSAMPLE, vessels) for k in range(depth)])
    labels = _center_samples(labels_fine)
    lesions = _place_lesions(rng, labels, scale)
    _paint_lesions(labels_fine, lesions, factor=_SUPERSAMPLE)

    hu_table = np.zeros(_LESION_LABEL0 + len(lesions), dtype=np.float32)
    for name, value in TISSUE_HU.items():
        hu_table[_LABEL[name]] = value
    for i, lesion in enumerate(lesions):
        hu_table[_LESION_LABEL0 + i] = TISSUE_HU["liver"] + lesion.contrast_hu
    blocks = _blocks(labels_fine)  # (D, H, W, s*s) labels of each pixel's sub-samples
    hu = hu_table[blocks].mean(axis=-1).astype(np.float32)
    uniform = np.all(blocks == blocks[..., :1], axis=-1)
    masks = {name: uniform & (blocks[..., 0] == _LABEL[name]) for name in _TISSUES}
    for i in range(len(lesions)):
        masks[f"lesion_{i}"] = uniform & (blocks[..., 0] == _LESION_LABEL0 + i)
    return Phantom(hu=hu, masks=masks, lesions=lesions)


def ct_phantom(depth: int = 8, size: int = 128, seed: int = 0) -> np.ndarray:
    """The ``(depth, size, size)`` float32 phantom in HU (see :func:`make_phantom`)."""
    return make_phantom(depth, size, seed).hu


def phantom_lesions(depth: int = 8, size: int = 128, seed: int = 0) -> list[Lesion]:
    """The lesions of the phantom with these arguments (positions in voxels, contrast in HU)."""
    return make_phantom(depth, size, seed).lesions


def phantom_volume(depth: int = 8, size: int = 128, seed: int = 0) -> Volume:
    """The phantom as a CT :class:`Volume`: axial, 0.7 mm pixels, 2.5 mm slices, centred on the origin in x/y."""
    hu = ct_phantom(depth, size, seed)
    half = (size - 1) / 2.0 * PIXEL_MM
    return Volume(array=hu, spacing=(PIXEL_MM, PIXEL_MM, SLICE_MM), origin=(-half, -half, 0.0), modality="CT")


def write_phantom_series(out_dir: str | Path, depth: int = 8, size: int = 128, seed: int = 0) -> list[Path]:
    """Write the phantom as a new anonymous CT DICOM series (int16) in ``out_dir``; returns the slice files."""
    from dd_medical.io import write_series

    return write_series(
        phantom_volume(depth, size, seed),
        out_dir,
        series_description="dd-medical CT phantom",
        derivation_description=f"synthetic chest CT phantom (dd_medical.phantom, seed={seed})",
    )


# ----------------------------------------------------------------------------------------------------------------
# Construction


def _t(k: int, depth: int) -> float:
    """Position along z in [0, 1]: 0 at the first (inferior) slice, 1 at the last."""
    return k / (depth - 1) if depth > 1 else 0.5


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: ``x`` grows to the image right, ``y`` downwards (posterior)."""
    c = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    return np.meshgrid(c, c, indexing="xy")


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def _lung_vessels(rng: np.random.Generator, scale: float) -> list[tuple[float, ...]]:
    """``(side, u, v, du, dv, radius_px)`` per vessel: lung (-1 right, +1 left), position inside the unit disk of
    that lung, drift across the whole z range, radius in pixels."""
    vessels = []
    for side in (-1.0, 1.0):
        for _ in range(7):
            angle = rng.uniform(0, 2 * np.pi)
            r = 0.65 * np.sqrt(rng.uniform(0.05, 1.0))
            drift = rng.uniform(-0.15, 0.15, size=2)
            radius_px = rng.uniform(1.0, 2.0) * max(scale, 0.75)
            vessels.append((side, r * np.cos(angle), r * np.sin(angle), *drift, radius_px))
    return vessels


def _paint_slice(t: float, n: int, vessels: list) -> np.ndarray:
    """Tissue labels of one slice on an ``n x n`` grid; later structures overwrite earlier ones."""
    x, y = _grid(n)
    px = 2.0 / n  # size of a pixel of this grid in normalised units
    label = np.full((n, n), _LABEL["air"], dtype=np.int16)
    body_a, body_b = 0.88 - 0.02 * t, 0.62 + 0.02 * np.sin(np.pi * t)
    label[_ellipse(x, y, 0.0, 0.02, body_a, body_b)] = _LABEL["fat"]
    label[_ellipse(x, y, 0.0, 0.02, body_a - 0.07, body_b - 0.07)] = _LABEL["soft_tissue"]

    # Lungs grow upwards (larger t); vessels are small disks drifting inside them.
    lung_scale = 0.72 + 0.28 * t
    lungs = ((-1.0, -0.42, -0.04, 0.24, 0.36), (1.0, 0.42, -0.04, 0.23, 0.35))
    for side, cx, cy, a, b in lungs:
        a, b = a * (0.9 + 0.1 * lung_scale), b * lung_scale
        label[_ellipse(x, y, cx, cy, a, b)] = _LABEL["lung"]
        for v_side, u, v, du, dv, radius_px in vessels:
            if v_side != side:
                continue
            vx, vy = cx + (u + du * t) * a, cy + (v + dv * t) * b
            radius = radius_px * px * _SUPERSAMPLE  # native pixels -> normalised units
            inside = _ellipse(x, y, vx, vy, radius, radius)
            label[inside & (label == _LABEL["lung"])] = _LABEL["lung_vessel"]

    # The liver dome fills the right lower chest and shrinks upwards, pushing the right lung aside.
    liver_scale = 1.0 - 0.6 * t
    label[_ellipse(x, y, -0.40, 0.06, 0.36 * liver_scale, 0.38 * liver_scale)] = _LABEL["liver"]

    # Descending aorta, left of the spine, drifting slightly forwards upwards.
    label[_ellipse(x, y, 0.13, 0.28 - 0.03 * t, 0.065, 0.065)] = _LABEL["aorta"]

    # Vertebra: cortical shell around cancellous bone, and the spinous process behind it.
    label[_ellipse(x, y, 0.0, 0.44, 0.12, 0.11)] = _LABEL["cortical_bone"]
    label[_ellipse(x, y, 0.0, 0.44, 0.09, 0.08)] = _LABEL["cancellous_bone"]
    label[_ellipse(x, y, 0.0, 0.55 + 0.005 * t, 0.025, 0.035)] = _LABEL["cortical_bone"]

    # Ribs (oblique, so they slide around the chest wall along z) and the sternum in front.
    ring_a, ring_b = body_a - 0.12, body_b - 0.12
    for angle in np.deg2rad([20, 45, 70, 110, 135, 160, 200, 235, 305, 340]) + 0.25 * t:
        cx, cy = ring_a * np.cos(angle), 0.02 + ring_b * np.sin(angle)
        label[_ellipse(x, y, cx, cy, 0.03, 0.022)] = _LABEL["rib"]
    label[_ellipse(x, y, 0.0, 0.02 - ring_b - 0.01, 0.07, 0.025)] = _LABEL["rib"]
    return label


def _blocks(labels_fine: np.ndarray) -> np.ndarray:
    d, n, _ = labels_fine.shape
    s = _SUPERSAMPLE
    blocks = labels_fine.reshape(d, n // s, s, n // s, s).transpose(0, 1, 3, 2, 4)
    return blocks.reshape(d, n // s, n // s, s * s)


def _center_samples(labels_fine: np.ndarray) -> np.ndarray:
    """Native-resolution labels: the label of each pixel's first sub-sample where all sub-samples agree, else -1."""
    blocks = _blocks(labels_fine)
    uniform = np.all(blocks == blocks[..., :1], axis=-1)
    return np.where(uniform, blocks[..., 0], -1)


def _place_lesions(rng: np.random.Generator, labels: np.ndarray, scale: float) -> list[Lesion]:
    """Put each lesion where it and a 2-pixel margin lie in uniform liver on every slice it touches.

    Candidate centres are liver pixels in a seeded random order; the largest lesions are placed first.
    """
    depth, size, _ = labels.shape
    liver = labels == _LABEL["liver"]
    placed: dict[int, Lesion] = {}
    order = sorted(range(len(_LESION_SPECS)), key=lambda i: -_LESION_SPECS[i][0])
    for i in order:
        radius_ref, contrast = _LESION_SPECS[i]
        radius_px = max(radius_ref * scale, 1.5)
        radius_mm = radius_px * PIXEL_MM
        reach = int(np.floor(radius_mm / SLICE_MM))  # neighbouring slices the sphere still cuts
        margin = int(np.ceil(radius_px + 2))
        dy, dx = np.mgrid[-margin : margin + 1, -margin : margin + 1]
        disk = dy**2 + dx**2 <= (radius_px + 2) ** 2
        candidates = np.argwhere(liver)
        for k, cy, cx in candidates[rng.permutation(len(candidates))]:
            if k - reach < 0 or k + reach >= depth or not margin <= min(cy, cx) < size - margin:
                continue
            window = liver[k - reach : k + reach + 1, cy - margin : cy + margin + 1, cx - margin : cx + margin + 1]
            if not window[:, disk].all():
                continue
            center = (float(k), float(cy), float(cx))
            if any(_too_close(other, center, radius_px) for other in placed.values()):
                continue
            placed[i] = Lesion(center, float(radius_px), float(radius_mm), contrast)
            break
        # else: the liver is too small for this lesion (very small phantoms) and it is left out
    return [placed[i] for i in sorted(placed)]


def _too_close(lesion: Lesion, center: tuple[float, float, float], radius_px: float) -> bool:
    dz = abs(lesion.center[0] - center[0]) * SLICE_MM
    d_xy = np.hypot(lesion.center[1] - center[1], lesion.center[2] - center[2]) * PIXEL_MM
    gap_mm = (lesion.radius_px + radius_px + 4) * PIXEL_MM
    return bool(dz < gap_mm and d_xy < gap_mm)


def _paint_lesions(labels_fine: np.ndarray, lesions: list[Lesion], factor: int) -> None:
    depth, n, _ = labels_fine.shape
    c = (np.arange(n) + 0.5) / factor - 0.5  # sub-sample centres in native pixel units
    x, y = np.meshgrid(c, c, indexing="xy")
    for i, lesion in enumerate(lesions):
        kz, cy, cx = lesion.center
        for k in range(depth):
            dz_mm = (k - kz) * SLICE_MM
            if abs(dz_mm) >= lesion.radius_mm:
                continue
            radius = np.sqrt(lesion.radius_mm**2 - dz_mm**2) / PIXEL_MM
            inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
            labels_fine[k][inside & (labels_fine[k] == _LABEL["liver"])] = _LESION_LABEL0 + i
