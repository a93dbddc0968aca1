"""How far the noise estimate (:func:`dd_medical.core.noise.estimate_sigma`) is from the truth, by kind of noise.

    python benchmarks/bench_noise.py --json auto

Real CT slices (pydicom's ``CT_small.dcm``; with ``--shared``, the middle slices of ``../shared/data``'s body and head
CT, 2x2 block-averaged to 256 px) get known noise: white Gaussian noise; the same clipped at the window's lower
bound (-1000 HU, as a [-1000, 1000] window clips air); the same with constant padding outside a scan circle (-2048
HU, as scanners write it); and FBP noise (the slice as attenuation, projected with 2x2 sub-pixels over 180 degrees,
Poisson counts, ramp FBP). The truth is the standard deviation of the added noise over the pixels that carry noise;
the estimate is made on the noisy slice alone, by the package's estimator and by the plain (unmasked) Donoho
estimator it replaced. Writes a record for ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import json_path, machine_tag, write_json  # noqa: E402

from dd_medical.core.noise import MAD_TO_SIGMA, estimate_sigma, signal_mask  # noqa: E402
from dd_medical.core.operators import ParallelBeamRadon, hu_to_attenuation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plain_donoho(x: np.ndarray) -> float:
    """The estimator before: the median of the finest diagonal band over every pixel."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    x = x[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    return float(np.median(np.abs(hh)) / MAD_TO_SIGMA)


def slices(shared: bool) -> dict[str, np.ndarray]:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = {"CT_small 128 px": (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)}
    if shared:
        from dd_medical.io import read_volume

        for name in ("ct_body_j2k", "ct_head_gantry_tilt"):
            volume = read_volume(ROOT.parent / "shared" / "data" / name).array
            middle = volume[volume.shape[0] // 2]
            out[f"{name} middle, 256 px"] = middle.reshape(256, 2, 256, 2).mean(axis=(1, 3)).astype(np.float32)
    return out


def fbp_noise(hu: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """The slice's FBP from Poisson counts minus its noise-free FBP: FBP noise in HU (pixel 1 mm)."""
    n = hu.shape[0]
    mu = torch.from_numpy(hu_to_attenuation(hu))[None, None] * 0.02  # water 0.02 / mm
    op = ParallelBeamRadon(np.linspace(0, 180, int(np.ceil(1.5 * n)), endpoint=False), n, subpixels=2)
    line = op.forward(mu)
    counts = torch.from_numpy(rng.poisson(photons * np.exp(-line.numpy())).astype(np.float32))
    noisy = -torch.log(counts.clamp_min(1) / photons)
    return ((op.fbp(noisy) - op.fbp(line))[0, 0].numpy() / 0.02 * 1000.0).astype(np.float32)  # attenuation -> HU


def cases(hu: np.ndarray, sigma: float, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Kind -> (noisy slice, its added noise)."""
    white = rng.normal(0, sigma, hu.shape).astype(np.float32)
    clipped = np.maximum(hu + white, -1000.0)
    yy, xx = np.mgrid[0:hu.shape[0], 0:hu.shape[1]]
    outside = (yy - hu.shape[0] / 2) ** 2 + (xx - hu.shape[1] / 2) ** 2 > (0.48 * hu.shape[0]) ** 2
    padded = np.where(outside, -2048.0, hu + white)
    fbp = fbp_noise(hu, 2e4, rng)
    return {"white": (hu + white, white), "clipped at -1000 HU": (clipped, clipped - hu),
            "padded outside a circle (-2048 HU)": (padded, np.where(outside, 0.0, white)),
            "FBP of 2e4-photon counts": (hu + fbp, fbp)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", action="store_true", help="also the ../shared/data CT series")
    parser.add_argument("--sigma", type=float, default=25.0, help="white noise in HU")
    parser.add_argument("--json", type=Path, default=None, help="auto: benchmarks/measured/noise_<machine>.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for name, hu in slices(args.shared).items():
        own, old = float(estimate_sigma(hu)), plain_donoho(hu)
        rows.append([name, "none added: the slice's own noise", "unknown", f"{own:.1f}", f"{old:.1f}"])
        for kind, (noisy, noise) in cases(hu, args.sigma, rng).items():
            valid = signal_mask(noisy).numpy()
            truth = float(noise[valid].std())
            new, old = float(estimate_sigma(noisy)), plain_donoho(noisy)
            rows.append([name, kind, f"{truth:.1f}", f"{new:.1f} ({100 * (new / truth - 1):+.0f}%)",
                         f"{old:.1f} ({100 * (old / truth - 1):+.0f}%)"])
            print(" | ".join(rows[-1]), flush=True)
    record = {"title": "The noise estimate against the truth (HU)", "topic": "denoising",
              "what": "Known noise added to real CT slices; the estimate from the noisy slice alone: the package's "
                      "(Donoho's estimator over the pixels that carry noise) and the plain one it replaced. The truth "
                      "is the added noise only: the slices carry noise of their own (first row of each), which the "
                      "estimates include. FBP noise is correlated: its finest band holds less than its variance.",
              "machine": machine_tag("cpu"), "source": "benchmarks/bench_noise.py",
              "columns": ["slice", "noise", "truth", "estimate (error)", "plain Donoho, before (error)"],
              "rows": rows}
    write_json(json_path(args.json, "noise", "cpu"), record, "cpu", argv)


if __name__ == "__main__":
    main()
