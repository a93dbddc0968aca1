"""MONAI transforms: untrained Deep Decoder denoising and k-space reconstruction inside ``Compose`` pipelines.

```python
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, SaveImaged
from dd_medical.transforms import DeepDecoderDenoised

pipeline = Compose([
    LoadImaged("image", reader="PydicomReader"), EnsureChannelFirstd("image"),
    DeepDecoderDenoised("image", preset="fast"),
    SaveImaged("image", output_postfix="dd", output_ext=".nii.gz"),
    SaveImaged("image", output_postfix="dd", output_ext=".dcm", output_dtype=None,
               writer="dd_medical.monai_writer.DicomSeriesWriter"),  # a derived DICOM series
])
```

This module only adapts MONAI's channel-first layout to :mod:`dd_medical.api` (axes, types, metadata); all
numerical work happens there, on numpy arrays: the transforms declare ``backend = [TransformBackends.NUMPY]``.
A tensor input is read into host memory once; the fit runs on ``device`` (``"auto"`` picks the input's own GPU
for a CUDA tensor); the result is returned on the input's device, with the input's type and metadata.

Each transform is a non-invertible :class:`~monai.transforms.TraceableTransform`: on a ``MetaTensor`` it appends
its record to ``applied_operations`` (``extra_info``: method, version, parameters), the MONAI trace, besides
``meta["dd_medical"]``. ``Compose.inverse`` skips it: the transforms around it are inverted, the denoising stays and
so does its trace entry. MONAI before 1.6 expects the most recent traced operation to be invertible, so there the
trace entry is left out (only ``meta["dd_medical"]`` records the operation) and ``Compose.inverse`` keeps working.

``DeepDecoderDenoised(..., uncertainty=True)`` also writes ``{key}_uncertainty``: the calibrated per-voxel standard
deviation of the denoised value (:func:`dd_medical.api.denoise` with ``uncertainty=True``), in the image's units, a
``MetaTensor`` with the denoised image's affine, metadata and trace. The array transform's ``__call__`` returns one
image, as MONAI's do; :meth:`DeepDecoderDenoise.denoise_with_uncertainty` returns both.

Importing this module registers nothing with MONAI: name the DICOM writer in ``SaveImage(writer=...)``, or call
:func:`dd_medical.monai_writer.register` once.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import asdict
from typing import Any

import monai
import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, TraceableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, version_geq

from . import api
from .core.config import FitConfig
from .core.intensity import Window
from .core.operators.sense import COIL_MAPS, kspace_model
from .errors import InputError
from .io import derivation_description
from .io.provenance import uncertainty_derivation
from .presets import resolve
from .version import __version__

__all__ = [
    "META_KEY",
    "UNCERTAINTY",
    "DeepDecoderDenoise",
    "DeepDecoderDenoiseD",
    "DeepDecoderDenoiseDict",
    "DeepDecoderDenoised",
    "DeepDecoderReconstruct",
    "DeepDecoderReconstructD",
    "DeepDecoderReconstructDict",
    "DeepDecoderReconstructd",
]

log = logging.getLogger(__name__)

META_KEY = "dd_medical"
"""Key of the record a transform leaves in a ``MetaTensor``'s metadata (method, version, parameters)."""
UNCERTAINTY = "uncertainty"
"""``meta["dd_medical"]["output"]`` of an uncertainty map (the DICOM writer then writes an uncertainty series)."""

# Where readers put the DICOM modality: PydicomReader/ITKReader tags, or a plain key.
_MODALITY_KEYS = ("Modality", "modality", "0008|0060", "00080060")
#: MONAI 1.6 made an invertible transform look past traced operations that are not its own (so ``Compose.inverse``
#: skips a non-invertible one); before that a non-invertible trace entry on top would make the inverse fail.
TRACES_NON_INVERTIBLE = version_geq(monai.__version__, "1.6")


def _record(method: str, config: FitConfig, job: str = "denoising", **extra: Any) -> dict[str, Any]:
    """What was applied, as plain strings/numbers (it must survive DataLoader collation and pickling)."""
    parameters = {k: v for k, v in asdict(config).items() if isinstance(v, (bool, int, float, str))}
    return {
        "method": method,
        "version": __version__,
        "description": derivation_description(config, job),
        **parameters,
        **extra,
    }


def _with_record(out: NdarrayOrTensor, record: dict[str, Any]) -> NdarrayOrTensor:
    if isinstance(out, MetaTensor):
        out.meta = dict(out.meta)  # never share (and so alter) the input's metadata dictionary
        out.meta[META_KEY] = record
    return out


def _fit_device(device: str, img: Any) -> str:
    """The device the fit runs on: ``device``, except that ``"auto"`` keeps a CUDA tensor on its own GPU."""
    if device == "auto" and isinstance(img, torch.Tensor) and img.device.type == "cuda":
        return str(img.device)
    return str(api.resolve_device(device))


def _traced(transform: TraceableTransform, out: NdarrayOrTensor, record: dict[str, Any]) -> NdarrayOrTensor:
    """Append ``record`` to a ``MetaTensor``'s ``applied_operations`` (MONAI's trace; when tracing is on)."""
    if isinstance(out, MetaTensor) and TRACES_NON_INVERTIBLE:
        return transform.push_transform(out, extra_info=dict(record))
    return out


def _check_uncertainty(config: FitConfig) -> None:
    """An uncertainty map compares the decoders of each slice: refuse ``ensemble < 2`` before anything is fitted."""
    if config.ensemble < 2:
        raise InputError(f"uncertainty=True needs at least 2 decoders per slice to compare, but the settings have "
                         f"ensemble={config.ensemble}: choose a preset with an ensemble (e.g. medium) or a config "
                         "with ensemble=2 or more")


def _uncertainty_record(record: dict[str, Any], config: FitConfig, modality: str) -> dict[str, Any]:
    """The denoised image's ``record``, marked as describing its uncertainty map (what it is, its units); its
    ``description`` is the map's DICOM DerivationDescription."""
    units = "HU" if modality == "CT" else "stored values"
    return {
        **record,
        "output": UNCERTAINTY,
        "quantity": "calibrated standard deviation of the denoised value",
        "units": units,
        "description": uncertainty_derivation(config, units),
    }


def _meta_modality(img: Any) -> str | None:
    if not isinstance(img, MetaTensor):
        return None
    for key in _MODALITY_KEYS:
        value = img.meta.get(key)
        if isinstance(value, Mapping):  # PydicomReader's JSON form {"vr": "CS", "Value": ["CT"]}
            value = (value.get("Value") or [None])[0]
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, str) and value.strip():
            return value.strip().upper()
    return None


def _check_layout(img: NdarrayOrTensor, max_channels: int) -> None:
    """Channel-first ``(C, H, W)`` or ``(C, H, W, D)``; a clear error for anything else."""
    shape = tuple(img.shape)
    if len(shape) not in (3, 4):
        raise InputError(
            f"expected a channel-first image (C, H, W) or (C, H, W, D), got shape {shape}"
            + (" (add a channel axis, e.g. EnsureChannelFirst)" if len(shape) == 2 else "")
        )
    if isinstance(img, MetaTensor) and "spatial_shape" in img.meta:
        spatial = tuple(int(s) for s in np.ravel(np.asarray(img.meta["spatial_shape"])))
        if len(spatial) >= len(shape):
            raise InputError(
                f"image of shape {shape} has no channel axis (its metadata says spatial shape {spatial}); "
                "load it with ensure_channel_first=True or add EnsureChannelFirst"
            )
    if shape[0] > max_channels:
        raise InputError(
            f"image of shape {shape} has {shape[0]} channels (max_channels={max_channels}): expected channel-first "
            "(C, H, W[, D]); channel-last data or a missing channel axis? Use EnsureChannelFirst, or raise max_channels"
        )


class DeepDecoderDenoise(TraceableTransform):
    """
    Denoise a channel-first CT/MR image with untrained Deep Decoders, one per 2D slice
    (Heckel & Hand, "Deep Decoder", ICLR 2019), through :func:`dd_medical.api.denoise`.

    The input is ``(C, H, W)`` (each channel one slice) or ``(C, H, W, D)`` (each channel a stack of slices taken
    along ``slice_axis``), as ``LoadImage(ensure_channel_first=True)`` returns it; numpy or torch, in HU for CT or
    stored values for MR. Each channel is denoised on its own. The output has the input's type, shape, device
    and dtype (integer inputs are rounded); a ``MetaTensor`` keeps its affine and metadata and gains
    ``meta["dd_medical"]``: method, package version, a DICOM-style derivation description, the fit parameters, the
    device the fit ran on and the fidelity check of every channel (``fidelity_passed``, ``fidelity``:
    :func:`dd_medical.api.check`; a failed check is also logged as a warning). The same record is appended to
    ``applied_operations`` (as ``extra_info``; MONAI >= 1.6). Denoising has no inverse: this is a
    :class:`~monai.transforms.TraceableTransform`, not an invertible one, and ``Compose.inverse`` leaves it applied.

    :meth:`denoise_with_uncertainty` returns the image and its uncertainty map (``__call__`` returns the image only).

    The computation runs on numpy (``backend``): a tensor is read into host memory once, the decoders are fitted on
    ``device``, and the result goes back to the input's device.

    Args:
        iterations: Adam steps per slice (an upper bound: the fit stops at the noise level); default: the
            preset's (2000).
        channels: decoder channels ``k``; default: the preset's (64).
        slice_axis: spatial axis of a ``(C, H, W, D)`` input that indexes the slices (1, 2, 3 or -1, -2, -3;
            default -1, the last: axial slices for images loaded from an axial DICOM series). Ignored for 2D input.
        device: where the decoders are fitted: ``"auto"`` (the input's GPU for a CUDA tensor, else CUDA if present,
            else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: base seed; default: the config's (0). The same seed, input and device give the same output.
        preset: a ``denoise`` preset of :mod:`dd_medical.presets` (default ``"medium"``; the strengths ``low``,
            ``medium``, ``high``, and ``fast``, ``quality``, ``sure``, ``speed``); used when ``config`` is ``None``.
        window: ``(low, high)`` in HU (or a :class:`~dd_medical.intensity.Window`) mapped to [0, 1]; default:
            the channel's full range for CT, robust percentiles for MR (see :func:`dd_medical.default_window`).
        modality: ``"CT"`` or ``"MR"``; default: from the metadata (``Modality`` / DICOM tag 0008,0060), else CT.
        config: a full :class:`~dd_medical.core.config.FitConfig`; ``iterations``, ``channels`` and ``seed`` override
            its fields.
        batch_size: slices fitted at once; default: from free device memory.
        max_channels: more channels than this is taken for a wrong layout (channel-last or no channel axis)
            and rejected; default 16.
        progress: show a progress bar per channel (default ``False``).
    """

    backend = [TransformBackends.NUMPY]  # what api.denoise computes on; tensors are converted, and converted back

    def __init__(
        self,
        iterations: int | None = None,
        channels: int | None = None,
        slice_axis: int = -1,
        device: str = "auto",
        seed: int | None = None,
        preset: str | None = None,
        window: tuple[float, float] | Window | None = None,
        modality: str | None = None,
        config: FitConfig | None = None,
        batch_size: int | None = None,
        max_channels: int = 16,
        progress: bool = False,
    ) -> None:
        self.config = resolve("denoise", None if config is not None else preset, config, iterations=iterations,
                              channels=channels, seed=seed)
        if slice_axis not in (1, 2, 3, -1, -2, -3):
            raise InputError(f"slice_axis must be a spatial axis of (C, H, W, D) (1, 2, 3 or -1, -2, -3): {slice_axis}")
        self.slice_axis = slice_axis
        self.device = device
        self.window = Window(*window) if isinstance(window, (tuple, list)) else window
        self.modality = modality
        self.batch_size = batch_size
        self.max_channels = max_channels
        self.progress = progress

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """``img``: ``(C, H, W)`` or ``(C, H, W, D)`` channel-first, HU (CT) or stored values (MR)."""
        return self._denoise(img, uncertainty=False)[0]

    def denoise_with_uncertainty(self, img: NdarrayOrTensor) -> tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """``img`` denoised as by ``__call__``, and its uncertainty map: the calibrated standard deviation of each
        denoised value (:func:`dd_medical.api.denoise` with ``uncertainty=True``), in the image's units (HU for CT,
        stored values for MR), from the spread of the ensemble's decoders. The map has the image's shape and channel
        layout, float32 (also for an integer input), of the input's type and on its device; a ``MetaTensor`` has
        the denoised image's affine, metadata and ``applied_operations``, its ``meta["dd_medical"]`` marked
        ``output="uncertainty"`` with ``quantity`` and ``units``. Needs ``ensemble >= 2`` (InputError otherwise,
        before any fitting). The map is not an image of the anatomy, and it cannot see an error every decoder
        makes alike (a bias)."""
        _check_uncertainty(self.config)
        result, sd = self._denoise(img, uncertainty=True)
        assert sd is not None
        return result, sd

    def _denoise(self, img: NdarrayOrTensor, uncertainty: bool) -> tuple[NdarrayOrTensor, NdarrayOrTensor | None]:
        _check_layout(img, self.max_channels)
        img_t = convert_to_tensor(img, track_meta=get_track_meta())
        values = img_t.as_tensor() if isinstance(img_t, MetaTensor) else img_t
        values = values.detach().cpu().numpy()
        modality = (self.modality or _meta_modality(img) or "CT").upper()
        device = _fit_device(self.device, img)
        axis = self.slice_axis % 4  # axis of (C, H, W, D); unused for (C, H, W): each channel is one slice
        out = np.empty(values.shape, dtype=np.float32)
        sd = np.empty(values.shape, dtype=np.float32) if uncertainty else None
        checks = []
        for c in range(values.shape[0]):
            # (H, W) or the volume with its slice axis moved first: (D, H', W'); back again afterwards.
            stack = values[c] if values.ndim == 3 else np.moveaxis(values[c], axis - 1, 0)
            try:
                denoised = api.denoise(stack, config=self.config, device=device, progress=self.progress,
                                       window=self.window, modality=modality, batch_size=self.batch_size,
                                       uncertainty=uncertainty)
            except InputError as err:
                raise InputError(f"channel {c} of image {tuple(values.shape)}: {err.problem}", err.path) from err
            if sd is not None:
                denoised, spread = denoised
                sd[c] = spread if values.ndim == 3 else np.moveaxis(spread, 0, axis - 1)
            out[c] = denoised if values.ndim == 3 else np.moveaxis(denoised, 0, axis - 1)
            checks.append(api.check(stack, denoised))
        out_t = torch.from_numpy(out)
        if not np.issubdtype(values.dtype, np.floating):
            out_t = torch.round(out_t)  # integer input: nearest stored value (clipped to the dtype's range below)
        result, *_ = convert_to_dst_type(out_t, dst=img, safe=True)
        window = "auto" if self.window is None else f"{self.window.low},{self.window.high}"
        record = _record("DeepDecoderDenoise", self.config, modality=modality, device=device,
                         slice_axis=axis if values.ndim == 4 else 0, window=window,
                         fidelity_passed=all(r.passed for r in checks),
                         fidelity=" | ".join(f"channel {c}: {r.summary()}" for c, r in enumerate(checks)))
        for c, report in enumerate(checks):
            if not report.passed:
                log.warning("channel %d: %s", c, report.summary())
        result = _traced(self, _with_record(result, record), record)
        if sd is None:
            return result, None
        # the image's type, device, affine, metadata and trace (copied, not shared); always float32
        sd_out, *_ = convert_to_dst_type(torch.from_numpy(sd), dst=result, dtype=torch.float32)
        return result, _with_record(sd_out, _uncertainty_record(record, self.config, modality))


class DeepDecoderReconstruct(TraceableTransform):
    """
    Reconstruct an MR image from undersampled Cartesian k-space by fitting untrained Deep Decoders through the
    forward model :func:`dd_medical.core.operators.sense.kspace_model` chooses (:func:`dd_medical.api.reconstruct`):
    for several coils, one complex image through ESPIRiT coil sensitivities estimated from the fully sampled centre
    (:class:`~dd_medical.core.operators.sense.SensitivityFourier`; needs sigpy, the ``mri`` extra) unless
    ``coil_maps="none"``; for one coil, :class:`~dd_medical.core.operators.CartesianFourier`.

    The input is k-space in MONAI's layout ``(C, H, W, 2)`` (``C`` coils, last axis real/imaginary, centred
    orthonormal FFT as ``monai.data.fft_utils``), numpy or torch, with a sampling ``mask`` of shape ``(W,)``
    (columns) or ``(H, W)``; masks as MONAI's k-space mask transforms return them (singleton axes around ``W``)
    are accepted. The output is the root-sum-of-squares magnitude image ``(1, H, W)``, float32, of the input's type
    and on its device; a ``MetaTensor`` keeps the input's metadata and gains ``meta["dd_medical"]``, also appended
    to ``applied_operations`` (MONAI >= 1.6; not invertible, as for :class:`DeepDecoderDenoise`), with the
    reconstruction check (:mod:`dd_medical.core.reconstruction_check`: ``check_passed``, and ``check``, its one-line
    summary; a flagged slice is also logged as a warning). The computation
    runs on numpy (``backend``); the decoders are fitted on ``device``.

    Args:
        mask: default sampling mask (1 = measured); a mask given to ``__call__`` takes precedence.
        iterations: Adam steps; default: the preset's.
        channels: decoder channels ``k``; default: the preset's.
        device: where the decoders are fitted: ``"auto"`` (the input's GPU for a CUDA tensor, else CUDA if present,
            else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: base seed; default: the config's (0).
        config: a full :class:`~dd_medical.core.config.FitConfig`; default: the preset of the model's task in
            :mod:`dd_medical.presets` (``reconstruct/mri`` for one coil, ``reconstruct/sense`` with coil
            sensitivities). ``iterations``, ``channels`` and ``seed`` override its fields.
        coil_maps: ``"espirit"`` or ``"none"`` (see above).
        max_channels: more coils than this is taken for a wrong layout and rejected; default 64.
        progress: show a progress bar (default ``False``).
    """

    backend = [TransformBackends.NUMPY]  # what api.reconstruct computes on; tensors are converted, and back

    def __init__(
        self,
        mask: NdarrayOrTensor | None = None,
        iterations: int | None = None,
        channels: int | None = None,
        device: str = "auto",
        seed: int | None = None,
        config: FitConfig | None = None,
        max_channels: int = 64,
        progress: bool = False,
        coil_maps: str = "espirit",
    ) -> None:
        self.mask = mask
        self.settings = dict(config=config, iterations=iterations, channels=channels, seed=seed)
        resolve("reconstruct/mri", **self.settings)  # bad settings fail now; the model's kind picks the task per call
        if coil_maps not in COIL_MAPS:
            raise InputError(f"unknown coil_maps {coil_maps!r}; choose one of {', '.join(COIL_MAPS)}")
        self.coil_maps = coil_maps
        self.device = device
        self.max_channels = max_channels
        self.progress = progress

    def __call__(self, kspace: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """``kspace``: ``(C, H, W, 2)``; ``mask``: ``(W,)`` or ``(H, W)`` (default: the one given at construction)."""
        mask = self.mask if mask is None else mask
        shape = tuple(kspace.shape)
        if len(shape) != 4 or shape[-1] != 2:
            raise InputError(f"expected k-space of shape (C, H, W, 2) (coils, rows, columns, real/imag), got {shape}")
        if shape[0] > self.max_channels:
            raise InputError(f"k-space of shape {shape} has {shape[0]} coils (max_channels={self.max_channels}): "
                             "expected (C, H, W, 2) with coils first")
        if mask is None:
            raise InputError("k-space without a sampling mask: pass mask=... (shape (W,) or (H, W))")
        mask_np = np.asarray(convert_to_tensor(mask, track_meta=False).detach().cpu().numpy(), dtype=np.float32)
        mask_np = mask_np.squeeze()
        if mask_np.shape not in ((shape[2],), (shape[1], shape[2])):
            raise InputError(
                f"mask of shape {tuple(np.shape(mask))} does not fit k-space {shape}: expected ({shape[2]},) or "
                f"({shape[1]}, {shape[2]})"
            )
        kspace_t = convert_to_tensor(kspace, track_meta=get_track_meta())
        values = kspace_t.as_tensor() if isinstance(kspace_t, MetaTensor) else kspace_t
        measurements = values.detach().cpu().float().numpy()[None]  # (D=1, coils, H, W, 2)
        operator = kspace_model(measurements, mask_np, self.coil_maps)
        config = resolve(f"reconstruct/{operator.kind}", **self.settings)
        device = _fit_device(self.device, kspace)
        image, check = api.reconstruct(measurements, operator, config=config, device=device, progress=self.progress,
                                       report=True)
        if check.unreliable:
            log.warning("%s", check.summary())
        out_t = torch.as_tensor(np.asarray(image, dtype=np.float32)).reshape(1, shape[1], shape[2])
        result, *_ = convert_to_dst_type(out_t, dst=kspace, dtype=out_t.dtype)
        record = _record("DeepDecoderReconstruct", config, coils=shape[0], device=device,
                         sampled_fraction=float(mask_np.mean()), job=f"reconstruction ({operator.kind})",
                         check_passed=not check.unreliable, check=check.summary())
        return _traced(self, _with_record(result, record), record)


class DeepDecoderDenoised(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`dd_medical.transforms.DeepDecoderDenoise`.

    With ``uncertainty=True`` each denoised ``key`` gets a companion ``f"{key}_{uncertainty_key_postfix}"`` (default
    ``"image_uncertainty"`` for ``"image"``): the calibrated standard deviation of each denoised value, in the
    image's units (HU for CT, stored values for MR), same shape and channel layout, float32, from the spread of the
    ensemble's decoders (:meth:`DeepDecoderDenoise.denoise_with_uncertainty`). For a ``MetaTensor`` it is a
    ``MetaTensor`` with the denoised image's affine, metadata and ``applied_operations`` (so
    ``Invertd(f"{key}_uncertainty", transform, orig_keys=key)`` maps it back as the image is mapped back), its
    ``meta["dd_medical"]`` marked ``output="uncertainty"`` with ``quantity`` and ``units``. Like the denoising it
    has no inverse of its own. It needs ``ensemble >= 2`` (checked here, before any fitting; the default presets
    have it, ``fast``, ``sure`` and ``speed`` do not).

    Args:
        keys: keys of the images to denoise. See also: :py:class:`monai.transforms.compose.MapTransform`
        uncertainty: also write the uncertainty map of every key (default ``False``: the data gain no key).
        uncertainty_key_postfix: the map of ``key`` is stored at ``f"{key}_{uncertainty_key_postfix}"``; such a
            key existing already in the data is an error (default ``"uncertainty"``).
        allow_missing_keys: don't raise an exception if a key is missing.
        The other arguments are those of :class:`DeepDecoderDenoise` (same defaults).
    """

    backend = DeepDecoderDenoise.backend

    def __init__(
        self,
        keys: KeysCollection,
        iterations: int | None = None,
        channels: int | None = None,
        slice_axis: int = -1,
        device: str = "auto",
        seed: int | None = None,
        preset: str | None = None,
        window: tuple[float, float] | Window | None = None,
        modality: str | None = None,
        config: FitConfig | None = None,
        batch_size: int | None = None,
        max_channels: int = 16,
        progress: bool = False,
        uncertainty: bool = False,
        uncertainty_key_postfix: str = "uncertainty",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = DeepDecoderDenoise(
            iterations=iterations, channels=channels, slice_axis=slice_axis, device=device, seed=seed, preset=preset,
            window=window, modality=modality, config=config, batch_size=batch_size, max_channels=max_channels,
            progress=progress,
        )
        if not isinstance(uncertainty, (bool, np.bool_)):
            raise InputError(f"uncertainty must be True or False, got {uncertainty!r}")
        if not isinstance(uncertainty_key_postfix, str) or not uncertainty_key_postfix:
            raise InputError(f"uncertainty_key_postfix must be a non-empty string, got {uncertainty_key_postfix!r}")
        self.uncertainty = bool(uncertainty)
        self.uncertainty_key_postfix = uncertainty_key_postfix
        if self.uncertainty:
            _check_uncertainty(self.converter.config)
            clashes = [self.uncertainty_key(k) for k in self.keys if self.uncertainty_key(k) in self.keys]
            if clashes:
                raise InputError(f"the uncertainty map would replace an image being denoised ({clashes[0]!r}); "
                                 "choose another uncertainty_key_postfix")

    def uncertainty_key(self, key: Hashable) -> str:
        """Where the uncertainty map of ``key`` goes: ``f"{key}_{uncertainty_key_postfix}"``."""
        return f"{key}_{self.uncertainty_key_postfix}"

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not self.uncertainty:
            for key in keys:
                d[key] = self.converter(d[key])
            return d
        existing = [self.uncertainty_key(k) for k in keys if self.uncertainty_key(k) in d]
        if existing:  # before any fitting
            raise InputError(f"the data hold {existing[0]!r} already, where the uncertainty map would go; remove "
                             "it or choose another uncertainty_key_postfix")
        for key in keys:
            d[key], d[self.uncertainty_key(key)] = self.converter.denoise_with_uncertainty(d[key])
        return d


class DeepDecoderReconstructd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`dd_medical.transforms.DeepDecoderReconstruct`.

    Args:
        keys: keys of the k-space arrays ``(C, H, W, 2)``; each is replaced by its ``(1, H, W)`` magnitude image.
        mask_key: key of the sampling mask (``(W,)`` or ``(H, W)``) in the same dictionary (default ``"mask"``);
            where it is missing, the ``mask`` argument is used, and without either an error is raised.
        allow_missing_keys: don't raise an exception if a key is missing.
        The other arguments are those of :class:`DeepDecoderReconstruct` (same defaults).
    """

    backend = DeepDecoderReconstruct.backend

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "mask",
        mask: NdarrayOrTensor | None = None,
        iterations: int | None = None,
        channels: int | None = None,
        device: str = "auto",
        seed: int | None = None,
        config: FitConfig | None = None,
        max_channels: int = 64,
        progress: bool = False,
        allow_missing_keys: bool = False,
        coil_maps: str = "espirit",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.converter = DeepDecoderReconstruct(
            mask=mask, iterations=iterations, channels=channels, device=device, seed=seed, config=config,
            max_channels=max_channels, progress=progress, coil_maps=coil_maps,
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key], d.get(self.mask_key))
        return d


DeepDecoderDenoiseD = DeepDecoderDenoiseDict = DeepDecoderDenoised
DeepDecoderReconstructD = DeepDecoderReconstructDict = DeepDecoderReconstructd
