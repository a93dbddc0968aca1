"""Can a reconstruction be trusted? Two figures per slice that need no ground truth:

- the **data misfit**: how far the decoders' fitted image ``x`` (their mean, before the operator's ``finalize``) is
  from explaining the measurements ``y``: ``||A(x) - y|| / ||y||`` over the measured samples, in the norm the
  decoders were fitted with (:meth:`~dd_medical.core.operators.ForwardModel.data_loss`: plain for MRI, the
  detector frequencies weighted as in FBP for CT). A fraction of the measurements' own size; 0 is a perfect fit,
  noise in the measurements keeps it above 0. A fit that did not converge, or a forward model that does not
  describe the data, leaves it high.
- the **members' disagreement**: how much the decoders fitted to the same slice differ where the measurements say
  nothing (:meth:`~dd_medical.core.operators.ForwardModel.unmeasured`: MRI, the k-space the mask skips; other models,
  the image itself): the members' sample standard deviation there, as an RMS over the entries, relative to the RMS
  of their mean there (0: they agree; near 1: they disagree about as much as the filled-in content is large). When
  the decoders disagree, what they filled in is a guess, and the cheap baseline (zero-filled, FBP) may be better.

A slice is flagged **unreliable** when either figure exceeds its limit (:data:`MAX_MISFIT`,
:data:`MAX_DISAGREEMENT`); the misfit counts only its **excess** over the noise where the forward model can estimate
the measurements' noise (MRI, from the highest readout frequencies; CT, from the rays' counts:
``ForwardModel.noise_floor``), so that a good fit of noisy measurements, which leaves the noise unexplained, is not
flagged. How often the flag catches slices that
fell below their cheap baseline, and how often it flags the others, is measured in ``docs/reconstruction.md``
(``benchmarks/reconstruction_check.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .operators import ForwardModel

# Both limits are those benchmarks/reconstruction_check.py chose on its calibration slices (the disagreement's with
# four decoders per slice, the MRI default); tests/test_bench_reconstruction_check.py checks they still agree.
#: A slice is unreliable when its data misfit (fraction of the measurements) exceeds this ...
MAX_MISFIT = 0.09
#: ... or when its members' disagreement on the unmeasured part (fraction of the mean's size there) exceeds this.
MAX_DISAGREEMENT = 1.5


@dataclass(frozen=True)
class SliceReconstructionCheck:
    """The figures of one slice (dimensionless fractions; see the module's docstring).

    Attributes:
        index: the slice's index in the volume.
        misfit: ``||A(x) - y|| / ||y||`` of the fitted mean ``x`` (before ``finalize``), in the fit's own norm
            (:func:`data_misfit`); ``inf`` for a slice with no measured signal that the fit does not reproduce.
        disagreement: the members' standard deviation on the unmeasured part over the RMS of their mean there;
            ``None`` with one decoder per slice.
        noise_floor: the misfit the measurements' noise alone gives a perfect fit
            (:meth:`~dd_medical.core.operators.ForwardModel.noise_floor`: MRI, CT with counts); ``None`` where it is
            not known.
    """

    index: int
    misfit: float
    disagreement: float | None
    noise_floor: float | None = None

    @property
    def excess(self) -> float:
        """The misfit beyond what the measurements' noise explains, ``sqrt(misfit^2 - noise_floor^2)`` (0 when the
        misfit is within the noise; the misfit itself where the noise floor is unknown): what the fit failed to
        explain, since a fit's error and the noise add in quadrature."""
        floor = self.noise_floor
        if floor is None or not math.isfinite(floor) or not math.isfinite(self.misfit):
            return self.misfit
        return math.sqrt(max(self.misfit**2 - floor**2, 0.0))

    @property
    def unreliable(self) -> bool:
        return self.excess > MAX_MISFIT or (self.disagreement is not None and self.disagreement > MAX_DISAGREEMENT)


@dataclass(frozen=True)
class ReconstructionCheck:
    """Per-slice checks of a reconstruction (:func:`check_reconstruction`).

    Attributes:
        slices: one :class:`SliceReconstructionCheck` per slice, in order.
        decoders: decoders fitted per slice (the members).
        baseline: what the forward model's cheap reconstruction is (``ForwardModel.baseline_name``), for messages.
    """

    slices: tuple[SliceReconstructionCheck, ...]
    decoders: int
    baseline: str = "cheap"

    @property
    def unreliable(self) -> bool:
        """Whether any slice is flagged."""
        return any(s.unreliable for s in self.slices)

    @property
    def flagged(self) -> list[SliceReconstructionCheck]:
        return [s for s in self.slices if s.unreliable]

    @property
    def misfit(self) -> float:
        """The largest data misfit over the slices."""
        return max(s.misfit for s in self.slices)

    @property
    def excess(self) -> float:
        """The largest excess of the misfit over the noise (:attr:`SliceReconstructionCheck.excess`)."""
        return max(s.excess for s in self.slices)

    @property
    def noise_floor(self) -> float | None:
        """The largest noise floor over the slices (``None`` where it is not known)."""
        values = [s.noise_floor for s in self.slices if s.noise_floor is not None and math.isfinite(s.noise_floor)]
        return max(values) if values else None

    @property
    def disagreement(self) -> float | None:
        """The largest disagreement over the slices (``None`` with one decoder per slice)."""
        values = [s.disagreement for s in self.slices if s.disagreement is not None]
        return max(values) if values else None

    def summary(self) -> str:
        """One line: the worst figures (what they mean, which way is bad), and which slices are flagged."""
        misfit = (f"data misfit up to {100 * self.misfit:.1f}% of the measurements" if math.isfinite(self.misfit)
                  else "a data misfit where nothing was measured")
        if self.noise_floor is not None and math.isfinite(self.misfit):
            misfit += f", {100 * self.excess:.1f}% beyond the noise's {100 * self.noise_floor:.1f}%"
        disagreement = self.disagreement
        spread = ("decoders' disagreement not measured (one decoder per slice)" if disagreement is None else
                  f"decoders' disagreement where nothing was measured up to {100 * disagreement:.0f}% of the "
                  "filled-in content" if math.isfinite(disagreement) else
                  "decoders disagree where the filled-in content is zero")
        beyond = " beyond the noise" if self.noise_floor is not None else ""
        limits = f"limits {100 * MAX_MISFIT:g}%{beyond} and {100 * MAX_DISAGREEMENT:g}%; higher is worse"
        if not self.unreliable:
            return f"reconstruction check passed ({misfit}, {spread}; {limits})"
        flagged = self.flagged
        listed = ", ".join(str(s.index) for s in flagged[:8]) + (", ..." if len(flagged) > 8 else "")
        return (f"reconstruction check FLAGGED {len(flagged)} of {len(self.slices)} slice(s) ({listed}) as "
                f"unreliable: {misfit}, {spread} ({limits}): the result may be worse than the {self.baseline} "
                "baseline; compare with it")

    def as_record(self) -> dict:
        """Plain numbers, for metadata and manifests."""
        return {"unreliable": self.unreliable, "flagged_slices": [s.index for s in self.flagged],
                "misfit": [round(s.misfit, 4) for s in self.slices],
                "noise_floor": [None if s.noise_floor is None else round(s.noise_floor, 4) for s in self.slices],
                "disagreement": None if self.disagreement is None else
                [round(s.disagreement, 4) for s in self.slices],  # type: ignore[arg-type]
                "decoders": self.decoders,
                "limits": {"misfit": MAX_MISFIT, "disagreement": MAX_DISAGREEMENT}}


def _ratio(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """``top / bottom`` per entry, 0 where both are 0 and ``inf`` where only ``bottom`` is."""
    ratio = top / bottom.clamp(min=torch.finfo(bottom.dtype).tiny)
    return torch.where(bottom > 0, ratio, torch.where(top > 0, math.inf, 0.0))


def _energy(t: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 mean squared magnitude over all but the first axis (complex as real/imaginary pairs)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.double().pow(2).flatten(1).mean(dim=1)


def data_misfit(operator: ForwardModel, measurements: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 relative data misfit per slice of images ``(B, C, H, W)`` against measurements ``y`` batched
    over ``B`` in the operator's layout (entries it does not sample are zero, as ``A``'s are):
    ``sqrt(data_loss(A(images), y) / data_loss(0, y))``, the operator's own data term (the one the decoders are
    fitted with) relative to that of an empty image. With the default mean squared residual this is
    ``||A(images) - y|| / ||y||``; for CT the residual's detector frequencies are weighted as in the fit."""
    with torch.no_grad():
        predicted = operator(images.to(operator.device))
        measured = measurements.to(predicted.device)
        left = operator.data_loss(predicted, measured).double()
        size = operator.data_loss(torch.zeros_like(measured), measured).double()
        return _ratio(left, size).sqrt().cpu()


def member_scatter(operator: ForwardModel, members: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64: the members' squared deviations from their mean on the unmeasured part, summed over the
    members and averaged over the entries, for members ``(B, M, C, H, W)``."""
    with torch.no_grad():
        b, m = members.shape[:2]
        each = operator.unmeasured(members.flatten(0, 1).to(operator.device))
        each = torch.view_as_real(each) if each.is_complex() else each
        each = each.double().view(b, m, -1)
        return (each - each.mean(dim=1, keepdim=True)).pow(2).sum(dim=1).mean(dim=1).cpu()


def disagreement(operator: ForwardModel, mean: torch.Tensor, scatter: torch.Tensor, members: int) -> torch.Tensor:
    """``(B,)`` float64 members' disagreement from their ``scatter`` (:func:`member_scatter`, or the same quantity
    put together from groups of members) and their ``mean`` ``(B, C, H, W)``: the members' sample standard deviation
    on the unmeasured part (RMS over its entries) over the RMS of the mean there."""
    if members < 2:
        raise ValueError(f"a disagreement needs at least 2 members, got {members}")
    with torch.no_grad():
        size = _energy(operator.unmeasured(mean.to(operator.device))).cpu()
    return _ratio(scatter.double() / (members - 1), size).sqrt()


def gathered(misfit: torch.Tensor, spread: torch.Tensor | None, decoders: int, baseline: str = "cheap",
             first_index: int = 0, noise_floor: torch.Tensor | None = None) -> ReconstructionCheck:
    """A :class:`ReconstructionCheck` from per-slice figures ``(D,)`` (``spread`` ``None`` with one decoder;
    ``noise_floor`` ``None`` where the model cannot estimate it)."""
    values = [None] * misfit.shape[0] if spread is None else [float(v) for v in spread]
    floors = [None] * misfit.shape[0] if noise_floor is None else [float(v) for v in noise_floor]
    return ReconstructionCheck(tuple(SliceReconstructionCheck(first_index + i, float(f), d, n) for i, (f, d, n)
                                     in enumerate(zip(misfit, values, floors, strict=True))), int(decoders), baseline)


def check_reconstruction(operator: ForwardModel, measurements: torch.Tensor, mean: torch.Tensor,
                         members: torch.Tensor | None = None, *, first_index: int = 0) -> ReconstructionCheck:
    """Check fitted images against their measurements: ``mean`` ``(B, C, H, W)`` the decoders' fitted estimate
    before ``finalize``, ``members`` ``(B, M, C, H, W)`` each decoder's (``None`` or ``M = 1``: no disagreement),
    ``measurements`` batched over ``B`` in the operator's layout and scale (the scale cancels). Slice ``i`` is
    reported as ``first_index + i``."""
    misfit = data_misfit(operator, measurements, mean)
    count = 1 if members is None else int(members.shape[1])
    spread = None if count < 2 else disagreement(operator, mean, member_scatter(operator, members), count)
    return gathered(misfit, spread, count, operator.baseline_name, first_index, operator.noise_floor(measurements))
