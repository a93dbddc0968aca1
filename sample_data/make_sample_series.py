"""Regenerate ``sample_data/ct_phantom/``: the dd-medical CT phantom as a small DICOM series.

Run from anywhere: ``python sample_data/make_sample_series.py`` (replaces the folder). The series is
8 axial slices of 128x128 int16 CT (0.7 mm pixels, 2.5 mm slices), a new anonymous study, < 2 MB in total.
UIDs and dates are new on every run; the pixel values are the same for the same seed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from dd_medical.phantom import write_phantom_series  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "ct_phantom", help="output folder (replaced)")
    parser.add_argument("--depth", type=int, default=8, help="number of slices")
    parser.add_argument("--size", type=int, default=128, help="rows and columns per slice")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (lesion and vessel positions)")
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    files = write_phantom_series(args.out, depth=args.depth, size=args.size, seed=args.seed)
    total = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files, {total / 1e6:.2f} MB, to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
