"""The ``jpegls`` extra (pyjpegls, pydicom's JPEG-LS encoder): ``--transfer-syntax jpegls-lossless`` writes a JPEG-LS
Lossless series that reads back bit-exactly, ``auto`` keeps a JPEG-LS Lossless source's syntax; without the
encoder the choice is refused in one line naming the extra, before anything is read."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless

from dd_medical.cli import cli
from dd_medical.io import read_volume, validate_derived, write_series
from dd_medical.io._compat import PYDICOM_MAJOR

needs_jpegls = pytest.mark.skipif(
    importlib.util.find_spec("jpeg_ls") is None or PYDICOM_MAJOR < 3,
    reason="JPEG-LS encoding needs pydicom>=3 and the jpegls extra: pip install 'dd-medical[jpegls]'")
TINY_ARGS = ["--iterations", "10", "--channels", "8", "--blocks", "2", "--ensemble", "1", "--device", "cpu"]


@pytest.fixture()
def identity_task(monkeypatch):
    """The batch's fit replaced by the identity: only the writing matters here."""
    from dd_medical.batch import tasks

    monkeypatch.setitem(tasks.TASKS, "denoise", lambda volume, task: volume.array)


@needs_jpegls
@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small.dcm"])  # signed 16-bit; unsigned 12-bit, 10 frames
def test_a_jpegls_lossless_series_reads_back_bit_exactly(tmp_path: Path, name: str) -> None:
    source = get_testdata_file(name)
    volume = read_volume(source)
    plain = write_series(volume, tmp_path / "explicit", series_description="x", transfer_syntax="explicit",
                         derivation_description="identity (test)")
    packed = write_series(volume, tmp_path / "jpegls", series_description="x", transfer_syntax="jpegls-lossless",
                          derivation_description="identity (test)")
    for jls_path, plain_path in zip(packed, plain, strict=True):
        jls, ref = pydicom.dcmread(jls_path), pydicom.dcmread(plain_path)
        assert jls.file_meta.TransferSyntaxUID == JPEGLSLossless and ref.file_meta.TransferSyntaxUID == \
            ExplicitVRLittleEndian
        assert validate_derived(jls, pydicom.dcmread(source)) == []
        assert "LossyImageCompression" not in jls or jls.LossyImageCompression == "00"
        stored, expected = jls.pixel_array, ref.pixel_array
        assert stored.dtype == expected.dtype and np.array_equal(stored, expected)  # the stored values, bit-exact
    # The values read back are those of the uncompressed copy (the writer's own quantisation, the same for both).
    np.testing.assert_array_equal(read_volume(tmp_path / "jpegls").array, read_volume(tmp_path / "explicit").array)


@needs_jpegls
def test_batch_keeps_a_jpegls_lossless_source_and_writes_the_chosen_syntax(tmp_path: Path, identity_task) -> None:
    """Through the CLI: auto keeps the source's JPEG-LS Lossless (and its values, exactly); the syntax can be asked
    for with --transfer-syntax jpegls-lossless for an uncompressed source."""
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm"):
        (inp / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    for out, args in ((tmp_path / "auto", []), (tmp_path / "chosen", ["--transfer-syntax", "jpegls-lossless"])):
        result = CliRunner().invoke(cli, ["batch", str(inp), str(out), *TINY_ARGS, *args])
        assert result.exit_code == 0, result.output
        series = sorted((out / "series").iterdir())
        syntaxes = {}
        for folder in series:
            (written,) = folder.iterdir()
            ds = pydicom.dcmread(written)
            syntaxes[ds.Modality] = ds.file_meta.TransferSyntaxUID
            source = read_volume(inp / ("MR_small_jpeg_ls_lossless.dcm" if ds.Modality == "MR" else "CT_small.dcm"))
            np.testing.assert_array_equal(read_volume(folder).array, source.array)
        expected_ct = JPEGLSLossless if args else ExplicitVRLittleEndian
        assert syntaxes == {"MR": JPEGLSLossless, "CT": expected_ct}


@pytest.mark.parametrize("command", ["batch", "denoise"])
def test_without_the_extra_jpegls_lossless_is_refused_in_one_line_naming_it(tmp_path: Path, monkeypatch,
                                                                            identity_task, command: str) -> None:
    """pydicom has the JPEG-LS encoder but not its plugin (pyjpegls not installed, faked here whether or not it is):
    one line naming the extra, exit code 2, nothing written."""
    import dd_medical.io.transfer_syntax as module

    real = module.encoder_available
    monkeypatch.setattr(module, "encoder_available", lambda uid: False if uid == JPEGLSLossless else real(uid))
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    result = CliRunner().invoke(cli, [command, str(inp), str(tmp_path / "out"), *TINY_ARGS,
                                      "--transfer-syntax", "jpegls-lossless"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line == ("dd-medical: error: transfer syntax jpegls-lossless (JPEG-LS Lossless Image Compression): no "
                    "encoder installed: pip install 'dd-medical[jpegls]' (pyjpegls)")
    assert not (tmp_path / "out").exists()
