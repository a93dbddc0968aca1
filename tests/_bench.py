"""Running a benchmark script the way a user does, for the tests of its ``--quick`` mode."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> args...`` from the repository root, one torch thread, output captured."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False, env=dict(os.environ, OMP_NUM_THREADS="1"))
