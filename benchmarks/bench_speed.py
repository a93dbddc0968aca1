"""Speed: the fast default (batched, ensemble, moving average, stopping rule) against the reference way.

Rows, at each ``--sizes`` (256: a centre crop of pydicom's 693_UNCR.dcm; 512: the full slice), on ``--device``:

* ``sequential``: the reference way, ``denoise_volume(..., strategy="sequential")`` with the reference config
  (k=64, 6 blocks, Adam 0.01, the lowest-loss iterate of a fixed run of ``--sequential-iterations``; the paper's
  2,000 by default): one decoder per slice, one slice after another, fp32.
* ``fast``: the package defaults, ``FitConfig()`` (batched, 2-decoder ensemble, moving average, discrepancy stop;
  ``--fast-iterations`` caps its budget), ``strategy="batched"``, slice by slice (``slab=1``: the ``--slices``
  copies of one slice share their anatomy exactly, which would flatter the default 2.5D slabs).

Setting as in ``bench_denoise.py``: window [-1000, 1000] HU -> [0, 1], Gaussian noise sigma 25/255 (seed 0),
clipped to [0, 1]; ``--slices`` copies of the slice with independent noise. PSNR against the clean slice (MONAI,
data range 1, mean over slices).

Columns: slices per second (slices / wall time of the whole ``denoise_volume`` call); time to quality, the wall
seconds to reach the PSNR that the sequential strategy reaches at its final iteration (``target``), with the bar's
tolerance ``--tolerance-db`` (0.1 dB). Method: every run is a complete, independent ``denoise_volume`` call timed
from start to end. The sequential row's time to quality is its own wall time (its final iterate defines the
target). The fast row is first run with its budget; if it reaches the target its wall time is an upper bound on
its time to quality, then (``--refine N``) it is rerun N more times with smaller iteration budgets (halved until
one misses the target, then bisected between the smallest budget that reaches it and the largest that does not),
and the fastest complete run that reaches the target is kept.
If the fast row never reaches the target, time to quality is ``null``. Peak memory: each row runs in its own
subprocess (``--quick`` runs rows in this process, so its memory column is the whole run's peak); on CPU
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set, includes the ~0.3-0.5 GiB of Python + torch;
``rss_before_fit_mib`` is that baseline), on CUDA ``torch.cuda.max_memory_allocated``. Ratios (fast vs
sequential, same run): ``speedup_slices_per_s`` = fast / sequential slices per second and
``speedup_time_to_quality`` = sequential / fast seconds to quality.

Also printed (computed, not measured): a lower bound for one iteration at 512x512, k=64, 6 blocks, B slices.

    python benchmarks/bench_speed.py --sizes 256 --sequential-iterations 1000 --json speed.json   # CPU
    python benchmarks/bench_speed.py --device cuda --slices 32 --json speed.json                   # GPU
    python benchmarks/bench_speed.py --quick --json out.json                                       # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_denoise import REFERENCE, SIGMA, WINDOW, gaussian_noise  # noqa: E402

from dd_medical.decoder import num_parameters, size_ladder  # noqa: E402
from dd_medical.fitting import FitConfig  # noqa: E402
from dd_medical.intensity import Window  # noqa: E402
from dd_medical.metrics import psnr  # noqa: E402
from dd_medical.pipeline import denoise_volume, resolve_device  # noqa: E402

IMAGE = "693_UNCR.dcm"
COLUMNS = ("strategy", "size", "slices", "device", "iterations", "seconds", "slices_per_s", "psnr", "target_psnr",
           "time_to_quality_s", "peak_memory_mib", "rss_before_fit_mib", "memory_kind")
#: Quick mode (CI smoke run): tiny crops and decoders, a few iterations.
QUICK_SEQUENTIAL = FitConfig(channels=16, blocks=4, iterations=60, result="best", ensemble=1, stopping="fixed")
QUICK_FAST = FitConfig(channels=16, blocks=4, iterations=60, ensemble=2, slab=1)


def noisy_slices(size: int, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Clean ``(D, size, size)`` in [0, 1] (centre crop of 693_UNCR.dcm, windowed) and a noisy copy (seed 0)."""
    ds = pydicom.dcmread(get_testdata_file(IMAGE))
    full = WINDOW.to_unit(apply_rescale(ds.pixel_array, ds))
    if size > min(full.shape):
        raise SystemExit(f"--sizes {size}: {IMAGE} is only {full.shape[0]}x{full.shape[1]} pixels")
    top, left = (full.shape[0] - size) // 2, (full.shape[1] - size) // 2
    clean = np.repeat(full[None, top:top + size, left:left + size], slices, axis=0)
    noisy = gaussian_noise(clean, SIGMA)
    return clean.astype(np.float32), noisy


def _peak_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_row(spec: dict) -> dict:
    """One row, in this process: fit, time, PSNR, peak memory (see the module docstring)."""
    dev = resolve_device(spec["device"])
    config = FitConfig(**spec["config"])
    clean, noisy = noisy_slices(spec["size"], spec["slices"])
    before = _peak_mib(dev) if dev.type == "cpu" else 0.0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def timed(cfg: FitConfig) -> tuple[float, float]:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        out = denoise_volume(noisy, cfg, device=dev, progress=False, window=Window(0.0, 1.0),
                             strategy=spec["strategy"], callback=None)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, float(np.mean(psnr(np.clip(out, 0, 1), clean)))

    seconds, value = timed(config)
    target = spec.get("target_psnr")
    ttq: float | None = seconds
    runs = [dict(iterations=config.iterations, seconds=seconds, psnr=value)]
    if target is not None:
        reached = value >= target - spec["tolerance_db"]
        ttq = seconds if reached else None
        ok, failed = config.iterations, 0  # smallest budget known to reach the target, largest known not to
        for _ in range(spec["refine"] if reached else 0):
            budget = ok // 2 if not failed else (ok + failed) // 2
            if budget < 1 or budget in (ok, failed):
                break
            s, v = timed(replace(config, iterations=budget))
            runs.append(dict(iterations=budget, seconds=s, psnr=v))
            if v < target - spec["tolerance_db"]:
                failed = budget
            else:
                ok, ttq = budget, min(ttq, s)
    return dict(strategy=spec["strategy"], size=spec["size"], slices=spec["slices"], device=str(dev),
                iterations=config.iterations, seconds=seconds, slices_per_s=spec["slices"] / seconds, psnr=value,
                target_psnr=target if target is not None else value, time_to_quality_s=ttq,
                peak_memory_mib=_peak_mib(dev), rss_before_fit_mib=before,
                memory_kind="cuda max_memory_allocated" if dev.type == "cuda" else "ru_maxrss",
                runs=runs, config=asdict(config))


def row_in_subprocess(spec: dict) -> dict:
    """Run :func:`run_row` in a fresh Python, so that its peak memory is its own."""
    proc = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"row {spec['strategy']} {spec['size']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def iteration_bound(batch: int, height: int = 512, width: int = 512, channels: int = 64, blocks: int = 6,
                    bandwidth_gbs: float = 3350.0, peak_tflops: float = 67.0, bytes_per_value: int = 4) -> dict:
    """Lower bound (seconds) for one fitting iteration of ``batch`` decoders, computed, not measured.

    Bytes: every layer's activations in the forward pass, each op reading its input and writing its output once
    (1x1 conv, bilinear upsample, ReLU, instance norm: two reads (statistics, then normalise) and one write,
    output conv, sigmoid, loss), and twice that in the backward pass (each op reads its saved input and the
    incoming gradient and writes the outgoing gradient): 3x the forward traffic, ``bytes_per_value`` per value.
    Weights and Adam state (~25k parameters per decoder, 4 reads/writes each) are added; no fusion assumed.
    FLOPs: 1x1 convs 2*k_in*k_out per pixel forward, twice that backward (input and weight gradients);
    elementwise ops (upsample 8, ReLU 1, norm 6, sigmoid 4 FLOPs per value forward, twice backward).
    """
    ladder = size_ladder(height, width, blocks)
    values = flops = 0.0
    for i in range(blocks):
        p_in = ladder[i][0] * ladder[i][1]
        p_out = ladder[i + 1][0] * ladder[i + 1][1] if i + 1 < len(ladder) else p_in
        values += 2 * channels * p_in  # conv: read, write
        flops += 2 * channels * channels * p_in
        if i + 1 < len(ladder):
            values += channels * (p_in + p_out)  # upsample
            flops += 8 * channels * p_out
        values += 2 * channels * p_out + 3 * channels * p_out  # relu; norm
        flops += 7 * channels * p_out
    pixels = height * width
    values += channels * pixels + pixels + 2 * pixels + 2 * pixels  # output conv, sigmoid, loss (image + target)
    flops += 2 * channels * pixels + 4 * pixels + 3 * pixels
    params = num_parameters(channels, blocks)
    bytes_moved = batch * (3 * values * bytes_per_value + params * 4 * 4 * 2)
    total_flops = batch * (3 * flops + 10 * params)
    t_mem = bytes_moved / (bandwidth_gbs * 1e9)
    t_flop = total_flops / (peak_tflops * 1e12)
    return dict(batch=batch, size=height, channels=channels, blocks=blocks, bytes=bytes_moved, flops=total_flops,
                bandwidth_gbs=bandwidth_gbs, peak_tflops=peak_tflops, bytes_per_value=bytes_per_value,
                memory_bound_s=t_mem, compute_bound_s=t_flop, bound_s=max(t_mem, t_flop))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="slice sizes in pixels")
    parser.add_argument("--slices", type=int, default=1, help="slices per volume (same slice, independent noise)")
    parser.add_argument("--sequential-iterations", type=int, default=REFERENCE.iterations)
    parser.add_argument("--fast-iterations", type=int, help="cap on the fast strategy's budget (default: package)")
    parser.add_argument("--refine", type=int, default=1, help="halved-budget reruns of the fast row (see above)")
    parser.add_argument("--tolerance-db", type=float, default=0.1, help="time to quality: PSNR >= target - this")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 and 48 px crops, tiny decoders")
    parser.add_argument("--json", type=Path, help="write the rows and the bound as JSON here")
    parser.add_argument("--bound-batch", type=int, default=16, help="B for the printed per-iteration bound")
    parser.add_argument("--bandwidth-gbs", type=float, default=3350.0, help="memory bandwidth (H100 SXM: 3350)")
    parser.add_argument("--peak-tflops", type=float, default=67.0, help="fp32 peak (H100 SXM: 67)")
    parser.add_argument("--peak-tflops-bf16", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return

    dev = resolve_device(args.device)
    sequential = replace(REFERENCE, iterations=args.sequential_iterations)
    # Slice by slice (slab=1): the --slices copies share their anatomy exactly, which would flatter 2.5D slabs.
    fast = FitConfig(slab=1) if args.fast_iterations is None else FitConfig(iterations=args.fast_iterations, slab=1)
    sizes, slices, refine = args.sizes, args.slices, args.refine
    if args.quick:
        sequential, fast, sizes, slices, refine = QUICK_SEQUENTIAL, QUICK_FAST, [32, 48], 2, 1
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""), flush=True)
    rows, ratios = [], []
    run = run_row if args.quick else row_in_subprocess
    for size in sizes:
        base = dict(size=size, slices=slices, device=str(dev), tolerance_db=args.tolerance_db, refine=refine)
        seq = run(dict(base, strategy="sequential", config=asdict(sequential)))
        print(f"{size}x{size} sequential: {seq['seconds']:.1f} s, {seq['psnr']:.2f} dB", flush=True)
        fst = run(dict(base, strategy="batched", config=asdict(fast), target_psnr=seq["psnr"]))
        fst["strategy"] = "fast"
        print(f"{size}x{size} fast: {fst['seconds']:.1f} s, {fst['psnr']:.2f} dB, runs {fst['runs']}", flush=True)
        rows += [seq, fst]
        ttq = fst["time_to_quality_s"]
        ratios.append(dict(size=size, speedup_slices_per_s=fst["slices_per_s"] / seq["slices_per_s"],
                           speedup_time_to_quality=None if ttq is None else seq["time_to_quality_s"] / ttq,
                           psnr_difference_db=fst["psnr"] - seq["psnr"]))

    print(f"\n| size | strategy | slices/s | time to quality (s) | PSNR (dB) | peak memory (MiB, "
          f"{rows[0]['memory_kind']}) |\n|---|---|---|---|---|---|")
    for r in rows:
        ttq = "not reached" if r["time_to_quality_s"] is None else f"{r['time_to_quality_s']:.1f}"
        print(f"| {r['size']} | {r['strategy']} | {r['slices_per_s']:.4f} | {ttq} | {r['psnr']:.2f} "
              f"| {r['peak_memory_mib']:.0f} |")
    for q in ratios:
        sq = q["speedup_time_to_quality"]
        print(f"{q['size']}x{q['size']}: fast/sequential slices/s x{q['speedup_slices_per_s']:.2f}, time to quality "
              f"x{'n/a' if sq is None else f'{sq:.2f}'}, PSNR {q['psnr_difference_db']:+.2f} dB")

    bounds = [iteration_bound(args.bound_batch, bandwidth_gbs=args.bandwidth_gbs, peak_tflops=args.peak_tflops),
              iteration_bound(args.bound_batch, bandwidth_gbs=args.bandwidth_gbs, peak_tflops=args.peak_tflops_bf16,
                              bytes_per_value=2)]
    print(f"\nLower bound for one iteration, 512x512, k=64, 6 blocks, B={args.bound_batch} (computed, not measured):")
    for b in bounds:
        print(f"  {8 * b['bytes_per_value']}-bit: {b['bytes'] / 1e9:.2f} GB / {b['bandwidth_gbs']:.0f} GB/s = "
              f"{1e3 * b['memory_bound_s']:.3f} ms; {b['flops'] / 1e12:.3f} TFLOP / {b['peak_tflops']:.0f} TFLOP/s = "
              f"{1e3 * b['compute_bound_s']:.3f} ms; bound {1e3 * b['bound_s']:.3f} ms "
              f"({1e3 * b['bound_s'] / b['batch']:.3f} ms per slice-iteration)")
    if args.json:
        args.json.write_text(json.dumps(dict(columns=list(COLUMNS), rows=rows, ratios=ratios, bounds=bounds,
                                             machine=platform.machine(), torch=torch.__version__,
                                             threads=torch.get_num_threads()), indent=2))


if __name__ == "__main__":
    main()
