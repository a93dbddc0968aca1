"""MONAI transforms and the DICOM writer, with real MONAI pipelines on small DICOM series."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
from monai.data.image_writer import resolve_writer
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Flip,
    Flipd,
    Invertd,
    LoadImage,
    LoadImaged,
    Rotate90,
    SaveImage,
    SaveImaged,
    TraceableTransform,
)
from monai.utils import TraceKeys, TransformBackends

import dd_medical
from dd_medical import api
from dd_medical.core.fit import FitConfig
from dd_medical.core.reconstruction_check import ReconstructionCheck, SliceReconstructionCheck
from dd_medical.errors import InputError
from dd_medical.io import read_volume, write_series
from dd_medical.metrics import psnr
from dd_medical.monai_writer import DicomSeriesWriter, register, series_folder
from dd_medical.phantom import write_phantom_series
from dd_medical.transforms import (
    TRACES_NON_INVERTIBLE,
    DeepDecoderDenoise,
    DeepDecoderDenoiseD,
    DeepDecoderDenoised,
    DeepDecoderDenoiseDict,
    DeepDecoderReconstruct,
    DeepDecoderReconstructD,
    DeepDecoderReconstructd,
    DeepDecoderReconstructDict,
)

SMALL = FitConfig(channels=32, blocks=4, iterations=150, ensemble=1)
TINY = FitConfig(channels=8, blocks=3, iterations=2, ensemble=1)
PAIR = FitConfig(channels=8, blocks=3, iterations=10, ensemble=2)  # the least an uncertainty map needs
READERS = [
    "PydicomReader",
    pytest.param("ITKReader", marks=pytest.mark.skipif(importlib.util.find_spec("itk") is None,
                                                       reason="ITKReader needs the itk package (pip install itk)")),
]
NOISE_HU = 200.0


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 2-slice 64x64 CT phantom series and a noisy copy of it (derived DICOM series, +N(0, 200 HU))."""
    root = tmp_path_factory.mktemp("series")
    write_phantom_series(root / "clean", depth=2, size=64)
    clean = read_volume(root / "clean")
    noise = np.random.default_rng(0).normal(0, NOISE_HU, clean.shape).astype(np.float32)
    write_series(clean.with_array(clean.array + noise), root / "noisy", series_description="noisy phantom")
    return {"clean": clean, "noisy_dir": root / "noisy", "noisy": read_volume(root / "noisy")}


def unit(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 1000.0) / 2200.0, 0, 1)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / (np.ptp(b) or 1.0))


@pytest.mark.parametrize("reader", READERS)
def test_compose_loads_denoises_and_saves_nifti_and_dicom(series, tmp_path, reader):
    nib = pytest.importorskip("nibabel", reason="SaveImaged(.nii.gz) needs nibabel (pip install nibabel)")
    source = LoadImage(reader=reader, ensure_channel_first=True, image_only=True)(series["noisy_dir"])
    pipeline = Compose([
        LoadImaged("image", reader=reader),
        EnsureChannelFirstd("image"),
        DeepDecoderDenoised("image", config=SMALL, device="cpu"),
        SaveImaged("image", output_dir=tmp_path, output_postfix="dd", output_ext=".nii.gz", print_log=False),
        SaveImaged("image", output_dir=tmp_path, output_postfix="dd", output_ext=".dcm", output_dtype=None,
                   writer=DicomSeriesWriter, print_log=False),
    ])
    out = pipeline({"image": str(series["noisy_dir"])})["image"]

    assert isinstance(out, MetaTensor) and out.shape == (1, 64, 64, 2) and out.dtype == torch.float32
    np.testing.assert_allclose(out.affine.numpy(), source.affine.numpy())
    record = out.meta["dd_medical"]
    assert record["method"] == "DeepDecoderDenoise" and record["version"] == dd_medical.__version__
    assert record["channels"] == 32 and record["modality"] == "CT" and "Deep Decoder" in record["description"]
    assert "dd_medical" not in source.meta

    # MONAI arrays are (x, y, z): the source volume's (z, y, x) transposed.
    denoised_hu = out[0].numpy().transpose(2, 1, 0)
    clean, noisy = series["clean"].array, series["noisy"].array
    assert psnr(unit(denoised_hu), unit(clean)).mean() > psnr(unit(noisy), unit(clean)).mean() + 2.0

    nifti = nib.load(str(tmp_path / "noisy" / "noisy_dd.nii.gz"))
    np.testing.assert_allclose(nifti.affine, source.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(nifti.get_fdata(), out[0].numpy(), atol=1e-3)

    folder = tmp_path / "noisy" / "noisy_dd"
    written = read_volume(folder)
    assert written.shape == series["noisy"].shape
    np.testing.assert_allclose(written.origin, series["noisy"].origin, atol=1e-4)
    np.testing.assert_allclose(written.array, denoised_hu, atol=0.51)  # int16 HU, slope 1
    first = pydicom.dcmread(written.source_files[0])
    source_first = pydicom.dcmread(series["noisy"].source_files[0])
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.StudyInstanceUID == source_first.StudyInstanceUID
    assert first.SeriesInstanceUID != source_first.SeriesInstanceUID
    assert first.SourceImageSequence[0].ReferencedSOPInstanceUID == source_first.SOPInstanceUID
    assert "k=32" in first.DerivationDescription


def test_dicom_writer_undoes_flips_and_rotations(series, tmp_path):
    """Whatever MONAI did to the array's orientation, the series lands on the source slices (HU at the right voxels)."""
    image = LoadImage(reader="PydicomReader", ensure_channel_first=True, image_only=True)(series["noisy_dir"])
    moved = Rotate90(k=1, spatial_axes=(0, 1))(Flip(spatial_axis=2)(image))  # slice order reversed, x/y swapped
    assert not np.allclose(moved.affine.numpy(), image.affine.numpy())
    register()  # explicit: SaveImage(output_ext=".dcm") then finds the writer without writer=...
    SaveImage(output_dir=tmp_path, output_postfix="moved", output_ext=".dcm", output_dtype=None,
              print_log=False)(moved)  # the registered "dcm" writer
    written = read_volume(tmp_path / "noisy" / "noisy_moved")
    np.testing.assert_allclose(written.array, series["noisy"].array, atol=0.51)
    assert resolve_writer("dcm")[0] is DicomSeriesWriter
    assert series_folder(tmp_path / "a_dd.dcm") == tmp_path / "a_dd"


def test_dicom_writer_errors_are_clear(series, tmp_path):
    writer = DicomSeriesWriter()
    with pytest.raises(InputError, match="one channel"):
        writer.set_data_array(np.zeros((2, 64, 64, 2), dtype=np.float32))
    writer.set_data_array(np.zeros((1, 64, 64, 2), dtype=np.float32))
    writer.set_metadata({"affine": np.eye(4)})
    with pytest.raises(InputError, match="no DICOM source"):
        writer.write(tmp_path / "x.dcm")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def loader_outputs(series, tmp_path_factory):
    config = FitConfig(channels=16, blocks=4, iterations=40, ensemble=1)
    transform = Compose([
        LoadImaged("image", reader="PydicomReader"),
        EnsureChannelFirstd("image"),
        DeepDecoderDenoised("image", config=config, device="cpu"),
    ])
    dataset = Dataset([{"image": str(series["noisy_dir"])}], transform=transform)
    return {n: list(DataLoader(dataset, batch_size=1, num_workers=n)) for n in (0, 2)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataset_and_dataloader(loader_outputs, series, tmp_path, num_workers):
    (batch,) = loader_outputs[num_workers]
    image = batch["image"]
    assert isinstance(image, MetaTensor) and image.shape == (1, 1, 64, 64, 2)
    assert image.meta["dd_medical"]["method"] == ["DeepDecoderDenoise"]  # collated
    assert relative_error(image, loader_outputs[0][0]["image"]) < 1e-3  # worker processes give the same result
    (item,) = decollate_batch(batch)
    SaveImaged("image", output_dir=tmp_path, output_postfix="dd", output_ext=".dcm", output_dtype=None,
               writer=DicomSeriesWriter, print_log=False)(item)
    written = read_volume(tmp_path / "noisy" / "noisy_dd")
    np.testing.assert_allclose(written.array, item["image"][0].numpy().transpose(2, 1, 0), atol=0.51)


def test_2d_numpy_and_torch_inputs_keep_type_shape_and_dtype(series):
    slice_hu = series["noisy"].array[0]  # (64, 64) HU
    config = FitConfig(channels=16, blocks=4, iterations=30, ensemble=1)
    transform = DeepDecoderDenoise(config=config, device="cpu")
    out_np = transform(slice_hu[None])
    assert isinstance(out_np, np.ndarray) and out_np.shape == (1, 64, 64) and out_np.dtype == np.float32
    direct = dd_medical.denoise(slice_hu, config=config, device="cpu")
    assert relative_error(out_np[0], direct) < 1e-4  # adaptation only: the same numbers as the core

    two_channels = torch.from_numpy(np.stack([slice_hu, series["noisy"].array[1]]).astype(np.float64))
    out_t = transform(two_channels)
    assert isinstance(out_t, torch.Tensor) and not isinstance(out_t, MetaTensor)
    assert out_t.shape == (2, 64, 64) and out_t.dtype == torch.float64
    assert relative_error(out_t[0].numpy(), out_np[0]) < 1e-4  # each channel on its own
    second = transform(two_channels[1:].numpy())
    assert relative_error(out_t[1].numpy(), second[0]) < 1e-4

    as_int = transform(np.round(slice_hu[None]).astype(np.int16))
    assert as_int.dtype == np.int16 and np.abs(as_int.astype(np.float32) - out_np).max() < 3.0


def test_slice_axis_and_multichannel_volume(series):
    volume = series["noisy"].array  # (D, H, W)
    config = FitConfig(channels=16, blocks=4, iterations=20, ensemble=1)
    last = np.stack([volume.transpose(1, 2, 0), volume.transpose(1, 2, 0)[::-1]])  # (2, H, W, D), slices last
    out_last = DeepDecoderDenoise(config=config, device="cpu")(last)
    first = np.ascontiguousarray(last.transpose(0, 3, 1, 2))  # (2, D, H, W): slices along axis 1
    out_first = DeepDecoderDenoise(config=config, slice_axis=1, device="cpu")(first)
    assert out_last.shape == last.shape and out_first.shape == first.shape
    assert relative_error(out_first.transpose(0, 2, 3, 1), out_last) < 1e-4


def test_metadata_modality_record_and_input_untouched():
    data = np.random.default_rng(1).normal(100, 10, (1, 32, 32, 2)).astype(np.float32)
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    image = MetaTensor(data, affine=affine, meta={"00080060": {"vr": "CS", "Value": ["MR"]}})
    out = DeepDecoderDenoise(config=TINY, device="cpu")(image)
    assert isinstance(out, MetaTensor)
    np.testing.assert_allclose(out.affine.numpy(), affine)
    assert out.meta["dd_medical"]["modality"] == "MR" and out.meta["dd_medical"]["iterations"] == 2
    assert "dd_medical" not in image.meta
    np.testing.assert_array_equal(image.numpy(), data)
    itk_style = MetaTensor(data, meta={"0008|0060": "CT "})
    assert DeepDecoderDenoise(config=TINY, device="cpu", seed=3)(itk_style).meta["dd_medical"]["modality"] == "CT"


def test_dictionary_versions_aliases_and_allow_missing_keys():
    assert DeepDecoderDenoiseD is DeepDecoderDenoiseDict is DeepDecoderDenoised
    assert DeepDecoderReconstructD is DeepDecoderReconstructDict is DeepDecoderReconstructd
    data = {"image": np.random.default_rng(2).normal(0, 1, (1, 16, 16)).astype(np.float32), "label": "kept"}
    out = DeepDecoderDenoised(["image", "other"], config=TINY, device="cpu", allow_missing_keys=True)(data)
    assert out["image"].shape == (1, 16, 16) and out["label"] == "kept" and "other" not in out
    with pytest.raises(KeyError):
        DeepDecoderDenoised(["image", "other"], config=TINY, device="cpu")(data)


def test_bad_inputs_give_clear_errors():
    transform = DeepDecoderDenoise(config=TINY, device="cpu")
    with pytest.raises(InputError, match=r"channel-first .* got shape \(64,\)"):
        transform(np.zeros(64, dtype=np.float32))
    with pytest.raises(InputError, match="EnsureChannelFirst"):
        transform(np.zeros((64, 64), dtype=np.float32))
    with pytest.raises(InputError, match="64 channels"):  # channel-last (H, W, D, C)
        transform(np.zeros((64, 64, 4, 1), dtype=np.float32))
    no_channel = MetaTensor(np.zeros((16, 16, 4), dtype=np.float32), meta={"spatial_shape": (16, 16, 4)})
    with pytest.raises(InputError, match="no channel axis"):
        transform(no_channel)
    with pytest.raises(InputError, match="too small"):
        transform(np.zeros((1, 4, 4), dtype=np.float32))
    with pytest.raises(InputError, match="slice_axis"):
        DeepDecoderDenoise(slice_axis=0)

    kspace = np.zeros((1, 32, 32, 2), dtype=np.float32)
    with pytest.raises(InputError, match="without a sampling mask"):
        DeepDecoderReconstruct(iterations=1)(kspace)
    with pytest.raises(InputError, match="without a sampling mask"):
        DeepDecoderReconstructd("kspace", iterations=1)({"kspace": kspace})
    with pytest.raises(InputError, match=r"\(C, H, W, 2\)"):
        DeepDecoderReconstruct(mask=np.ones(32), iterations=1)(kspace[..., 0])
    with pytest.raises(InputError, match="does not fit"):
        DeepDecoderReconstruct(mask=np.ones(31), iterations=1)(kspace)


def test_reconstruct_from_monai_masked_kspace():
    from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask
    from monai.data.fft_utils import fftn_centered

    from dd_medical.core.operators import CartesianFourier
    from dd_medical.phantom import ct_phantom
    from dd_medical.pipeline import reconstruct_volume

    truth = unit(ct_phantom(1, 64)[0])
    image = torch.stack([torch.from_numpy(truth), torch.zeros(64, 64)], dim=-1)[None]  # (1, H, W, 2)
    kspace = fftn_centered(image, spatial_dims=2, is_complex=True)
    masker = EquispacedKspaceMask(center_fractions=[0.16], accelerations=[2], spatial_dims=2, is_complex=True)
    masker.set_random_state(0)
    masked, zero_filled = masker(kspace)
    assert masker.mask.shape == (1, 1, 64, 1)  # MONAI's mask layout

    config = FitConfig(channels=32, blocks=4, iterations=200, ensemble=1, stopping="fixed", learning_rate=0.005)
    data = {"kspace": MetaTensor(masked.numpy()), "mask": masker.mask}
    out = DeepDecoderReconstructd("kspace", config=config, device="cpu")(data)["kspace"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 64, 64) and out.dtype == torch.float32
    assert out.meta["dd_medical"]["method"] == "DeepDecoderReconstruct"
    assert psnr(out[0].numpy(), truth) > 20.0

    mask = masker.mask.reshape(64).numpy()
    operator = CartesianFourier(mask, coils=1)
    assert operator.output == "linear"  # signed coil images: the operator decides the decoder's output
    direct = reconstruct_volume(masked.numpy()[None], operator, config, "cpu", progress=False)
    assert relative_error(out[0].numpy(), direct[0]) < 1e-4


def test_importing_registers_no_writer_and_register_is_explicit():
    """Importing dd-medical leaves MONAI's writer table alone; ``register()`` adds the DICOM writer for "dcm"."""
    code = (
        "import dd_medical, dd_medical.transforms, dd_medical.monai_writer as w\n"
        "from monai.data import image_writer\n"
        "print(any(w.DicomSeriesWriter in ws for ws in image_writer.SUPPORTED_WRITERS.values()))\n"
        "w.register(); w.register()\n"
        "print(image_writer.resolve_writer('dcm')[0] is w.DicomSeriesWriter,\n"
        "      image_writer.SUPPORTED_WRITERS['dcm'].count(w.DicomSeriesWriter),\n"
        "      len(image_writer.resolve_writer('nii.gz')) > 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True", "1", "True"]


def test_the_declared_backend_is_what_the_engine_computes_on(monkeypatch):
    """MONAI's ``backend`` lists the array types a transform computes on: the engine gets numpy, from torch too."""
    seen = []
    monkeypatch.setattr(api, "denoise", lambda image, **kw: seen.append(type(image)) or np.zeros_like(image))
    passed = ReconstructionCheck((SliceReconstructionCheck(0, 0.0, None),), decoders=1)
    monkeypatch.setattr(api, "reconstruct", lambda data, op, **kw: seen.append(type(data)) or (
        np.zeros(data.shape[:1] + data.shape[2:4]), passed))
    out = DeepDecoderDenoise(config=TINY, device="cpu")(torch.ones((1, 16, 16)))
    assert isinstance(out, torch.Tensor) and float(out.abs().max()) == 0.0
    out = DeepDecoderReconstruct(mask=np.ones(16), iterations=1, device="cpu")(torch.ones((1, 16, 16, 2)))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 16, 16)
    assert seen == [np.ndarray, np.ndarray]
    assert DeepDecoderDenoise.backend == DeepDecoderReconstruct.backend == [TransformBackends.NUMPY]
    assert DeepDecoderDenoised.backend == DeepDecoderReconstructd.backend == [TransformBackends.NUMPY]


def _trace_pipeline(device: str) -> tuple[Compose, dict]:
    data = np.random.default_rng(3).normal(0, 50, (1, 24, 20, 2)).astype(np.float32)
    image = MetaTensor(torch.from_numpy(data).to(device), affine=np.diag([0.7, 0.7, 2.5, 1.0]),
                       meta={"Modality": "CT", "filename_or_obj": "phantom"})
    pipeline = Compose([Flipd("image", spatial_axis=0),
                        DeepDecoderDenoised("image", config=TINY, device="auto", seed=5)])
    return pipeline, {"image": image}


def _check_trace_and_inverse(device: str) -> None:
    pipeline, data = _trace_pipeline(device)
    source = data["image"]
    out = pipeline(data)["image"]
    assert isinstance(out, MetaTensor) and out.device == source.device and out.shape == source.shape
    assert source.applied_operations == [] and "dd_medical" not in source.meta  # the input is left alone
    flipped = Flipd("image", spatial_axis=0)({"image": source.clone()})["image"]
    np.testing.assert_allclose(out.affine.numpy(), flipped.affine.numpy())  # the input's geometry, as Flipd left it
    assert out.meta["filename_or_obj"] == "phantom"
    record = out.meta["dd_medical"]
    assert record["device"] == str(source.device) or (device == "cuda" and record["device"].startswith("cuda"))

    # The MONAI way: the operation is on the trace, after Flip, with the record as its extra_info.
    assert [op[TraceKeys.CLASS_NAME] for op in out.applied_operations] == ["Flip", "DeepDecoderDenoise"]
    traced = out.applied_operations[-1][TraceKeys.EXTRA_INFO]
    assert traced["method"] == "DeepDecoderDenoise" and traced["version"] == dd_medical.__version__
    assert traced["iterations"] == 2 and traced["seed"] == 5 and "Deep Decoder" in traced["description"]
    assert isinstance(pipeline.transforms[1].converter, TraceableTransform)

    # Compose.inverse: the flip is undone, the denoising stays (it has no inverse), and so does its trace entry.
    inverted = pipeline.inverse({"image": out})["image"]
    np.testing.assert_allclose(inverted.affine.numpy(), source.affine.numpy())
    np.testing.assert_allclose(inverted.cpu().numpy(), out.cpu().numpy()[:, ::-1], rtol=0, atol=1e-6)
    assert [op[TraceKeys.CLASS_NAME] for op in inverted.applied_operations] == ["DeepDecoderDenoise"]
    assert inverted.device == source.device


@pytest.mark.skipif(not TRACES_NON_INVERTIBLE, reason="MONAI < 1.6: the trace entry is left out (see transforms.py)")
def test_compose_metatensor_trace_and_inverse_on_the_cpu():
    _check_trace_and_inverse("cpu")


@pytest.mark.skipif(not torch.cuda.is_available() or not TRACES_NON_INVERTIBLE, reason="needs a CUDA GPU")
def test_compose_metatensor_trace_and_inverse_on_the_gpu():
    """A CUDA MetaTensor stays on its GPU; ``device="auto"`` fits there."""
    _check_trace_and_inverse("cuda")


def test_tracing_off_leaves_applied_operations_alone():
    transform = DeepDecoderDenoise(config=TINY, device="cpu")
    transform.tracing = False
    out = transform(MetaTensor(np.zeros((1, 16, 16), dtype=np.float32)))
    assert out.applied_operations == [] and out.meta["dd_medical"]["method"] == "DeepDecoderDenoise"


def test_dictionary_uncertainty_key_is_a_metatensor_on_the_image_grid():
    """``{key}_uncertainty``: the denoised image's affine, shape, trace; float32 SD in HU (also for int16 input);
    its own metadata dictionary; ``Invertd`` maps it back with the image's trace."""
    data = np.random.default_rng(3).normal(100, 30, (1, 32, 32, 2)).round().astype(np.int16)
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    pipeline = Compose([Flipd("image", spatial_axis=0),
                        DeepDecoderDenoised("image", config=PAIR, device="cpu", uncertainty=True)])
    out = pipeline({"image": MetaTensor(data, affine=affine, meta={"Modality": "CT"})})
    image, sd = out["image"], out["image_uncertainty"]
    assert isinstance(sd, MetaTensor) and sd.shape == image.shape == (1, 32, 32, 2)
    assert image.dtype == torch.int16 and sd.dtype == torch.float32
    np.testing.assert_allclose(sd.affine.numpy(), image.affine.numpy())
    assert not np.allclose(sd.affine.numpy(), affine)  # the flipped grid, as the image's
    values = sd.numpy()
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() > 0
    record = sd.meta["dd_medical"]
    assert record["output"] == "uncertainty" and record["units"] == "HU" and "standard deviation" in record["quantity"]
    assert record["description"].startswith("Uncertainty map") and "output" not in image.meta["dd_medical"]
    assert [op["class"] for op in sd.applied_operations] == [op["class"] for op in image.applied_operations]
    sd.meta["changed"] = 1
    assert "changed" not in image.meta  # not shared

    back = Invertd("image_uncertainty", pipeline, orig_keys="image")(out)["image_uncertainty"]
    np.testing.assert_allclose(back.affine.numpy(), affine)
    np.testing.assert_array_equal(back.numpy(), np.flip(values, axis=1))


def test_array_transform_returns_the_uncertainty_only_when_asked():
    data = np.random.default_rng(4).normal(500, 40, (1, 32, 32)).astype(np.float32)
    image = MetaTensor(data, affine=np.diag([0.8, 0.8, 1.0, 1.0]), meta={"Modality": "MR"})
    transform = DeepDecoderDenoise(config=PAIR, device="cpu")
    denoised, sd = transform.denoise_with_uncertainty(image)
    assert isinstance(sd, MetaTensor) and sd.shape == denoised.shape == (1, 32, 32)
    assert sd.meta["dd_medical"]["units"] == "stored values"  # MR
    assert np.isfinite(sd.numpy()).all() and sd.numpy().min() >= 0
    np.testing.assert_allclose(denoised.numpy(), transform(image).numpy(), rtol=1e-5, atol=1e-3)  # same image
    plain_sd = transform.denoise_with_uncertainty(data)[1]
    assert isinstance(plain_sd, np.ndarray) and plain_sd.dtype == np.float32 and plain_sd.shape == (1, 32, 32)


def test_uncertainty_off_gives_no_key_and_bad_settings_fail_before_fitting(monkeypatch):
    data = {"image": np.random.default_rng(5).normal(0, 1, (1, 16, 16)).astype(np.float32)}
    assert set(DeepDecoderDenoised("image", config=TINY, device="cpu")(data)) == {"image"}

    fits = []
    denoise = api.denoise
    monkeypatch.setattr(api, "denoise", lambda *a, **kw: fits.append(1) or denoise(*a, **kw))
    with pytest.raises(InputError, match="uncertainty=True needs at least 2 decoders .* ensemble=1"):
        DeepDecoderDenoised("image", config=TINY, uncertainty=True)
    with pytest.raises(InputError, match="ensemble=1"):
        DeepDecoderDenoised("image", preset="fast", uncertainty=True)
    with pytest.raises(InputError, match="ensemble=1"):
        DeepDecoderDenoise(config=TINY).denoise_with_uncertainty(data["image"])
    with pytest.raises(InputError, match="True or False"):
        DeepDecoderDenoised("image", config=PAIR, uncertainty="false")
    with pytest.raises(InputError, match="'image_uncertainty'"):
        DeepDecoderDenoised(["image", "image_uncertainty"], config=PAIR, uncertainty=True)
    with pytest.raises(InputError, match="already"):
        DeepDecoderDenoised("image", config=PAIR, uncertainty=True)({**data, "image_uncertainty": "kept"})
    assert fits == []
    out = DeepDecoderDenoised("image", config=PAIR, uncertainty=True, uncertainty_key_postfix="sd")(data)
    assert set(out) == {"image", "image_sd"} and len(fits) == 1


def test_uncertainty_saved_as_dicom_is_named_so(series, tmp_path):
    pipeline = Compose([
        LoadImaged("image", reader="PydicomReader"),
        EnsureChannelFirstd("image"),
        DeepDecoderDenoised("image", config=PAIR, device="cpu", uncertainty=True),
        SaveImaged("image_uncertainty", output_dir=tmp_path, output_postfix="sd", output_ext=".dcm",
                   output_dtype=None, writer=DicomSeriesWriter, print_log=False),
    ])
    sd = pipeline({"image": str(series["noisy_dir"])})["image_uncertainty"]
    written = read_volume(tmp_path / "noisy" / "noisy_sd")
    assert written.shape == series["noisy"].shape
    np.testing.assert_allclose(written.array, sd[0].numpy().transpose(2, 1, 0), atol=0.051)  # 0.1 HU steps
    header = pydicom.dcmread(written.source_files[0], stop_before_pixels=True)
    assert header.SeriesDescription.endswith("DD denoised uncertainty (SD, HU)")
    assert header.DerivationDescription.startswith("Uncertainty map: calibrated standard deviation")
    assert header.DerivationCodeSequence[0].CodeMeaning == "Standard Deviation"
