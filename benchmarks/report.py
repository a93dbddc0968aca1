"""Render the measured results into the documentation: ``docs/results.md``, its figures, and the headline table of
``README.md``. Every figure in them comes from ``benchmarks/measured/*.json``; nothing is typed by hand.

    python benchmarks/report.py            # rewrite docs/results.md, docs/images/results/*.png, generated blocks
    python benchmarks/report.py --check    # exit 1 if any of them is out of date with the JSON (text only)

It also fills the generated blocks of ``README.md`` (the picture, the headline table), ``docs/index.md`` and
``docs/reconstruction.md``. A record is a JSON object with ``title``, ``topic``, ``what``, ``machine``,
``command``, ``source``, ``columns`` and ``rows`` (lists of cells); the raw outputs of the benchmarks (their own
``--json`` formats, ``--json auto`` naming them after the machine) sit beside the records and feed the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks" / "measured"
RESULTS = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "images" / "results"
README = ROOT / "README.md"
TOPICS = {"denoising": "Denoising", "uncertainty": "Uncertainty", "speed": "Speed", "reconstruction": "Reconstruction",
          "codec": "The codec", "tried": "What was tried and lost"}
MACHINES = {
    "cpu-2core": "the development machine's 2-core x86-64 CPU (AMD EPYC or Intel Xeon), torch 2.13 CPU build; times "
                 "inflated when other jobs shared it",
    "h200": "one NVIDIA H200 (141 GB), torch 2.11 + CUDA 13; several jobs shared the card in most runs (times "
            "inflated)",
}


def load_records() -> list[dict]:
    """Every record in ``benchmarks/measured`` (JSON objects with a ``title``), sorted by file name."""
    records = []
    for path in sorted(MEASURED.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "title" in data and "rows" in data:
            records.append({**data, "file": path.name})
    return records


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|") if text is not None else ""


def table(columns: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def number(cell: str) -> float:
    """The first number in a cell such as ``"**35.17** / 0.901"``."""
    match = re.search(r"-?\d+(\.\d+)?", cell.replace("*", "").replace(",", ""))
    if match is None:
        raise ValueError(f"no number in {cell!r}")
    return float(match.group())


def plain(cell: str) -> str:
    return cell.replace("**", "").strip()


def _record(records: list[dict], file: str) -> dict:
    for record in records:
        if record["file"] == file:
            return record
    raise KeyError(file)


def _row(record: dict, first: str) -> list[str]:
    for row in record["rows"]:
        if plain(row[0]).startswith(first):
            return row
    raise KeyError(f"{record['file']}: no row starting with {first!r}")


def _best(record: dict, column: int, methods: list[str]) -> tuple[str, str]:
    """``(method, cell)`` of the highest number in ``column`` among the rows starting with ``methods``."""
    rows = [_row(record, m) for m in methods]
    row = max(rows, key=lambda r: number(r[column]))
    return plain(row[0]), plain(row[column])


def headline(records: list[dict]) -> str:
    """The README's small table: dd-medical against the strongest baseline measured, per task."""
    rows = []
    scanner = _record(records, "quality_lowdose_128_cpu-2core.json")
    columns = scanner["columns"]
    psnr, kept = columns.index("PSNR wide (dB)"), columns.index("lesion contrast kept (%)")
    for dose in dict.fromkeys(r[0] for r in scanner["rows"]):
        mine = {r[1]: r for r in scanner["rows"] if r[0] == dose}
        fair = [m for m in ("BM3D (estimated PSD)", "BM4D (estimated PSD)", "TV (calibrated)",
                            "anisotropic diffusion (calibrated)") if m in mine]
        best = max(fair, key=lambda m: number(mine[m][psnr]))
        ours = mine["dd-medical"]
        rows.append([f"Low-dose CT, simulated scan, {dose}, 128 px, {ours[2]} stacks: PSNR against the anatomy (dB); "
                     "lesion contrast kept (%)", f"{ours[psnr]}; {ours[kept]}",
                     f"{best}: {mine[best][psnr]}; {mine[best][kept]}", scanner["machine"]])
    spread = _record(records, UNCERTAINTY)
    scored = {"white noise of 100 HU": next(row for row in spread["rows"] if row[0].startswith("another noise"))}
    scored |= {f"low-dose, against {row[0].rsplit(', against ', 1)[1]}": row for row in spread["rows"]
               if row[0].startswith("low-dose")}
    rows.append(["Uncertainty map on CT noise its calibration never saw (128 px): Spearman of predicted SD and "
                 "actual error per voxel; the 95% interval covers (%)",
                 "; ".join(f"{r[1]}; {r[4]} ({what})" for what, r in scored.items()),
                 "BM3D, BM4D, TV: no uncertainty output", spread["machine"]])
    low = _record(records, "denoising_lowdose_ct_small_cpu-2core.json")
    base = _best(low, 4, ["BM3D", "NLM", "TV", "anisotropic"])
    rows.append(["Low-dose CT (FBP of 2e4-photon counts), CT_small, PSNR / SSIM against the image",
                 plain(_row(low, "dd-medical")[4]), f"{base[0]}: {base[1]}", low["machine"]])
    lesion = _record(records, "denoising_phantom_lesions_cpu-2core.json")
    base = _best(lesion, 3, ["BM3D", "BM4D"])
    rows.append(["Phantom lesion contrast kept (HU of 15), white noise 25/255",
                 plain(_row(lesion, "dd-medical defaults")[3]), f"{base[0]}: {base[1]}", lesion["machine"]])
    clinical = _record(records, "denoising_clinical_512_h200.json")
    body = _row(clinical, "body CT 8x512")
    rows.append(["Real body CT, 512 px, white noise 25/255, PSNR / SSIM", plain(body[1]),
                 f"BM3D: {plain(body[6])}; BM4D: {plain(body[7])}", "h200 (decoder), cpu-2core (BM3D, BM4D)"])
    ct = _record(records, "reconstruction_ct_nocrime_256_h200.json")
    for name in ("ct_body_j2k", "693_UNCR"):
        row = _row(ct, name)
        rows.append([f"Sparse-view CT, 60 views, {plain(row[0])} at 256 px, PSNR / SSIM", plain(row[4]),
                     f"TV (oracle weight): {plain(row[3])}; FBP: {plain(row[2])}", ct["machine"]])
    mri = _record(records, "reconstruction_mri_decoders_128_cpu-2core.json")
    row = mri["rows"][0]
    rows.append([f"MRI 4x, {plain(row[0])}, PSNR / SSIM", plain(row[7]),
                 f"TV (oracle weight): {plain(row[3])}; {plain(row[2])}", mri["machine"]])
    codec = _record(records, "codec_512_h200.json")
    for row in codec["rows"]:
        if row[0].startswith("693_UNCR") and "40" in row[1]:
            rows.append([f"Codec, {plain(row[0])} at {plain(row[1])}, PSNR / SSIM", plain(row[3]),
                         f"bior4.4: {plain(row[5])}; Haar: {plain(row[4])}", codec["machine"]])
    speed = _record(records, "speed_gpu_512_variants_h200.json")
    row = _row(speed, "fast, defaults")
    rows.append(["Speed, 512 px, to the reference's PSNR: times faster than one slice after another",
                 plain(row[4]) + "x", "the reference way (sequential, 2,000 iterations): 1x", speed["machine"]])
    return table(["task", "dd-medical (defaults)", "strongest baseline measured", "machine"], rows)


def _gap(a: str, b: str) -> str:
    return f"{number(a) - number(b):+.2f} dB"


def limits(records: list[dict]) -> str:
    """Reconstruction's default against the cheap baseline and an oracle-tuned TV, per measured setting, with the
    differences in PSNR (the table of the reconstruction page)."""
    rows = []
    mri = _record(records, "reconstruction_mri_decoders_128_cpu-2core.json")
    for row in mri["rows"]:
        if row[1].startswith("MRI") and plain(row[7]) not in ("not run", "-"):
            baseline = plain(row[2]).split(" ", 1)
            rows.append([plain(row[0]), plain(row[1]), plain(row[7]), f"{baseline[0]} {baseline[1]}", plain(row[3]),
                         _gap(row[7], baseline[1]), _gap(row[7], row[3]), mri["machine"]])
    for file, size in (("reconstruction_ct_nocrime_128_cpu-2core.json", "128"),
                       ("reconstruction_ct_nocrime_256_h200.json", "256")):
        ct = _record(records, file)
        default = next(i for i, c in enumerate(ct["columns"]) if "default" in c)
        for row in ct["rows"]:
            rows.append([f"{plain(row[0])} {size} px", f"CT {row[1]} views (scanned on a finer grid)",
                         plain(row[default]), f"FBP {plain(row[2])}", plain(row[3]), _gap(row[default], row[2]),
                         _gap(row[default], row[3]), ct["machine"]])
    return table(["image", "setting", "dd-medical default", "cheap baseline", "TV-PDHG (oracle weight)",
                  "default - baseline", "default - TV", "machine"], rows)


def _tables(record: dict) -> list[str]:
    """A record's description and table, then its further tables (``tables``: ``{"what", "columns", "rows"}``), as
    Markdown lines."""
    parts = [record["what"], "", table(record["columns"], record["rows"]), ""]
    for extra in record.get("tables", []):
        parts += [extra["what"], "", table(extra["columns"], extra["rows"]), ""]
    return parts


def _section(record: dict) -> str:
    parts = [f"### {record['title']}", "", *_tables(record)]
    parts.append(f"Machine: `{record['machine']}`. Re-run: `{record['command']}`. Source: `{record['file']}` "
                 f"({record['source']}).")
    return "\n".join(parts)


def _tried(record: dict) -> str:
    parts = [f"## {TOPICS['tried']}", "", record["what"], ""]
    columns = record["columns"][1:]
    for topic in dict.fromkeys(row[0] for row in record["rows"]):
        parts += [f"### {TOPICS.get(topic, topic)}", "", table(columns, [r[1:] for r in record["rows"]
                                                                          if r[0] == topic]), ""]
    parts.append(f"Source: `{record['file']}` ({record['source']}).")
    return "\n".join(parts)


def render(records: list[dict], figures: list[tuple[str, str, str]]) -> str:
    """``docs/results.md``. ``figures``: ``(topic, caption, path relative to docs/)``."""
    out = ["# Results", "",
           "<!-- Generated by benchmarks/report.py from benchmarks/measured/*.json: edit the JSON, not this page. -->",
           "", "Every figure on this page is rendered from the JSON records in `benchmarks/measured/`; each table "
           "names the machine, the command that re-runs it and the record it comes from. Oracles (a baseline whose "
           "parameter was picked against the ground truth) are named as such.", "", "Machines:", ""]
    out += [f"- `{name}`: {text}" for name, text in MACHINES.items()]
    out += ["", "## Headline results", "", headline(records), ""]
    for topic, title in TOPICS.items():
        chosen = sorted((r for r in records if r["topic"] == topic), key=lambda r: not r.get("lead", False))
        if topic == "tried":
            out += [_tried(r) + "\n" for r in chosen]
            continue
        out += [f"## {title}", ""]
        out += [f"![{caption}]({path})\n\n*{caption}*\n" for t, caption, path in figures if t == topic]
        out += [_section(r) + "\n" for r in chosen]
    return "\n".join(out).rstrip() + "\n"


def lowdose_figures(write: bool) -> list[tuple[str, str, str]]:
    """PSNR against time and per-method bars for the low-dose CT benchmark's raw output."""
    raw = json.loads((MEASURED / "quality_lowdose_ct_small_cpu-2core.json").read_text())
    rows = [r for r in raw["rows"] if r["status"] == "ok"]
    levels = sorted({r["level"] for r in rows}, reverse=True)
    figures = [("denoising", "Low-dose CT (CT_small.dcm): PSNR against the image versus time per slice, by method "
                "and dose (raw output quality_lowdose_ct_small_cpu-2core.json)", "images/results/lowdose_time.png"),
               ("denoising", "Low-dose CT (CT_small.dcm): PSNR against the image, by method and dose",
                "images/results/lowdose_bars.png")]
    if not write:
        return figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    for marker, level in zip("os", levels, strict=False):
        for method in methods:
            for r in rows:
                if r["method"] == method and r["level"] == level:
                    ax.scatter(max(r["seconds"], 1e-3), r["psnr_image"], marker=marker,
                               label=f"{method}, {level:.0e} photons")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per slice (2-core CPU)")
    ax.set_ylabel("PSNR against the image (dB)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(FIGURES / "lowdose_time.png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(levels)
    for k, level in enumerate(levels):
        values = [next(r["psnr_image"] for r in rows if r["method"] == m and r["level"] == level) for m in methods]
        ax.bar([i + k * width for i in range(len(methods))], values, width, label=f"{level:.0e} photons")
    ax.set_xticks([i + width / 2 for i in range(len(methods))], methods, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("PSNR against the image (dB)")
    ax.set_ylim(min(r["psnr_image"] for r in rows) - 1, max(r["psnr_image"] for r in rows) + 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "lowdose_bars.png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    return figures


UNCERTAINTY = "uncertainty_128_cpu-2core.json"


def uncertainty_figures(write: bool) -> list[tuple[str, str, str]]:
    """The uncertainty map's reliability diagram: per set, the actual RMS error against the predicted SD (deciles
    of the prediction, both relative to the noise)."""
    path = MEASURED / UNCERTAINTY
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    figures = [("uncertainty", "Reliability of the uncertainty map: actual RMS error against predicted SD, in deciles "
                "of the prediction, relative to the noise; on the diagonal the map is exact (raw output "
                f"{UNCERTAINTY})", "images/results/uncertainty_reliability.png")]
    if not write:
        return figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    low, top = float("inf"), 0.0
    for name, scores in record["results"].items():
        xs, ys = zip(*scores["reliability"], strict=True)
        ax.plot(xs, ys, "o-", label=name, markersize=4)
        low, top = min(low, *xs, *ys), max(top, *xs, *ys)
    ax.plot([low, top], [low, top], "k--", linewidth=1, label="ideal")
    ax.set_xscale("log")  # the sets span two decades: on linear axes the far one hides the rest
    ax.set_yscale("log")
    ax.set_xlabel("predicted SD / noise SD (RMS in each decile, log)")
    ax.set_ylabel("actual RMS error / noise SD (log)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "uncertainty_reliability.png", dpi=120, metadata={"Software": None})
    plt.close(fig)
    return figures


def uncertainty_block(records: list[dict]) -> str:
    """The uncertainty page's figures: the scores per set, and what the map showed where lesions lost contrast."""
    record = _record(records, UNCERTAINTY)
    out = _tables(record) + ["![reliability diagram](images/results/uncertainty_reliability.png)", "",
            "*Actual RMS error against the predicted SD, in deciles of the prediction, relative to the noise: on the "
            "diagonal the map is exact.*", "",
            f"Machine: `{record['machine']}`. Re-run: `{record['command']}`. Source: `{record['file']}`."]
    return "\n".join(out)


def readme_with(text: str, blocks: dict[str, str]) -> str:
    """A Markdown file's text with each generated block replaced."""
    for name, block in blocks.items():
        start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        start, end = text.index(start_mark) + len(start_mark), text.index(end_mark)
        text = text[:start] + "\n" + block + "\n" + text[end:]
    return text


def generated_blocks(records: list[dict]) -> dict[Path, dict[str, str]]:
    """Per Markdown file, its generated blocks (between ``<!-- name:start -->`` and ``<!-- name:end -->``)."""
    return {
        README: {"picture": _picture("docs/"),
                 "results": f"{headline(records)}\n\nEvery table, its machine and the command that re-runs it: "
                            "[docs/results.md](docs/results.md)."},
        ROOT / "docs" / "index.md": {"picture": _picture("")},
        ROOT / "docs" / "reconstruction.md": {"limits": limits(records)},
        ROOT / "docs" / "uncertainty.md": {"uncertainty": uncertainty_block(records)},
    }


def _picture(prefix: str) -> str:
    f = json.loads((MEASURED / "readme_figure_cpu-2core.json").read_text())
    image = prefix + f["image"].removeprefix("docs/")
    return (f"![noisy | dd-medical | difference]({image})\n\n*{f['what']} ({f['noise_hu']:g} HU): noisy | dd-medical "
            f"`{f['preset']}` | denoised minus clean (+-100 HU). PSNR {f['psnr_noisy']} -> {f['psnr_denoised']} dB, "
            f"SSIM {f['ssim_noisy']} -> {f['ssim_denoised']} on [-1000, 1000] HU; residual std "
            f"{f['residual_std_hu']} HU; {f['seconds']} s on {f['machine']}. Made by `{f['command']}`.*")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    records = load_records()
    pages = {RESULTS: render(records, lowdose_figures(write=not args.check) + uncertainty_figures(not args.check))}
    pages |= {path: readme_with(path.read_text(), blocks) for path, blocks in generated_blocks(records).items()}
    stale = [path for path, text in pages.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run python benchmarks/report.py)", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(pages[path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
