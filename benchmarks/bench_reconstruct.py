"""Reconstruction benchmark: the Deep Decoder prior vs zero-filled/FBP vs TV-regularised least squares.

Images: the CT slice ``693_UNCR.dcm`` and the MR slice ``MR2_UNCR.dcm`` (a shoulder, 1024x1024), both from
pydicom's test files and block-averaged down to ``--size`` px (256 by default) to keep CPU time sane; with
``--shared``, also the middle slices of the ``../shared/data`` CT series and of its MR volume
(``example_mr_sm.nii.gz``, 91x117 px at its own size). Settings: MRI
4x and 8x equispaced single-coil (8% / 4% centre), once as scanner data would be reconstructed (complex image:
real and imaginary channels) and once with the knowledge that the simulated object is real and non-negative
(``real_object``; TV then also reconstructs a real, non-negative image), CT 60 and 30 views over 180 degrees,
inpainting with 50% of the pixels missing. MRI results keep the measured k-space samples (data consistency).
PSNR/SSIM against the fully sampled image (data range = its max - min) and wall time per method. TV uses PDHG
with its weight chosen from a small grid *against the ground truth* (an oracle choice that favours TV).
Measurements are simulated with the same discrete operator that reconstructs (no noise): an "inverse crime"
setting shared by all three methods. ``--ct-downsample 2`` avoids it for CT: each slice is scanned at twice
``--size`` (twice as many detector bins, summed in pairs) and reconstructed at ``--size`` against the block average.

    python benchmarks/bench_reconstruct.py --size 128 --shared          # all settings, the README's rows
    python benchmarks/bench_reconstruct.py --size 128 --only mri --shared  # one family
    python benchmarks/bench_reconstruct.py --size 128 --shared --json auto  # + measured/reconstruct_<machine>.json

``--json``: the printed rows (``image``, ``setting``, ``method``, ``psnr``, ``ssim``, ``seconds``) under ``rows``,
with the machine and the command (``benchmarks/machine.py``), written after every row.

``--realistic`` runs another benchmark, on data like users have (issue 32; ``benchmarks/realistic.py``): multi-coil
MRI k-space written as fastMRI ``.h5`` files, low-dose sparse-view CT with Poisson counts, and baselines from sigpy
(SENSE, l1-wavelet, TV with ESPIRiT maps) and scikit-image (FBP) with calibrated weights:

    python benchmarks/bench_reconstruct.py --realistic --json auto                 # MRI 320 px, CT 512 px, 6 slices
    python benchmarks/bench_reconstruct.py --realistic --only mri --size 256 --slices 6 --device cuda --json auto
    python benchmarks/bench_reconstruct.py --realistic --quick                     # a smoke run (under a minute)

MRI's default decoder is ``architecture="both"`` (the paper's decoder and ConvDecoder, two of each per slice, all
averaged); its rows show both kinds alone (each kind fitted once, timed on its own: what ``architecture="deep"`` or
``"conv"`` gives) and their average (what ``"both"`` gives, timed as both fits together; :func:`decoder_results`).
``--architectures deep,conv`` gives single-kind rows instead, ``--image`` filters the images, ``--skip-tv`` drops the
TV grid (it does not depend on the decoder).

    python benchmarks/bench_reconstruct.py --size 128 --only mri --shared --skip-tv --image example_mr_sm

Times on the 2-core development CPU at 128 px: MRI about 70 min for both MR slices (the default, both kinds, 5-8 min per
slice and setting on one thread; TV grid about 4 min more), inpainting 1 min, CT about
95 min with ``--shared`` (12,000 decoder iterations, 10-11 min per slice and view count on one thread, plus the TV
grid); the default ``--size 256`` takes about 4x as long.
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
import realistic  # noqa: E402
from baselines import tv_reconstruct  # noqa: E402
from machine import json_help, json_path, write_json  # noqa: E402

from dd_medical import presets  # noqa: E402
from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.operators import ForwardModel  # noqa: E402
from dd_medical.metrics import psnr, ssim  # noqa: E402
from dd_medical.pipeline import Tracker, auto_batch_size, fit_slices, on_device, resolve_device  # noqa: E402
from dd_medical.simulation import simulate  # noqa: E402

#: The best weight is 0.003-0.02 on the benchmark's MR slices (0.003 for the real-object fit of example_mr_sm), so
#: the grid reaches down to 0.001.
MRI_TV_WEIGHTS = (0.001, 0.003, 0.01, 0.02, 0.04)
#: Measured at 128 px: TV's best weight is 0.1-0.3 for these CT slices (60 views: 693_UNCR 41.78 dB at 0.1, 39.33
#: at 0.01, 38.89 at 0.003), so the grid reaches 1.0; an earlier grid stopped at 0.003 and flattered the decoder.
CT_TV_WEIGHTS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
#: Measured on 693_UNCR at 128 px, 50% missing: 0.0003 26.71 dB, 0.001 29.72, 0.003 29.83, 0.01 29.62.
INPAINT_TV_WEIGHTS = (0.001, 0.003, 0.01, 0.03, 0.1)
#: PDHG iterations for TV. Measured at 128 px: 300 iterations leave TV far from converged (CT 60 views: 30.4 dB at
#: 300, 35.5 at 1000, 38.2 at 3000; MRI 4x: 25.4 / 26.5 / 27.3), so every setting runs 5000.
TV_ITERATIONS = 5000
#: (image, simulation, options, TV weights tried, TV iterations, TV non-negativity)
SETTINGS = [
    ("MR", "mri", {"acceleration": 4, "center_fraction": 0.08}, MRI_TV_WEIGHTS, TV_ITERATIONS, False),
    ("MR", "mri", {"acceleration": 4, "center_fraction": 0.08, "real_object": True}, MRI_TV_WEIGHTS, TV_ITERATIONS,
     True),
    ("MR", "mri", {"acceleration": 8, "center_fraction": 0.04}, MRI_TV_WEIGHTS, TV_ITERATIONS, False),
    ("MR", "mri", {"acceleration": 8, "center_fraction": 0.04, "real_object": True}, MRI_TV_WEIGHTS, TV_ITERATIONS,
     True),
    ("CT", "ct", {"views": 60}, CT_TV_WEIGHTS, TV_ITERATIONS, True),
    ("CT", "ct", {"views": 30}, CT_TV_WEIGHTS, TV_ITERATIONS, True),
    ("CT", "inpaint", {"missing": 0.5}, INPAINT_TV_WEIGHTS, TV_ITERATIONS, True),
]


def block_average(image: np.ndarray, size: int) -> np.ndarray:
    """A square ``(N, N)`` image averaged down to ``(size, size)`` over ``N // size`` pixel blocks."""
    factor = image.shape[0] // size
    return image[: size * factor, : size * factor].reshape(size, factor, size, factor).mean(axis=(1, 3))


def ct_slice(size: int) -> tuple[np.ndarray, str]:
    """The pydicom-data CT slice in HU, block-averaged to ``size`` x ``size``."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("693_UNCR.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return block_average(hu, size), f"693_UNCR.dcm {size}x{size}"


def shared_ct_slices(size: int) -> list[tuple[np.ndarray, str]]:
    """The middle slice of each ``../shared/data`` CT series (HU, centre square, block-averaged), if present."""
    from bench_denoise import SHARED

    from dd_medical.io import read_volume

    out = []
    for folder in ("ct_body_j2k", "ct_head_gantry_tilt"):
        if (SHARED / folder).is_dir():
            vol = read_volume(SHARED / folder)
            hu = vol.array[vol.shape[0] // 2]
            n = min(hu.shape) // size * size
            top, left = (hu.shape[0] - n) // 2, (hu.shape[1] - n) // 2
            out.append((block_average(hu[top:top + n, left:left + n], size),
                        f"{folder}[{vol.shape[0] // 2}] {size}x{size}"))
    return out


def shared_mr_slice() -> list[tuple[np.ndarray, str]]:
    """The middle slice of ``../shared/data/ct_body_j2k_nifti/example_mr_sm.nii.gz`` (a real 3 mm MR, 91x117 px,
    kept at its own size; negative values, a few ringing pixels, set to 0), if present."""
    import SimpleITK as sitk
    from bench_denoise import SHARED

    path = SHARED / "ct_body_j2k_nifti" / "example_mr_sm.nii.gz"
    if not path.is_file():
        return []
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    z = volume.shape[0] // 2
    image = np.maximum(volume[z], 0)
    return [(image, f"example_mr_sm.nii.gz[{z}] {image.shape[0]}x{image.shape[1]}")]


def mr_slice(size: int) -> tuple[np.ndarray, str]:
    """The pydicom test-file MR slice (magnitude), block-averaged to ``size`` x ``size``."""
    import pydicom
    from pydicom.data import get_testdata_file

    image = pydicom.dcmread(get_testdata_file("MR2_UNCR.dcm")).pixel_array.astype(np.float32)
    return block_average(image, size), f"MR2_UNCR.dcm {size}x{size}"


def scores(image: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    span = float(reference.max() - reference.min())
    return float(psnr(image[None], reference[None], span)[0]), float(ssim(image[None], reference[None], span)[0])


#: Row labels of the decoder kinds.
KIND_NAMES = {"deep": "Deep Decoder", "conv": "ConvDecoder"}
#: The kinds ``architecture="both"`` fits and averages.
BOTH = ("deep", "conv")


def decoder_results(measurements, operator: ForwardModel, config: FitConfig,
                    device: str = "cpu") -> dict[str, tuple[np.ndarray, float]]:
    """``{architecture: ((D, H, W) result, seconds)}``: for ``config.architecture="both"`` each kind of
    :data:`BOTH` and ``"both"``, from one fit per kind; else that one kind.

    Each entry equals ``reconstruct_volume(measurements, operator, replace(config, architecture=a), device)``
    (data consistency on): the pipeline's steps (:func:`~dd_medical.pipeline.reconstruct_volume`, one batch of
    slices), with the fitted images kept per kind so that the average of both kinds (taken, as the pipeline does,
    before data consistency and the magnitude) needs no second fit. A kind's seconds are its fit and finish; "both"'s
    are every kind's fit and its own finish.
    """
    y = operator.prepare(measurements)
    dev = resolve_device(device)
    kinds = BOTH if config.architecture == "both" else (config.architecture,)
    with on_device(operator, dev), torch.no_grad():
        scale = float(operator.to_image(operator.baseline(y.to(dev))).max())
        _, height, width = operator.image_shape(y)
        batch = auto_batch_size(y.shape[0], height, width, config, dev)
        tracker = Tracker(y.shape[0] * len(kinds), "reconstructing", False)

        def finish(images: torch.Tensor) -> np.ndarray:
            part = operator.finalize(images.to(dev), (y / scale).to(dev))
            return (operator.to_image(part).cpu().numpy() * scale).astype(np.float32)

        images, fit_seconds, out = {}, {}, {}
        try:
            for kind in kinds:
                t0 = time.perf_counter()
                with torch.enable_grad():
                    images[kind] = fit_slices(operator, y / scale, replace(config, architecture=kind), dev, batch,
                                              tracker)
                fit_seconds[kind] = time.perf_counter() - t0
                t0 = time.perf_counter()
                out[kind] = (finish(images[kind]), fit_seconds[kind] + time.perf_counter() - t0)
        finally:
            tracker.close()
        if len(kinds) > 1:
            t0 = time.perf_counter()
            mean = torch.stack([images[k] for k in kinds]).mean(dim=0)
            out["both"] = (finish(mean), sum(fit_seconds.values()) + time.perf_counter() - t0)
    return out


def run_setting(image: np.ndarray, modality: str, kind: str, options: dict, weights, tv_iterations: int,
                nonnegative: bool, iterations: int | None, architectures: tuple[str, ...] = ("default",),
                ensemble: int | None = None, seed: int = 0,
                device: str = "cpu") -> list[tuple[str, float, float, float]]:
    sim = simulate(image, kind, modality=modality, **options)
    y, op, ref = sim.measurements, sim.operator, sim.reference[0]
    rows = []

    t0 = time.perf_counter()
    with torch.no_grad():
        base = op.to_image(op.baseline(y))[0].numpy()
    rows.append(({"mri": "zero-filled", "ct": "FBP (ramp)"}.get(kind, "masked image"), *scores(base, ref),
                 time.perf_counter() - t0))

    scale = float(base.max())
    dev = resolve_device(device)
    scaled = (y / scale).to(dev)  # TV-PDHG's input, moved once for every weight
    best = None
    with on_device(op, dev):
        for weight in weights if tv_iterations else ():
            t0 = time.perf_counter()
            tv = tv_reconstruct(op, scaled, weight, tv_iterations, nonnegative)
            tv = op.to_image(tv)[0].cpu().numpy() * scale
            seconds = time.perf_counter() - t0
            result = (f"TV-PDHG (w={weight:g})", *scores(tv, ref), seconds)
            if best is None or result[1] > best[1]:
                best = result
    if best is not None:
        rows.append(best)

    for architecture in architectures:
        config = presets.resolve("reconstruct/" + op.kind, seed=seed, iterations=iterations, ensemble=ensemble,
                                 architecture=None if architecture == "default" else architecture)
        settings = (f"k={config.channels}, {config.iterations} it"
                    + (f", {config.ensemble} averaged" if config.ensemble > 1 else ""))
        for kind, (dd, seconds) in decoder_results(y, op, config, device).items():
            name = f"both averaged ({settings} of each kind)" if kind == "both" else f"{KIND_NAMES[kind]} ({settings})"
            rows.append((name, *scores(dd[0], ref), seconds))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None,
                        help="CT and MR slice size in pixels (default 256; --realistic: MRI 320, CT 512, --quick 48 "
                             "and 32)")
    parser.add_argument("--only", choices=["mri", "ct", "inpaint"], default=None)
    parser.add_argument("--iterations", type=int, default=None, help="override the decoder's iterations")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu",
                        help="where the decoders and TV-PDHG run: cpu (default; the recorded tables), cuda, auto")
    parser.add_argument("--architectures", default="default",
                        help="decoder rows, comma-separated: default (the reconstruction default: MRI both, else "
                             "deep), deep (the paper's), conv (ConvDecoder), both (each kind, and their average; "
                             "default: default)")
    parser.add_argument("--image", default=None, help="only images whose name contains this")
    parser.add_argument("--ensemble", type=int, default=None, help="override the decoders averaged per slice")
    parser.add_argument("--skip-tv", action="store_true", help="no TV rows (the slowest baseline)")
    parser.add_argument("--seed", type=int, default=0,
                        help="decoders' base seed (FitConfig.seed; MRI results move by up to 4 dB with it, README)")
    parser.add_argument("--ct-downsample", type=int, default=1,
                        help="CT: simulate the scan from the slice at this many times --size (detector bins as "
                             "fine) and reconstruct at --size (simulate(downsample=...)): no inverse crime "
                             "(default 1: the same operator simulates and reconstructs)")
    parser.add_argument("--views", type=int, nargs="+", default=None,
                        help="only CT settings with these views (--realistic: the view counts, default 60 120)")
    parser.add_argument("--shared", action="store_true",
                        help="also the middle slices of the ../shared/data CT series (CT settings) and of its MR "
                             "volume (MRI settings)")
    parser.add_argument("--json", type=Path,
                        help=json_help("reconstruct", "write the rows as JSON here (after every row)"))
    realistic.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.realistic:
        realistic.main(args, None if argv is None else [__file__, *argv])
        return
    if args.size is None:
        args.size = 256
    architectures = tuple(args.architectures.split(","))
    unknown = sorted(set(architectures) - {"default", "deep", "conv", "both"})
    if unknown:
        parser.error(f"--architectures {','.join(unknown)}: choose from default, deep, conv, both (auto was removed: "
                     "both gives each kind's rows and their average)")
    torch.set_num_threads(args.threads)
    json_file = json_path(args.json, "reconstruct", args.device)
    command = None if argv is None else [__file__, *argv]
    rows: list[dict] = []

    images = {"CT": [ct_slice(args.size)] + (shared_ct_slices(args.size) if args.shared else []),
              "MR": [mr_slice(args.size)] + (shared_mr_slice() if args.shared else [])}
    s = args.ct_downsample
    if s > 1:  # the CT settings' slices at s times the size, measured there and reconstructed at --size
        fine = [ct_slice(args.size * s)] + (shared_ct_slices(args.size * s) if args.shared else [])
        fine = [(image, f"{name.rsplit(' ', 1)[0]} {args.size}x{args.size} (scanned at {args.size * s})")
                for image, name in fine]
    print("| image | setting | method | PSNR dB | SSIM | time s |")
    print("|---|---|---|---|---|---|")
    for modality, kind, options, weights, tv_iterations, nonnegative in SETTINGS:
        if args.only and kind != args.only:
            continue
        if kind == "ct" and args.views and options["views"] not in args.views:
            continue
        pool = images[modality]
        if kind == "ct" and s > 1:
            pool, options = fine, dict(options, downsample=s)
        real = ", real object" if options.get("real_object") else ""
        label = {"mri": f"MRI {options.get('acceleration')}x equispaced{real}",
                 "ct": f"CT {options.get('views')} views",
                 "inpaint": f"inpaint {int(100 * options.get('missing', 0))}% missing"}[kind]
        for image, name in pool if kind in ("ct", "mri") else pool[:1]:
            if args.image and args.image not in name:
                continue
            for method, p, q, seconds in run_setting(image, modality, kind, options, weights,
                                                     0 if args.skip_tv else tv_iterations, nonnegative,
                                                     args.iterations, architectures,
                                                     args.ensemble, args.seed, args.device):
                print(f"| {name} | {label} | {method} | {p:.2f} | {q:.3f} | {seconds:.1f} |", flush=True)
                rows.append(dict(image=name, setting=label, method=method, psnr=p, ssim=q, seconds=seconds))
                write_json(json_file, rows, args.device, command)
    write_json(json_file, rows, args.device, command)  # also when no row was run
    if json_file is not None:
        print(f"wrote {json_file}")


if __name__ == "__main__":
    main()
