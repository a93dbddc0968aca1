"""The rebuilt package gives the results of the one it replaced (issue 26): the command line's denoise, reconstruct
--simulate and compress, and the fitting loop's variants, on small inputs, against outputs recorded before the
rebuild (``tests/golden/record.py``). Images within 1e-6 of their range; ``.ddc`` files byte for byte.

Fits amplify the last bits of floating-point arithmetic, which differ between kinds of CPU (the same torch wheel
gives differences of 1e-7 after 50 steps on an AVX-512 Xeon, which a stopping rule turns into other stops). So each
output may match any of the recordings: ``golden.npz`` (the first CPU) or ``golden_second_cpu.npz`` (the outputs of
commit 6622812, which matched ``golden.npz`` on the first CPU, recorded on the second with the same inputs)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))

from cases import CASES, FIT_CASES, run_case, run_fit_case  # noqa: E402

RECORDINGS = ("golden.npz", "golden_second_cpu.npz")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    """The inputs and the first recording's outputs; the other recordings' outputs under ``"<file>:output/..."``."""
    out: dict[str, np.ndarray] = {}
    for file in RECORDINGS:
        with np.load(GOLDEN / file) as data:
            prefix = "" if file == RECORDINGS[0] else f"{file}:"
            out |= {prefix + name: data[name] for name in data.files}
    return out


def _recorded(golden: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    return [golden[key] for key in (f"output/{name}", *(f"{f}:output/{name}" for f in RECORDINGS[1:])) if key in golden]


def _image_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference relative to the expected image's range (``inf`` for another shape)."""
    if actual.shape != expected.shape:
        return float("inf")
    span = float(expected.max() - expected.min()) or 1.0
    return float(np.abs(actual - expected).max()) / span


def _inputs(golden: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name.split("/", 1)[1]: value for name, value in golden.items() if name.startswith("input/")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_command_line_output_is_unchanged(name, golden, tmp_path):
    actual = run_case(name, _inputs(golden), tmp_path)
    if CASES[name][3] == ".ddc":
        assert any(actual.tobytes() == expected.tobytes() for expected in _recorded(golden, name))
    else:
        errors = [_image_error(actual, expected) for expected in _recorded(golden, name)]
        assert min(errors) <= 1e-6, f"relative to each recording: {errors}"


@pytest.mark.parametrize("name", sorted(FIT_CASES))
def test_fit_variant_is_unchanged(name, golden):
    actual = run_fit_case(name, _inputs(golden))
    matches = [np.array_equal(actual[-2:], expected[-2:])  # steps run per slice
               and float(np.abs(actual - expected).max()) <= 1e-6 for expected in _recorded(golden, name)]
    assert any(matches), f"steps run {actual[-2:]}; recorded {[e[-2:] for e in _recorded(golden, name)]}"
