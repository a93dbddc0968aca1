"""First, do no harm (issue 28): structure a fit left in its residual goes back into the result
(:mod:`dd_medical.core.detail`), noise does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dd_medical
from dd_medical.core.detail import keep_anatomy, return_detail, starlet
from dd_medical.core.fidelity import check_fidelity
from dd_medical.io import read_volume

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _body(size: int = 96) -> torch.Tensor:
    """HU: air, a body ellipse, a bright vertebra and a small soft lesion."""
    yy, xx = torch.meshgrid(torch.arange(size) / size - 0.5, torch.arange(size) / size - 0.5, indexing="ij")
    body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 < 1
    bone = xx**2 + (yy - 0.15) ** 2 < 0.004
    lesion = (xx + 0.15) ** 2 + (yy + 0.05) ** 2 < 0.003
    return torch.where(body, 40.0, -1000.0) + 700.0 * bone + 60.0 * lesion


def test_the_starlet_bands_sum_to_the_image():
    image = torch.randn(37, 53, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    details, coarse = starlet(image)
    assert len(details) == 4
    assert torch.allclose(sum(details) + coarse, image, atol=1e-12)


def test_noise_in_the_residual_stays_out_and_erased_anatomy_comes_back():
    clean = _body()
    noise = 20 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    noisy = clean + noise
    # a perfect denoiser: its residual is pure noise; little of it is significant, and the slice is faithful, so the
    # default step leaves it as it is
    assert float((return_detail(noisy, clean) - clean).std()) < 0.15 * 20
    assert keep_anatomy(noisy, clean) == (clean, 0.0)
    # a denoiser that also erased the bone and the lesion: they come back, at their height
    erased = torch.where(clean > 100, 40.0, clean)
    erased = torch.where((clean > 90) & (clean < 110), 40.0, erased)
    before = check_fidelity(noisy.numpy(), erased.numpy())
    restored = return_detail(noisy, erased)
    after = check_fidelity(noisy.numpy(), restored.numpy())
    assert not before.passed and after.passed
    bone = clean > 700
    assert abs(float(restored[bone].mean()) - 740) < 15
    assert float(restored[(clean > 90) & (clean < 110)].mean()) > 80  # the lesion is 100 HU
    assert torch.equal(return_detail(noisy, erased, threshold=0), erased)
    least, used = keep_anatomy(noisy, erased)
    assert used > 0 and check_fidelity(noisy.numpy(), least.numpy()).passed


def test_constant_padding_gets_its_input_value_back():
    noisy = _body() + 20 * torch.randn(96, 96, generator=torch.Generator().manual_seed(2))
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    outside = (yy - 48) ** 2 + (xx - 48) ** 2 > 46**2
    noisy[outside] = -2048.0
    smooth = torch.nn.functional.avg_pool2d(noisy[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    out = return_detail(noisy, smooth)
    assert torch.equal(out[outside], noisy[outside])


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data (present in CI)")
def test_the_defaults_keep_the_anatomy_of_the_shared_real_ct():
    """The issue's case: the shared 3 mm body CT, no noise added. Without the detail step the fit (the fast preset, as
    the check's own test) smooths bone and edges, and the check flags it; with it the slice passes, and the bone's
    maximum is kept within 5%."""
    x = read_volume(SHARED / "ct_body_j2k_nifti" / "example_ct_sm.nii.gz").array[15]
    without = dd_medical.denoise(x, "fast", device="cpu", progress=False, detail_threshold=0)
    assert not dd_medical.check(x, without).passed
    with_detail = dd_medical.denoise(x, "fast", device="cpu", progress=False)
    report = dd_medical.check(x, with_detail).slices[0]
    assert report.passed and report.residual_ratio <= 1.3, report
    assert abs(float(with_detail.max()) / float(x.max()) - 1) < 0.05


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/data (present in CI)")
def test_the_fidelity_benchmark_runs_and_writes_its_record(tmp_path):
    import json

    from _bench import run_benchmark

    out, figure = tmp_path / "fidelity.json", tmp_path / "fidelity.png"
    proc = run_benchmark("bench_fidelity.py", "--quick", "--device", "cpu", "--json", str(out), "--figure",
                         str(figure))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    assert [r["fit"] for r in record["raw"]] == ["decoder alone", "defaults (detail returned)"]
    assert len(record["rows"][0]) == len(record["columns"]) and figure.stat().st_size > 0
    # one fit, two rows: the step can only bring the residual closer to noise
    alone, kept = record["raw"]
    assert kept["residual_ratio"] <= alone["residual_ratio"]
