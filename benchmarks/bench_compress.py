"""Rate-distortion of the .ddc codec against wavelet thresholding and JPEG 2000.

For each test image (scaled to [0, 1] by its full intensity range) and for decoders whose parameter count gives a
compression factor (pixels / parameters, the paper's definition) of about 10x and 40x:

- the decoder: :func:`dd_medical.api.compress` (8-bit weights), measured after quantisation, with the real
  ``.ddc`` file size (header included) and the encode time;
- wavelet thresholding keeping as many coefficients as the decoder has parameters (the paper's baseline; pywt,
  ``haar`` and ``bior4.4``, periodised, full depth; the coefficient positions are not counted);
- JPEG 2000 (OpenJPEG through pylibjpeg-openjpeg, 9/7 irreversible, one quality layer) at the largest rate whose
  codestream is not larger than the ``.ddc`` file.

PSNR and SSIM are on [0, 1] (SSIM: dd_medical.metrics, Gaussian 11 px). Images: ``skimage.data.camera()``
downsampled 2x2 to 256x256, pydicom's ``693_UNCR.dcm`` (512x512 CT) downsampled 2x2 to 256x256, ``CT_small.dcm``
(128x128), and with ``--shared`` the middle slice of the ``../shared/data`` volumes (downsampled 2x2 when 512 px);
``--full-size``: camera and 693_UNCR at their own 512x512 instead (the paper's image size; a GPU job).

    python benchmarks/bench_compress.py --quick          # camera only, 300 iterations (a smoke run)
    python benchmarks/bench_compress.py --json rd.json   # the codec's defaults (reference recipe, 15,000 steps)
    python benchmarks/bench_compress.py --json auto      # the same, into benchmarks/measured/compress_<machine>.json
    python benchmarks/bench_compress.py --recipe decay --iterations 8000 --final-lr 0.001
    python benchmarks/bench_compress.py --full-size --device cuda   # 512x512, the paper's size: a GPU job
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pywt
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import json_help, json_path, write_json  # noqa: E402
from resample import block_mean  # noqa: E402

from dd_medical import api, presets  # noqa: E402
from dd_medical.codec.encode import REFINE_FRACTION  # noqa: E402
from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.decoder import num_parameters  # noqa: E402
from dd_medical.core.intensity import default_window  # noqa: E402
from dd_medical.metrics import ssim  # noqa: E402
from dd_medical.volume import Volume  # noqa: E402

BLOCKS = 6
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_images(quick: bool, shared: bool, full_size: bool = False) -> list[tuple[str, Volume, int]]:
    """``(name, one-slice Volume in HU or grey levels, source bits per pixel)``."""
    from pydicom.data import get_testdata_file
    from skimage.data import camera

    from dd_medical.io import read_volume

    images = [("camera 256", Volume(block_mean(camera().astype(np.float32), 2), modality="OT"), 8)]
    if full_size:  # the paper's size: camera and 693_UNCR at their own 512x512
        images = [("camera 512", Volume(camera().astype(np.float32), modality="OT"), 8)]
    if quick:
        return images
    ct = read_volume(get_testdata_file("693_UNCR.dcm"))
    if full_size:
        images.append(("693_UNCR 512", Volume(ct.array[:1], modality="CT"), 16))
        return images
    images.append(("693_UNCR 256 (2x2 down)", Volume(block_mean(ct.array[0], 2), modality="CT"), 16))
    small = read_volume(get_testdata_file("CT_small.dcm"))
    images.append(("CT_small 128", Volume(small.array[:1], spacing=small.spacing, modality="CT"), 16))
    if shared and SHARED.is_dir():
        for name in ("ct_body_j2k", "ct_head_gantry_tilt", "ct_body_j2k_nifti/example_ct_sm.nii.gz"):
            path = SHARED / name
            if not path.exists():
                continue
            vol = read_volume(path)
            middle = vol.array[vol.shape[0] // 2]
            if min(middle.shape) >= 512:
                middle = block_mean(middle, 2)
            images.append((f"{name} mid {middle.shape[0]}x{middle.shape[1]}", Volume(middle, modality=vol.modality),
                           16))
    return images


def channels_for_factor(pixels: int, factor: float) -> int:
    """The ``k`` whose decoder (6 blocks) has ``pixels / parameters`` closest to ``factor`` (in log scale)."""
    return min(range(2, 257), key=lambda k: abs(np.log(pixels / num_parameters(k, BLOCKS, 1) / factor)))


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((image.astype(np.float64) - reference) ** 2)))


def wavelet_threshold(image: np.ndarray, keep: int, wavelet: str) -> np.ndarray:
    """Keep the ``keep`` largest-magnitude coefficients of a full-depth periodised wavelet transform."""
    coeffs = pywt.wavedec2(image, wavelet, mode="periodization")
    array, slices = pywt.coeffs_to_array(coeffs)
    flat = np.abs(array).ravel()
    if keep < flat.size:
        threshold = np.partition(flat, flat.size - keep)[flat.size - keep]
        array = np.where(np.abs(array) >= threshold, array, 0.0)
    rec = pywt.waverec2(pywt.array_to_coeffs(array, slices, output_format="wavedec2"), wavelet, mode="periodization")
    return np.clip(rec[: image.shape[0], : image.shape[1]], 0, 1)


def jpeg2000_at_size(unit: np.ndarray, max_bytes: int, bits: int) -> tuple[np.ndarray, int]:
    """JPEG 2000 of ``unit`` (quantised to ``bits``-bit integers) at the largest size <= ``max_bytes``."""
    from openjpeg import decode
    from openjpeg.utils import encode_array

    top = 2**bits - 1
    ints = np.rint(unit * top).astype(np.uint16 if bits > 8 else np.uint8)
    raw = unit.size * (2 if bits > 8 else 1)
    lo, hi = 1.0, 4000.0  # compression ratio against the raw integer image; binary search in log scale
    best = None
    for _ in range(30):
        ratio = float(np.sqrt(lo * hi))
        data = encode_array(ints, bits_stored=bits, compression_ratios=[ratio], codec_format=0)
        if len(data) <= max_bytes:
            best, hi = data, ratio
        else:
            lo = ratio
        if hi / lo < 1.01:
            break
    if best is None:
        raise RuntimeError(f"JPEG 2000 cannot reach {max_bytes} bytes (raw {raw})")
    return decode(best).astype(np.float64) / top, len(best)


def run(images, factors: tuple[float, ...], bits: int, device: str, config: FitConfig,
        refine: int | None = None) -> list[dict]:
    """One row per image and factor; ``config``: the encoder's settings (a ``compress`` preset of
    :mod:`dd_medical.presets`, e.g. with other iterations), its ``channels`` set per factor, ``BLOCKS`` blocks."""
    iterations = config.iterations
    rows = []
    for name, volume, source_bits in images:
        window = default_window(volume.array, volume.modality)
        unit = window.to_unit(volume.array[0]).astype(np.float64)
        pixels = unit.size
        for factor in factors:
            k = channels_for_factor(pixels, factor)
            params = num_parameters(k, BLOCKS, 1)
            t0 = time.perf_counter()
            encoded = api.compress(volume, config=config, channels=k, blocks=BLOCKS, bits=bits, device=device,
                                   refine_iterations=refine, progress=False)
            encode_s = time.perf_counter() - t0
            decoded = window.to_unit(encoded.volume.array[0]).astype(np.float64)
            nbytes = len(encoded.data)
            row = {
                "image": name, "pixels": pixels, "k": k, "parameters": params, "factor": pixels / params,
                "ddc_bytes": nbytes, "bpp": 8 * nbytes / pixels, "ratio_vs_source": source_bits * pixels / 8 / nbytes,
                "iterations": iterations, "encode_s": encode_s,
                "dd_psnr": psnr(decoded, unit), "dd_ssim": float(ssim(decoded, unit)),
                "dd_psnr_unquantised": encoded.header["measured"]["psnr_unquantised_db"][0],
            }
            for wavelet in ("haar", "bior4.4"):
                rec = wavelet_threshold(unit, params, wavelet)
                row[f"{wavelet}_psnr"], row[f"{wavelet}_ssim"] = psnr(rec, unit), float(ssim(rec, unit))
            j2k, j2k_bytes = jpeg2000_at_size(unit, nbytes, 8 if source_bits == 8 else 12)
            row.update(j2k_bytes=j2k_bytes, j2k_psnr=psnr(j2k, unit), j2k_ssim=float(ssim(j2k, unit)))
            rows.append(row)
            print(_format_row(row), flush=True)
    return rows


HEADER = ("| image | k | params | factor (px/params) | .ddc bytes | bpp | DD PSNR / SSIM (unquantised PSNR) | Haar | "
          "bior4.4 | JPEG 2000 (bytes) | encode s |\n|---|---|---|---|---|---|---|---|---|---|---|")


def _format_row(r: dict) -> str:
    return (
        f"| {r['image']} | {r['k']} | {r['parameters']} | {r['factor']:.1f}x | {r['ddc_bytes']} | {r['bpp']:.3f} | "
        f"{r['dd_psnr']:.2f} / {r['dd_ssim']:.3f} ({r['dd_psnr_unquantised']:.2f}) | "
        f"{r['haar_psnr']:.2f} / {r['haar_ssim']:.3f} | "
        f"{r['bior4.4_psnr']:.2f} / {r['bior4.4_ssim']:.3f} | {r['j2k_psnr']:.2f} / {r['j2k_ssim']:.3f} "
        f"({r['j2k_bytes']}) | {r['encode_s']:.0f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="camera only, 300 iterations")
    parser.add_argument("--shared", action="store_true", help="also the ../shared/data volumes' middle slices")
    parser.add_argument("--full-size", action="store_true",
                        help="camera and 693_UNCR at 512x512 (the paper's size; slow on a CPU: ~0.4 s per step at "
                             "k=32 on 2 cores, more at k=64) instead of the 256x256 set")
    parser.add_argument("--recipe", choices=sorted(presets.PRESETS["compress"]), default="reference",
                        help="encoder settings (dd_medical.presets.PRESETS['compress']); the options below override "
                             "them")
    parser.add_argument("--iterations", type=int, default=None,
                        help="[default: the recipe's (reference 15000, decay 2000); 300 with --quick]")
    parser.add_argument("--factors", type=float, nargs="+", default=[10.0, 40.0])
    parser.add_argument("--lr", type=float, default=None, help="first Adam step size [default: the recipe's]")
    parser.add_argument("--final-lr", type=float, default=None,
                        help="last Adam step size (geometric decay); 0: constant step size [default: the recipe's]")
    parser.add_argument("--bits", type=int, choices=[8, 16], default=8)
    parser.add_argument("--refine", type=int, default=None,
                        help="quantisation-aware refinement steps [default: compress's, a tenth of --iterations]")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's]")
    parser.add_argument("--only", default=None, help="only images whose name contains this text")
    parser.add_argument("--json", type=Path, default=None, help=json_help("compress"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    json_file = json_path(args.json, "compress", args.device)
    recipe = presets.PRESETS["compress"][args.recipe]
    final = recipe.final_learning_rate if args.final_lr is None else args.final_lr or None  # 0: constant
    config = replace(recipe, iterations=args.iterations or (300 if args.quick else recipe.iterations),
                     learning_rate=args.lr or recipe.learning_rate, final_learning_rate=final)
    iterations, lr, final_lr = config.iterations, config.learning_rate, config.final_learning_rate
    refine = int(iterations * REFINE_FRACTION) if args.refine is None else args.refine
    print(f"recipe {args.recipe}: iterations {iterations} (+{refine} quantisation-aware), lr {lr} -> "
          f"{final_lr or lr}, normalisation {'before' if config.norm_first else 'after'} ReLU, input noise "
          f"{config.input_noise}, {args.bits}-bit weights, {BLOCKS} blocks, "
          f"device {args.device}, "
          f"{torch.get_num_threads()} CPU thread(s)\n{HEADER}", flush=True)
    images = [im for im in load_images(args.quick, args.shared, args.full_size)
              if args.only is None or args.only in im[0]]
    rows = run(images, tuple(args.factors), args.bits, args.device, config, args.refine)
    write_json(json_file, rows, args.device, None if argv is None else [__file__, *argv])
    if json_file is not None:
        print(f"wrote {json_file}")


if __name__ == "__main__":
    main()
