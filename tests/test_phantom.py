"""dd_medical.phantom: the noise-free CT phantom, its regions and lesions, and its DICOM series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dd_medical.io import read_volume
from dd_medical.phantom import (
    TISSUE_HU,
    ct_phantom,
    make_phantom,
    phantom_lesions,
    phantom_volume,
    write_phantom_series,
)

SAMPLE_SERIES = Path(__file__).resolve().parents[1] / "sample_data" / "ct_phantom"
TWO_MB = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(depth=8, size=128, seed=0)


def test_shape_dtype_and_value_range(phantom) -> None:
    assert phantom.hu.shape == (8, 128, 128) and phantom.hu.dtype == np.float32
    assert phantom.hu.min() == -1000.0 and phantom.hu.max() <= 1500.0
    assert phantom.spacing == (0.7, 0.7, 2.5)
    assert np.array_equal(ct_phantom(), phantom.hu)


def test_tissue_values(phantom) -> None:
    hu, masks = phantom.hu, phantom.masks
    for name, value in TISSUE_HU.items():
        assert masks[name].any(), f"{name} missing"
        assert np.all(hu[masks[name]] == value), name
    assert TISSUE_HU["air"] == -1000 and TISSUE_HU["lung"] == pytest.approx(-850, abs=50)
    assert TISSUE_HU["fat"] == pytest.approx(-100, abs=20) and TISSUE_HU["soft_tissue"] == pytest.approx(40, abs=20)
    assert TISSUE_HU["aorta"] == pytest.approx(200, abs=50) and TISSUE_HU["lung_vessel"] == pytest.approx(200, abs=50)
    for bone in ("cancellous_bone", "cortical_bone", "rib"):
        assert 700 <= TISSUE_HU[bone] <= 1500
    assert np.all(hu[0, :, 0] == -1000) and np.all(hu[:, 0, :] == -1000), "air outside the body"
    for k in range(hu.shape[0]):  # every slice shows body, lungs, aorta, spine and ribs
        for name in ("fat", "soft_tissue", "lung", "aorta", "cortical_bone", "rib"):
            assert masks[name][k].any(), (name, k)
    lung_with_vessels = masks["lung"] | masks["lung_vessel"]
    assert masks["lung_vessel"].sum() > 0.01 * lung_with_vessels.sum()


def test_low_contrast_lesions(phantom) -> None:
    lesions = phantom.lesions
    assert len(lesions) == 5
    assert lesions == phantom_lesions()
    liver = TISSUE_HU["liver"]
    for i, lesion in enumerate(lesions):
        mask = phantom.masks[f"lesion_{i}"]
        assert 10 <= lesion.contrast_hu <= 20 and 2 <= lesion.radius_px <= 5
        assert np.all(phantom.hu[mask] == liver + lesion.contrast_hu)
        k, y, x = (int(round(c)) for c in lesion.center)
        assert mask[k, y, x], "the centre voxel lies inside the lesion"
        ring = _ring(phantom.hu.shape[1:], y, x, lesion.radius_px + 1.5, lesion.radius_px + 2.5)
        assert np.all(phantom.masks["liver"][k][ring]), "each lesion is surrounded by uniform liver"
        assert mask.sum() >= 0.5 * np.pi * lesion.radius_px**2


def _ring(shape: tuple[int, int], y: int, x: int, inner: float, outer: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(yy - y, xx - x)
    return (r >= inner) & (r <= outer)


def test_masks_are_disjoint_and_uniform(phantom) -> None:
    total = sum(mask.astype(int) for mask in phantom.masks.values())
    assert total.max() == 1
    edge = total == 0  # partial-volume pixels only
    assert 0.02 < edge.mean() < 0.3


def test_anatomy_changes_smoothly_along_z(phantom) -> None:
    hu = phantom.hu
    changed = [(np.abs(hu[k + 1] - hu[k]) > 50).mean() for k in range(hu.shape[0] - 1)]
    assert max(changed) < 0.1
    assert (np.abs(hu[-1] - hu[0]) > 50).mean() > max(changed), "first and last slice differ more than neighbours"


def test_deterministic_for_a_seed_and_seed_dependent() -> None:
    a, b, c = make_phantom(4, 64, seed=3), make_phantom(4, 64, seed=3), make_phantom(4, 64, seed=4)
    assert np.array_equal(a.hu, b.hu) and a.lesions == b.lesions
    assert not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize(("depth", "size"), [(1, 64), (3, 32), (12, 96)])
def test_other_sizes(depth: int, size: int) -> None:
    phantom = make_phantom(depth, size)
    assert phantom.hu.shape == (depth, size, size)
    assert phantom.lesions, "at least one lesion fits"
    with pytest.raises(ValueError):
        make_phantom(0, 128)


def test_phantom_volume_geometry() -> None:
    volume = phantom_volume(depth=4, size=64)
    assert volume.modality == "CT" and volume.shape == (4, 64, 64)
    assert volume.spacing == (0.7, 0.7, 2.5)
    assert volume.origin[0] == pytest.approx(-(63 / 2) * 0.7)


def test_written_series_is_small_and_reads_back(tmp_path: Path) -> None:
    files = write_phantom_series(tmp_path / "phantom")
    assert len(files) == 8 and sum(f.stat().st_size for f in files) <= TWO_MB
    volume = read_volume(tmp_path / "phantom")
    np.testing.assert_allclose(volume.array, ct_phantom(), atol=0.5)
    np.testing.assert_allclose(volume.spacing, (0.7, 0.7, 2.5))


def test_committed_sample_series_matches_the_phantom() -> None:
    files = sorted(SAMPLE_SERIES.glob("*.dcm"))
    assert len(files) == 8
    assert sum(f.stat().st_size for f in SAMPLE_SERIES.iterdir()) <= TWO_MB
    volume = read_volume(SAMPLE_SERIES)
    np.testing.assert_allclose(
        volume.array, ct_phantom(), atol=0.5, err_msg="regenerate it: python sample_data/make_sample_series.py"
    )
