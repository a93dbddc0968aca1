"""The rebuilt package gives the results of the one it replaced (issue 26): the command line's denoise, reconstruct
--simulate and compress, and the fitting loop's variants, on small inputs, against outputs recorded before the
rebuild (``tests/golden/record.py``). Images within 1e-6 of their range; ``.ddc`` files byte for byte."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

from cases import CASES, FIT_CASES, run_case, run_fit_case  # noqa: E402


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "golden.npz") as data:
        return {name: data[name] for name in data.files}


def _inputs(golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name.split("/", 1)[1]: value for name, value in golden.items() if name.startswith("input/")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_command_line_output_is_unchanged(name, golden, tmp_path):
    expected = golden[f"output/{name}"]
    actual = run_case(name, _inputs(golden), tmp_path)
    if CASES[name][3] == ".ddc":
        assert actual.tobytes() == expected.tobytes()
    else:
        assert actual.shape == expected.shape
        span = float(expected.max() - expected.min()) or 1.0
        assert float(np.abs(actual - expected).max()) <= 1e-6 * span


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_fit_variant_is_unchanged(name, golden):
    expected = golden[f"output/{name}"]
    actual = run_fit_case(name, _inputs(golden))
    np.testing.assert_array_equal(actual[-2:], expected[-2:])  # steps run per slice
    assert float(np.abs(actual - expected).max()) <= 1e-6
