import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
from _bench import run_benchmark  # noqa: E402


def _bench_stop():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_stop
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_stop


def test_oracle_stop_keeps_the_checked_estimate_closest_to_the_clean_image():
    """Fixed budgets that end on a checked step are points of the oracle's own run: it is at least as good as each,
    and it reports the step of the estimate it kept."""
    from dd_medical.core.config import FitConfig
    from dd_medical.core.fit import fit
    from dd_medical.core.operators import Identity

    bench_stop = _bench_stop()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:32, :32] / 32.0
    clean = np.stack([0.3 + 0.4 * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.1) + 0.1 * yy] * 2).astype(np.float32)
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    case = bench_stop.Case("disk", "white", noisy, clean, np.ones(clean.shape, bool), None)
    y = torch.from_numpy(noisy)[:, None]
    base = dict(channels=8, blocks=3, loss_every=10, ensemble=2, stopping="fixed")
    mse = lambda image: ((image[:, 0].numpy() - clean) ** 2).mean(axis=(1, 2))  # noqa: E731
    fixed = np.stack([mse(fit(Identity(), y, FitConfig(**base, iterations=n)).image) for n in (11, 41, 121)])
    with bench_stop.oracle_stop(case) as rules:
        oracle = fit(Identity(), y, FitConfig(**base, iterations=121))
    assert np.all(mse(oracle.image) <= fixed.min(axis=0) + 1e-7), (mse(oracle.image), fixed)
    steps = rules[0].stopped_at.numpy()
    assert np.all((steps >= 1) & (steps <= 121) & ((steps - 1) % 10 == 0))  # checked every 10 steps
    assert bench_stop.fitting.make_stopping is not bench_stop.OracleStop  # restored after the block
    assert bench_stop.fitting.make_stopping.__name__ == "make_stopping"


def test_bench_stop_quick_writes_a_record_with_both_stops(tmp_path):
    out = tmp_path / "stop.json"
    proc = run_benchmark("bench_stop.py", "--quick", "--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["topic"] == "denoising" and data["columns"][:2] == ["case", "stop"]
    assert [r[1] for r in data["rows"]] == ["discrepancy (defaults)", "oracle"]
    defaults, oracle = data["raw"]
    assert len(oracle["steps"]) == oracle["slices"] == 2 and all(1 <= s <= 60 for s in oracle["steps"])
    assert 10 < defaults["psnr"] < 60 and oracle["psnr"] >= defaults["psnr"] - 0.5


def test_bench_stop_refuses_a_malformed_case_before_fitting():
    proc = run_benchmark("bench_stop.py", "--cases", "lowdose:ct_body_j2k:3e4", "--device", "cpu")
    assert proc.returncode != 0 and "expected white:IMAGE or lowdose:DATASET:1e5|2e4" in proc.stderr
