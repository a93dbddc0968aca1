"""The stopping rule against the best stop it could make: how much any rule could still gain.

Each case is denoised with the defaults (the discrepancy stop) and with the *oracle stop*: the same fit run to the
step cap, keeping for each slice the ensemble's estimate closest to the clean image at any checked step (every
``loss_every`` steps). No rule can do better than the oracle, which uses the clean image no rule has: the gap
between the two rows is all a better stop could gain. ``--variant NAME:key=value,...`` adds a row with those
``FitConfig`` fields (as ``bench_speed.py``'s).

Cases (``--cases``):

* ``white:IMAGE``: ``bench_speed.py``'s noisy slices, ``--copies`` copies of IMAGE (a DICOM file, a series folder's
  middle slice, or a pydicom test file's name) block-averaged 4x4 to 128 px (its air and padding included), white
  noise sigma 25/255 clipped at the [-1000, 1000] HU window, the padding constant. PSNR against the clean slice
  (all pixels), mean over the copies.
* ``lowdose:DATASET:DOSE``: ``lowdose.py``'s scanner simulation (Poisson counts, FBP) of DATASET (``ct_body_j2k``,
  ``ct_head_gantry_tilt``, ``693_UNCR``, ``eCT_Supplemental``, ``phantom``) at DOSE (``1e5`` or ``2e4`` photons per
  ray), ``--size`` px, the scan's noise seed ``--seed`` (``lowdose.py``'s seed S scans with 1000 S + 17). PSNR
  against the anatomy in the body, on the [-1000, 1000] and the soft-tissue [-160, 240] HU windows; the oracle keeps
  the estimate of highest PSNR on the first.

    python benchmarks/bench_stop.py --cases white:ct_head_gantry_tilt lowdose:ct_body_j2k:2e4 --json auto
    python benchmarks/bench_stop.py --quick          # a smoke run (a 48 px slice, small decoders)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dd_medical.core import fit as fitting  # noqa: E402
from dd_medical.core.config import FitConfig  # noqa: E402
from dd_medical.core.intensity import Window  # noqa: E402
from dd_medical.core.stopping import FixedSteps, LowestScore  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
COLUMNS = ["case", "stop", "PSNR (dB)", "PSNR soft tissue (dB)", "steps per slice", "s"]


@dataclass
class Case:
    """One stack to denoise: ``noisy`` and ``clean`` ``(D, H, W)`` in [0, 1] (the wide window), the ``mask`` the
    oracle scores, and ``score(result)``: the row's PSNR (and soft-tissue PSNR) of a [0, 1] result."""

    name: str
    noise: str
    noisy: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    score: object


class OracleStop(FixedSteps):
    """Keep each slice's ensemble mean of least squared error against ``clean`` (on ``mask``): the best stop."""

    def __init__(self, clean: np.ndarray, mask: np.ndarray) -> None:
        self.clean, self.mask = torch.from_numpy(clean).float(), torch.from_numpy(mask).float()

    def start(self, y, targets, image_shape, noise_sigma, indices, config):
        targets = super().start(y, targets, image_shape, noise_sigma, indices, config)
        self.target, self.weight = self.clean[indices][:, None].to(y.device), self.mask[indices][:, None].to(y.device)
        self.lowest = LowestScore(y.shape[0], (config.ensemble, *image_shape), y.device, float("inf"))
        self.frozen, self.stopped_at = self.lowest.members, self.lowest.at  # here: the step of the best estimate
        return targets

    def check(self, step, estimates, operator, y):
        members = estimates[:, :, 0]
        error = ((members.mean(dim=1).clamp(0, 1) - self.target) ** 2 * self.weight).flatten(1).sum(1) \
            / self.weight.flatten(1).sum(1).clamp_min(1)
        self.lowest.update(step, members, error, self.active)  # never stops: it runs to the cap
        return True

    def result(self, members):
        return self.frozen


@contextlib.contextmanager
def oracle_stop(case: Case) -> Iterator[list[OracleStop]]:
    """Within the block, every fit stops as :class:`OracleStop` does for ``case``; yields the rules made."""
    made: list[OracleStop] = []
    original = fitting.make_stopping

    def make(config: FitConfig, operator, y: torch.Tensor) -> OracleStop:
        made.append(OracleStop(case.clean, case.mask))
        return made[-1]

    fitting.make_stopping = make
    try:
        yield made
    finally:
        fitting.make_stopping = original


def white_case(image: str, copies: int, quick: bool) -> Case:
    from bench_speed import image_label, noisy_slices

    from dd_medical.metrics import psnr

    if not Path(image).exists() and (SHARED / image).is_dir():
        image = str(SHARED / image)  # a shared series by its folder's name
    clean, noisy = noisy_slices(48, copies, image, 1) if quick else noisy_slices(128, copies, image, 4)
    return Case(image_label(image), "white, 25/255 (clipped)", noisy, clean, np.ones(clean.shape, bool),
                lambda out: (float(np.mean(psnr(out, clean))), None))


def lowdose_case(dataset: str, dose: str, size: int, seed: int) -> Case:
    import lowdose

    cases = [c for c in lowdose.load_cases(size, 2, False, SHARED) if c.name == dataset]
    if not cases:
        raise SystemExit(f"lowdose:{dataset}: no such dataset (or {SHARED} missing): one of "
                         f"{', '.join(lowdose.DATASET_NAMES)}")
    case = cases[0]
    lowdose.prepare(case)
    line = lowdose.sinogram(case)
    scanned = lowdose.scan(case, line, None, 0)
    noisy = lowdose.WIDE.to_unit(lowdose.scan(case, line, lowdose.DOSES[f"{dose} photons"], seed))

    def score(out: np.ndarray) -> tuple[float, float]:
        s = lowdose.score(lowdose.WIDE.from_unit(out), case, scanned)
        return s["psnr_wide"], s["psnr_soft"]

    return Case(dataset, f"low-dose FBP, {dose} photons", noisy.astype(np.float32),
                lowdose.WIDE.to_unit(case.anatomy).astype(np.float32), case.body, score)


def parse_case(spec: str, args: argparse.Namespace) -> Case:
    kind, _, rest = spec.partition(":")
    if kind == "white" and rest:
        return white_case(rest, args.copies, args.quick)
    parts = rest.split(":")
    if kind == "lowdose" and len(parts) == 2 and parts[1] in ("1e5", "2e4"):
        return lowdose_case(parts[0], parts[1], args.size, args.seed)
    raise SystemExit(f"--cases {spec}: expected white:IMAGE or lowdose:DATASET:1e5|2e4")


def run(case: Case, stop: str, config: FitConfig, device: str) -> dict:
    """Denoise ``case`` with ``config`` (``stop`` ``"oracle"``: under :func:`oracle_stop`); the row."""
    from bench_speed import _StepsRun

    from dd_medical.pipeline import denoise_volume

    steps = _StepsRun()
    logger = logging.getLogger("dd_medical.pipeline")
    logger.addHandler(steps)
    level, logger.level = logger.level, logging.INFO
    t0 = time.perf_counter()
    try:
        with oracle_stop(case) if stop == "oracle" else contextlib.nullcontext([]) as rules:
            out = denoise_volume(case.noisy, config, device, progress=False, window=Window(0.0, 1.0))
    finally:
        logger.removeHandler(steps)
        logger.level = level
    seconds = time.perf_counter() - t0
    psnr, soft = case.score(np.clip(out, 0.0, 1.0))
    ran = [int(s) for rule in rules for s in rule.stopped_at] if rules else steps.steps
    return dict(case=case.name, noise=case.noise, stop=stop, psnr=psnr, psnr_soft=soft, steps=ran,
                seconds=seconds, slices=int(case.noisy.shape[0]), config=asdict(config))


def as_record(rows: list[dict], machine: str, size: int, copies: int) -> dict:
    """The rows as a record for ``benchmarks/report.py`` (topic ``denoising``)."""
    soft = any(r["psnr_soft"] is not None for r in rows)
    table = []
    for r in rows:
        steps = sorted(r["steps"])
        table.append([f"{r['case']}: {r['noise']}", r["stop"], f"{r['psnr']:.2f}"]
                     + ([f"{r['psnr_soft']:.2f}" if r["psnr_soft"] is not None else ""] if soft else [])
                     + [f"{steps[0]}-{steps[-1]}" if steps[0] != steps[-1] else str(steps[0]), f"{r['seconds']:.0f}"])
    what = ("How far the discrepancy stop is from the best stop any rule could make. Oracle: the same fit run to the "
            "step cap, keeping for each slice the estimate closest to the clean image (no rule has it: an upper "
            f"bound); its steps are where that estimate was. White: {copies} copies of a real slice block-averaged to "
            "128 px with white noise of 25/255 clipped at the window, PSNR against the clean slice. Low-dose: "
            f"lowdose.py's scanner simulation at {size} px, PSNR against the anatomy in the body ([-1000, 1000] HU, "
            "and the soft-tissue window), the oracle choosing on the first. Seconds: the whole stack.")
    kinds = {r["noise"].split(",")[0] for r in rows}
    title = "The stopping rule against the best possible stop (an oracle)" + \
        {"white": ": white noise, clipped air", "low-dose FBP": ": low-dose CT"}.get(kinds.pop() if len(kinds) == 1
                                                                                   else "", "")
    columns = COLUMNS if soft else [c for c in COLUMNS if c != "PSNR soft tissue (dB)"]
    return dict(title=title, topic="denoising", what=what, source="benchmarks/bench_stop.py", columns=columns,
                rows=table, raw=rows, machine=machine)


def main(argv: list[str] | None = None) -> None:
    from bench_speed import parse_overrides
    from machine import json_help, json_path, machine_description, machine_tag, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["white:ct_head_gantry_tilt"],
                        help="white:IMAGE or lowdose:DATASET:1e5|2e4 (see above)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="one more row with these FitConfig fields (repeatable)")
    parser.add_argument("--copies", type=int, default=4, help="white cases: copies of the slice, independent noise")
    parser.add_argument("--size", type=int, default=128, help="low-dose cases: image size in px")
    parser.add_argument("--seed", type=int, default=0,
                        help="low-dose cases: the scan's noise seed (lowdose.py's seed S scans with 1000 S + 17: "
                             "--seed 17 is its seed 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true", help="smoke run: one 48 px white case, small decoders")
    parser.add_argument("--json", type=Path, help=json_help("stop"))
    args = parser.parse_args(argv)
    variants = [parse_overrides(v) for v in args.variant]
    if args.quick:
        args.cases, args.copies = ["white:CT_small.dcm"], 2
    base = FitConfig(slab=1)
    if args.quick:
        base = replace(base, channels=16, blocks=3, iterations=60)
    cases = [parse_case(spec, args) for spec in args.cases]  # every case is checked before anything is fitted
    print(f"machine: {machine_description(args.device)}", flush=True)
    rows = []
    for case in cases:
        for stop, config in [("discrepancy (defaults)", base), ("oracle", base)] + \
                [(name, replace(base, **fields)) for name, fields in variants]:
            rows.append(run(case, stop, config, args.device))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
    path = json_path(args.json, "stop" + ("_quick" if args.quick else ""), args.device)
    if path is not None:
        write_json(path, as_record(rows, machine_tag(args.device), args.size, args.copies), args.device, argv)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
