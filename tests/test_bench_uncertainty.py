"""The uncertainty calibration benchmark's smoke run: it fits a map, scores it, and writes a record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def calibrate(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("calibrate_uncertainty", None)
    import calibrate_uncertainty

    return calibrate_uncertainty


def test_quick_run_writes_a_record_without_touching_the_package(calibrate, tmp_path: Path) -> None:
    shipped = calibrate.CALIBRATION_FILE.read_text()
    out = tmp_path / "u.json"
    calibrate.main(["--quick", "--cache", str(tmp_path / "cache"), "--json", str(out), "--device", "cpu"])
    assert calibrate.CALIBRATION_FILE.read_text() == shipped  # --write not given
    record = json.loads(out.read_text())
    assert record["topic"] == "uncertainty" and "--quick" in record["command"]
    scores = record["results"]["calibration"]
    assert -1 <= scores["spearman_voxel"] <= 1 and 0 <= scores["coverage_95"] <= 1
    assert scores["coverage_68"] <= scores["coverage_95"]
    assert -1 <= scores["spearman_oracle"] <= 1  # the reference that knows each voxel's neighbours' errors
    assert set(record["calibration"]) >= {"smooth", "residual", "edge"}
    knots = record["calibration"]
    assert len(knots["spread"]) == len(knots["sd"]) >= 2
    assert record["tables"][0]["rows"], "the phantom's lesions are scored"
    assert list(tmp_path.joinpath("cache").glob("*.npz")), "fits are cached"


def test_the_predictor_comparison_scores_every_candidate(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("uncertainty_predictors", None)
    import uncertainty_predictors

    from dd_medical.phantom import make_phantom

    clean = make_phantom(depth=2, size=48).hu
    scores = uncertainty_predictors.compare(clean, 60.0, members=3, iterations=15, channels=8, blocks=3)
    assert "2 members' spread (the map)" in scores and "3 members' spread" in scores
    assert any("late-iterate" in k for k in scores) and any("residual" in k for k in scores)
    assert all(-1 <= v <= 1 for k, v in scores.items() if "RMS" not in k)


def test_the_oracle_reference_leaves_out_the_voxel_itself(calibrate) -> None:
    import numpy as np

    flat = np.full((1, 5, 5), 3.0)
    np.testing.assert_allclose(calibrate._neighbours_rms(flat), 3.0)
    spike = np.zeros((1, 5, 5))
    spike[0, 2, 2] = 8.0
    local = calibrate._neighbours_rms(spike)
    assert local[0, 2, 2] == 0 and local[0, 2, 3] == np.sqrt(64 / 8) and local[0, 0, 0] == 0
