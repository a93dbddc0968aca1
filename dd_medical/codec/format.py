"""The ``.ddc`` file: bytes in, header and quantised weights out, and back (numpy only; no torch).

Layout (all integers little-endian)::

    8 bytes   magic b"\\x89DDC\\r\\n\\x1a\\n"
    2 bytes   format version (uint16, currently 1)
    4 bytes   header length N (uint32)
    N bytes   header: UTF-8 JSON (architecture, input seed and slice indices, intensity window, geometry,
              quantisation, payload length, encoder settings, measured PSNR)
    P bytes   payload: for every slice (in order) and every tensor of :func:`tensor_layout` (in order):
              float32 low, float32 step, then the tensor's values as uint8 / uint16 codes (row-major);
              weight = low + code * step in float32
    4 bytes   CRC-32 (zlib) of everything before it

The fixed random input of every decoder is not stored: it is drawn again from the seed and the slice index
(:func:`dd_medical.core.decoder.slice_generator`).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.intensity import Window
from ..errors import InputError

MAGIC = b"\x89DDC\r\n\x1a\n"
FORMAT_VERSION = 1
FORMAT_NAME = "dd-medical deep decoder codec"
_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CRC = struct.Struct("<I")
_MAX_HEADER = 64 << 20

#: DICOM LossyImageCompressionMethod written on decompressed series (a CS value; DICOM defines no term for it).
DICOM_METHOD = "DEEP_DECODER"


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


def quantise(values: np.ndarray, bits: int) -> tuple[np.float32, np.float32, np.ndarray]:
    """Per-tensor affine quantisation: float32 ``low``, ``step`` and integer codes in ``[0, 2**bits - 1]``."""
    values = np.asarray(values, dtype=np.float32)
    low, high = np.float32(values.min()), np.float32(values.max())
    step = np.float32((high - low) / np.float32(2**bits - 1))
    if not step > 0:
        step = np.float32(1.0)
    codes = np.clip(np.rint((values - low) / step), 0, 2**bits - 1)
    return low, step, codes.astype(np.uint8 if bits == 8 else np.uint16)


def dequantise(low: np.float32, step: np.float32, codes: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) * np.float32(step) + np.float32(low)).astype(np.float32)


def encode_payload(weights: list[list[np.ndarray]], bits: int) -> bytes:
    dtype = np.dtype("<u1") if bits == 8 else np.dtype("<u2")
    parts: list[bytes] = []
    for tensors in weights:
        for values in tensors:
            low, step, codes = quantise(values, bits)
            parts += [struct.pack("<ff", low, step), codes.astype(dtype).tobytes()]
    return b"".join(parts)


def decode_payload(payload: bytes, header: dict, path: Path | None) -> list[list[np.ndarray]]:
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
            tensors.append(dequantise(np.float32(low), np.float32(step), codes))
        out.append(tensors)
    return out


def pack(header: dict, payload: bytes) -> bytes:
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
