"""The forward-model interface every fit goes through (DeepInverse's physics, MONAI's k-space conventions)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import InputError


def mean_squared_residual(predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean squared residual per instance over all but the first axis (complex as real/imaginary pairs)."""
    diff = predicted - measured
    if diff.is_complex():
        diff = torch.view_as_real(diff)
    return diff.float().pow(2).flatten(1).mean(dim=1)


_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


class ForwardModel(nn.Module):
    """``A``: images ``(B, C, H, W)`` -> measurements, batched over ``B``, differentiable, on any device.

    Masks and matrices are buffers, so ``.to(device)`` moves them. What a modality needs beyond ``forward`` and
    ``adjoint`` is a method here, so that the pipeline never asks which modality it serves:

    - ``baseline(y)``: a cheap reconstruction (zero-filled, FBP), images ``(B, C', H, W)``;
    - ``to_image(x)``: the result ``(B, H, W)`` from fitted (or baseline) images (MRI: coil magnitude);
    - ``finalize(x, y)``: data consistency of fitted images with the measurements (identity by default);
    - ``unmeasured(x)``: the part of images the measurements do not determine (the images by default);
    - ``noise_floor(y)``: the misfit the measurements' noise alone gives, where it can be estimated (else ``None``);
    - ``data_loss(Ax, y)``: the ``(B,)`` misfit a decoder is fitted with (mean squared residual by default);
    - ``prepare(measurements)``: checked float32 measurements batched over slices;
    - ``slices(start, stop)``: the model of some of the slices (itself, unless it holds something per slice).

    Class attributes: ``kind`` names the settings in :mod:`dd_medical.presets` (``reconstruct/<kind>``);
    ``baseline_name`` says what ``baseline`` is, for messages; ``output`` is the decoder's output for this model's
    images (``"sigmoid"``: [0, 1]; ``"linear"``: signed); ``measurement_ndim`` counts the axes of batched
    measurements.
    """

    kind = ""
    baseline_name = "adjoint"
    output = "sigmoid"
    measurement_ndim = 4

    @property
    def device(self) -> torch.device:
        """Where the buffers are (the CPU for a model without any)."""
        buffer = next(self.buffers(), None)
        return torch.device("cpu") if buffer is None else buffer.device

    def image_shape(self, measurements: torch.Tensor) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images that explain batched ``measurements``; :class:`InputError` if they do not fit."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def baseline(self, y: torch.Tensor) -> torch.Tensor:
        return self.adjoint(y)

    def data_loss(self, predicted: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        return mean_squared_residual(predicted, measured)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]

    def finalize(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def slices(self, start: int, stop: int) -> ForwardModel:
        """The model of slices ``start:stop`` of the measurements it was made for (itself, unless it holds something
        per slice, such as coil sensitivities): what a fit of those slices alone is given."""
        return self

    def _with_buffer(self, name: str, value: torch.Tensor | None) -> ForwardModel:
        """A shallow copy with buffer ``name`` replaced: every other buffer (a system matrix, a mask) is shared, not
        copied or rebuilt."""
        part = copy.copy(self)
        part._buffers = dict(self._buffers)
        part._buffers[name] = value
        return part

    def noise_floor(self, y: torch.Tensor) -> torch.Tensor | None:
        """``(B,)`` float64: the data misfit (:func:`~dd_medical.core.reconstruction_check.data_misfit`) that the
        noise of measurements ``y`` alone gives a perfect fit, where the model can estimate it from ``y`` (MRI: from
        the highest readout frequencies); ``None`` where it cannot (the default)."""
        return None

    def unmeasured(self, x: torch.Tensor) -> torch.Tensor:
        """What the measurements do not determine of images ``x`` ``(B, C, H, W)``, batched over ``B`` (any layout;
        linear in ``x``): where the members of an ensemble may differ without explaining the measurements any worse
        (:mod:`dd_medical.core.reconstruction_check`). Default: the images themselves (a model that cannot say which
        part of an image it leaves unmeasured)."""
        return x

    def prepare(self, measurements, path: str | Path | None = None) -> torch.Tensor:
        """Check measurements and return them as a float32 CPU tensor batched over slices (first axis ``D``).

        One slice without its ``D`` axis is accepted. :class:`InputError` naming ``path`` (before any fitting) for
        complex data where real is expected, an unsupported dtype, NaN/Inf, a shape that does not fit, no slices.
        """
        t = measurements.detach().cpu() if isinstance(measurements, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(measurements))
        try:
            t = self._coerce(t)
            if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INTEGER_DTYPES):
                raise InputError(f"measurements have unsupported dtype {t.dtype}")
            t = t.to(torch.float32)
            if not torch.isfinite(t).all():
                raise InputError(f"measurements contain {int((~torch.isfinite(t)).sum())} NaN/Inf values")
            if t.ndim == self.measurement_ndim - 1:  # one slice without its batch axis
                t = t[None]
            self.image_shape(t)
            if t.shape[0] == 0:
                raise InputError("no slices in the measurements")
        except InputError as err:
            raise InputError(err.problem, path) from None
        return t

    def _coerce(self, t: torch.Tensor) -> torch.Tensor:
        """Modality-specific layouts (complex k-space, sinograms without a channel axis) -> the batched layout."""
        if t.is_complex():
            raise InputError(f"measurements are complex but {type(self).__name__} expects real values")
        return t


def as_float_tensor(array, name: str) -> torch.Tensor:
    """A real, finite float32 CPU copy of a mask or weight array (numpy or torch)."""
    t = array.detach().cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.asarray(array).copy())
    if t.is_complex():
        raise InputError(f"{name} is complex; it must hold real weights (0/1 or bool)")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN/Inf values")
    return t
