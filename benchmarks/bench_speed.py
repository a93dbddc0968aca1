"""Speed: the fast default (batched, ensemble, moving average, stopping rule) against the reference way.

Rows, for each ``--image`` (default pydicom-data's 693_UNCR.dcm; a DICOM file, a series folder's middle slice, or
a pydicom test file's name) at each ``--sizes`` (256: a centre crop; 512: the full slice; ``--downsample 4 --sizes
128``: the whole field of view block-averaged to 128 px, its clipped air and padding included), on ``--device``:

* ``sequential``: the reference way (:func:`denoise` with ``strategy="sequential"``: ``denoise_volume`` with
  ``batch_size=1`` and ``amp=False``) with the reference config (k=64, 6 blocks, Adam 0.01, the lowest-loss iterate
  of a fixed run of ``--sequential-iterations``; the paper's 2,000 by default): one decoder per slice, one slice
  after another, fp32.
* ``fast``: the package defaults, ``FitConfig()`` (batched, 2-decoder ensemble, moving average, discrepancy stop;
  ``--fast-iterations`` caps its budget; bf16 autocast on CUDA), ``strategy="batched"`` (the package's automatic
  batch size), slice by slice
  (``slab=1``: the ``--slices`` copies of one slice share their anatomy exactly, which would flatter 2.5D slabs).
* one more row per ``--variant NAME:key=value,...`` (the fast config with those fields, e.g. ``fp32:amp=false``).
* ``--sequential-slices N`` fits only N slices in the sequential row: one slice after another does the same work
  per slice, so its slices/s holds for ``--slices`` and its time to quality is scaled to ``--slices``.

Setting as in ``bench_denoise.py``: window [-1000, 1000] HU -> [0, 1], Gaussian noise sigma 25/255 (seed 0),
clipped to [0, 1] (air below -1000 HU is clipped noise); the scanner's padding outside the field of view (stored
below -1024 HU) stays constant, as a scanner writes it; ``--slices`` copies of the slice with independent noise. PSNR
against the clean slice (MONAI, data range 1, mean over slices). Each row also gives the steps each slice ran (from
the pipeline's log) and the share of pixels at the window's bounds.

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

Also printed (computed, not measured): a lower bound for one iteration at 512x512, k=64, 6 blocks, B slices;
with ``--iteration-batches``, measured ms per iteration of one pass of B decoders against that bound. ``--volume D``
times one D-slice volume with the fast config (or ``--volume-variant``); with ``--deadline`` it is stopped there
and reports the fraction done and ``projected_s`` (an upper bound: it assumes every chunk runs its whole budget).
``benchmarks/gpu_check.sh`` runs the CUDA tests and all of this in one call.

    python benchmarks/bench_speed.py --sizes 256 --sequential-iterations 1000 --json speed.json   # CPU
    python benchmarks/bench_speed.py --device cuda --sizes 512 --slices 8 --sequential-slices 1 \
        --fast-iterations 600 --refine 1 --variant fp32:amp=false --json speed.json               # GPU
    python benchmarks/bench_speed.py --image 693_UNCR.dcm ../shared/data/ct_head_gantry_tilt \
        ../shared/data/ct_body_j2k --downsample 4 --sizes 128 --slices 4 --sequential-slices 1 --refine 3  # clipped
    python benchmarks/bench_speed.py --quick --json out.json                                       # smoke run

``--title`` writes the JSON as a record for ``docs/results.md`` (a table in ``rows``, the measurements in ``raw``).
``--json auto`` writes ``benchmarks/measured/speed_<machine>.json`` (``benchmarks/machine.py``: the GPU's model, e.g.
``h200``, or ``cpu-<N>core``); the JSON also says which machine (``machine``, ``machine_tag``) and which command
(``command``, ``date``) produced it.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_denoise import REFERENCE, SIGMA, WINDOW, gaussian_noise  # noqa: E402
from machine import json_help, json_path, machine_description, machine_tag, write_json  # noqa: E402
from resample import block_mean  # noqa: E402

from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.decoder import num_parameters, size_ladder  # noqa: E402
from dd_medical.core.intensity import Window  # noqa: E402
from dd_medical.metrics import psnr  # noqa: E402
from dd_medical.pipeline import denoise_volume, resolve_device  # noqa: E402

IMAGE = "693_UNCR.dcm"
COLUMNS = ("strategy", "size", "slices", "device", "iterations", "seconds", "slices_per_s", "psnr", "target_psnr",
           "time_to_quality_s", "peak_memory_mib", "rss_before_fit_mib", "memory_kind")
#: Quick mode (CI smoke run): tiny crops and decoders, a few iterations.
QUICK_SEQUENTIAL = FitConfig(channels=16, blocks=4, iterations=60, result="best", ensemble=1, stopping="fixed")
QUICK_FAST = FitConfig(channels=16, blocks=4, iterations=60, ensemble=2, slab=1)


#: Stored values below this (HU) are the scanner's padding outside the field of view (-1500, -2048, -3024...).
PADDING_HU = -1024.0


def dicom_slice(image: str | None) -> str:
    """The file of ``image``: a DICOM file, a folder of one series (its middle file in name order), or the name of
    a pydicom test file; default pydicom-data's 693_UNCR.dcm."""
    if image is None:
        return get_testdata_file(IMAGE)
    path = Path(image)
    if not path.exists():
        found = get_testdata_file(image)
        if found is None:
            raise SystemExit(f"--image {image}: no such file, folder or pydicom test file")
        return found
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and pydicom.misc.is_dicom(f))
        if not files:
            raise SystemExit(f"--image {image}: no DICOM file in the folder")
        return str(files[len(files) // 2])
    return image


def image_label(image: str | None) -> str:
    """A short name for ``image`` in the rows (the folder's name for a series; no identifying values)."""
    if image is None:
        return IMAGE
    path = Path(image)
    return path.name if path.is_dir() or len(path.name) < 24 else path.parent.name  # long names are UIDs


def noisy_slices(size: int, slices: int, image: str | None = None,
                 downsample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Clean ``(D, size, size)`` in [0, 1] (centre crop of ``image`` (:func:`dicom_slice`), block-averaged
    ``downsample`` x ``downsample`` first, windowed) and a noisy copy (seed 0). The scanner's padding (stored below
    :data:`PADDING_HU`; a block all padding) stays constant in the noisy copy, as a scanner writes it; noise clipped
    at the window (air) is clipped as in ``gaussian_noise``."""
    ds = pydicom.dcmread(dicom_slice(image))
    hu = apply_rescale(ds.pixel_array, ds).astype(np.float64)
    padding = hu < PADDING_HU
    if downsample > 1:
        padding, hu = block_mean(padding.astype(np.float64), downsample) == 1, block_mean(hu, downsample)
    full = WINDOW.to_unit(hu)
    if size > min(full.shape):
        raise SystemExit(f"--sizes {size}: {image_label(image)} is only {full.shape[0]}x{full.shape[1]} pixels")
    top, left = (full.shape[0] - size) // 2, (full.shape[1] - size) // 2
    crop = (slice(top, top + size), slice(left, left + size))
    clean = np.repeat(full[crop][None], slices, axis=0)
    noisy = gaussian_noise(clean, SIGMA)
    noisy[:, padding[crop]] = clean[:, padding[crop]]
    return clean.astype(np.float32), noisy


def _peak_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _memory_kind(dev: torch.device) -> str:
    return "cuda max_memory_allocated" if dev.type == "cuda" else "ru_maxrss"


class _DeadlineError(Exception):
    """A timed volume ran past its ``deadline_s``."""


def iteration_times(size: int, batches: list[int], modes: dict[str, dict], dev: torch.device, steps: int = 20,
                    bandwidth_gbs: float = 3350.0, peak_tflops: float = 67.0,
                    peak_tflops_bf16: float = 989.0) -> list[dict]:
    """Milliseconds per fitting iteration of ``B`` decoders (k=64, 6 blocks) at ``size`` x ``size``, per mode.

    Each measurement is ``fit`` with a fixed budget (one pass per iteration, ``pass_size=B``), timed at ``steps``
    and ``2 * steps`` iterations; the difference over ``steps`` removes the set-up (decoder construction, first
    call, compilation).
    """
    from dd_medical.core.fit import fit
    from dd_medical.core.operators import Identity

    rows = []
    for name, overrides in modes.items():
        for b in batches:
            y = torch.rand(b, 1, size, size)
            timings = []
            try:
                for n in (1, steps, 2 * steps):
                    cfg = FitConfig(iterations=n, ensemble=1, stopping="fixed", **overrides)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    t0 = time.perf_counter()
                    fit(Identity(), y, cfg, device=dev, pass_size=b)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    timings.append(time.perf_counter() - t0)
            except torch.OutOfMemoryError:
                rows.append(dict(mode=name, size=size, batch=b, ms_per_iteration=None, error="out of memory"))
                torch.cuda.empty_cache()
                continue
            ms = 1e3 * (timings[2] - timings[1]) / steps
            amp = FitConfig(**overrides).amp and dev.type == "cuda"
            bound = iteration_bound(b, size, size, bandwidth_gbs=bandwidth_gbs,
                                    peak_tflops=peak_tflops_bf16 if amp else peak_tflops,
                                    bytes_per_value=2 if amp else 4)
            rows.append(dict(mode=name, size=size, batch=b, ms_per_iteration=ms, ms_per_decoder_iteration=ms / b,
                             bound_ms=1e3 * bound["bound_s"], times_bound=ms / (1e3 * bound["bound_s"]),
                             first_call_s=timings[0]))
            print(f"  {name:>10} {size}x{size} B={b:>3}: {ms:8.2f} ms/iteration, {ms / b:6.3f} ms per decoder, "
                  f"{rows[-1]['times_bound']:.1f}x the bound", flush=True)
    return rows


STRATEGIES = ("batched", "sequential")


def denoise(noisy: np.ndarray, config: FitConfig, dev: torch.device, strategy: str,
            progress: bool | Callable[[float], None] = False) -> np.ndarray:
    """``noisy`` ``(D, H, W)`` in [0, 1] denoised by :func:`~dd_medical.pipeline.denoise_volume` (window [0, 1]).

    ``strategy``: ``"batched"``, the package's way (``batch_size`` slices per pass, chosen from the free memory);
    ``"sequential"``, the reference way kept here as a baseline: one decoder per slice, one slice after another
    (``batch_size=1``), fp32 (``config.amp`` ignored), through the same fitting loop.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    batch_size = None
    if strategy == "sequential":
        config, batch_size = replace(config, amp=False), 1
    return denoise_volume(noisy, config, dev, window=Window(0.0, 1.0), batch_size=batch_size, progress=progress)


class _StepsRun(logging.Handler):
    """Collects the steps each slice ran from the pipeline's log ("slices a-b: steps run ...")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "steps run" in str(record.msg):
            self.steps += [int(n) for n in str(record.args[2]).split()]


def run_row(spec: dict) -> dict:
    """One row, in this process: fit, time, PSNR, peak memory, the steps each slice ran (see the module
    docstring)."""
    dev = resolve_device(spec["device"])
    config = FitConfig(**spec["config"])
    clean, noisy = noisy_slices(spec["size"], spec["slices"], spec.get("image"), spec.get("downsample", 1))
    before = _peak_mib(dev) if dev.type == "cpu" else 0.0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    deadline = spec.get("deadline_s")
    done = [0.0]

    def watch(fraction: float) -> None:  # a volume run past its deadline is stopped (it has missed its bar)
        done[0] = fraction  # the pipeline also reports 0 before the first step: the projection needs some progress
        if deadline is not None and fraction > 0 and time.perf_counter() - t0 > deadline:
            raise _DeadlineError

    def timed(cfg: FitConfig) -> tuple[float, float, list[int]]:
        nonlocal t0
        steps, pipeline_log = _StepsRun(), logging.getLogger("dd_medical.pipeline")
        pipeline_log.addHandler(steps)
        pipeline_log.setLevel(logging.INFO)
        try:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            out = denoise(noisy, cfg, dev, spec["strategy"], progress=watch if deadline is not None else False)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - t0, float(np.mean(psnr(np.clip(out, 0, 1), clean))), steps.steps
        finally:
            pipeline_log.removeHandler(steps)

    t0 = 0.0
    try:
        seconds, value, ran = timed(config)
    except _DeadlineError:
        spent = time.perf_counter() - t0
        return dict(strategy=spec["strategy"], size=spec["size"], slices=spec["slices"], device=str(dev),
                    iterations=config.iterations, seconds=None, deadline_s=deadline, fraction_done=done[0],
                    projected_s=spent / max(done[0], 1e-9), slices_per_s=spec["slices"] * done[0] / spent,
                    psnr=None, target_psnr=None, time_to_quality_s=None, peak_memory_mib=_peak_mib(dev),
                    rss_before_fit_mib=before, memory_kind=_memory_kind(dev), runs=[], config=asdict(config))
    target = spec.get("target_psnr")
    ttq: float | None = seconds
    runs = [dict(iterations=config.iterations, seconds=seconds, psnr=value, steps=ran)]
    if target is not None:
        reached = value >= target - spec["tolerance_db"]
        ttq = seconds if reached else None
        ok, failed = config.iterations, 0  # smallest budget known to reach the target, largest known not to
        for _ in range(spec["refine"] if reached else 0):
            budget = ok // 2 if not failed else (ok + failed) // 2
            if budget < 1 or budget in (ok, failed):
                break
            s, v, ran = timed(replace(config, iterations=budget))
            runs.append(dict(iterations=budget, seconds=s, psnr=v, steps=ran))
            if v < target - spec["tolerance_db"]:
                failed = budget
            else:
                ok, ttq = budget, min(ttq, s)
    return dict(strategy=spec["strategy"], size=spec["size"], slices=spec["slices"], device=str(dev),
                image=image_label(spec.get("image")), downsample=spec.get("downsample", 1),
                at_bounds=float(((noisy <= 0) | (noisy >= 1)).mean()),
                iterations=config.iterations, steps=runs[0]["steps"], seconds=seconds,
                slices_per_s=spec["slices"] / seconds, psnr=value,
                target_psnr=target if target is not None else value, time_to_quality_s=ttq,
                peak_memory_mib=_peak_mib(dev), rss_before_fit_mib=before, memory_kind=_memory_kind(dev),
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


RECORD_COLUMNS = ["slice (pixels at the window's bounds)", "strategy", "steps run per slice", "complete run: s / dB",
                  "time to quality (s)", "x sequential"]


def as_record(out: dict, title: str, machine: str) -> dict:
    """``out`` as a record for ``benchmarks/report.py`` (``machine``: its tag, e.g. ``cpu-2core``): ``title``,
    ``topic``, ``what``, a table in ``rows`` (:data:`RECORD_COLUMNS`), the measured rows in ``raw``."""
    rows, ratios = [], {(q["image"], q["size"], q["strategy"]): q for q in out["ratios"]}
    for r in out["rows"]:
        ratio = ratios.get((r["image"], r["size"], r["strategy"]))
        ttq = r["time_to_quality_s"]
        steps = sorted(r.get("steps") or [])
        rows.append([f"{r['image']}, {r['size']} px ({100 * r['at_bounds']:.0f}%)", r["strategy"],
                     f"{steps[0]}-{steps[-1]}" if steps and steps[0] != steps[-1] else str(steps[0] if steps else ""),
                     f"{r['seconds']:.1f} / {r['psnr']:.2f}", "not reached" if ttq is None else f"{ttq:.1f}",
                     "1" if ratio is None else "n/a" if ratio["speedup_time_to_quality"] is None
                     else f"**{ratio['speedup_time_to_quality']:.2f}**"])
    first = out["rows"][0] if out["rows"] else {}
    fast = next((r for r in out["rows"] if r["strategy"] == "fast"), {})
    downsample, slices = first.get("downsample", 1), first.get("slices", 1)
    crop = (f"Each slice block-averaged {downsample}x{downsample} (its whole field of view) and centre-cropped"
            if downsample > 1 else "A centre crop of each slice")
    copies = ("one noisy copy" if slices == 1 else f"{slices} copies of each slice with independent noise, in one call"
              + (f" (the sequential row fits {first['measured_slices']}, one after another, and its time is scaled)"
                 if "measured_slices" in first else ""))
    cap = f", at most {fast['iterations']} steps" if fast and fast["iterations"] != FitConfig().iterations else ""
    what = (f"{crop}; white noise sigma 25/255 (about 196 HU) on the [-1000, 1000] HU window, clipped at the window "
            f"(air), the scanner's padding left constant; {copies}. The percentage is the pixels at the window's "
            "bounds. Sequential: the reference way (one decoder, fp32, the lowest-loss iterate of a fixed run); fast: "
            f"the defaults{cap}. Time to quality: the fastest complete run reaching the sequential run's PSNR within "
            f"0.1 dB. {out['machine']}.")
    return dict(title=title, topic="speed", what=what, source="benchmarks/bench_speed.py", columns=RECORD_COLUMNS,
                rows=rows, raw=out["rows"], ratios=out["ratios"], machine=machine, torch=out["torch"],
                threads=out["threads"])


def parse_overrides(text: str) -> tuple[str, dict]:
    """``"name:key=value,key=value"`` -> ``(name, {key: value})`` (FitConfig fields; values parsed as JSON)."""
    name, _, rest = text.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value.lower() if value in ("True", "False") else value)
        except json.JSONDecodeError:
            overrides[key] = value
    FitConfig(**overrides)  # unknown fields or bad values fail here, before anything runs
    return name, overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="slice sizes in pixels")
    parser.add_argument("--slices", type=int, default=1, help="slices per volume (same slice, independent noise)")
    parser.add_argument("--sequential-slices", type=int,
                        help="fit only this many slices in the sequential row (default --slices): one slice after "
                             "another does the same work per slice, so its slices/s holds for --slices and its "
                             "time to quality is scaled to --slices")
    parser.add_argument("--sequential-iterations", type=int, default=REFERENCE.iterations)
    parser.add_argument("--fast-iterations", type=int, help="cap on the fast strategy's budget (default: package)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="an extra fast row: the defaults with these FitConfig fields, e.g. bf16:amp=true")
    parser.add_argument("--refine", type=int, default=1, help="halved-budget reruns of the fast row (see above)")
    parser.add_argument("--tolerance-db", type=float, default=0.1, help="time to quality: PSNR >= target - this")
    parser.add_argument("--image", nargs="+", default=[None],
                        help="DICOM slices to crop, series folders (their middle slice) or pydicom test files' names; "
                             "rows for each (default pydicom-data's 693_UNCR.dcm)")
    parser.add_argument("--downsample", type=int, default=1,
                        help="block-average each slice N x N before the crop (4: a 512 px slice's whole field of "
                             "view, air and padding included, at 128 px)")
    parser.add_argument("--title", help="write the JSON as a record for docs/results.md (benchmarks/report.py) with "
                                        "this title: a table in 'rows', the measurements in 'raw'")
    parser.add_argument("--iteration-batches", type=int, nargs="*", default=[],
                        help="also print ms per iteration for these numbers of decoders (one pass) at each size")
    parser.add_argument("--iteration-modes", nargs="*", default=["fp32:amp=false"], metavar="NAME:KEY=VALUE,...",
                        help="configs for --iteration-batches (default fp32; e.g. bf16:amp=true compiled:compile=true)")
    parser.add_argument("--volume", type=int, help="after the rows, time one volume of this many slices at each "
                                                   "size with the fast config (or --volume-variant)")
    parser.add_argument("--volume-variant", help="name of a --variant to use for --volume")
    parser.add_argument("--deadline", type=float, help="stop the --volume run after this many seconds (it then "
                                                       "reports the fraction done and the projected time)")
    parser.add_argument("--skip-rows", action="store_true", help="no sequential/fast rows (e.g. --volume alone)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 and 48 px crops, tiny decoders")
    parser.add_argument("--json", type=Path,
                        help=json_help("speed", "write the rows and the bound as JSON here (after every row)"))
    parser.add_argument("--bound-batch", type=int, default=16, help="B for the printed per-iteration bound")
    parser.add_argument("--bandwidth-gbs", type=float, default=3350.0, help="memory bandwidth (H100 SXM: 3350)")
    parser.add_argument("--peak-tflops", type=float, default=67.0, help="fp32 peak (H100 SXM: 67)")
    parser.add_argument("--peak-tflops-bf16", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return

    dev = resolve_device(args.device)
    sequential = replace(REFERENCE, iterations=args.sequential_iterations)
    # Slice by slice (slab=1): the --slices copies share their anatomy exactly, which would flatter 2.5D slabs.
    fast = FitConfig(slab=1) if args.fast_iterations is None else FitConfig(iterations=args.fast_iterations, slab=1)
    variants = dict(parse_overrides(v) for v in args.variant)
    sizes, slices, refine = args.sizes, args.slices, args.refine
    seq_slices = min(args.sequential_slices or slices, slices)
    if args.quick:
        sequential, fast, sizes, slices, refine, seq_slices = QUICK_SEQUENTIAL, QUICK_FAST, [32, 48], 2, 1, 2
        variants = {name: dict(over, channels=16, blocks=4, iterations=60) for name, over in variants.items()}
    json_file = json_path(args.json, "speed", dev)
    machine = machine_description(dev)
    print(f"machine: {machine}", flush=True)
    bounds = [iteration_bound(args.bound_batch, bandwidth_gbs=args.bandwidth_gbs, peak_tflops=args.peak_tflops),
              iteration_bound(args.bound_batch, bandwidth_gbs=args.bandwidth_gbs, peak_tflops=args.peak_tflops_bf16,
                              bytes_per_value=2)]
    out: dict = dict(columns=list(COLUMNS), rows=[], ratios=[], bounds=bounds, iteration_times=[], volumes=[],
                     machine=machine, torch=torch.__version__, threads=torch.get_num_threads())

    def save() -> None:
        write_json(json_file, out if args.title is None else as_record(out, args.title, machine_tag(dev)), dev,
                   None if argv is None else [__file__, *argv])

    if args.iteration_batches:
        modes = dict(parse_overrides(m) for m in args.iteration_modes)
        if args.quick:
            modes = {name: dict(over, channels=16, blocks=4) for name, over in modes.items()}
        print("ms per iteration (one pass of B decoders, k=64, 6 blocks):", flush=True)
        for size in sizes:
            out["iteration_times"] += iteration_times(size, args.iteration_batches, modes, dev,
                                                      steps=5 if args.quick else 20, bandwidth_gbs=args.bandwidth_gbs,
                                                      peak_tflops=args.peak_tflops,
                                                      peak_tflops_bf16=args.peak_tflops_bf16)
            save()

    run = run_row if args.quick else row_in_subprocess
    for image, size in [] if args.skip_rows else [(i, s) for i in args.image for s in sizes]:
        base = dict(size=size, device=str(dev), tolerance_db=args.tolerance_db, refine=refine, image=image,
                    downsample=args.downsample)
        seq = run(dict(base, slices=seq_slices, strategy="sequential", config=asdict(sequential)))
        if seq_slices != slices:  # one slice after another: the same seconds per slice for any number of slices
            scale = slices / seq_slices
            seq.update(measured_slices=seq_slices, slices=slices, time_to_quality_s=seq["seconds"] * scale,
                       seconds=seq["seconds"] * scale)
        print(f"{seq['image']} {size}x{size} sequential: {seq['seconds']:.1f} s for {slices} slices, "
              f"{seq['psnr']:.2f} dB", flush=True)
        out["rows"].append(seq)
        for name, cfg in {"fast": fast, **{n: replace(fast, **o) for n, o in variants.items()}}.items():
            fst = run(dict(base, slices=slices, strategy="batched", config=asdict(cfg), target_psnr=seq["psnr"]))
            fst["strategy"] = name
            print(f"{fst['image']} {size}x{size} {name}: {fst['seconds']:.1f} s, {fst['psnr']:.2f} dB, runs "
                  f"{fst['runs']}", flush=True)
            ttq = fst["time_to_quality_s"]
            out["rows"].append(fst)
            out["ratios"].append(dict(size=size, strategy=name, image=fst["image"],
                                      speedup_slices_per_s=fst["slices_per_s"] / seq["slices_per_s"],
                                      speedup_time_to_quality=None if ttq is None else seq["time_to_quality_s"] / ttq,
                                      psnr_difference_db=fst["psnr"] - seq["psnr"]))
            save()

    print(f"\n| size | strategy | slices/s | time to quality (s) | PSNR (dB) | peak memory (MiB, "
          f"{_memory_kind(dev)}) |\n|---|---|---|---|---|---|")
    for r in out["rows"]:
        ttq = "not reached" if r["time_to_quality_s"] is None else f"{r['time_to_quality_s']:.1f}"
        print(f"| {r['size']} | {r['strategy']} | {r['slices_per_s']:.4f} | {ttq} | {r['psnr']:.2f} "
              f"| {r['peak_memory_mib']:.0f} |")
    for q in out["ratios"]:
        sq = q["speedup_time_to_quality"]
        print(f"{q['size']}x{q['size']} {q['strategy']}: /sequential slices/s x{q['speedup_slices_per_s']:.2f}, "
              f"time to quality x{'n/a' if sq is None else f'{sq:.2f}'}, PSNR {q['psnr_difference_db']:+.2f} dB")

    print(f"\nLower bound for one iteration, 512x512, k=64, 6 blocks, B={args.bound_batch} (computed, not measured):")
    for b in bounds:
        print(f"  {8 * b['bytes_per_value']}-bit: {b['bytes'] / 1e9:.2f} GB / {b['bandwidth_gbs']:.0f} GB/s = "
              f"{1e3 * b['memory_bound_s']:.3f} ms; {b['flops'] / 1e12:.3f} TFLOP / {b['peak_tflops']:.0f} TFLOP/s = "
              f"{1e3 * b['compute_bound_s']:.3f} ms; bound {1e3 * b['bound_s']:.3f} ms "
              f"({1e3 * b['bound_s'] / b['batch']:.3f} ms per slice-iteration)")

    if args.volume:
        cfg = fast if args.volume_variant is None else replace(fast, **variants[args.volume_variant])
        for size in sizes:
            vol = run(dict(size=size, slices=args.volume, device=str(dev), strategy="batched", config=asdict(cfg),
                           image=args.image[0], downsample=args.downsample, deadline_s=args.deadline,
                           tolerance_db=args.tolerance_db, refine=0))
            vol["variant"] = args.volume_variant or "fast"
            out["volumes"].append(vol)
            save()
            if vol["seconds"] is None:
                print(f"volume {args.volume}x{size}x{size} ({vol['variant']}): stopped at the {args.deadline:.0f} s "
                      f"deadline, {100 * vol['fraction_done']:.0f}% done, projected {vol['projected_s']:.0f} s",
                      flush=True)
            else:
                print(f"volume {args.volume}x{size}x{size} ({vol['variant']}): {vol['seconds']:.1f} s, "
                      f"{vol['psnr']:.2f} dB, peak {vol['peak_memory_mib']:.0f} MiB", flush=True)
    save()


if __name__ == "__main__":
    main()
