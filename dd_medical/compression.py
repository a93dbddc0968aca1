"""The decoder as a codec: a slice is stored as the quantised weights of a Deep Decoder fitted to it.

Encoding fits one decoder per slice (:func:`dd_medical.fitting.fit`, identity operator, no noise), quantises
each of its weight tensors to 8 or 16 bits (per-tensor affine: ``w = low + q * step``) and writes a ``.ddc``
file. The fixed random input of every decoder is not stored: it is regenerated from the seed and the slice index
(:func:`dd_medical.fitting.slice_generator`). Decoding is one forward pass of
:class:`~dd_medical.decoder.BatchedDeepDecoder`; on the CPU it reproduces bit for bit the image that
:func:`compress` measured.

``.ddc`` layout (all integers little-endian)::

    8 bytes   magic b"\\x89DDC\\r\\n\\x1a\\n"
    2 bytes   format version (uint16, currently 1)
    4 bytes   header length N (uint32)
    N bytes   header: UTF-8 JSON (architecture, input seed and slice indices, intensity window, geometry,
              quantisation, payload length)
    P bytes   payload: for every slice (in order) and every tensor of :func:`tensor_layout` (in order):
              float32 low, float32 step, then the tensor's values as uint8 / uint16 codes (row-major)
    4 bytes   CRC-32 (zlib) of everything before it

```python
from dd_medical.compression import compress, decompress

encoded = compress(volume, channels=32, bits=8)      # Compressed: .data (bytes), .volume (decoded), .psnr
volume2 = decompress(encoded.data)                    # Volume: HU, geometry; equals encoded.volume on the CPU
```
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .decoder import BatchedDeepDecoder, batched_forward, instance_axis, num_parameters
from .errors import InputError
from .fitting import FitConfig, fit, slice_generator
from .intensity import Window, default_window
from .operators import Identity, mean_squared_residual
from .volume import Volume

MAGIC = b"\x89DDC\r\n\x1a\n"
FORMAT_VERSION = 1
FORMAT_NAME = "dd-medical deep decoder codec"
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CRC = struct.Struct("<I")
_MAX_HEADER = 64 << 20

#: Encoding defaults: the reference code's compression recipe (see ``RECIPES``), the best measured
#: (benchmarks/bench_compress.py, README "Compression").
DEFAULT_CHANNELS = 32
DEFAULT_BLOCKS = 6
DEFAULT_ITERATIONS = 15000
DEFAULT_LEARNING_RATE = 0.004
DEFAULT_FINAL_LEARNING_RATE: float | None = None
DEFAULT_NORM_FIRST = True
DEFAULT_INPUT_NOISE = 0.005
DEFAULT_BITS = 8
#: Quantisation-aware refinement after the fit (see :func:`refine_for_quantisation`): this fraction of the fit's
#: steps.
DEFAULT_REFINE_FRACTION = 0.1
#: Named encoder settings (:func:`compress` keywords). ``reference`` (the default) is the reference code's
#: compression recipe (reinhardh/supplement_deep_decoder, ``include/compression.py``: normalisation before the ReLU,
#: Adam at a constant 0.004, input noise 0.005 shrunk x0.7 every 500 steps, 15,000 steps): 8-bit, against ``decay``
#: at 8,000 steps, camera 256x256 +1.05 dB (10x) and +1.74 dB (42x), CT_small +1.74 / +3.08 dB. ``decay`` (the
#: default before; step size 0.01 -> 0.003, 2,000 steps) is for short fits, where the input noise costs ~4 dB.
RECIPES: dict[str, dict] = {
    "reference": {"iterations": DEFAULT_ITERATIONS, "learning_rate": DEFAULT_LEARNING_RATE,
                  "final_learning_rate": DEFAULT_FINAL_LEARNING_RATE, "norm_first": DEFAULT_NORM_FIRST,
                  "input_noise": DEFAULT_INPUT_NOISE},
    "decay": {"iterations": 2000, "learning_rate": 0.01, "final_learning_rate": 0.003, "norm_first": False,
              "input_noise": 0.0},
}
#: DICOM LossyImageCompressionMethod written on decompressed series (a CS value; DICOM defines no term for it).
DICOM_METHOD = "DEEP_DECODER"
_DECODE_BATCH = 8


@dataclass
class Compressed:
    """What :func:`compress` returns.

    Attributes:
        data: the ``.ddc`` file's bytes.
        header: its parsed JSON header.
        volume: the decoded volume (HU for CT), exactly what :func:`decompress` gives on the CPU.
        psnr: ``(D,)`` PSNR in dB of each decoded slice against the input, on the intensity window scaled to [0, 1].
        seconds: wall time of the fit (encoding), all slices.
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


def tensor_layout(channels: int, blocks: int, out_channels: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of one decoder's weight tensors, in payload order (each quantised separately)."""
    layout: list[tuple[str, tuple[int, ...]]] = []
    for i in range(blocks):
        layout += [(f"block{i}.conv", (channels, channels)), (f"block{i}.norm_scale", (channels,)),
                   (f"block{i}.norm_shift", (channels,))]
    return layout + [("out.conv", (out_channels, channels))]


def compression_ratio(header: dict, file_bytes: int) -> float:
    """``D * H * W * 2`` bytes (16-bit pixels, as DICOM stores CT) over the ``.ddc`` file size."""
    depth, height, width = header["geometry"]["shape"]
    return depth * height * width * 2 / file_bytes


def _quantise(values: np.ndarray, bits: int) -> tuple[np.float32, np.float32, np.ndarray]:
    """Per-tensor affine quantisation: float32 ``low``, ``step`` and integer codes in ``[0, 2**bits - 1]``."""
    values = np.asarray(values, dtype=np.float32)
    low, high = np.float32(values.min()), np.float32(values.max())
    step = np.float32((high - low) / np.float32(2**bits - 1))
    if not step > 0:
        step = np.float32(1.0)
    codes = np.clip(np.rint((values - low) / step), 0, 2**bits - 1)
    return low, step, codes.astype(np.uint8 if bits == 8 else np.uint16)


def _fake_quantise(x: torch.Tensor, dims: tuple[int, ...], bits: int) -> torch.Tensor:
    """``x`` as :func:`_quantise` then :func:`_dequantise` give it back (one range per slice's tensor: the
    reduction over ``dims``), with a straight-through gradient (that of the identity)."""
    low = x.detach().amin(dim=dims, keepdim=True)
    step = (x.detach().amax(dim=dims, keepdim=True) - low) / (2**bits - 1)
    step = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.clamp(torch.round((x.detach() - low) / step), 0, 2**bits - 1) * step + low
    return x + (q - x).detach()


def refine_for_quantisation(
    weights: dict[str, torch.Tensor],
    unit: torch.Tensor,
    *,
    bits: int,
    iterations: int = 200,
    learning_rate: float = 1e-5,
    device: str | torch.device = "cpu",
    norm_first: bool = False,
    final_learning_rate: float | None = None,
) -> dict[str, torch.Tensor]:
    """Quantisation-aware refinement of fitted decoders; returns their new ``state_dict`` (on the CPU).

    The decoders of ``weights`` (a :class:`BatchedDeepDecoder` state dict of ``B`` instances fitted to ``unit``,
    ``(B, 1, H, W)`` in [0, 1]) are trained on for ``iterations`` Adam steps with every tensor replaced, in the
    forward pass, by its quantised value (per slice and tensor, as the ``.ddc`` payload stores it; the gradient
    passes straight through to the float weights). The weights whose quantised decoder had the lowest error,
    slice by slice, are returned, so the result is never worse than quantising the fit directly (step 0).
    ``norm_first``: the decoders' block order (:class:`~dd_medical.decoder.DeepDecoder`). ``final_learning_rate``:
    the step size decays geometrically from ``learning_rate`` to it over the steps (default: constant).

    A converged decoder is sensitive to its weights' last digits: 8-bit rounding of camera 256x256 (k=32, 8000
    steps) cost 1.77 dB (31.00 -> 29.23), mostly in the first blocks' convolutions, whose values have no outliers
    (clipping their range made it worse). The step size must stay far below the quantisation step (~3e-3 there):
    300 steps recovered 0.21 dB at 1e-3, 0.67 at 3e-4, 0.92 at 1e-4, 1.30 at 1e-5 and 1.34 at 3e-6 (1000 steps:
    1.36).
    """
    batch = unit.shape[0]
    height, width = unit.shape[-2:]
    k, blocks = weights["out_weight"].shape[-1], weights["scales"].shape[0]
    # every tensor, the fixed input too, comes from ``weights``: the construction's draws are overwritten
    model = BatchedDeepDecoder(batch, height, width, k, blocks, unit.shape[1],
                               [torch.Generator() for _ in range(batch)], norm_first=norm_first).to(device)
    model.load_state_dict(weights)
    target = unit.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    gamma = (final_learning_rate / learning_rate) ** (1 / max(iterations - 1, 1)) if final_learning_rate else 1.0
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma)
    best = {name: t.detach().clone() for name, t in model.state_dict().items()}
    best_loss = torch.full((batch,), float("inf"), device=device)
    for step in range(iterations + 1):
        image = batched_forward(
            model.net_input, [_fake_quantise(w, (1, 2), bits) for w in model.weights],
            _fake_quantise(model.scales, (2,), bits), _fake_quantise(model.shifts, (2,), bits),
            _fake_quantise(model.out_weight, (1, 2), bits), model.sizes, "sigmoid", norm_first=norm_first)
        losses = mean_squared_residual(image, target)
        with torch.no_grad():  # the weights that gave this image, where it is a slice's best so far
            better = losses < best_loss
            best_loss = torch.where(better, losses, best_loss)
            for name, t in model.state_dict().items():
                if name == "net_input":
                    continue
                axis = instance_axis(name)
                mask = better.view([-1 if d == axis else 1 for d in range(t.dim())])
                best[name] = torch.where(mask, t, best[name])
        if step == iterations:
            break
        optimiser.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimiser.step()
        scheduler.step()
    return {name: t.cpu() for name, t in best.items()}


def _dequantise(low: np.float32, step: np.float32, codes: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) * np.float32(step) + np.float32(low)).astype(np.float32)


def _slice_tensors(weights: dict[str, torch.Tensor], b: int, blocks: int) -> list[np.ndarray]:
    """Instance ``b``'s tensors from a :class:`BatchedDeepDecoder` state dict, in :func:`tensor_layout` order."""
    out: list[np.ndarray] = []
    for i in range(blocks):
        out += [weights[f"weights.{i}"][b].numpy(), weights["scales"][i, b].numpy(), weights["shifts"][i, b].numpy()]
    return [*out, weights["out_weight"][b].numpy()]


def _encode_payload(weights: list[list[np.ndarray]], bits: int) -> bytes:
    dtype = np.dtype("<u1") if bits == 8 else np.dtype("<u2")
    parts: list[bytes] = []
    for tensors in weights:
        for values in tensors:
            low, step, codes = _quantise(values, bits)
            parts += [struct.pack("<ff", low, step), codes.astype(dtype).tobytes()]
    return b"".join(parts)


def _decode_payload(payload: bytes, header: dict, path: Path | None) -> list[list[np.ndarray]]:
    arch, quant = header["architecture"], header["quantisation"]
    layout = tensor_layout(arch["channels"], arch["blocks"], arch["out_channels"])
    bits = quant["bits"]
    dtype = np.dtype("<u1") if bits == 8 else np.dtype("<u2")
    depth = len(header["input"]["slice_indices"])
    expected = depth * sum(8 + int(np.prod(shape)) * dtype.itemsize for _, shape in layout)
    if len(payload) != expected:
        raise InputError(f"corrupt .ddc file: payload has {len(payload)} bytes, the header implies {expected}", path)
    out: list[list[np.ndarray]] = []
    pos = 0
    for _ in range(depth):
        tensors = []
        for _, shape in layout:
            low, step = struct.unpack_from("<ff", payload, pos)
            pos += 8
            n = int(np.prod(shape))
            codes = np.frombuffer(payload, dtype=dtype, count=n, offset=pos).reshape(shape)
            pos += n * dtype.itemsize
            if not (np.isfinite(low) and np.isfinite(step)):
                raise InputError("corrupt .ddc file: non-finite quantisation parameters", path)
            tensors.append(_dequantise(np.float32(low), np.float32(step), codes))
        out.append(tensors)
    return out


def _forward(header: dict, weights: list[list[np.ndarray]], device: str | torch.device = "cpu") -> np.ndarray:
    """Decoded slices ``(D, H, W)`` in [0, 1] (sigmoid output): forward passes, ``_DECODE_BATCH`` slices at a time."""
    arch = header["architecture"]
    seed, indices = header["input"]["seed"], header["input"]["slice_indices"]
    k, blocks, c = arch["channels"], arch["blocks"], arch["out_channels"]
    height, width = arch["height"], arch["width"]
    out = np.empty((len(indices), height, width), dtype=np.float32)
    for start in range(0, len(indices), _DECODE_BATCH):
        chunk = range(start, min(len(indices), start + _DECODE_BATCH))
        generators = [slice_generator(seed, indices[j], 0) for j in chunk]
        model = BatchedDeepDecoder(len(chunk), height, width, k, blocks, c, generators, output=arch["output"],
                                   norm_first=arch.get("norm_first", False))
        with torch.no_grad():
            for i in range(blocks):
                model.weights[i].copy_(torch.from_numpy(np.stack([weights[j][3 * i] for j in chunk])))
                model.scales[i].copy_(torch.from_numpy(np.stack([weights[j][3 * i + 1] for j in chunk])))
                model.shifts[i].copy_(torch.from_numpy(np.stack([weights[j][3 * i + 2] for j in chunk])))
            model.out_weight.copy_(torch.from_numpy(np.stack([weights[j][3 * blocks] for j in chunk])))
            image = model.to(device)().float().cpu().numpy()
        out[chunk.start:chunk.stop] = image[:, 0]
    return out


def _pack(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + payload
    return body + _CRC.pack(zlib.crc32(body))


def read_header(data: bytes, path: str | Path | None = None) -> tuple[dict, bytes]:
    """Check a ``.ddc`` file's bytes (magic, version, CRC-32, header fields) -> ``(header, payload)``.

    Raises :class:`InputError` naming ``path`` for anything that is not an intact version-1 ``.ddc`` file.
    """
    path = None if path is None else Path(path)
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise InputError(f"truncated .ddc file ({len(data)} bytes)", path)
    if data[: len(MAGIC)] != MAGIC:
        raise InputError("not a .ddc file (wrong magic bytes)", path)
    if len(data) < _PREFIX.size + _CRC.size:
        raise InputError(f"truncated .ddc file ({len(data)} bytes)", path)
    _, version, header_length = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise InputError(
            f".ddc format version {version} is not supported (this dd-medical reads version {FORMAT_VERSION})", path)
    if header_length > _MAX_HEADER or _PREFIX.size + header_length + _CRC.size > len(data):
        raise InputError(f"truncated or corrupt .ddc file ({len(data)} bytes; header claims {header_length})", path)
    body, (crc,) = data[: -_CRC.size], _CRC.unpack_from(data, len(data) - _CRC.size)
    try:
        header = json.loads(body[_PREFIX.size: _PREFIX.size + header_length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    payload = body[_PREFIX.size + header_length:]
    if header is not None and isinstance(header, dict) and isinstance(header.get("payload_bytes"), int) \
            and header["payload_bytes"] != len(payload):
        raise InputError(
            f"truncated or corrupt .ddc file: payload has {len(payload)} bytes, header says {header['payload_bytes']}",
            path)
    if zlib.crc32(body) != crc:
        raise InputError("corrupt .ddc file: CRC-32 check failed (the file was damaged or truncated)", path)
    if not isinstance(header, dict):
        raise InputError("corrupt .ddc file: header is not valid JSON", path)
    _check_header(header, path)
    return header, payload


def _check_header(header: dict, path: Path | None) -> None:
    try:
        arch, quant, inp, geometry = header["architecture"], header["quantisation"], header["input"], header["geometry"]
        ok = (
            header.get("format") == FORMAT_NAME
            and all(isinstance(arch[n], int) and 1 <= arch[n] <= 65535
                    for n in ("channels", "blocks", "out_channels", "height", "width"))
            and arch["output"] in ("sigmoid", "linear") and quant["bits"] in (8, 16)
            and isinstance(arch.get("norm_first", False), bool)
            and quant["scheme"] == "affine-per-tensor" and isinstance(inp["seed"], int)
            and len(geometry["shape"]) == 3 and geometry["shape"][0] == len(inp["slice_indices"])
            and geometry["shape"][1:] == [arch["height"], arch["width"]] and arch["out_channels"] == 1
        )
        Window(*header["window"])
        spacing, origin, direction = (tuple(float(v) for v in geometry[n]) for n in ("spacing", "origin", "direction"))
        ok = ok and len(spacing) == 3 and len(origin) == 3 and len(direction) == 9 and isinstance(geometry["modality"],
                                                                                                 str)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError("corrupt .ddc file: header fields are missing or invalid", path)


def compress(
    volume: Volume,
    *,
    channels: int = DEFAULT_CHANNELS,
    blocks: int = DEFAULT_BLOCKS,
    bits: int = DEFAULT_BITS,
    iterations: int = DEFAULT_ITERATIONS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    final_learning_rate: float | None = DEFAULT_FINAL_LEARNING_RATE,
    refine_iterations: int | None = None,
    norm_first: bool = DEFAULT_NORM_FIRST,
    input_noise: float = DEFAULT_INPUT_NOISE,
    seed: int = 0,
    window: Window | tuple[float, float] | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    callback: Callable[[int, int], None] | None = None,
) -> Compressed:
    """Encode ``volume`` (``(D, H, W)``, HU for CT) as a ``.ddc`` file's bytes.

    Each slice is mapped to [0, 1] with ``window`` (default: the volume's full range, nothing clipped), fitted by
    its own decoder (``channels`` ``k``, ``blocks``; ``iterations`` Adam steps of size ``learning_rate``, decaying
    geometrically to ``final_learning_rate`` when that is set; no ensemble; the last iterate is kept), whose weights
    are quantised to ``bits`` (8 or 16) per tensor after ``refine_iterations`` steps of quantisation-aware
    refinement (:func:`refine_for_quantisation`; default a tenth of ``iterations``; 0 quantises the fit directly).
    ``norm_first`` and ``input_noise`` are :class:`~dd_medical.fitting.FitConfig`'s. The defaults are
    ``RECIPES["reference"]`` (15,000 steps: minutes per slice on a GPU, tens of minutes on a CPU); for short fits
    use ``compress(volume, **RECIPES["decay"])``. The result is decoded again from the quantised weights on the
    CPU and measured: ``Compressed.volume`` and ``.psnr`` are what :func:`decompress` will give.
    ``callback(done, total)`` counts slice-iterations of the fit.
    """
    from .pipeline import auto_batch_size, check_slices, resolve_device

    if bits not in (8, 16):
        raise InputError(f"bits must be 8 or 16, got {bits}")
    if refine_iterations is None:
        refine_iterations = int(iterations * DEFAULT_REFINE_FRACTION)
    if refine_iterations < 0:
        raise InputError(f"refine_iterations must be >= 0, got {refine_iterations}")
    hu = check_slices(volume.array, "volume")
    if window is None:
        window = default_window(hu, volume.modality)
    elif not isinstance(window, Window):
        window = Window(*window)
    config = FitConfig(channels=channels, blocks=blocks, iterations=iterations, learning_rate=learning_rate,
                       final_learning_rate=final_learning_rate, seed=seed, ensemble=1, result="last",
                       stopping="fixed", output="sigmoid", amp=False,  # float32: the stored weights must replay
                       norm_first=norm_first, input_noise=input_noise)
    dev = resolve_device(device)
    depth, height, width = hu.shape
    unit = torch.from_numpy(window.to_unit(hu))[:, None]
    if batch_size is None:
        batch_size = auto_batch_size(depth, height, width, config, dev)
    weights: list[list[np.ndarray]] = []
    fitted: list[list[np.ndarray]] = []  # before refinement, for the record
    t0 = time.perf_counter()
    for start in range(0, depth, batch_size):
        stop = min(depth, start + batch_size)

        def on_iteration(it: int, total: int, n: int = stop - start, before: int = start * iterations) -> None:
            if callback is not None:
                callback(before + it * n, depth * iterations)

        result = fit(Identity(), unit[start:stop], config, slice_indices=range(start, stop), device=dev,
                     callback=on_iteration)
        fitted += [_slice_tensors(result.weights, b, blocks) for b in range(stop - start)]
        state = result.weights
        if refine_iterations:
            state = refine_for_quantisation(state, unit[start:stop], bits=bits, iterations=refine_iterations,
                                            device=dev, norm_first=norm_first)
        weights += [_slice_tensors(state, b, blocks) for b in range(stop - start)]
    seconds = time.perf_counter() - t0

    payload = _encode_payload(weights, bits)
    header = {
        "format": FORMAT_NAME,
        "architecture": {"channels": channels, "blocks": blocks, "out_channels": 1, "output": "sigmoid",
                         "height": height, "width": width, "norm_first": bool(norm_first)},
        "input": {"seed": seed, "slice_indices": list(range(depth))},
        "window": [float(window.low), float(window.high)],
        "geometry": {"shape": [depth, height, width], "spacing": [float(v) for v in volume.spacing],
                     "origin": [float(v) for v in volume.origin],
                     "direction": [float(v) for v in volume.direction], "modality": volume.modality},
        "quantisation": {"bits": bits, "scheme": "affine-per-tensor"},
        "payload_bytes": len(payload),
        "encoder": {"iterations": iterations, "learning_rate": learning_rate,
                    "final_learning_rate": final_learning_rate, "refine_iterations": refine_iterations,
                    "input_noise": input_noise,
                    "parameters_per_slice": num_parameters(channels, blocks, 1)},
    }
    decoded_unit = _forward(header, _decode_payload(payload, header, None))
    unquantised = _forward(header, fitted)  # the fitted decoders before refinement and quantisation, for the record
    psnr = _psnr(decoded_unit, window.to_unit(hu))
    header["measured"] = {"psnr_db": [round(float(v), 3) for v in psnr],
                          "psnr_unquantised_db": [round(float(v), 3)
                                                  for v in _psnr(unquantised, window.to_unit(hu))]}
    data = _pack(header, payload)
    return Compressed(data=data, header=header, volume=_to_volume(header, decoded_unit), psnr=psnr, seconds=seconds)


def _psnr(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    mse = np.mean((image.astype(np.float64) - reference.astype(np.float64)) ** 2, axis=(1, 2))
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))


def decompress(data: bytes, *, path: str | Path | None = None, device: str | torch.device = "cpu") -> Volume:
    """Decode a ``.ddc`` file's bytes into a :class:`Volume` (HU for CT, geometry and modality restored).

    ``device="cpu"`` (default) reproduces exactly the image :func:`compress` measured; a GPU gives the same image
    to within float rounding. Damaged, truncated or unknown-version data raises :class:`InputError` naming ``path``.
    """
    from .pipeline import resolve_device

    header, payload = read_header(data, path)
    weights = _decode_payload(payload, header, None if path is None else Path(path))
    return _to_volume(header, _forward(header, weights, resolve_device(device)))


def _to_volume(header: dict, unit: np.ndarray) -> Volume:
    """Decoded ``(D, H, W)`` [0, 1] slices -> a :class:`Volume` in the stored window's units, with its geometry."""
    geometry = header["geometry"]
    return Volume(
        Window(*header["window"]).from_unit(unit), spacing=tuple(geometry["spacing"]),
        origin=tuple(geometry["origin"]), direction=tuple(geometry["direction"]), modality=geometry["modality"],
    )


def read_ddc(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[Volume, dict]:
    """Read and decode a ``.ddc`` file -> ``(volume, header)``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such .ddc file" if not path.exists() else "not a file", path)
    data = path.read_bytes()
    header, _ = read_header(data, path)
    return decompress(data, path=path, device=device), header


def compress_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    overwrite: bool = False,
    **options,
) -> str:
    """Read ``input_path`` (DICOM series folder, DICOM file or image file), write ``output_path`` (``.ddc``).

    ``options`` are :func:`compress`'s. The file appears only once complete. Returns a one-line summary.
    """
    from .io import atomic_output_file, read_volume

    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and not overwrite:
        raise InputError("output file already exists (refusing to overwrite)", output_path)
    volume = read_volume(input_path)
    encoded = compress(volume, **options)
    with atomic_output_file(output_path, overwrite=overwrite) as tmp:
        tmp.write_bytes(encoded.data)
    depth, height, width = volume.shape
    return (
        f"compressed {depth} slice(s) of {height}x{width} into {len(encoded.data)} bytes "
        f"({8 * len(encoded.data) / volume.array.size:.3f} bits/pixel, {encoded.ratio:.1f}:1 against 16-bit pixels) "
        f"in {encoded.seconds:.1f} s; PSNR {float(np.mean(encoded.psnr)):.2f} dB on the window "
        f"[{encoded.header['window'][0]:g}, {encoded.header['window'][1]:g}]; wrote {output_path}"
    )


def decompress_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> str:
    """Decode ``input_path`` (``.ddc``) into ``output_path``: an image file (by extension) or a DICOM series folder.

    A DICOM series is built from the stored geometry (the source files are not needed) and marked lossy:
    LossyImageCompression ``01``, LossyImageCompressionRatio, LossyImageCompressionMethod ``DEEP_DECODER``.
    Written atomically. Returns a one-line summary.
    """
    from .io import is_image_path, write_image

    input_path, output_path = Path(input_path), Path(output_path)
    volume, header = read_ddc(input_path, device=device)
    ratio = compression_ratio(header, input_path.stat().st_size)
    if is_image_path(output_path):
        write_image(volume, output_path, overwrite=overwrite)
    else:
        _write_lossy_series(volume, output_path, header, ratio, overwrite=overwrite)
    return f"decompressed {volume.shape[0]} slice(s) of {volume.shape[1]}x{volume.shape[2]}; wrote {output_path}"


def _write_lossy_series(volume: Volume, out_dir: Path, header: dict, ratio: float, *, overwrite: bool) -> None:
    """A new DICOM series (:func:`dd_medical.io.write_series`) with the lossy-compression attributes added."""
    import pydicom
    from pydicom.valuerep import DSfloat

    from .io import atomic_output_dir, write_series

    arch, bits = header["architecture"], header["quantisation"]["bits"]
    description = (
        f"Lossy compression by dd-medical .ddc: one Deep Decoder per slice (k={arch['channels']}, "
        f"{arch['blocks']} blocks), {bits}-bit weights, ratio {ratio:.1f}:1"
    )
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        files = write_series(volume, tmp, series_description=f"DD decompressed (k={arch['channels']})",
                             derivation_description=description, overwrite=True)
        for name in files:
            ds = pydicom.dcmread(tmp / Path(name).name)
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = [DSfloat(ratio, auto_format=True)]
            ds.LossyImageCompressionMethod = [DICOM_METHOD]
            ds.save_as(tmp / Path(name).name, enforce_file_format=True)
