"""Denoising quality and time: dd-medical against the reference-style decoder, BM3D, TV, NLM and Gaussian smoothing.

Setting (as in the project's issue): real CT slices windowed to [-1000, 1000] HU, mapped to [0, 1], plus Gaussian
noise sigma = 25/255 (seed 0), clipped to [0, 1]. PSNR/SSIM against the clean slice (MONAI metrics, data range 1).

    python benchmarks/bench_denoise.py                       # CT_small.dcm and 693_UNCR.dcm (slow on a CPU)
    python benchmarks/bench_denoise.py --images CT_small.dcm --json out.json
    python benchmarks/bench_denoise.py --images CT_small.dcm --json auto   # benchmarks/measured/denoise_<machine>.json
    python benchmarks/bench_denoise.py --quick               # smoke run: a 64x64 crop, few iterations

The ``../shared/data`` volumes (middle slice of each) are added when that folder exists and ``--shared`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_rescale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import json_help, json_path, machine_description, write_json  # noqa: E402

from dd_medical import presets  # noqa: E402
from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.intensity import Window  # noqa: E402
from dd_medical.metrics import psnr, ssim  # noqa: E402
from dd_medical.pipeline import denoise_volume  # noqa: E402

WINDOW = Window(-1000.0, 1000.0)
SIGMA = 25 / 255
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

#: The reference code's way: one decoder, k=64, 6 blocks, Adam 0.01, the lowest-loss iterate of a fixed run.
REFERENCE = FitConfig(channels=64, blocks=6, iterations=2000, result="best", ensemble=1, stopping="fixed")


def load_slices(names: list[str], shared: bool) -> dict[str, np.ndarray]:
    """Clean slices in [0, 1] (window [-1000, 1000] HU) by name."""
    out = {}
    for name in names:
        ds = pydicom.dcmread(get_testdata_file(name))
        out[name] = WINDOW.to_unit(apply_rescale(ds.pixel_array, ds))
    if shared and SHARED.exists():
        from dd_medical.io import read_volume

        for folder in ("ct_head_gantry_tilt", "ct_body_j2k"):
            vol = read_volume(SHARED / folder)
            out[f"{folder}[{vol.shape[0] // 2}]"] = WINDOW.to_unit(vol.array[vol.shape[0] // 2])
    return out


def decoder_method(config: FitConfig, device: str) -> Callable[[np.ndarray], np.ndarray]:
    def run(noisy: np.ndarray) -> np.ndarray:
        return denoise_volume(noisy, config, device=device, progress=False, window=Window(0.0, 1.0))

    return run


def oracle(fn: Callable[[np.ndarray, float], np.ndarray], grid: list[float], clean: np.ndarray):
    """The best of ``fn(noisy, p)`` over ``grid``, judged against the clean image (an upper bound for the method)."""

    def run(noisy: np.ndarray) -> np.ndarray:
        return max((fn(noisy, p) for p in grid), key=lambda out: psnr(out, clean))

    return run


def gaussian_noise(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """``clean`` [0, 1] plus white Gaussian noise of std ``sigma`` (in [0, 1] units), clipped to [0, 1], float32."""
    rng = np.random.default_rng(seed)
    return np.clip(clean + rng.normal(0.0, sigma, clean.shape), 0.0, 1.0).astype(np.float32)


def nlm(noisy: np.ndarray) -> np.ndarray:
    """Non-local means (scikit-image) of a 2D [0, 1] image, h = 0.8 x its estimated noise sigma."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(noisy))
    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)


def methods(clean: np.ndarray, device: str, quick: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from scipy.ndimage import gaussian_filter
    from skimage.restoration import denoise_tv_chambolle

    ours, best, reference = FitConfig(), presets.resolve("denoise", "quality"), REFERENCE
    if quick:
        ours = replace(ours, iterations=60)
        best = replace(best, iterations=60)
        reference = replace(reference, iterations=60)
    out = {
        "dd-medical (defaults)": decoder_method(ours, device),
        "dd-medical (quality preset)": decoder_method(best, device),
        "reference-style decoder": decoder_method(reference, device),
    }
    try:
        import bm3d

        out["BM3D"] = lambda noisy: np.asarray(bm3d.bm3d(noisy, sigma_psd=SIGMA), dtype=np.float32)
    except ImportError:
        print("bm3d is not installed (pip install 'dd-medical[dev]'): BM3D skipped")

    out["NLM"] = nlm
    out["TV (oracle weight)"] = oracle(lambda n, w: denoise_tv_chambolle(n, weight=w),
                                       [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15], clean)
    out["Gaussian (oracle sigma)"] = oracle(lambda n, s: gaussian_filter(n, s), [0.5, 0.75, 1.0, 1.25, 1.5, 2.0], clean)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", nargs="+", default=["CT_small.dcm", "693_UNCR.dcm"])
    parser.add_argument("--shared", action="store_true", help="also the ../shared/data volumes' middle slices")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64x64 crops, few iterations")
    parser.add_argument("--only", nargs="*", help="run only these methods (names as printed)")
    parser.add_argument("--json", type=Path, help=json_help("denoise", "write the results as JSON here"))
    args = parser.parse_args(argv)
    json_file = json_path(args.json, "denoise", args.device)

    torch.manual_seed(0)
    rows = []
    print(f"machine: {machine_description(args.device)}, cuda={torch.cuda.is_available()}")
    for name, clean in load_slices(args.images, args.shared).items():
        if args.quick:
            c = np.array(clean.shape) // 2
            clean = clean[c[0] - 32 : c[0] + 32, c[1] - 32 : c[1] + 32]
        noisy = gaussian_noise(clean, SIGMA)
        rows.append(dict(image=name, method="noisy", psnr=psnr(noisy, clean), ssim=ssim(noisy, clean), seconds=0.0))
        print(f"\n{name} {clean.shape[0]}x{clean.shape[1]}: noisy PSNR {rows[-1]['psnr']:.2f} dB")
        for method, fn in methods(clean, args.device, args.quick).items():
            if args.only and method not in args.only:
                continue
            t0 = time.perf_counter()
            out = np.clip(fn(noisy), 0, 1)
            seconds = time.perf_counter() - t0
            rows.append(dict(image=name, method=method, psnr=psnr(out, clean), ssim=ssim(out, clean), seconds=seconds))
            print(f"  {method:<26} PSNR {rows[-1]['psnr']:6.2f} dB  SSIM {rows[-1]['ssim']:.4f}  {seconds:8.1f} s",
                  flush=True)

    print("\n| image | method | PSNR (dB) | SSIM | time (s) |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['image']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['seconds']:.1f} |")
    write_json(json_file, rows, args.device, None if argv is None else [__file__, *argv])
    if json_file is not None:
        print(f"wrote {json_file}")


if __name__ == "__main__":
    main()
