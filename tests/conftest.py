"""Test-session settings.

The suite's images are tiny (32-128 px): with more than one intra-op thread, PyTorch's CPU kernels spend far more
time waking threads than computing (instance norm on a 24x32x32 tensor: 0.4 ms with one thread, ~30 ms with two
on a 2-core machine). One thread per process, also for the CLI subprocesses the tests start, keeps the suite fast.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
