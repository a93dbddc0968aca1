"""First, do no harm (issue 28): the noise estimate ignores regions that hold no noise, the decoder's depth follows
the noise level, and every result is checked against its input, in every door."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner

import dd_medical
from dd_medical.cli import EXIT_FIDELITY, cli
from dd_medical.core.config import FitConfig
from dd_medical.core.fidelity import MAX_EDGE_RATIO, MAX_RESIDUAL_RATIO, check_fidelity
from dd_medical.core.noise import estimate_sigma, signal_mask
from dd_medical.io import read_volume, write_image
from dd_medical.volume import Volume

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _body(size: int = 96, seed: int = 0) -> np.ndarray:
    """A CT-like slice in HU: air, a body ellipse, a bright vertebra and a soft lesion."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1
    bone = (xx - 0.0) ** 2 + (yy - 0.15) ** 2 < 0.004
    lesion = (xx + 0.15) ** 2 + (yy + 0.05) ** 2 < 0.003
    return np.where(body, 40.0, -1000.0) + 700.0 * bone + 30.0 * lesion


def test_clipped_and_padded_regions_are_left_out_of_the_noise_estimate():
    rng = np.random.default_rng(0)
    noisy = _body() + rng.normal(0, 20, (96, 96))
    truth = float(estimate_sigma(noisy))
    clipped = np.maximum(noisy, -1000.0)  # a window's lower bound clips half the air's noise
    padded = noisy.copy()
    yy, xx = np.mgrid[0:96, 0:96]
    padded[(yy - 48) ** 2 + (xx - 48) ** 2 > 46**2] = -2048.0  # constant padding outside the scan circle
    for image in (clipped, padded):
        mask = signal_mask(image)
        assert 0.3 < float(mask.float().mean()) < 0.95
        assert abs(float(estimate_sigma(image)) / truth - 1) < 0.1
        # the plain estimate over every pixel is pulled down by the noiseless pixels
        assert float(estimate_sigma(image, torch.ones_like(mask))) < 0.85 * truth


def test_the_depth_follows_the_noise_level():
    config = FitConfig()
    assert config.depth(512, 512, 0.1) == 6  # the paper's decoder for strong noise
    assert config.depth(128, 128, 0.02) == 5
    assert config.depth(101, 122, 0.01) == 4  # routine-dose CT: more capacity, anatomy kept
    assert config.depth(32, 32, 0.1) == 4  # the fixed input keeps at least 4 pixels
    assert FitConfig(blocks=6).depth(64, 64, 0.001) == 6


def test_a_faithful_result_passes_and_a_smoothed_one_fails():
    rng = np.random.default_rng(1)
    clean = _body()
    noisy = clean + rng.normal(0, 20, clean.shape)
    assert check_fidelity(noisy, clean).passed
    blurred = torch.nn.functional.avg_pool2d(torch.tensor(noisy)[None, None], 5, 1, 2, count_include_pad=False)
    report = check_fidelity(noisy, blurred[0, 0].numpy())
    assert not report.passed and report.slices[0].edge_ratio > MAX_EDGE_RATIO
    assert "FAILED on 1 of 1" in report.summary()
    flattened = check_fidelity(noisy, np.full_like(noisy, 40.0))
    assert flattened.slices[0].residual_ratio > MAX_RESIDUAL_RATIO


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data (present in CI)")
def test_the_check_flags_erased_anatomy_on_the_shared_real_ct_and_passes_the_adapted_decoder():
    """The failure of the issue: on a real 3 mm body CT (its own noise only), the paper's 6-block decoder (here with
    the fast preset's short fit) erases bone and organs; the check flags it. The depth chosen from the noise brings
    the residual closer to the noise level (both without the detail step, tested in test_detail.py)."""
    volume = read_volume(SHARED / "ct_body_j2k_nifti" / "example_ct_sm.nii.gz")
    x = volume.array[15]
    old = dd_medical.denoise(x, "fast", device="cpu", blocks=6, progress=False, detail_threshold=0)
    assert not dd_medical.check(x, old).passed
    adapted = dd_medical.denoise(x, "fast", device="cpu", progress=False, iterations=600, detail_threshold=0)
    report = dd_medical.check(x, adapted)
    assert report.slices[0].residual_ratio < dd_medical.check(x, old).slices[0].residual_ratio


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "in.nii.gz"
    rng = np.random.default_rng(2)
    write_image(Volume((_body(48) + rng.normal(0, 20, (48, 48)))[None].astype(np.float32), modality="CT"), path)
    return path


def test_the_cli_says_when_the_check_fails_and_exits_3(tmp_path, monkeypatch):
    source = _write(tmp_path)
    monkeypatch.setattr(dd_medical.api, "denoise_volume", lambda values, *a, **k: np.full_like(values, 40.0))
    result = CliRunner().invoke(cli, ["denoise", str(source), str(tmp_path / "out"), "--iterations", "1"])
    assert result.exit_code == EXIT_FIDELITY, result.output
    assert "fidelity check FAILED on 1 of 1" in result.output
    ds = pydicom.dcmread(tmp_path / "out" / "IM0001.dcm")
    assert "fidelity check FAILED" in ds.DerivationDescription


def test_the_batch_marks_a_flagged_series_check_and_skips_it_on_a_rerun(tmp_path, monkeypatch):
    from dd_medical.batch import MANIFEST_NAME, run_batch
    from dd_medical.io import write_series

    write_series(Volume((_body(48) + 5.0)[None].repeat(2, 0).astype(np.float32), modality="CT"),
                 tmp_path / "in" / "a", series_description="phantom")
    monkeypatch.setattr("dd_medical.batch.tasks.denoise", lambda values, **k: np.full_like(values, 40.0))
    config = dd_medical.resolve("denoise", "fast", iterations=1)
    summary = run_batch(tmp_path / "in", tmp_path / "out", config=config, device="cpu", progress=False)
    assert summary.ok and len(summary.flagged) == 1 and "fidelity check FAILED" in summary.format()
    rows = sqlite3.connect(tmp_path / "out" / MANIFEST_NAME).execute("SELECT status, reason FROM series").fetchall()
    assert rows[0][0] == "check" and "residual" in rows[0][1]
    assert "flagged by the fidelity check" in (tmp_path / "out" / "report.html").read_text()
    again = run_batch(tmp_path / "in", tmp_path / "out", config=config, device="cpu", progress=False)
    assert again.skipped and len(again.flagged) == 1


def test_a_manifest_from_before_the_check_status_is_upgraded(tmp_path):
    from dd_medical.batch import manifest

    path = tmp_path / "manifest.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(manifest._SCHEMA.replace("'done', 'check', 'failed'", "'done', 'failed'"))
    conn.execute("""INSERT INTO series (key, series_uid, split_key, folder, modality, n_files, source_digest, status,
                    task, updated) VALUES ('a#', 'a', '', 'Sa', 'CT', 2, 'x', 'done', 'denoise', 'now')""")
    conn.commit()
    conn.close()
    upgraded = manifest.Manifest(path)
    try:
        assert upgraded.get("a#")["status"] == "done"
        with upgraded.conn:
            upgraded.conn.execute("UPDATE series SET status='check' WHERE key='a#'")
        assert upgraded.get("a#")["status"] == "check"
    finally:
        upgraded.close()


def test_a_noise_free_input_that_was_changed_is_flagged_in_words_not_infinities():
    before = np.zeros((64, 64), np.float32)
    before[16:48, 16:48] = 100.0  # no noise at all
    report = check_fidelity(before, before * 0.9)
    assert not report.passed
    summary = report.summary()
    assert "no measurable noise" in summary and "inf" not in summary
    assert check_fidelity(before, before).passed
