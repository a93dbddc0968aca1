"""dd_medical.codec: the .ddc codec (fit, quantise, store, decode), its damage checks and its CLI."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner

from dd_medical.api import compress, decompress
from dd_medical.cli import cli
from dd_medical.codec.encode import REFINE_LEARNING_RATE, FakeQuantisation, _slice_tensors, decode
from dd_medical.codec.encode import _psnr as _codec_psnr
from dd_medical.codec.format import (
    DICOM_METHOD,
    FORMAT_VERSION,
    MAGIC,
    decode_payload,
    dequantise,
    encode_payload,
    quantise,
    read_header,
)
from dd_medical.core.fit import FitConfig, fit
from dd_medical.core.intensity import Window, default_window
from dd_medical.core.operators import Identity
from dd_medical.errors import InputError
from dd_medical.io import read_volume, write_series
from dd_medical.metrics import psnr
from dd_medical.phantom import phantom_volume
from dd_medical.presets import resolve
from dd_medical.volume import Volume

SMALL = dict(channels=12, blocks=4, iterations=80, device="cpu", seed=3)


def read_ddc(path: Path) -> tuple[Volume, dict]:
    """A .ddc file decoded (on the CPU) and its header."""
    return decompress(path), read_header(Path(path).read_bytes(), path)[0]


@pytest.fixture(scope="module")
def volume():
    return phantom_volume(depth=2, size=32)


@pytest.fixture(scope="module")
def encoded8(volume):
    return compress(volume, bits=8, **SMALL)


@pytest.fixture(scope="module")
def encoded16(volume):
    return compress(volume, bits=16, **SMALL)


def _psnr(a, b, window):
    mse = np.mean(((a - b) / (window[1] - window[0])) ** 2, axis=(1, 2))
    return 10 * np.log10(1 / mse)


def test_round_trip_gives_exactly_the_measured_image(volume, encoded8, tmp_path):
    decoded = decompress(encoded8.data)
    assert decoded.array.dtype == np.float32 and decoded.shape == volume.shape
    assert np.array_equal(decoded.array, encoded8.volume.array)  # bitwise: decode is the same forward pass
    assert decoded.spacing == volume.spacing and decoded.origin == volume.origin
    assert decoded.direction == volume.direction and decoded.modality == volume.modality
    # the PSNR compress measured (and stored) is the PSNR of what decompress gives
    window = encoded8.header["window"]
    measured = _psnr(decoded.array, volume.array, window)
    np.testing.assert_allclose(measured, encoded8.psnr, atol=1e-3)
    np.testing.assert_allclose(encoded8.header["measured"]["psnr_db"], encoded8.psnr, atol=1e-3)
    flat = _psnr(np.broadcast_to(volume.array.mean(axis=(1, 2), keepdims=True), volume.shape), volume.array, window)
    assert np.all(encoded8.psnr > flat + 3)  # a fitted image, clearly better than each slice's mean value
    path = tmp_path / "x.ddc"
    path.write_bytes(encoded8.data)
    from_file, header = read_ddc(path)
    assert np.array_equal(from_file.array, decoded.array) and header == encoded8.header


def test_measured_psnr_is_the_packages_psnr_in_float64(volume, encoded8):
    """The codec's PSNR is :func:`dd_medical.metrics.psnr` (MONAI's, in float64) of what ``decode`` gives, capped
    at 200 dB for a slice decoded without error (the JSON header holds no infinity)."""
    window = Window(*encoded8.header["window"])
    header, payload = read_header(encoded8.data)
    decoded = decode(header, decode_payload(payload, header, None))
    unit = window.to_unit(volume.array)
    mse = np.mean((decoded.astype(np.float64) - unit.astype(np.float64)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(psnr(decoded, unit), -10 * np.log10(mse), rtol=0, atol=1e-9)
    np.testing.assert_allclose(encoded8.psnr, psnr(decoded, unit), rtol=0, atol=1e-9)
    assert header["measured"]["psnr_db"] == [round(float(v), 3) for v in encoded8.psnr]
    assert psnr(unit, unit).tolist() == [np.inf, np.inf]
    assert _codec_psnr(unit, unit).tolist() == [200.0, 200.0]


def test_8_bits_is_smaller_and_16_bits_is_closer(volume, encoded8, encoded16):
    p8, p16 = encoded8.header["payload_bytes"], encoded16.header["payload_bytes"]
    weights = 2 * (4 * (12 * 12 + 2 * 12) + 12)  # two slices of num_parameters(12, 4)
    tensors = 2 * (3 * 4 + 1)
    assert p8 == weights + 8 * tensors and p16 == 2 * weights + 8 * tensors
    assert len(encoded16.data) > len(encoded8.data) and encoded8.ratio > encoded16.ratio
    # same fit (same seed), only the quantisation differs: 16 bits stays closer to the unquantised decoder
    plain8, plain16 = (compress(volume, bits=b, refine_iterations=0, **SMALL) for b in (8, 16))
    fitted = np.array(encoded8.header["measured"]["psnr_unquantised_db"])
    for encoded in (encoded16, plain8, plain16):
        assert np.array_equal(fitted, encoded.header["measured"]["psnr_unquantised_db"])
    assert np.all(np.abs(plain16.psnr - fitted) < 0.01)
    assert np.all(np.abs(plain16.psnr - fitted) < np.abs(plain8.psnr - fitted))
    assert np.max(np.abs(encoded16.volume.array - encoded8.volume.array)) > 0
    # the default refinement (8 steps here) never loses to quantising the fit directly
    assert encoded8.header["encoder"]["refine_iterations"] == 8 and plain8.header["encoder"]["refine_iterations"] == 0
    assert np.all(encoded8.psnr >= plain8.psnr - 1e-3) and np.all(encoded16.psnr >= plain16.psnr - 1e-3)


def test_header_round_trip(volume, encoded8):
    header, payload = read_header(encoded8.data)
    assert header == encoded8.header and len(payload) == header["payload_bytes"]
    assert header["architecture"] == {"channels": 12, "blocks": 4, "out_channels": 1, "output": "sigmoid",
                                      "height": 32, "width": 32, "norm_first": True}
    assert header["input"] == {"seed": 3, "slice_indices": [0, 1]}
    assert header["window"] == [float(volume.array.min()), float(volume.array.max())]
    assert header["geometry"]["shape"] == [2, 32, 32]
    assert header["geometry"]["spacing"] == list(volume.spacing)
    assert header["geometry"]["modality"] == "CT"
    assert header["quantisation"] == {"bits": 8, "scheme": "affine-per-tensor"}
    assert encoded8.data[:8] == MAGIC and struct.unpack_from("<H", encoded8.data, 8)[0] == FORMAT_VERSION


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_damaged_files_raise_clear_input_errors(encoded8, tmp_path):
    data = encoded8.data
    header_end = 14 + struct.unpack_from("<I", data, 10)[0]
    for position in (20, header_end + 3, len(data) - 40, len(data) - 2):  # header, payload, weights, CRC
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        with pytest.raises(InputError, match="corrupt"):
            decompress(bytes(damaged))
    for length in (0, 5, 12, header_end - 1, header_end + 10, len(data) - 1):
        with pytest.raises(InputError, match="truncated"):
            decompress(data[:length])
    with pytest.raises(InputError, match="wrong magic"):
        decompress(b"GIF89a" + data[6:])
    future = bytearray(data[:-4])
    future[8:10] = struct.pack("<H", FORMAT_VERSION + 1)
    with pytest.raises(InputError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        decompress(_with_crc(bytes(future)))
    # a well-formed file whose header lies about the architecture: caught, never a silently wrong image
    header, payload = read_header(data)
    header["architecture"]["channels"] = 13
    import json
    text = json.dumps(header).encode()
    with pytest.raises(InputError, match="payload has"):
        decompress(_with_crc(data[:8] + struct.pack("<HI", FORMAT_VERSION, len(text)) + text + payload))
    # the file name is in the message
    path = tmp_path / "broken.ddc"
    path.write_bytes(data[:-10])
    with pytest.raises(InputError, match="broken.ddc: truncated"):
        read_ddc(path)


def test_recipes_round_trip_and_older_headers_decode_as_relu_first(volume, encoded8):
    header = encoded8.header  # the default recipe, "reference"
    assert header["architecture"]["norm_first"] is True and header["encoder"]["input_noise"] == 0.005
    assert header["encoder"]["learning_rate"] == 0.004 and header["encoder"]["final_learning_rate"] is None
    weights = decode_payload(read_header(encoded8.data)[1], header, None)
    flipped = {**header, "architecture": {**header["architecture"], "norm_first": False}}
    assert not np.array_equal(decode(flipped, weights), decode(header, weights))  # the block order is replayed
    decay = compress(volume, "decay", bits=8, **{**SMALL, "iterations": 60})
    assert decay.header["architecture"]["norm_first"] is False and decay.header["encoder"]["input_noise"] == 0.0
    assert np.array_equal(decompress(decay.data).array, decay.volume.array)
    # a header written before the field existed (format version 1 all the same) decodes with ReLU first
    older = {**decay.header, "architecture": {k: v for k, v in decay.header["architecture"].items()
                                              if k != "norm_first"}}
    body, payload = decay.data[: -4], read_header(decay.data)[1]
    text = json.dumps(older, separators=(",", ":"), sort_keys=True).encode()
    assert np.array_equal(decompress(_with_crc(body[:10] + struct.pack("<I", len(text)) + text + payload)).array,
                          decay.volume.array)
    bad = {**older, "architecture": {**older["architecture"], "norm_first": "yes"}}
    text = json.dumps(bad, separators=(",", ":"), sort_keys=True).encode()
    with pytest.raises(InputError, match="header fields are missing or invalid"):
        read_header(_with_crc(body[:10] + struct.pack("<I", len(text)) + text + payload))


def test_deterministic_given_seed():
    one = phantom_volume(depth=1, size=32)
    options = dict(channels=8, blocks=4, iterations=25, device="cpu")
    first, second = compress(one, seed=7, **options), compress(one, seed=7, **options)
    assert first.data == second.data
    assert compress(one, seed=8, **options).data != first.data


def test_compress_refines_with_the_fitting_loop_and_checks_its_settings():
    """The stored weights are those of ``fit`` from the fitted weights with fake-quantised weights (the best
    quantised iterate of ``refine_iterations`` steps at ``REFINE_LEARNING_RATE``), quantised."""
    one = phantom_volume(depth=1, size=32)
    encoded = compress(one, bits=8, refine_iterations=5, channels=8, blocks=4, iterations=25, device="cpu", seed=2)
    config = resolve("compress", channels=8, blocks=4, iterations=25, seed=2)
    unit = torch.from_numpy(default_window(one.array, one.modality).to_unit(one.array))[:, None]
    fitted = fit(Identity(), unit, config, device="cpu").weights
    refine = replace(config, iterations=6, learning_rate=REFINE_LEARNING_RATE, final_learning_rate=None,
                     input_noise=0.0, result="best")
    refined = fit(Identity(), unit, refine, device="cpu", initial_weights=fitted, weight_hook=FakeQuantisation(8))
    assert read_header(encoded.data)[1] == encode_payload([_slice_tensors(refined.weights, 0, 4)], 8)
    with pytest.raises(InputError, match="compress stores one 'deep' decoder"):
        compress(one, ensemble=2, **SMALL)
    with pytest.raises(InputError, match="unknown preset"):
        compress(one, "quality", **SMALL)


def test_fake_quantisation_is_what_the_file_stores():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.3, (3, 12, 12)).astype(np.float32)
    values[1] = 0.25  # a constant tensor: step 1, codes 0
    for bits in (8, 16):
        fake = FakeQuantisation(bits)("weights", torch.from_numpy(values)).numpy()  # one range per slice's tensor
        for b in range(3):
            assert np.array_equal(fake[b], dequantise(*quantise(values[b], bits)))


def test_quantisation_aware_refinement_recovers_rounding_loss():
    """Refined weights lose less to 8-bit rounding than the fit's own, slice by slice (camera 256x256, k=32, 8000
    steps: +1.3 dB, see README)."""
    volume = phantom_volume(depth=2, size=48)
    unit = torch.from_numpy(default_window(volume.array, volume.modality).to_unit(volume.array))[:, None]
    config = FitConfig(channels=12, blocks=4, iterations=200, final_learning_rate=0.001, ensemble=1, result="last",
                       stopping="fixed", amp=False)
    fitted = fit(Identity(), unit, config, device="cpu").weights

    def refine_for_quantisation(weights, iterations, learning_rate=REFINE_LEARNING_RATE):
        """The codec's refinement: ``iterations`` steps (``iterations + 1`` iterates) from the fitted weights with
        every weight fake-quantised, the best quantised iterate kept."""
        refine = replace(config, iterations=iterations + 1, learning_rate=learning_rate, final_learning_rate=None,
                         input_noise=0.0, result="best")
        return fit(Identity(), unit, refine, device="cpu", initial_weights=weights,
                   weight_hook=FakeQuantisation(8)).weights

    refined = refine_for_quantisation(fitted, iterations=100, learning_rate=1e-4)
    assert set(refined) == set(fitted) and torch.equal(refined["net_input"], fitted["net_input"])

    def quantised_psnr(state):
        header = {"architecture": {"channels": 12, "blocks": 4, "out_channels": 1, "output": "sigmoid",
                                   "height": 48, "width": 48},
                  "input": {"seed": 0, "slice_indices": [0, 1]}, "quantisation": {"bits": 8}}
        tensors = [_slice_tensors(state, b, 4) for b in range(2)]
        image = decode(header, decode_payload(encode_payload(tensors, 8), header, None))
        return 10 * np.log10(1 / np.mean((image - unit[:, 0].numpy()) ** 2, axis=(1, 2)))

    before = quantised_psnr(fitted)  # here 8-bit rounding costs only 0.05-0.12 dB (measured, two CPUs)
    assert np.all(quantised_psnr(refined) > before + 0.05)  # +0.17 and +0.28 dB measured
    default = refine_for_quantisation(fitted, iterations=20)  # 1e-5: slow, but never worse
    assert np.all(quantised_psnr(default) >= before - 1e-4)
    assert torch.equal(refine_for_quantisation(fitted, iterations=0)["scales"], fitted["scales"])


def _run(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_compress_decompress_dicom_and_nrrd(volume, tmp_path):
    write_series(volume, tmp_path / "in", series_description="phantom")
    code, out = _run("compress", str(tmp_path / "in"), str(tmp_path / "ct.ddc"), "--channels", "8", "--blocks", "4",
                     "--iterations", "30", "--bits", "16", "--device", "cpu")
    assert code == 0, out
    assert "bits/pixel" in out and (tmp_path / "ct.ddc").is_file()
    expected, header = read_ddc(tmp_path / "ct.ddc")
    assert header["quantisation"]["bits"] == 16 and header["architecture"]["channels"] == 8
    assert header["encoder"]["refine_iterations"] == 3  # a tenth of --iterations by default

    code, out = _run("decompress", str(tmp_path / "ct.ddc"), str(tmp_path / "out"))
    assert code == 0, out
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(files) == 2
    src = pydicom.dcmread(sorted((tmp_path / "in").glob("*.dcm"))[1])
    ds = pydicom.dcmread(files[1])
    assert ds.LossyImageCompression == "01"
    assert ds.LossyImageCompressionMethod == DICOM_METHOD
    ratio = 2 * 32 * 32 * 2 / (tmp_path / "ct.ddc").stat().st_size
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(ratio, rel=1e-3)
    assert "DERIVED" in ds.ImageType and ds.Modality == "CT"
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        np.testing.assert_allclose([float(v) for v in ds[keyword].value], [float(v) for v in src[keyword].value])
    series = read_volume(tmp_path / "out")
    assert np.max(np.abs(series.array - expected.array)) <= 0.51  # int16 HU of the decoded image
    np.testing.assert_allclose(series.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(series.origin, volume.origin, atol=1e-4)

    code, out = _run("decompress", str(tmp_path / "ct.ddc"), str(tmp_path / "ct.nrrd"))
    assert code == 0, out
    image = read_volume(tmp_path / "ct.nrrd")
    assert np.array_equal(image.array, expected.array)
    np.testing.assert_allclose(image.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(image.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(image.direction, volume.direction, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary output left

    damaged = bytearray((tmp_path / "ct.ddc").read_bytes())
    damaged[-30] ^= 1
    (tmp_path / "bad.ddc").write_bytes(bytes(damaged))
    code, out = _run("decompress", str(tmp_path / "bad.ddc"), str(tmp_path / "bad.nrrd"))
    assert code == 2 and "bad.ddc: corrupt .ddc file: CRC-32" in out
    assert not (tmp_path / "bad.nrrd").exists()
    code, out = _run("compress", str(tmp_path / "in"), str(tmp_path / "ct.ddc"), "--iterations", "1")
    assert code == 2 and "already exists" in out
    code, out = _run("compress", str(tmp_path / "in"), str(tmp_path / "ref.ddc"), "--channels", "8", "--blocks", "4",
                     "--recipe", "decay", "--iterations", "20", "--device", "cpu")
    assert code == 0, out
    encoder = read_ddc(tmp_path / "ref.ddc")[1]["encoder"]
    assert encoder["iterations"] == 20 and encoder["input_noise"] == 0.0 and encoder["final_learning_rate"] == 0.003
    assert read_ddc(tmp_path / "ref.ddc")[1]["architecture"]["norm_first"] is False
