import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_reconstruct  # noqa: E402

from dd_medical import presets  # noqa: E402
from dd_medical.pipeline import reconstruct_volume  # noqa: E402
from dd_medical.simulation import simulate  # noqa: E402


def _image(n: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:n, 0:n] / n
    return (100 * (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + 0.2 * (x > 0.5))).astype(np.float32)


@pytest.mark.parametrize("kind", ["mri", "inpaint"])
def test_decoder_results_equal_the_pipeline_per_kind_and_both(kind):
    sim = simulate(_image(), kind, modality="MR", acceleration=4, center_fraction=0.08, missing=0.5)
    config = presets.resolve("reconstruct/" + sim.operator.kind, architecture="both", iterations=4, channels=8,
                             blocks=3)
    results = bench_reconstruct.decoder_results(sim.measurements, sim.operator, config)
    assert list(results) == ["deep", "conv", "both"]
    for architecture, (image, seconds) in results.items():
        expected = reconstruct_volume(sim.measurements, sim.operator, replace(config, architecture=architecture),
                                      "cpu", progress=False)
        np.testing.assert_array_equal(image, expected)
        assert seconds > 0
    single = bench_reconstruct.decoder_results(sim.measurements, sim.operator, replace(config, architecture="conv"))
    assert list(single) == ["conv"]
    np.testing.assert_array_equal(single["conv"][0], results["conv"][0])


def test_run_setting_gives_baseline_tv_and_decoder_rows():
    rows = bench_reconstruct.run_setting(_image(), "MR", "mri", {"acceleration": 4, "center_fraction": 0.08},
                                         (0.01,), 20, False, 3, ("default",), None)
    names = [r[0] for r in rows]
    assert names[:2] == ["zero-filled", "TV-PDHG (w=0.01)"]
    assert names[2].startswith("Deep Decoder (k=64, 3 it, 2 averaged")
    assert names[3].startswith("ConvDecoder (") and names[4].startswith("both averaged (")
    assert all(np.isfinite(r[1]) and 0 < r[2] <= 1 and r[3] >= 0 for r in rows)
