"""The README's before/after picture: a real CT slice with added noise | dd-medical | difference.

    python benchmarks/readme_figure.py --data ../shared/data --json benchmarks/measured/readme_figure_cpu-2core.json

Reads the middle slice of ``ct_body_j2k`` (real body CT, 512 x 512, 3 mm), averages 2 x 2 pixel blocks (``--block``;
256 x 256, the whole field of view: minutes on a CPU instead of an hour), adds white Gaussian noise of ``--noise-hu``
HU (seed 0), denoises it with the package defaults (``dd_medical.denoise``), and writes
``docs/images/before_after.png`` (noisy | denoised | denoised - clean, soft-tissue window W400/L40, difference
+-100 HU) and a JSON record (PSNR/SSIM on [-1000, 1000] HU, residual std, seconds, machine) that
``benchmarks/report.py`` renders into the caption.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

import dd_medical
from dd_medical.core.intensity import Window
from dd_medical.io import read_volume
from dd_medical.metrics import psnr, ssim

ROOT = Path(__file__).resolve().parents[1]
DISPLAY = Window(-160.0, 240.0)
DIFFERENCE = Window(-100.0, 100.0)
EVALUATION = Window(-1000.0, 1000.0)


def tile(values: np.ndarray, window: Window) -> np.ndarray:
    return np.round(window.to_unit(values) * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--noise-hu", type=float, default=50.0)
    parser.add_argument("--block", type=int, default=2, help="average block x block pixels first (1: 512 px)")
    parser.add_argument("--preset", default=None, help="a denoise preset [default: the package default]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "before_after.png")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    volume = read_volume(args.data / "ct_body_j2k")
    clean = volume.array[volume.shape[0] // 2]
    height, width = (n // args.block * args.block for n in clean.shape)
    clean = clean[:height, :width].reshape(height // args.block, args.block, width // args.block, args.block)
    clean = clean.mean(axis=(1, 3)).astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0.0, args.noise_hu, clean.shape).astype(np.float32)
    t0 = time.perf_counter()
    denoised = dd_medical.denoise(noisy, args.preset, device=args.device)
    seconds = time.perf_counter() - t0
    gap = np.full((clean.shape[0], 6), 255, np.uint8)
    panel = np.concatenate([tile(noisy, DISPLAY), gap, tile(denoised, DISPLAY), gap,
                            tile(denoised - clean, DIFFERENCE)], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(panel), str(args.out))
    unit = {name: EVALUATION.to_unit(v) for name, v in (("clean", clean), ("noisy", noisy), ("out", denoised))}
    record = {
        "what": f"Real body CT (middle slice of ct_body_j2k, {clean.shape[0]} x {clean.shape[1]} px, "
                f"{args.block} x {args.block} block average), white Gaussian noise added",
        "command": "python benchmarks/readme_figure.py --data ../shared/data --json " + args.json.as_posix(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                   f"{'cuda' if torch.cuda.is_available() and args.device != 'cpu' else 'cpu'}",
        "noise_hu": args.noise_hu, "preset": args.preset or dd_medical.presets.DEFAULT_PRESET["denoise"],
        "size": list(clean.shape), "seconds": round(seconds, 1),
        "psnr_noisy": round(float(psnr(unit["noisy"], unit["clean"])), 2),
        "psnr_denoised": round(float(psnr(unit["out"], unit["clean"])), 2),
        "ssim_noisy": round(float(ssim(unit["noisy"], unit["clean"])), 3),
        "ssim_denoised": round(float(ssim(unit["out"], unit["clean"])), 3),
        "residual_std_hu": round(float(np.std(denoised - clean)), 1),
        "image": args.out.relative_to(ROOT).as_posix(),
    }
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
