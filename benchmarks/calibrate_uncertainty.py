"""Fit and validate the uncertainty map's calibration (:mod:`dd_medical.core.uncertainty`).

The decoders of a slice disagree where the estimate is uncertain. This benchmark denoises images whose clean
version is known, with the package's defaults, and keeps each voxel's ensemble spread and actual error:

- **calibration set**: the phantom and the two shared real CT series (block-averaged to 128 px, so that their own
  noise is about a quarter of what it was), with white Gaussian noise of 30 and 60 HU added;
- **validation, never seen by the fit**:
  - the same kind of images at another noise level (100 HU, other noise draws);
  - the low-dose CT simulation of ``bench_quality.py --lowdose`` (correlated FBP noise of Poisson counts) on
    pydicom-data's 693_UNCR and eCT_Supplemental, scored against the anatomy and against the noise-free scan;
  - the shared real MR volume with Gaussian noise added.

The map (the members' variance, the residual's excess over the noise and the result's edges, weighted and smoothed,
then a monotone map of the predictor, relative to the noise, to the error's RMS / noise) is fitted on the calibration
set only: the smoothing and weights that rank the error best there, then the map; ``--write`` stores it in the
package. On each validation set it reports, inside the body: the Spearman rank correlation of predicted SD and
absolute error per voxel and per 8x8 patch, the coverage of the nominal 68% and 95% intervals, and a reliability
diagram; and on the phantom's lesions, the contrast lost next to the map's
value there (what the spread cannot see).

    python benchmarks/calibrate_uncertainty.py --json auto --write   # measure, refit the package's calibration
    python benchmarks/report.py                                       # the results page and its reliability diagram
    python benchmarks/calibrate_uncertainty.py --quick        # a smoke run (about a minute), not a measurement

Fits are cached per case in ``--cache`` (default a temporary folder), so a rerun that changes only the analysis is
fast.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.noise import estimate_sigma  # noqa: E402
from dd_medical.core.uncertainty import (  # noqa: E402
    CALIBRATION_FILE,
    Calibration,
    fit_calibration,
)
from dd_medical.presets import resolve  # noqa: E402

#: The identity map: the pipeline returns the raw spread.
RAW = Calibration(0.0, (0.0, 1.0), (0.0, 1.0))
CALIBRATION_SIGMAS_HU = (30.0, 60.0)
VALIDATION_SIGMA_HU = 100.0
MR_SIGMA = 20.0  # stored units, about 4% of the volume's 99th percentile
SMOOTHING = (0.0, 1.0, 2.0, 3.0)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 128
SLICES = 2  # per dataset (every 4th slice of a CT series, every 3rd of the MR)


@dataclass
class Case:
    """One denoised stack: ``group`` (``calibration`` or a validation set), its clean and noisy images, the mask of
    the voxels scored, and (after :func:`run_case`) the result, raw spread and noise per slice, in its units."""

    name: str
    group: str
    clean: np.ndarray
    noisy: np.ndarray
    mask: np.ndarray
    modality: str = "CT"
    lesions: list | None = None  # [(slice, mask (H, W), planted contrast)]
    result: np.ndarray | None = None
    spread: np.ndarray | None = None
    noise: np.ndarray | None = None
    seconds: float = 0.0


def _block(stack: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``(D, H, W)`` to a square and block-average it to ``size`` px (lowdose's grid, at half its
    fine size)."""
    from lowdose import _to_fine

    return _to_fine(stack, 1.0, size // 2)[0]


def _middle(stack: np.ndarray, count: int, step: int) -> np.ndarray:
    centre = stack.shape[0] // 2
    index = [min(stack.shape[0] - 1, max(0, centre + step * (k - count // 2))) for k in range(count)]
    return stack[index]


def _body(clean: np.ndarray, threshold: float) -> np.ndarray:
    from lowdose import _body_mask

    return _body_mask(np.where(clean > threshold, 0.0, -1000.0).astype(np.float32))


def clean_sets(quick: bool) -> list[tuple[str, np.ndarray, list | None]]:
    """``(name, clean HU (D, 128, 128), lesions)`` of the calibration images."""
    from dd_medical.io import read_volume
    from dd_medical.phantom import make_phantom

    phantom = make_phantom(depth=8, size=64 if quick else SIZE, seed=0)
    keep = [k for k in range(phantom.hu.shape[0])
            if any(phantom.masks[f"lesion_{i}"][k].any() for i in range(len(phantom.lesions)))][:1 if quick else SLICES]
    lesions = [(j, phantom.masks[f"lesion_{i}"][k], phantom.lesions[i].contrast_hu) for j, k in enumerate(keep)
               for i in range(len(phantom.lesions)) if phantom.masks[f"lesion_{i}"][k].sum() >= 4]
    sets = [("phantom", phantom.hu[keep], lesions)]
    if quick:
        return sets
    for name in ("ct_body_j2k", "ct_head_gantry_tilt"):
        folder = SHARED / name
        if folder.exists():
            sets.append((name, _block(_middle(read_volume(folder).array, SLICES, 4), SIZE), None))
        else:
            print(f"{folder} not found: skipped")
    return sets


def _noisy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)


def build_cases(quick: bool) -> list[Case]:
    cases = []
    sets = clean_sets(quick)
    for name, clean, lesions in sets:
        mask = _body(clean, -500.0)
        for s, sigma in enumerate(CALIBRATION_SIGMAS_HU[:1] if quick else CALIBRATION_SIGMAS_HU):
            cases.append(Case(f"{name} +{sigma:.0f} HU", "calibration", clean, _noisy(clean, sigma, 11 + s), mask,
                              lesions=lesions))
        if not quick:
            cases.append(Case(f"{name} +{VALIDATION_SIGMA_HU:.0f} HU", "another noise level (100 HU)", clean,
                              _noisy(clean, VALIDATION_SIGMA_HU, 97), mask, lesions=lesions))
    if quick:
        return cases
    cases += lowdose_cases()
    mr = SHARED / "ct_body_j2k_nifti" / "example_mr_sm.nii.gz"
    if mr.exists():
        from dd_medical.io import read_volume

        clean = _middle(read_volume(mr).array, SLICES, 3).astype(np.float32)
        mask = _body(clean, 0.1 * float(np.percentile(clean, 99)))
        cases.append(Case("example_mr_sm", "MR (real volume, Gaussian noise)", clean, _noisy(clean, MR_SIGMA, 5),
                          mask, modality="MR"))
    return cases


LOWDOSE = "low-dose CT simulation (FBP noise), against the anatomy"
LOWDOSE_SCAN = "low-dose CT simulation, against the noise-free scan"


def lowdose_cases() -> list[Case]:
    """The scanner-like simulation (``benchmarks/lowdose.py``) at both doses: 693_UNCR and eCT_Supplemental, scored
    against the anatomy (what a reader wants) and against the noise-free scan (the denoising's own error: FBP's
    blur of the anatomy is an error no denoiser's spread can see)."""
    import lowdose

    cases = []
    for case in lowdose.load_cases(SIZE, 1, False, SHARED):
        if case.name not in ("693_UNCR", "eCT_Supplemental"):
            continue
        lowdose.prepare(case)
        line = lowdose.sinogram(case)
        scanned = lowdose.scan(case, line, None, 0)  # the noise-free scan: the anatomy as FBP resolves it
        for dose, photons in lowdose.DOSES.items():
            noisy = lowdose.scan(case, line, photons, 23)
            lesions = [(k, case.lesions[k] == label, contrast) for label, contrast in case.planted.items()
                       for k in range(case.lesions.shape[0]) if (case.lesions[k] == label).sum() >= 4]
            cases.append(Case(f"{case.name} {dose}", LOWDOSE, case.anatomy, noisy, case.body, lesions=lesions))
            cases.append(Case(f"{case.name} {dose}", LOWDOSE_SCAN, scanned, noisy, case.body))
    return cases


def _key(case: Case, config: FitConfig) -> str:
    digest = hashlib.sha1(case.noisy.tobytes() + json.dumps(asdict(config), sort_keys=True).encode())
    return f"{case.name.replace(' ', '_').replace('+', 'p')}_{digest.hexdigest()[:12]}"


def run_case(case: Case, config: FitConfig, device: str, cache: Path) -> None:
    """Denoise ``case.noisy`` with ``config``: the result, the raw spread and each slice's estimated noise."""
    from dd_medical.core.intensity import default_window
    from dd_medical.pipeline import denoise_volume

    file = cache / f"{_key(case, config)}.npz"
    if file.exists():
        data = np.load(file)
        case.result, case.spread, case.noise, case.seconds = (data["result"], data["spread"], data["noise"],
                                                              float(data["seconds"]))
        return
    t0 = time.perf_counter()
    case.result, case.spread = denoise_volume(case.noisy, config, device, modality=case.modality, progress=False,
                                              uncertainty=True, calibration=RAW)
    case.seconds = (time.perf_counter() - t0) / case.noisy.shape[0]
    window = default_window(case.noisy, case.modality)  # the window the pipeline fitted in
    case.noise = (estimate_sigma(torch.from_numpy(window.to_unit(case.noisy))[:, None]).numpy() * window.width)
    np.savez(file, result=case.result, spread=case.spread, noise=case.noise, seconds=case.seconds)


def relative(case: Case, smooth: float, residual: float = 0.0, edge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(predictor, |error| / noise)`` of ``case``'s scored voxels: the map's input
    (:meth:`~dd_medical.core.uncertainty.Calibration.predictor`) with this smoothing, residual and edge weight."""
    probe = Calibration(smooth, (0.0, 1.0), (0.0, 1.0), residual=residual, edge=edge)
    predicted = probe.predictor(*_inputs(case)).numpy()
    noise = np.maximum(case.noise, 1e-6)[:, None, None]
    return predicted[case.mask], (np.abs(case.result - case.clean) / noise)[case.mask]


def _inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The map's inputs for ``case``: spread, noise per slice, residual (input minus result) and result, in its
    units."""
    return (torch.from_numpy(case.spread), torch.from_numpy(case.noise),
            torch.from_numpy(case.noisy - case.result), torch.from_numpy(case.result))


#: Weights of the residual's local excess over the noise variance tried (added to the member variance; the one with
#: the highest Spearman correlation on the calibration set is kept).
RESIDUAL_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
#: Weights of the result's edges (the square root of its gradient magnitude over the noise) tried with each residual
#: weight.
EDGE_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _patches(image: np.ndarray, mask: np.ndarray, size: int = 8) -> np.ndarray:
    """Means of ``image`` over the ``size x size`` patches wholly inside ``mask``."""
    d, h, w = image.shape
    h, w = h - h % size, w - w % size
    blocks = lambda a: a[:, :h, :w].reshape(d, h // size, size, w // size, size)  # noqa: E731
    inside = blocks(mask).all(axis=(2, 4))
    return blocks(image).mean(axis=(2, 4))[inside]


def _neighbours_rms(error: np.ndarray) -> np.ndarray:
    """The root mean square of ``error`` ``(D, H, W)`` over each voxel's 8 neighbours in its slice (reflected at the
    border): an oracle map that knows the actual error everywhere but at the voxel itself (a reference for the
    map's rank correlation, not a bound)."""
    from scipy import ndimage

    ring = np.ones((1, 3, 3)) / 8
    ring[0, 1, 1] = 0
    return np.sqrt(ndimage.convolve(error.astype(np.float64) ** 2, ring, mode="reflect"))


def evaluate(cases: list[Case], calibration: Calibration) -> dict:
    """The scores of the calibrated map on ``cases`` (pooled), in their units."""
    predicted, error, patch_sd, patch_err, local = [], [], [], [], []
    for case in cases:
        sd = calibration(*_inputs(case)).numpy()
        err = np.abs(case.result - case.clean)
        scale = float(np.median(case.noise))  # pool sets of different units and noise levels
        local.append(_neighbours_rms(err)[case.mask])
        predicted.append(sd[case.mask] / scale)
        error.append(err[case.mask] / scale)
        patch_sd.append(_patches(sd, case.mask) / scale)
        patch_err.append(_patches(err, case.mask) / scale)
    p, e = np.concatenate(predicted), np.concatenate(error)
    ps, pe = np.concatenate(patch_sd), np.concatenate(patch_err)
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    reliability = [[float(np.sqrt(np.mean(p[bins == b] ** 2))), float(np.sqrt(np.mean(e[bins == b] ** 2)))]
                   for b in range(10) if (bins == b).any()]
    return dict(voxels=int(p.size), patches=int(ps.size), spearman_voxel=_spearman(p, e),
                spearman_patch=_spearman(ps, pe), spearman_oracle=_spearman(np.concatenate(local), e),
                coverage_68=float(np.mean(e <= p)),
                coverage_95=float(np.mean(e <= 1.96 * p)), reliability=reliability)


def lesion_caveat(cases: list[Case], calibration: Calibration) -> list[dict]:
    """Per planted lesion: the contrast the result lost (HU) and the calibrated SD inside it (HU)."""
    from scipy import ndimage

    out = []
    for case in cases:
        if not case.lesions:
            continue
        sd = calibration(*_inputs(case)).numpy()
        for k, mask, contrast in case.lesions:
            ring = ndimage.binary_dilation(mask, iterations=5) & ~ndimage.binary_dilation(mask, iterations=2)
            kept = float(case.result[k][mask].mean() - case.result[k][ring].mean())
            true = float(case.clean[k][mask].mean() - case.clean[k][ring].mean())
            out.append(dict(case=case.name, group=case.group, planted_hu=float(contrast), true_contrast_hu=true,
                            kept_hu=kept, lost_hu=true - kept, sd_hu=float(sd[k][mask].mean()),
                            pixels=int(mask.sum())))
    return out


WHAT = ("Denoised with the defaults, each voxel's calibrated SD (the map) against its actual absolute error, inside "
        "the body: the Spearman rank correlation per voxel and per 8x8 patch (means of map and error), and how often "
        "the nominal 68% (|error| <= SD) and 95% (|error| <= 1.96 SD) intervals hold. The map was fitted on the "
        "calibration set only; the other sets are data it never saw: the same kind of images at another noise level, "
        "the low-dose CT simulation of the quality benchmark (correlated FBP noise; scored against the anatomy, and "
        "against the noise-free scan, whose difference is FBP's own blur, an error no spread can see), and a real MR "
        "volume with added noise (scored against the MR as stored, which has noise of its own). The oracle column is "
        "no map anyone can compute: each voxel's actual error, root-mean-squared over its 8 neighbours. It is a "
        "reference, not a bound: a map near it ranks the error as well as knowing the neighbours' actual errors "
        "would; where even it is low, the error is mostly noise that no map can place voxel by voxel.")


def choose_predictor(fitting: list[Case]) -> tuple[dict[float, float], dict[tuple[float, float], float]]:
    """The Spearman correlation on the calibration set ``fitting`` of the spread alone at each of :data:`SMOOTHING`,
    and, at the best smoothing, of the predictor with each residual weight (:data:`RESIDUAL_WEIGHTS`) and edge weight
    (:data:`EDGE_WEIGHTS`)."""
    def score(*weights: float) -> float:
        return _spearman(*map(np.concatenate, zip(*(relative(c, *weights) for c in fitting), strict=True)))

    choice = {smooth: score(smooth) for smooth in SMOOTHING}
    smooth = max(choice, key=choice.get)
    return choice, {(w, e): score(smooth, w, e) for w in RESIDUAL_WEIGHTS for e in EDGE_WEIGHTS}


def main(argv: list[str] | None = None) -> None:
    from machine import json_help, json_path, machine_description, machine_tag, write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (phantom, tiny decoders)")
    parser.add_argument("--write", action="store_true", help=f"store the fitted calibration in {CALIBRATION_FILE}")
    parser.add_argument("--ensemble", type=int, default=None, help="decoders per slice (default: the preset's)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "dd_uncertainty_cache",
                        help="where fitted cases are cached")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", default=None, help=json_help(f"uncertainty_{SIZE}"))
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    config = resolve("denoise", None)
    if args.quick:
        config = replace(config, channels=16, iterations=60, blocks=3)
    if args.ensemble:
        config = replace(config, ensemble=args.ensemble)
    print(f"machine: {machine_description(args.device)}")
    cases = build_cases(args.quick)
    for case in cases:
        run_case(case, config, args.device, args.cache)
        print(f"{case.group:40s} {case.name:34s} noise {np.median(case.noise):6.1f}, {case.seconds:5.0f} s/slice",
              flush=True)
    fitting = [c for c in cases if c.group == "calibration"]
    choice, residual = choose_predictor(fitting)
    smooth = max(choice, key=choice.get)
    weight, edge = max(residual, key=residual.get)
    print(f"smoothing (px) -> Spearman on the calibration set: {choice}; chosen {smooth}")
    print(f"(residual weight, edge weight) -> Spearman on the calibration set: {residual}; chosen {(weight, edge)}")
    x, y = zip(*(relative(c, smooth, weight, edge) for c in fitting), strict=True)
    names = sorted({c.name.rsplit(" +", 1)[0] for c in fitting})
    calibration = fit_calibration(np.concatenate(x), np.concatenate(y), smooth,
                                  f"{', '.join(names)} at {SIZE} px with white noise of "
                                  f"{', '.join(f'{s:.0f}' for s in CALIBRATION_SIGMAS_HU)} HU; "
                                  f"ensemble {config.ensemble}", residual=weight, edge=edge)
    groups = list(dict.fromkeys(c.group for c in cases))
    results = {g: evaluate([c for c in cases if c.group == g], calibration) for g in groups}
    caveat = lesion_caveat(cases, calibration)
    for g, r in results.items():
        print(f"{g:40s} Spearman voxel {r['spearman_voxel']:.3f} patch {r['spearman_patch']:.3f}  coverage 68% "
              f"{100 * r['coverage_68']:.1f}  95% {100 * r['coverage_95']:.1f}")
    for lesion in caveat:
        print(f"lesion {lesion['case']}: planted {lesion['planted_hu']:.0f} HU, lost {lesion['lost_hu']:.1f} HU, "
              f"map {lesion['sd_hu']:.1f} HU")
    if args.write:
        CALIBRATION_FILE.write_text(calibration.to_json())
        print(f"wrote {CALIBRATION_FILE}")
    json_file = json_path(args.json, f"uncertainty_{SIZE}" + ("_quick" if args.quick else ""), args.device)
    if json_file is not None:
        rows = [[g if g != "calibration" else "calibration set (fitted on it)", f"{r['spearman_voxel']:.2f}",
                 f"{r['spearman_patch']:.2f}", f"{100 * r['coverage_68']:.1f}", f"{100 * r['coverage_95']:.1f}",
                 f"{r['spearman_oracle']:.2f}", f"{r['voxels']:,}"] for g, r in results.items()]
        lesion_rows = [[c["case"], c["group"], f"{c['true_contrast_hu']:.1f}", f"{c['kept_hu']:.1f}",
                        f"{c['lost_hu']:.1f}", f"{c['sd_hu']:.1f}", f"{abs(c['lost_hu']) / max(c['sd_hu'], 1e-6):.1f}"]
                       for c in caveat]
        lesion_table = dict(what="What the spread cannot see: per planted lesion, the contrast against its "
                                 "surroundings in the clean image and in the result, what was lost, and the map's mean "
                                 "SD inside the lesion. A loss many times the map's SD is a bias every member shared.",
                            columns=["image", "set", "true contrast (HU)", "contrast in the result (HU)",
                                     "lost (HU)", "map SD in the lesion (HU)", "|lost| / SD"],
                            rows=lesion_rows)
        write_json(json_file, dict(
            title=f"Uncertainty map: calibrated on known noise, validated on unseen data ({SIZE} px)",
            topic="uncertainty", what=WHAT + f" Calibration: {calibration.fitted_on}; smoothing "
                                             f"{calibration.smooth:g} px; residual weight {calibration.residual:g}; "
                                             f"edge weight {calibration.edge:g} (chosen on the calibration set).",
            machine=machine_tag(args.device), source="benchmarks/calibrate_uncertainty.py",
            columns=["set", "Spearman per voxel", "Spearman per 8x8 patch", "68% interval covers (%)",
                     "95% interval covers (%)", "oracle: Spearman per voxel of the error's own RMS over its 8 "
                     "neighbours", "voxels"],
            rows=rows, tables=[lesion_table], results=results, calibration=asdict(calibration),
            smoothing_choice={str(k): v for k, v in choice.items()},
            residual_choice={f"{k[0]:g}, {k[1]:g}": v for k, v in residual.items()}, lesions=caveat,
            config=asdict(config),
            cases=[dict(name=c.name, group=c.group, slices=int(c.noisy.shape[0]), noise=float(np.median(c.noise)),
                        rms_error=float(np.sqrt(np.mean((c.result - c.clean)[c.mask] ** 2))),
                        seconds_per_slice=c.seconds) for c in cases]), args.device, argv)
        print(f"wrote {json_file}")


if __name__ == "__main__":
    main()
