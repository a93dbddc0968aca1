"""Which machine and which command produced a benchmark's JSON, and file names after the machine.

Every ``bench_*.py`` writes its ``--json`` through :func:`write_json`: the object :func:`envelope` builds
(``machine``, ``machine_tag``, ``command``, ``date``, then the benchmark's own keys, or its list of rows under
``rows``). ``--json auto`` names the file after the benchmark and the machine (:func:`json_path`):
``benchmarks/measured/<bench>_<machine tag>.json``, e.g. ``quality_h200.json`` or ``speed_cpu-2core.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

from dd_medical.pipeline import resolve_device

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "benchmarks" / "measured"

#: Words of a GPU's name that say who makes it or which product line it is in, not which chip it is.
VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro", "amd", "ati", "radeon", "instinct", "intel", "corporation"}
#: Words that describe a board (memory, form factor, interconnect) rather than the chip: "NVIDIA H100 80GB HBM3",
#: "NVIDIA A100-SXM4-80GB", "NVIDIA H100 PCIe", "NVIDIA H200 NVL".
_BOARD_WORD = re.compile(r"\d+(\.\d+)?[gmt]i?b|hbm\d*e?|sxm\d*|pcie|nvl|nvlink|oam|mxm")


def _gpu_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev)


def gpu_tag(name: str) -> str:
    """A GPU's model name as a short, file-name-safe tag: ``"NVIDIA H200"`` -> ``"h200"``, ``"NVIDIA H100 80GB
    HBM3"`` -> ``"h100"``, ``"NVIDIA GeForce RTX 4090"`` -> ``"rtx-4090"``; ``"gpu"`` if nothing is left."""
    words = []
    for word in re.split(r"[\s_\-/()]+", name.lower()):
        if word == "mig":  # "NVIDIA A100-SXM4-40GB MIG 1g.5gb": a slice of the chip named before it
            break
        if word and word not in VENDOR_WORDS and not _BOARD_WORD.fullmatch(word):
            words.append(word)
    tag = re.sub(r"[^a-z0-9.]+", "-", "-".join(words)).strip("-.")
    return tag or "gpu"


def machine_tag(device: str | torch.device = "auto") -> str:
    """A short, file-name-safe tag of the machine a benchmark runs on with ``device``: the GPU's model for a CUDA
    device (:func:`gpu_tag`, e.g. ``"h200"``), else ``"cpu-<N>core"`` with N = ``os.cpu_count()``. ``"auto"`` is
    resolved as the package does (:func:`dd_medical.pipeline.resolve_device`)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return gpu_tag(_gpu_name(dev))
    return f"cpu-{os.cpu_count()}core"


def machine_description(device: str | torch.device = "auto") -> str:
    """A human line: architecture, CPU threads (and how many torch uses), torch version, the GPU if ``device`` is
    one, e.g. ``"x86_64, 2 CPU threads (torch uses 2), torch 2.5.1, GPU NVIDIA H200 (cuda, CUDA 12.4)"``."""
    dev = resolve_device(device)
    text = (f"{platform.machine() or platform.processor() or 'unknown architecture'}, {os.cpu_count()} CPU threads "
            f"(torch uses {torch.get_num_threads()}), torch {torch.__version__}")
    if dev.type == "cuda":
        return text + f", GPU {_gpu_name(dev)} ({dev}, CUDA {torch.version.cuda})"
    return text + ", device cpu"


def json_path(value: Path | str | None, bench: str, device: str | torch.device = "auto") -> Path | None:
    """Where ``--json`` writes: ``None`` stays ``None``; the literal ``auto`` becomes
    ``benchmarks/measured/<bench>_<machine_tag(device)>.json`` (in this repository); any other path is returned
    unchanged."""
    if value is None:
        return None
    if str(value) == "auto":
        return MEASURED / f"{bench}_{machine_tag(device)}.json"
    return Path(value)


def _relative(arg: str) -> str:
    """``arg`` with a path in it (absolute, or existing relative to the working directory) made relative to the
    repository, when it is inside it; ``--option=path`` too."""
    prefix, _, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
    if not value:
        return arg
    path = Path(value)
    try:
        if not (path.is_absolute() or path.exists()):
            return arg
        rel = path.resolve().relative_to(ROOT).as_posix()
    except (OSError, ValueError):  # not a path (too long a name, say) or outside the repository
        return arg
    return f"{prefix}={rel}" if prefix else rel


def command_line(argv: list[str] | None = None) -> str:
    """``"python " + argv`` (default ``sys.argv``), paths relative to the repository where possible, each argument
    quoted for a shell when needed: the command that re-runs the benchmark from the repository's root."""
    argv = sys.argv if argv is None else argv
    return "python " + " ".join(shlex.quote(_relative(str(a))) for a in argv)


def envelope(content: list | dict, device: str | torch.device = "auto", argv: list[str] | None = None) -> dict:
    """The object a benchmark writes: ``machine`` (:func:`machine_description`), ``machine_tag``
    (:func:`machine_tag`), ``command`` (:func:`command_line` of ``argv``, default ``sys.argv``), ``date`` (ISO, the
    local date), then the benchmark's content: a dict's keys at top level (a key it has itself, e.g. its own
    ``machine``, wins), a list under ``rows``."""
    head = {"machine": machine_description(device), "machine_tag": machine_tag(device),
            "command": command_line(argv), "date": datetime.date.today().isoformat()}
    if isinstance(content, dict):
        return {**head, **content}
    return {**head, "rows": list(content)}


def write_json(path: Path | None, content: list | dict, device: str | torch.device = "auto",
               argv: list[str] | None = None) -> None:
    """Write ``envelope(content, device, argv)`` to ``path`` (its folder made if missing); nothing if ``None``."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(envelope(content, device, argv), indent=2) + "\n")


def json_help(bench: str, what: str = "write the rows as JSON here") -> str:
    """The help text of a benchmark's ``--json``: ``what`` it writes, and what ``auto`` means."""
    return (f"{what}, with the machine and the command; auto: benchmarks/measured/{bench}_<machine>.json "
            "(<machine>: the GPU's model, e.g. h200, or cpu-<N>core)")
