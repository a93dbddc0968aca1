"""The reconstruction check's measurement: ``benchmarks/reconstruction_check.py`` (issue 32)."""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _bench import run_benchmark  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import reconstruction_check as bench  # noqa: E402

from dd_medical.core import reconstruction_check as rc  # noqa: E402


def test_quick_run_writes_a_record_with_every_case_scored(tmp_path):
    out = tmp_path / "check.json"
    proc = run_benchmark("reconstruction_check.py", "--quick", "--json", str(out), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {"title", "topic", "what", "machine", "command", "limits", "results", "grid", "cases"} <= set(data)
    assert "rows" not in data  # not a results.md table: its figures go to docs/reconstruction.md
    assert "quick" in data["title"] and "reconstruction_check.py --quick" in data["command"]
    assert len(data["cases"]) == 4 and {c["half"] for c in data["cases"]} == {"calibration", "test"}
    assert {c["modality"] for c in data["cases"]} == {"MR", "CT"}
    for case in data["cases"]:
        assert case["below"] == (case["psnr"] < case["psnr_baseline"]) and case["misfit"] >= 0
        assert (case["disagreement"] is None) == (case["modality"] == "CT")
    assert len(data["grid"]["misfit"]) == len(bench.MISFIT_GRID)
    assert len(data["grid"]["disagreement"]) == len(bench.DISAGREEMENT_GRID)
    assert data["results"]["calibration"]["slices"] == data["results"]["test"]["slices"] == 2
    assert "--cache" not in data["command"]


def _case(misfit: float, disagreement: float | None, below: bool, half: str = "calibration") -> bench.Case:
    return bench.Case("c", "MR", 0, half, "s", 1, 0, misfit=misfit, disagreement=disagreement,
                      psnr=10.0 if below else 20.0, psnr_baseline=15.0)


def test_the_limits_chosen_flag_the_target_share_with_the_fewest_false_alarms():
    # the misfit alone separates these: below their baseline at 0.3 and more, above at 0.05 and less
    cases = [_case(m, 0.1, True) for m in (0.3, 0.4, 0.6)] + [_case(m, 0.1, False) for m in (0.01, 0.03, 0.05)]
    max_misfit, max_disagreement, grid = bench.choose(cases)
    assert max_misfit == 0.2 and max_disagreement == math.inf  # the largest limits that still catch them all
    assert bench.score(cases, max_misfit, max_disagreement) == {
        "slices": 6, "below": 3, "flagged_below": 3, "flagged_others": 0, "sensitivity": 1.0,
        "false_alarm_rate": 0.0, "largest_missed_shortfall_db": None}
    assert bench.score(cases, 0.5, math.inf)["largest_missed_shortfall_db"] == 5.0  # 0.6 flagged, 0.3 and 0.4 not
    # a disagreement that separates them: the misfit limit moves out of the way
    cases = [_case(0.01, d, True) for d in (1.5, 2.5)] + [_case(0.01, d, False) for d in (0.3, 0.6)]
    assert bench.choose(cases)[:2] == (math.inf, 1.4)
    # the disagreement's limit is chosen by itself, even where a misfit limit would flag every slice
    cases = [_case(0.5, d, True) for d in (1.9, 2.2, 2.6)] + [_case(0.5, d, False) for d in (0.8, 1.1)]
    assert bench.choose(cases)[1] == 1.8


def test_the_package_limits_are_those_the_measurement_chose_and_the_docs_show_it():
    record = json.loads(bench.RECORD.read_text())
    assert record["limits"]["max_misfit"] == rc.MAX_MISFIT
    assert record["limits"]["max_disagreement"] == rc.MAX_DISAGREEMENT
    assert record["machine"] == "cpu-2core" and record["command"].startswith("python benchmarks/")
    assert bench.render(record) in bench.DOCS.read_text(), "run: python benchmarks/reconstruction_check.py --docs"
    test = record["results"]["test"]
    assert test["below"] > 0 and test["slices"] - test["below"] > 0  # both kinds of slices were measured
