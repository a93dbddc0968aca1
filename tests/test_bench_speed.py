import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from _bench import run_benchmark  # noqa: E402


def test_bench_speed_quick_writes_rows_columns_ratios_and_bound(tmp_path):
    out = tmp_path / "speed.json"
    proc = run_benchmark("bench_speed.py", "--quick", "--device", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["size"], r["strategy"]) for r in rows] == [(32, "sequential"), (32, "fast"), (48, "sequential"),
                                                           (48, "fast")]
    for r in rows:
        assert set(data["columns"]) <= set(r)
        assert r["slices_per_s"] > 0 and r["peak_memory_mib"] > 0 and 10 < r["psnr"] < 60
        assert r["device"] == "cpu"
    for seq, fast in zip(rows[::2], rows[1::2], strict=True):
        assert seq["time_to_quality_s"] == seq["seconds"] and fast["target_psnr"] == seq["psnr"]
        assert seq["config"]["result"] == "best" and seq["config"]["ensemble"] == 1
        assert fast["config"]["stopping"] == "discrepancy"
    assert [q["size"] for q in data["ratios"]] == [32, 48]
    assert all(q["speedup_slices_per_s"] > 0 for q in data["ratios"])
    bound = data["bounds"][0]
    assert bound["size"] == 512 and bound["channels"] == 64 and bound["bound_s"] > 0
    assert bound["bound_s"] == max(bound["memory_bound_s"], bound["compute_bound_s"])
    assert "Lower bound for one iteration" in proc.stdout


def test_bench_speed_variants_parse_and_check_their_fields():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_speed import parse_overrides
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert parse_overrides("one:ensemble=1,amp=false") == ("one", {"ensemble": 1, "amp": False})
    assert parse_overrides("fp32:amp=False") == ("fp32", {"amp": False})
    assert parse_overrides("plain") == ("plain", {})
    with pytest.raises(TypeError):
        parse_overrides("bad:no_such_field=1")


@pytest.mark.parametrize("deadline", [None, 0.0])
def test_bench_speed_volume_is_timed_or_stopped_at_its_deadline(tmp_path, deadline):
    out = tmp_path / "volume.json"
    args = ["--quick", "--device", "cpu", "--skip-rows", "--volume", "3", "--variant", "one:ensemble=1",
            "--volume-variant", "one", "--json", str(out)]
    proc = run_benchmark("bench_speed.py", *args, *([] if deadline is None else ["--deadline", str(deadline)]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["rows"] == [] and [v["size"] for v in data["volumes"]] == [32, 48]
    for v in data["volumes"]:
        assert v["slices"] == 3 and v["variant"] == "one" and v["config"]["ensemble"] == 1
        if deadline is None:
            assert v["seconds"] > 0 and 10 < v["psnr"] < 60
        else:
            assert v["seconds"] is None and 0 < v["fraction_done"] < 1 and v["projected_s"] > 0


def test_bench_speed_whole_field_of_view_keeps_padding_constant_and_clips_air():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_speed import noisy_slices
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    clean, noisy = noisy_slices(128, 2, "693_UNCR.dcm", downsample=4)  # its padding is stored at -3024 HU
    assert clean.shape == noisy.shape == (2, 128, 128)
    padding = (clean == 0).all(0) & (noisy == 0).all(0)
    assert 0.1 < padding.mean() < 0.3  # constant, as a scanner writes it, not noise clipped at the window
    air = (clean[0] > 0) & (clean[0] < 0.01)
    assert 0.3 < (noisy[:, air] == 0).mean() < 0.7  # air: the noise clipped at the window's bottom
    assert not np.array_equal(noisy[0], noisy[1])


def test_bench_speed_title_writes_a_record_with_the_steps_each_slice_ran(tmp_path):
    out = tmp_path / "record.json"
    proc = run_benchmark("bench_speed.py", "--quick", "--device", "cpu", "--image", "693_UNCR.dcm", "--downsample",
                         "8", "--title", "A record", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["title"] == "A record" and data["topic"] == "speed" and len(data["rows"]) == 4
    assert all(len(row) == len(data["columns"]) for row in data["rows"])
    assert [r["strategy"] for r in data["raw"]] == ["sequential", "fast"] * 2
    for r in data["raw"]:
        assert len(r["steps"]) == r["slices"] and all(1 <= n <= r["iterations"] for n in r["steps"])
        assert r["image"] == "693_UNCR.dcm" and 0 < r["at_bounds"] < 1
