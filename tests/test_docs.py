"""The user's manual: a short README whose first screen says what this is, shows the picture and gives the three
commands; results rendered from data and up to date with it; no hand-typed figure in the prose."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
THREE_COMMANDS = ["pip install .", "dd-medical demo", "python -m pytest -q"]
#: A measured figure in prose: a number with a unit of quality or speed.
FIGURE = re.compile(r"\b\d+(\.\d+)?\s*(dB|x faster|slices/s|ms per)")


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_generated(text: str) -> str:
    return re.sub(r"<!-- (\w+):start -->.*?<!-- \1:end -->", "", text, flags=re.S)


def test_the_readme_is_short_and_its_first_screen_has_the_picture_and_the_three_commands():
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024
    first_screen = "\n".join(text.splitlines()[:60])
    assert "untrained Deep Decoder" in first_screen and "before_after.png" in first_screen
    for command in THREE_COMMANDS:
        assert command in first_screen
    assert (ROOT / "docs" / "images" / "before_after.png").is_file()


def test_the_install_command_is_the_user_install_and_the_extras_table_matches_pyproject():
    """A user installs no extras by default; the README's table names every extra and what it really installs."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml with tomllib")
    text = README.read_text()
    block = re.search(r"## Install.*?```bash\n(.*?)```", text, flags=re.S).group(1).splitlines()
    assert block[0].split("#")[0].strip() == "pip install ."
    assert "python -m pytest -q" in block[2] and '".[dev]"' in block[2]  # the tests say what they need
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, flags=re.M))
    assert set(rows) == set(extras)
    for name, requirements in extras.items():
        packages = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}
        named = {p.strip().lower() for p in rows[name].split(",")} - {"..."}
        assert named <= packages, f"{name}: the README names {sorted(named - packages)}, not in pyproject.toml"
        if name != "dev":  # dev is summarised; the others are listed in full
            assert named == packages, f"{name}: pyproject.toml installs {sorted(packages)}"


def test_the_results_and_generated_blocks_are_up_to_date_with_the_measured_json():
    assert _report().main(["--check"]) == 0, "run: python benchmarks/report.py"


def test_the_report_renders_every_record_with_its_machine_and_command():
    report = _report()
    records = report.load_records()
    assert len(records) >= 20 and {r["topic"] for r in records} >= set(report.TOPICS)
    results = (ROOT / "docs" / "results.md").read_text()
    for record in records:
        assert record["file"] in results
        assert record["machine"] and record["command"]


@pytest.mark.parametrize("path", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_no_hand_typed_figure_in_the_prose(path):
    if path.name == "results.md":
        return  # generated as a whole
    prose = _without_generated(path.read_text())
    found = [m.group(0) for m in FIGURE.finditer(prose)]
    assert not found, f"{path.name}: figures belong in benchmarks/measured/*.json: {found}"


def test_every_page_of_the_manual_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in nav, f"{page.name} is not in mkdocs.yml's nav"
