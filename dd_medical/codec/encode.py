"""The decoder as a codec: fit one decoder per slice, refine it for quantisation, decode by one forward pass.

Encoding fits one decoder per slice (:func:`dd_medical.core.fit.fit`, identity operator), then refines it with
every weight fake-quantised in the forward pass (the same ``fit`` with a weight hook), and stores the quantised
weights (:mod:`dd_medical.codec.format`). Decoding on the CPU reproduces bit for bit the image ``compress`` measured.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..core.config import FitConfig
from ..core.decoder import BatchedDeepDecoder, num_parameters, slice_generator
from ..core.fit import fit
from ..core.intensity import Window, default_window, resolve_modality
from ..core.operators import Identity
from ..errors import InputError
from ..pipeline import FASTER, Progress, Tracker, auto_batch_size, check_slices, in_batches, resolve_device
from ..volume import Volume
from .format import FORMAT_NAME, compression_ratio, decode_payload, encode_payload, pack, read_header

#: Quantisation-aware refinement: this fraction of the fit's steps (default), at this constant step size (far
#: below the weights' quantisation step).
REFINE_FRACTION = 0.1
REFINE_LEARNING_RATE = 1e-5
_DECODE_BATCH = 8


@dataclass
class Compressed:
    """What :func:`compress` returns.

    Attributes:
        data: the ``.ddc`` file's bytes.
        header: its parsed JSON header.
        volume: the decoded volume (HU for CT), exactly what :func:`decompress` gives on the CPU.
        psnr: ``(D,)`` PSNR in dB of each decoded slice against the input, on the intensity window scaled to [0, 1].
        seconds: wall time of the encoding (fit and refinement), all slices.
    """

    data: bytes
    header: dict
    volume: Volume
    psnr: np.ndarray
    seconds: float

    @property
    def ratio(self) -> float:
        """Uncompressed size at 16 bits per pixel divided by the ``.ddc`` size."""
        return compression_ratio(self.header, len(self.data))


class FakeQuantisation:
    """Weight hook: every tensor as the ``.ddc`` payload stores it (per slice and tensor: ``bits``-bit affine codes
    between its minimum and maximum), with a straight-through gradient (that of the identity).

    Not ``torch.fake_quantize_per_channel_affine``: its grid ``(code - zero_point) * scale`` is the file's
    ``low + code * step`` only to within float rounding (an integer zero point shifts it by up to half a step), and
    refinement must see exactly the weights that are stored."""

    def __init__(self, bits: int) -> None:
        self.bits = bits

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        first = 2 if name in ("scales", "shifts", "biases") else 1  # (blocks, B, ...) or (B, ...): one range each
        dims = tuple(range(first, x.dim()))
        low = x.detach().amin(dim=dims, keepdim=True)
        step = (x.detach().amax(dim=dims, keepdim=True) - low) / (2**self.bits - 1)
        step = torch.where(step > 0, step, torch.ones_like(step))
        q = torch.clamp(torch.round((x.detach() - low) / step), 0, 2**self.bits - 1) * step + low
        return x + (q - x).detach()


def _slice_tensors(weights: dict[str, torch.Tensor], b: int, blocks: int) -> list[np.ndarray]:
    """Instance ``b``'s tensors from a :class:`BatchedDeepDecoder` state dict, in ``tensor_layout`` order."""
    out: list[np.ndarray] = []
    for i in range(blocks):
        out += [weights[f"weights.{i}"][b].numpy(), weights["scales"][i, b].numpy(), weights["shifts"][i, b].numpy()]
    return [*out, weights["out_weight"][b].numpy()]


def decode(header: dict, weights: list[list[np.ndarray]], device: torch.device | None = None) -> np.ndarray:
    """Decoded slices ``(D, H, W)`` in [0, 1]: one forward pass of each slice's decoder (CPU by default)."""
    arch, seed, indices = header["architecture"], header["input"]["seed"], header["input"]["slice_indices"]
    k, blocks, c, height, width = (arch[n] for n in ("channels", "blocks", "out_channels", "height", "width"))
    device = device or torch.device("cpu")

    def work(start: int, stop: int) -> np.ndarray:
        chunk = range(start, stop)
        model = BatchedDeepDecoder(len(chunk), height, width, k, blocks, c, [slice_generator(seed, indices[j], 0)
                                   for j in chunk], output=arch["output"], norm_first=arch.get("norm_first", False))
        with torch.no_grad():
            for i in range(blocks):
                model.weights[i].copy_(torch.from_numpy(np.stack([weights[j][3 * i] for j in chunk])))
                model.scales[i].copy_(torch.from_numpy(np.stack([weights[j][3 * i + 1] for j in chunk])))
                model.shifts[i].copy_(torch.from_numpy(np.stack([weights[j][3 * i + 2] for j in chunk])))
            model.out_weight.copy_(torch.from_numpy(np.stack([weights[j][3 * blocks] for j in chunk])))
            return model.to(device)().float().cpu().numpy()[:, 0]

    return np.concatenate([part for *_, part in in_batches(len(indices), _DECODE_BATCH, device, work,
                                                           what="decoding one slice")])


#: PSNR (dB) recorded for a slice decoded without error: the JSON header holds no infinity.
LOSSLESS_PSNR_DB = 200.0


def _psnr(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(D,)`` PSNR in dB of ``(D, H, W)`` [0, 1] slices (:func:`dd_medical.metrics.psnr`), at most
    ``LOSSLESS_PSNR_DB``."""
    from ..metrics import psnr  # imports monai, which takes seconds: only compress pays it

    return np.minimum(np.atleast_1d(psnr(image, reference, data_range=1.0)), LOSSLESS_PSNR_DB)


def _header(volume: Volume, config: FitConfig, window: Window, bits: int, refine_iterations: int,
            payload: bytes) -> dict:
    depth, height, width = volume.shape
    blocks = config.depth(height, width)
    return {
        "format": FORMAT_NAME,
        "architecture": {"channels": config.channels, "blocks": blocks, "out_channels": 1,
                         "output": "sigmoid", "height": height, "width": width, "norm_first": bool(config.norm_first)},
        "input": {"seed": config.seed, "slice_indices": list(range(depth))},
        "window": [float(window.low), float(window.high)],
        "geometry": {"shape": [depth, height, width], "spacing": [float(v) for v in volume.spacing],
                     "origin": [float(v) for v in volume.origin],
                     "direction": [float(v) for v in volume.direction], "modality": volume.modality},
        "quantisation": {"bits": bits, "scheme": "affine-per-tensor"},
        "payload_bytes": len(payload),
        "encoder": {"iterations": config.iterations, "learning_rate": config.learning_rate,
                    "final_learning_rate": config.final_learning_rate, "refine_iterations": refine_iterations,
                    "input_noise": config.input_noise,
                    "parameters_per_slice": num_parameters(config.channels, blocks, 1)},
    }


def compress(
    volume: Volume,
    config: FitConfig,
    *,
    bits: int = 8,
    refine_iterations: int | None = None,
    window: Window | tuple[float, float] | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    progress: Progress = None,
    modality: str | None = None,
) -> Compressed:
    """Encode ``volume`` (``(D, H, W)``, HU for CT) as a ``.ddc`` file's bytes.

    Each slice is mapped to [0, 1] with ``window`` (default: the ``default_window`` of ``modality``, which defaults
    to the volume's own or, unknown, to :func:`~dd_medical.core.intensity.resolve_modality`'s rule) and fitted by
    its own decoder (``config``: the ``compress`` settings of :mod:`dd_medical.presets`), refined for
    ``refine_iterations`` steps with fake-quantised weights (default ``REFINE_FRACTION`` of ``config.iterations``;
    0: quantise the fit directly; the best quantised iterate is kept), and stored as ``bits``-bit (8 or 16)
    weights. The result is decoded again on the CPU and measured: ``Compressed.volume`` and ``.psnr`` are what
    :func:`decompress` gives. ``progress``: as for :func:`dd_medical.pipeline.Tracker` (the fit and the refinement).
    """
    if bits not in (8, 16):
        raise InputError(f"bits must be 8 or 16, got {bits}")
    refine_iterations = int(config.iterations * REFINE_FRACTION) if refine_iterations is None else refine_iterations
    if refine_iterations < 0:
        raise InputError(f"refine_iterations must be >= 0, got {refine_iterations}")
    hu = check_slices(volume.array, "volume")
    if window is None:
        window = default_window(hu, resolve_modality(modality or volume.modality, hu))
    window = window if isinstance(window, Window) else Window(*window)
    dev = resolve_device(device)
    depth, height, width = hu.shape
    unit = torch.from_numpy(window.to_unit(hu))[:, None]
    refine = replace(config, iterations=refine_iterations + 1, learning_rate=REFINE_LEARNING_RATE,
                     final_learning_rate=None, input_noise=0.0, result="best")  # n steps: n + 1 iterates
    tracker = Tracker(depth, "compressing", progress, device=dev, faster=FASTER["compress"])
    share = config.iterations / (config.iterations + refine_iterations)  # of each slice's steps: the fit's

    def work(start: int, stop: int) -> tuple[list, list]:
        def step(it: int, total: int, first: float = 0.0, part: float = share) -> None:
            tracker.to(start + (stop - start) * (first + part * it / total))

        fitted = fit(Identity(), unit[start:stop], config, slice_indices=range(start, stop), device=dev,
                     callback=step).weights
        state = fitted if not refine_iterations else fit(
            Identity(), unit[start:stop], refine, slice_indices=range(start, stop), device=dev,
            initial_weights=fitted, weight_hook=FakeQuantisation(bits),
            callback=functools.partial(step, first=share, part=1 - share)).weights
        tracker.to(stop)
        blocks = config.depth(height, width)
        return ([_slice_tensors(fitted, b, blocks) for b in range(stop - start)],
                [_slice_tensors(state, b, blocks) for b in range(stop - start)])

    t0 = time.perf_counter()
    try:
        parts = list(in_batches(depth, batch_size or auto_batch_size(depth, height, width, config, dev), dev, work,
                                what=f"compressing one {height}x{width} slice"))
    finally:
        tracker.close()
    seconds = time.perf_counter() - t0
    fitted = [t for *_, (f, _) in parts for t in f]  # before refinement, for the record
    weights = [t for *_, (_, w) in parts for t in w]
    payload = encode_payload(weights, bits)
    header = _header(volume, config, window, bits, refine_iterations, payload)
    decoded_unit = decode(header, decode_payload(payload, header, None))
    psnr = _psnr(decoded_unit, window.to_unit(hu))
    header["measured"] = {"psnr_db": [round(float(v), 3) for v in psnr],
                          "psnr_unquantised_db": [round(float(v), 3)
                                                  for v in _psnr(decode(header, fitted), window.to_unit(hu))]}
    data = pack(header, payload)
    return Compressed(data=data, header=header, volume=to_volume(header, decoded_unit), psnr=psnr, seconds=seconds)


def decompress(data: bytes, *, path=None, device: str | torch.device = "cpu") -> Volume:
    """Decode a ``.ddc`` file's bytes into a :class:`Volume` (HU for CT, geometry and modality restored).

    ``device="cpu"`` (default) reproduces exactly the image :func:`compress` measured; a GPU gives it to within float
    rounding. Damaged, truncated or unknown-version data raises :class:`InputError` naming ``path``.
    """
    header, payload = read_header(data, path)
    weights = decode_payload(payload, header, path)
    return to_volume(header, decode(header, weights, resolve_device(device)))


def to_volume(header: dict, unit: np.ndarray) -> Volume:
    """Decoded ``(D, H, W)`` [0, 1] slices -> a :class:`Volume` in the stored window's units, with its geometry."""
    geometry = header["geometry"]
    return Volume(
        Window(*header["window"]).from_unit(unit), spacing=tuple(geometry["spacing"]),
        origin=tuple(geometry["origin"]), direction=tuple(geometry["direction"]), modality=geometry["modality"],
    )
