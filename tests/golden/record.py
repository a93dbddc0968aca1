"""Record the golden outputs that ``tests/test_golden.py`` compares against.

The outputs in ``golden.npz`` were recorded on a CPU with one torch thread from commit cc56e3c, before the package
was rebuilt around ``core.fit`` (issue 26), so the test showed that the rebuild changed no result. The denoising
cases were recorded again when the defaults changed on purpose (issue 28: the decoder's depth follows the noise
level; the noise estimate leaves out clipped and padded pixels); the reconstruction, codec and ``fit`` cases are
still cc56e3c's. ``golden_second_cpu.npz`` holds the outputs of the same cases and inputs on a second kind of CPU
(an AVX-512 Xeon, whose last bits differ and whose stopping rules then stop elsewhere), from commit 6622812, whose
outputs matched ``golden.npz`` on the first. A case passes when it matches either. Rerun this script only when a
change of results is intended, and say so in the commit (then the second recording is made again on its CPU, or
removed):

    OMP_NUM_THREADS=1 python tests/golden/record.py

Every case goes through the command line (``dd-medical denoise | reconstruct --simulate | compress``), whose commands
and flags are stable, on small inputs stored in the same file.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASES, FIT_CASES, make_inputs, run_case, run_fit_case  # noqa: E402


def main() -> None:
    import torch

    torch.set_num_threads(1)
    inputs = make_inputs()
    arrays: dict[str, np.ndarray] = {f"input/{name}": value for name, value in inputs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            arrays[f"output/{name}"] = run_case(name, inputs, Path(tmp))
            print(name, arrays[f"output/{name}"].shape, flush=True)
    for name in FIT_CASES:
        arrays[f"output/{name}"] = run_fit_case(name, inputs)
        print(name, arrays[f"output/{name}"].shape, flush=True)
    np.savez_compressed(HERE / "golden.npz", **arrays)


if __name__ == "__main__":
    main()
