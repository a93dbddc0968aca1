"""First, do no harm (issue 28): the defaults on real CT with no noise added, the decoder alone and with the
structure of its residual returned (``FitConfig.detail_threshold``, :mod:`dd_medical.core.detail`).

Each slice is denoised once with the defaults and ``detail_threshold=0`` (the decoder alone); the package's step
(:func:`~dd_medical.core.detail.keep_anatomy`) is then applied to that same result, so both rows come from one fit.
Per slice: the input's estimated noise (HU), the residual's standard deviation over it, the fidelity check's edge
ratio, the check's verdict, and the 99.9th percentile and maximum of the HU values (bone) before and after.

Slices: the shared 3 mm body CT volume (``example_ct_sm.nii.gz``, 101 x 122), and the shared 512 px body and head
series and pydicom-data's ``693_UNCR`` block-averaged 4 x 4 (128 px, about 3 mm pixels, as MONAI pipelines
resample); ``--native`` adds the 512 px slices themselves (long on a CPU).

    python benchmarks/bench_fidelity.py --json auto
    python benchmarks/bench_fidelity.py --quick          # smoke run: two small slices, few iterations
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import json_help, json_path, machine_description, machine_tag, write_json  # noqa: E402
from resample import block_mean  # noqa: E402

from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.detail import TARGET_EDGE_RATIO, TARGET_RESIDUAL_RATIO, keep_anatomy  # noqa: E402
from dd_medical.core.fidelity import check_fidelity  # noqa: E402
from dd_medical.core.intensity import default_window  # noqa: E402
from dd_medical.core.noise import signal_mask  # noqa: E402
from dd_medical.io import read_volume  # noqa: E402
from dd_medical.pipeline import denoise_volume  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ["slice", "px", "noise (HU)", "fit", "residual / noise", "edge ratio", "check", "p99.9 HU in -> out",
           "max HU in -> out", "s"]


def load_slices(native: bool, quick: bool) -> list[tuple[str, np.ndarray]]:
    """``(name, HU slice)`` pairs (no noise added)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_rescale

    sm = read_volume(SHARED / "ct_body_j2k_nifti" / "example_ct_sm.nii.gz").array
    if quick:
        return [("example_ct_sm z15 (crop)", sm[15, 20:84, 29:93])]
    slices = [(f"example_ct_sm z{z}", sm[z]) for z in (5, 10, 15, 20, 25)]
    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    big = [("693_UNCR", apply_rescale(ds.pixel_array, ds).astype(np.float32))]
    body = read_volume(SHARED / "ct_body_j2k").array
    big += [(f"ct_body_j2k z{z}", body[z]) for z in (4, 10, 16)]
    head = read_volume(SHARED / "ct_head_gantry_tilt").array
    big += [(f"ct_head_gantry_tilt z{z}", head[z]) for z in (10, 18)]
    slices += [(f"{name} 4x4", block_mean(x, 4).astype(np.float32)) for name, x in big]
    if native:
        slices += big
    return slices


def _figures(before: np.ndarray, after: np.ndarray) -> dict:
    check = check_fidelity(before, after).slices[0]
    inside = signal_mask(before).numpy()
    return dict(noise_hu=check.noise, residual_ratio=check.residual_ratio, edge_ratio=check.edge_ratio,
                passed=check.passed, p999=[float(np.percentile(v[inside], 99.9)) for v in (before, after)],
                max=[float(before.max()), float(after.max())])


def save_figure(panels: list[tuple[str, list[np.ndarray]]], path: Path) -> None:
    """One row per slice: input | decoder alone | defaults (soft-tissue window, W400/L40) | input - defaults and input -
    decoder (+-100 HU), each tile 256 px high."""
    from PIL import Image, ImageDraw

    labels = ["input", "decoder alone", "defaults", "input - decoder (+-100 HU)", "input - defaults (+-100 HU)"]
    tile, band = 256, 16
    canvas = Image.new("L", (len(labels) * tile, len(panels) * (tile + band)), 255)
    draw = ImageDraw.Draw(canvas)
    for r, (name, (x, fitted, kept)) in enumerate(panels):
        shown = [np.clip((v + 160) / 400, 0, 1) for v in (x, fitted, kept)]
        shown += [np.clip((x - v) / 200 + 0.5, 0, 1) for v in (fitted, kept)]
        for c, (image, label) in enumerate(zip(shown, labels, strict=True)):
            width = round(tile * image.shape[1] / image.shape[0])
            picture = Image.fromarray((image * 255).astype(np.uint8)).resize((min(width, tile), tile), Image.BILINEAR)
            canvas.paste(picture, (c * tile, r * (tile + band) + band))
            draw.text((c * tile + 2, r * (tile + band) + 2), f"{name}: {label}"[-44:], fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def run(slices: list[tuple[str, np.ndarray]], config: FitConfig, device: str,
        panels: list | None = None) -> list[dict]:
    rows = []
    for name, x in slices:
        t0 = time.perf_counter()
        fitted = denoise_volume(x, replace(config, detail_threshold=0.0), device, modality="CT", progress=False)
        seconds = time.perf_counter() - t0
        window = default_window(x[None], "CT")
        unit, image = (torch.from_numpy(window.to_unit(v)) for v in (x, fitted))
        kept, used = keep_anatomy(unit, image, config.detail_threshold)
        restored = window.from_unit(kept.numpy())
        if panels is not None:
            panels.append((name, [x, fitted, restored]))
        for fit, out in (("decoder alone", fitted), ("defaults (detail returned)", restored)):
            rows.append(dict(slice=name, size=list(x.shape), fit=fit, seconds=seconds,
                             threshold=used if fit.startswith("defaults") else 0.0, **_figures(x, out)))
            r = rows[-1]
            print(f"{name:32s} {fit:28s} noise {r['noise_hu']:6.2f} HU  residual {r['residual_ratio']:5.2f}x  "
                  f"edges {r['edge_ratio']:4.2f}  {'pass' if r['passed'] else 'FAIL'}  p99.9 {r['p999'][0]:.0f} -> "
                  f"{r['p999'][1]:.0f}  max {r['max'][0]:.0f} -> {r['max'][1]:.0f}  {seconds:.0f} s", flush=True)
    return rows


def table(rows: list[dict]) -> list[list]:
    return [[r["slice"], "x".join(map(str, r["size"])), f"{r['noise_hu']:.1f}", r["fit"], f"{r['residual_ratio']:.2f}",
             f"{r['edge_ratio']:.2f}", "pass" if r["passed"] else "FAIL", f"{r['p999'][0]:.0f} -> {r['p999'][1]:.0f}",
             f"{r['max'][0]:.0f} -> {r['max'][1]:.0f}", f"{r['seconds']:.0f}"] for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--native", action="store_true",
                        help="also the 512 px slices at their own size (slow on a CPU)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one small crop, few iterations")
    parser.add_argument("--json", type=Path, help=json_help("fidelity"))
    parser.add_argument("--figure", type=Path, help="write a PNG of every slice: input, results and residuals")
    args = parser.parse_args(argv)
    config = FitConfig(iterations=30, ensemble=1, channels=16) if args.quick else FitConfig()
    print(f"machine: {machine_description(args.device)}")
    panels: list = []
    rows = run(load_slices(args.native, args.quick), config, args.device, panels)
    if args.figure:
        save_figure(panels, args.figure)
        print(f"wrote {args.figure}")
    summary = {fit: (sum(r["passed"] for r in rows if r["fit"] == fit), sum(r["fit"] == fit for r in rows))
               for fit in dict.fromkeys(r["fit"] for r in rows)}
    print("; ".join(f"{fit}: {p} of {n} pass" for fit, (p, n) in summary.items()))
    path = json_path(args.json, "fidelity", args.device)
    if path is not None:
        what = ("Real CT slices with no noise added, denoised with the defaults: the decoder alone, and with the "
                "structure of its residual returned where the slice is not faithful (residual above "
                f"{TARGET_RESIDUAL_RATIO}x its noise, or edge ratio above {TARGET_EDGE_RATIO}). Both rows come from "
                "one fit "
                "per slice. residual / noise: the standard deviation of input minus output over the estimated noise "
                "of the input; edge ratio: the residual's RMS on the strongest edges over flat tissue (the fidelity "
                "check's limits are 1.5 and 1.3); p99.9 and max: bone.")
        write_json(path, dict(title="First, do no harm: the defaults on real CT without added noise",
                              topic="denoising", what=what, machine=machine_tag(args.device),
                              source="benchmarks/bench_fidelity.py",
                              columns=COLUMNS, rows=table(rows), raw=rows), args.device, argv)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
