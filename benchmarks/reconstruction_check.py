"""How well does the reconstruction check's flag predict a slice worse than its cheap baseline? (issue 32)

    python benchmarks/reconstruction_check.py --json auto        # ~30 min of one CPU thread
    python benchmarks/reconstruction_check.py --docs             # the block in docs/reconstruction.md from the JSON
    python benchmarks/reconstruction_check.py --quick --json x.json   # a smoke run (seconds)

**Cases.** Real slices: the shared MR volume ``example_mr_sm.nii.gz`` (magnitudes, negatives clipped to 0) and CT
volume ``example_ct_sm.nii.gz`` (HU), each padded (MR with 0, CT with -1000 HU) or cropped to 96 x 120 px. MRI: the
slice block-averaged 2 x 2 to 48 x 60 px, measured by :func:`dd_medical.simulate` (single-coil k-space of the image,
complex-valued fit, as ``dd-medical reconstruct --simulate mri``) at 4x and 8x with equispaced and random masks
(centre fractions 0.08 and 0.04), plus complex white Gaussian noise on the sampled entries (standard deviation of the
complex value: the mean magnitude inside the body over :data:`SNR`). CT: ``simulate(..., "ct", downsample=2)`` (the
96 x 120 slice scanned, the 48 x 60 grid reconstructed: no inverse crime) at 30 and 60 views, then Poisson counts at
:data:`PHOTONS` photons per bin plus electronic noise (``realistic.measure``; pixel :data:`CT_PIXEL_MM` mm).
Decoders: the ``reconstruct/mri`` and ``reconstruct/ct`` defaults (MRI: two decoders of each kind; CT: one, so only
the misfit is there), with **short fits** (:data:`MRI_ITERATIONS`, :data:`CT_ITERATIONS` steps, alternating
between cases) so that some slices fall below their baseline; a seed per case (its mask and its decoders).

**Scores.** PSNR of the whole slice against the clean one on the clean one's range, as the command line's summary
(``--simulate``): a slice is *below its baseline* when its PSNR is below that of the zero-filled (MRI) or FBP (CT)
image of the same measurements. Each case's check is :func:`dd_medical.reconstruct`'s ``report=True``.

**Limits.** The slices are split by anatomy: the calibration half (:data:`MR_CALIBRATION`, :data:`CT_CALIBRATION`)
chooses the limits, each the candidate with the fewest false alarms among those flagging at least
:data:`TARGET_SENSITIVITY` of the calibration slices below their baseline (ties: more of them flagged, then the larger
limit): first the disagreement's (:data:`DISAGREEMENT_GRID`) on the calibration slices that have one, by itself;
then the misfit's (:data:`MISFIT_GRID`) on all of them, with that disagreement limit (:func:`choose` says why). The
misfit is the check's: its excess over the noise floor of the measurements where the model estimates one (MRI).
The test half (:data:`MR_TEST`, :data:`CT_TEST`) is scored with them:
sensitivity (flagged among the slices below their baseline) and false-alarm rate (flagged among the others).
One test slice is also fitted with the MRI preset's full number of steps (:data:`DEFAULT_LENGTH_MRI`), scored apart:
whether the limits flag what users get by default.
``dd_medical.core.reconstruction_check``'s constants are set to the chosen pair by hand (a test checks they agree).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import json_help, json_path, machine_description, machine_tag, write_json  # noqa: E402
from realistic import SHARED, measure, mr_body_mask  # noqa: E402

import dd_medical  # noqa: E402
from dd_medical.core import reconstruction_check as rc  # noqa: E402
from dd_medical.io import read_volume  # noqa: E402
from dd_medical.metrics import psnr  # noqa: E402
from dd_medical.presets import resolve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "reconstruction.md"
BLOCK = "reconstruction_check"
SIZE = "48x60"
RECORD = ROOT / "benchmarks" / "measured" / f"reconstruction_check_{SIZE}_cpu-2core.json"

MR_FILE, CT_FILE = "example_mr_sm.nii.gz", "example_ct_sm.nii.gz"
#: Slices of the shared volumes: the calibration half chooses the limits, the test half scores them.
MR_CALIBRATION, MR_TEST = (2, 8, 14), (5, 11, 17)
CT_CALIBRATION, CT_TEST = (4, 14, 24), (9, 19, 27)
PADDED = (96, 120)
#: MRI: (acceleration, mask, centre fraction).
MRI_SETTINGS = ((4, "equispaced", 0.08), (4, "random", 0.08), (8, "equispaced", 0.04), (8, "random", 0.04))
CT_VIEWS = (30, 60)
#: Short fits, alternating between cases (the defaults run 1,000 and 12,000 steps).
MRI_ITERATIONS, CT_ITERATIONS = (150, 300), (300, 1200)
SEEDS = 3
#: A test slice also fitted with the MRI preset's full number of steps, at these settings (too slow for more here).
DEFAULT_LENGTH_SLICE, DEFAULT_LENGTH_MRI = MR_TEST[1], ((4, "equispaced"), (8, "equispaced"))
SNR = 30.0
PHOTONS = 1e5
CT_PIXEL_MM = 6.0  # 3 mm voxels, reconstructed on a grid twice as coarse
TARGET_SENSITIVITY = 0.8
MISFIT_GRID = (0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, math.inf)
DISAGREEMENT_GRID = (0.5, 0.7, 1.0, 1.2, 1.4, 1.5, 1.6, 1.7, 1.8, 2.0, 2.5, 3.0, math.inf)


@dataclass
class Case:
    """One slice, one setting, one fit; the figures filled in by :func:`run_case`."""

    name: str
    modality: str
    slice: int
    half: str
    setting: str
    iterations: int
    seed: int
    misfit: float = math.nan
    disagreement: float | None = None
    psnr: float = math.nan
    psnr_baseline: float = math.nan
    seconds: float = math.nan
    noise_floor: float | None = None

    @property
    def below(self) -> bool:
        return self.psnr < self.psnr_baseline

    @property
    def excess(self) -> float:
        """The misfit beyond the measurements' noise, as the check computes it (the misfit where the floor is
        unknown: CT)."""
        return rc.SliceReconstructionCheck(self.slice, self.misfit, self.disagreement, self.noise_floor).excess


def _pad(volume: np.ndarray, fill: float) -> np.ndarray:
    out = np.full((volume.shape[0], *PADDED), fill, np.float32)
    h, w = min(volume.shape[1], PADDED[0]), min(volume.shape[2], PADDED[1])
    out[:, :h, :w] = volume[:, :h, :w]
    return out


def _block(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    return image[:h * factor, :w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3)).astype(np.float32)


def load_slices(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The MR volume ``(D, 96, 120)`` (magnitudes) and the CT volume ``(D, 96, 120)`` (HU)."""
    mr = np.maximum(read_volume(data / MR_FILE).array, 0.0)
    ct = read_volume(data / CT_FILE).array
    return _pad(mr, 0.0), _pad(ct, -1000.0)


def cases(quick: bool) -> list[Case]:
    """Every case, in a fixed order (MRI first)."""
    out = []
    if quick:
        return [Case("quick MRI", "MR", MR_CALIBRATION[0], "calibration", "MRI 4x equispaced", 10, 0),
                Case("quick MRI 8x", "MR", MR_TEST[0], "test", "MRI 8x random", 10, 1),
                Case("quick CT", "CT", CT_CALIBRATION[0], "calibration", "CT 30 views", 20, 0),
                Case("quick CT 60", "CT", CT_TEST[0], "test", "CT 60 views", 20, 1)]
    k = 0
    for acceleration, mask, _ in MRI_SETTINGS:
        for index in (*MR_CALIBRATION, *MR_TEST):
            half = "calibration" if index in MR_CALIBRATION else "test"
            setting = f"MRI {acceleration}x {mask}"
            out.append(Case(f"MR[{index}] {setting}", "MR", index, half, setting, MRI_ITERATIONS[k % 2], k % SEEDS))
            k += 1
    for acceleration, mask in DEFAULT_LENGTH_MRI:  # the preset's full fit: scored apart, chooses nothing
        setting = f"MRI {acceleration}x {mask}"
        out.append(Case(f"MR[{DEFAULT_LENGTH_SLICE}] {setting} default steps", "MR", DEFAULT_LENGTH_SLICE, "default",
                        setting, resolve("reconstruct/mri").iterations, 0))
    k = 0
    for views in CT_VIEWS:
        for iterations in CT_ITERATIONS:
            for index in (*CT_CALIBRATION, *CT_TEST):
                half = "calibration" if index in CT_CALIBRATION else "test"
                setting = f"CT {views} views"
                out.append(Case(f"CT[{index}] {setting} {iterations} steps", "CT", index, half, setting, iterations,
                                k % SEEDS))
                k += 1
    return out


def measurements(case: Case, mr: np.ndarray, ct: np.ndarray, quick: bool
                 ) -> tuple[torch.Tensor, dd_medical.Simulation]:
    """The noisy measurements of ``case`` and its (noise-free) simulation."""
    rng = np.random.default_rng(1000 + 17 * case.slice + case.seed)
    factor = 3 if quick else 2
    if case.modality == "MR":
        acceleration, mask, centre = next(s for s in MRI_SETTINGS if case.setting == f"MRI {s[0]}x {s[1]}")
        image = _block(mr[case.slice], factor)[None]
        sim = dd_medical.simulate(image, "mri", modality="MR", acceleration=acceleration, center_fraction=centre,
                                  mask_type=mask, seed=case.seed)
        sigma = float(image[0][mr_body_mask(image[0])].mean()) / SNR  # of the complex value
        sampled = (sim.operator.mask != 0).float()[..., None]
        noise = torch.from_numpy(rng.normal(0.0, sigma / math.sqrt(2), sim.measurements.shape).astype(np.float32))
        return sim.measurements + noise * sampled, sim
    views = int(case.setting.split()[1])
    image = _block(ct[case.slice], 2) if quick else ct[case.slice]
    sim = dd_medical.simulate(image[None], "ct", modality="CT", views=views, downsample=2)
    noisy, _ = measure(sim.measurements.numpy(), PHOTONS, CT_PIXEL_MM, rng)
    return torch.from_numpy(noisy), sim


def run_case(case: Case, mr: np.ndarray, ct: np.ndarray, quick: bool, device: str) -> Case:
    """Fit ``case`` and fill in its figures."""
    y, sim = measurements(case, mr, ct, quick)
    task = "reconstruct/mri" if case.modality == "MR" else "reconstruct/ct"
    config = resolve(task, iterations=case.iterations, seed=case.seed)
    if quick:
        config = replace(config, channels=8, blocks=3)
    t0 = time.perf_counter()
    image, check = dd_medical.reconstruct(y, sim.operator, config=config, device=device, progress=False,
                                          report=True)
    seconds = time.perf_counter() - t0
    span = float(sim.reference.max() - sim.reference.min())
    ours = float(psnr(image, sim.reference, span)[0])
    theirs = float(psnr(dd_medical.baseline(y, sim.operator), sim.reference, span)[0])
    (s,) = check.slices
    return replace(case, misfit=s.misfit, disagreement=s.disagreement, psnr=ours, psnr_baseline=theirs,
                   seconds=seconds, noise_floor=s.noise_floor)


def flagged(case: Case, max_misfit: float, max_disagreement: float) -> bool:
    """The check's rule with these limits (the misfit's excess over the noise against ``max_misfit``)."""
    return case.excess > max_misfit or (case.disagreement is not None and case.disagreement > max_disagreement)


def score(group: list[Case], max_misfit: float, max_disagreement: float) -> dict:
    """Counts, sensitivity (flagged among the slices below their baseline) and false-alarm rate (among the rest)."""
    below = [c for c in group if c.below]
    others = [c for c in group if not c.below]
    hits = sum(flagged(c, max_misfit, max_disagreement) for c in below)
    alarms = sum(flagged(c, max_misfit, max_disagreement) for c in others)
    missed = [c.psnr_baseline - c.psnr for c in below if not flagged(c, max_misfit, max_disagreement)]
    return {"slices": len(group), "below": len(below), "flagged_below": hits, "flagged_others": alarms,
            "sensitivity": hits / len(below) if below else None,
            "false_alarm_rate": alarms / len(others) if others else None,
            "largest_missed_shortfall_db": round(max(missed), 2) if missed else None}


def _best(rows: list[dict], limit: str) -> dict:
    """The row with the fewest false alarms among those flagging at least :data:`TARGET_SENSITIVITY` (else the most
    sensitive); ties: the more sensitive, then the larger ``limit``."""
    def key(row: dict) -> tuple:
        sens = row["sensitivity"] if row["sensitivity"] is not None else 1.0
        far = row["false_alarm_rate"] if row["false_alarm_rate"] is not None else 0.0
        return (sens < TARGET_SENSITIVITY, far if sens >= TARGET_SENSITIVITY else 0.0, -sens, -row[limit])

    return min(rows, key=key)


def choose(calibration: list[Case]) -> tuple[float, float, dict[str, list[dict]]]:
    """The limits (see the module's docstring) and the scores of every candidate on the calibration half.

    The disagreement's limit is chosen first, on the calibration slices that have one (two or more decoders), by
    itself: the misfit cannot guard what the decoders fill in (fewer samples are easier to explain, so a higher
    acceleration lowers it). Then the misfit's limit, on every calibration slice, with that disagreement limit.
    """
    spread = [c for c in calibration if c.disagreement is not None]
    by_spread = [{"max_disagreement": d, **score(spread, math.inf, d)} for d in DISAGREEMENT_GRID]
    max_disagreement = _best(by_spread, "max_disagreement")["max_disagreement"] if spread else math.inf
    by_misfit = [{"max_misfit": m, "max_disagreement": max_disagreement, **score(calibration, m, max_disagreement)}
                 for m in MISFIT_GRID]
    return _best(by_misfit, "max_misfit")["max_misfit"], max_disagreement, {"disagreement": by_spread,
                                                                            "misfit": by_misfit}


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"


def summarise(done: list[Case], max_misfit: float, max_disagreement: float) -> dict:
    """Scores per half and modality with the given limits."""
    out = {}
    for half in ("calibration", "test", "default"):
        group = [c for c in done if c.half == half]
        if not group:
            continue
        out[half] = score(group, max_misfit, max_disagreement)
        for modality in ("MR", "CT") if half != "default" else ():
            out[f"{half} {modality}"] = score([c for c in group if c.modality == modality], max_misfit,
                                              max_disagreement)
    return out


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _shortfall(db: float | None) -> str:
    return "none" if db is None else f"{db:.2f} dB below"


def render(record: dict) -> str:
    """The generated block of ``docs/reconstruction.md``."""
    limits = record["limits"]
    lines = ["| slices | setting | below their baseline | flagged among those (sensitivity) | "
             "flagged among the others (false alarms) | largest shortfall not flagged |", "|---|---|---|---|---|---|"]
    names = {"calibration": "calibration half (chose the limits)", "test": "test half, all",
             "test MR": "test half, MRI (misfit and disagreement)", "test CT": "test half, CT (misfit only)",
             "default": "a test slice, the MRI preset's full fit"}
    for key, name in names.items():
        if key not in record["results"]:
            continue
        s = record["results"][key]
        settings = {"calibration": "MRI and CT", "test": "MRI and CT", "test MR": "MRI", "test CT": "CT",
                    "default": ", ".join(f"{a}x {m}" for a, m in DEFAULT_LENGTH_MRI)}[key]
        lines.append(f"| {name} | {settings} | {s['below']} of {s['slices']} | {s['flagged_below']} "
                     f"({_percent(s['sensitivity'])}) | {s['flagged_others']} of {s['slices'] - s['below']} "
                     f"({_percent(s['false_alarm_rate'])}) | {_shortfall(s['largest_missed_shortfall_db'])} |")
    lines += ["", f"Limits chosen on the calibration half: data misfit {100 * limits['max_misfit']:g}%, "
              f"disagreement {100 * limits['max_disagreement']:g}%. {record['scale']} Machine: "
              f"`{record['machine']}`. Re-run: `{record['command']}`. Source: "
              f"`benchmarks/measured/{RECORD.name}`."]
    return "\n".join(lines)


def write_docs(record: dict, path: Path = DOCS) -> bool:
    """Rewrite the generated block of ``path`` from ``record``; whether it changed."""
    text = path.read_text()
    start_mark, end_mark = f"<!-- {BLOCK}:start -->", f"<!-- {BLOCK}:end -->"
    start, end = text.index(start_mark) + len(start_mark), text.index(end_mark)
    new = text[:start] + "\n" + render(record) + "\n" + text[end:]
    if new != text:
        path.write_text(new)
    return new != text


def _load_cache(path: Path | None) -> dict[str, Case]:
    if path is None or not path.exists():
        return {}
    return {c["name"]: Case(**c) for c in map(json.loads, path.read_text().splitlines()) if c}


def _command(argv: list[str] | None) -> list[str]:
    """The command line recorded: this script and its arguments, without ``--cache`` (it only resumes a run)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--cache" in args:
        at = args.index("--cache")
        del args[at:at + 2]
    return [str(Path(__file__).resolve()), *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny decoders, a few steps, 4 cases")
    parser.add_argument("--data", type=Path, default=SHARED / "ct_body_j2k_nifti",
                        help="the folder holding the shared example_mr_sm.nii.gz and example_ct_sm.nii.gz")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", default=None, help=json_help(f"reconstruction_check_{SIZE}"))
    parser.add_argument("--cache", type=Path, default=None, help="a JSON-lines file of finished cases (resume)")
    parser.add_argument("--docs", action="store_true",
                        help=f"only rewrite the generated block of docs/reconstruction.md from {RECORD.name}")
    args = parser.parse_args(argv)
    if args.docs:
        changed = write_docs(json.loads(RECORD.read_text()))
        print("docs/reconstruction.md " + ("updated" if changed else "already up to date"))
        return 0
    torch.manual_seed(0)
    print(f"machine: {machine_description(args.device)}", flush=True)
    mr, ct = load_slices(args.data)
    cache = _load_cache(args.cache)
    done = []
    t0 = time.perf_counter()
    for case in cases(args.quick):
        if case.name in cache:
            done.append(cache[case.name])
            continue
        case = run_case(case, mr, ct, args.quick, args.device)
        done.append(case)
        if args.cache is not None:
            with args.cache.open("a") as f:
                f.write(json.dumps(asdict(case)) + "\n")
        spread = "-" if case.disagreement is None else f"{case.disagreement:.3f}"
        print(f"{case.name:40s} {case.iterations:5d} steps  misfit {case.misfit:.4f} (beyond noise {case.excess:.4f})  "
              f"disagreement {spread:>6s}  "
              f"PSNR {case.psnr:6.2f} vs {case.psnr_baseline:6.2f}{'  BELOW' if case.below else ''}  "
              f"{case.seconds:5.1f} s", flush=True)
    total = time.perf_counter() - t0
    calibration = [c for c in done if c.half == "calibration"]
    max_misfit, max_disagreement, grid = choose(calibration)
    results = summarise(done, max_misfit, max_disagreement)
    module = summarise(done, rc.MAX_MISFIT, rc.MAX_DISAGREEMENT)
    for key, s in results.items():
        print(f"{key:18s} below {s['below']:2d}/{s['slices']:2d}  sensitivity {_percent(s['sensitivity']):>4s}  "
              f"false alarms {s['flagged_others']}/{s['slices'] - s['below']} ({_percent(s['false_alarm_rate'])})")
    print(f"chosen limits: misfit {max_misfit}, disagreement {max_disagreement} (module: {rc.MAX_MISFIT}, "
          f"{rc.MAX_DISAGREEMENT}); {total:.0f} s of fitting", flush=True)
    name = f"reconstruction_check_{SIZE}" + ("_quick" if args.quick else "")
    json_file = json_path(args.json, name, args.device)
    if json_file is not None:
        seconds = sum(c.seconds for c in done)
        write_json(json_file, dict(
            title="The reconstruction check's flag against slices below their cheap baseline"
                  + (" (quick)" if args.quick else ""),
            topic="reconstruction", what=(__doc__ or "").split("\n\n", 2)[2].strip(),
            machine=machine_tag(args.device), machine_note="2-core CPU, shared (another benchmark ran on the other "
                                                           "core); one torch thread",
            source="benchmarks/reconstruction_check.py",
            scale=f"A small-scale study: {len(done)} slice fits ({sum(c.below for c in done)} below their "
                  f"baseline), {len(MR_CALIBRATION) + len(MR_TEST)} MR and {len(CT_CALIBRATION) + len(CT_TEST)} "
                  f"CT slices of one volume each at {SIZE} px, short fits (and "
                  f"{sum(c.half == 'default' for c in done)} at the MRI preset's length), {seconds / 60:.0f} min of "
                  "one CPU thread.",
            limits={"max_misfit": _finite(max_misfit), "max_disagreement": _finite(max_disagreement),
                    "target_sensitivity": TARGET_SENSITIVITY},
            module_limits={"max_misfit": rc.MAX_MISFIT, "max_disagreement": rc.MAX_DISAGREEMENT},
            results=results, results_with_module_limits=module,
            grid={name: [{k: _finite(v) if isinstance(v, float) and k.startswith("max_") else v
                          for k, v in row.items()} for row in rows] for name, rows in grid.items()},
            settings={"mri": [list(s) for s in MRI_SETTINGS], "ct_views": list(CT_VIEWS),
                      "mri_iterations": list(MRI_ITERATIONS), "ct_iterations": list(CT_ITERATIONS), "snr": SNR,
                      "photons": PHOTONS, "mr_slices": {"calibration": MR_CALIBRATION, "test": MR_TEST},
                      "ct_slices": {"calibration": CT_CALIBRATION, "test": CT_TEST}, "size": SIZE},
            cases=[{**asdict(c), "below": c.below, "flagged": flagged(c, max_misfit, max_disagreement)}
                   for c in done]), args.device, _command(argv))
        print(f"wrote {json_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
