"""The 3D Slicer plugin (plugin/): CLI module description, the CLI run as Slicer runs it, the scripted module's
files, the extension packaging, and ``dd_medical.api.denoise`` called as the plugin calls it.

No Slicer install is needed: the CLI runs as a subprocess on temporary .nrrd files, the XML is checked with the
CTK schema and the ``ctk-cli`` package, the scripted module is compiled and inspected with ``ast``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import os
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dd_medical.api import denoise
from dd_medical.errors import InputError
from dd_medical.metrics import psnr
from dd_medical.presets import STRENGTHS

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugin"
CLI_DIR = PLUGIN / "DeepDecoderDenoise"
CLI = CLI_DIR / "DeepDecoderDenoise.py"
XML = CLI_DIR / "DeepDecoderDenoise.xml"
MODULE_DIR = PLUGIN / "DeepDecoder"
MODULE = MODULE_DIR / "DeepDecoder.py"
UI = MODULE_DIR / "Resources" / "UI" / "DeepDecoder.ui"
LIB = MODULE_DIR / "DeepDecoderLib" / "logic.py"
ICON = MODULE_DIR / "Resources" / "Icons" / "DeepDecoder.png"
XSD = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "ctkCmdLineModule.xsd"

# Small, fast decoder for 48x48 slices (the presets are sized for 512x512 CT).
SMALL = {"iterations": "300", "channels": "24", "blocks": "4", "ensemble": "1", "device": "cpu"}
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-12.5, 30.25, 100.0)
_c, _s = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0)  # rotated 30 degrees about z


def phantom_hu(depth: int = 2, size: int = 48, sigma: float = 100.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-constant CT-like volume in HU and a noisy copy (Gaussian, ``sigma`` HU), both (D, H, W)."""
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    body = (xx / (0.45 * size)) ** 2 + (yy / (0.35 * size)) ** 2 < 1
    lesion = (xx - 5) ** 2 + (yy + 3) ** 2 < 25
    clean = np.where(body, 40.0, -1000.0) + np.where(lesion, 160.0, 0.0)
    clean = np.repeat(clean[None], depth, axis=0).astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape)
    return clean, noisy.astype(np.float32)


def psnr_hu(image: np.ndarray, clean: np.ndarray) -> float:
    """Mean PSNR (dB) over slices after mapping the clean volume's HU range to [0, 1]."""
    lo, hi = float(clean.min()), float(clean.max())
    unit = lambda v: np.clip((v - lo) / (hi - lo), 0, 1)  # noqa: E731
    return float(psnr(unit(image), unit(clean)).mean())


def write_nrrd(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        image.SetDirection(DIRECTION)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def cli_env() -> dict[str, str]:
    """Environment of the CLI subprocess: dd_medical importable from this checkout, one thread (shared CPU)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def slicer_command_line(values: dict[str, str], input_path: Path, output_path: Path) -> list[str]:
    """argv as Slicer builds it from the XML: every flagged parameter as ``--longflag value`` (a boolean as its bare
    flag, only when true; an optional image left unset, such as the uncertainty map, not at all), then the index
    parameters in index order."""
    from ctk_cli import CLIModule

    argv: list[str] = []
    indexed = []
    for param in CLIModule(str(XML)).parameters():
        if param.index is not None:
            indexed.append(param)
            continue
        value = values.get(param.name, param.default)
        if value in (None, ""):
            continue
        if param.typ == "boolean":
            argv += [param.longflag] if str(value).lower() == "true" else []
        else:
            argv += [param.longflag, str(value)]
    paths = {"inputVolume": str(input_path), "outputVolume": str(output_path)}
    argv += [paths[p.name] for p in sorted(indexed, key=lambda p: p.index)]
    return argv


def run_cli(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), *argv], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=str(CLI_DIR))


def load_cli_module(path: Path = CLI):
    spec = importlib.util.spec_from_file_location("DeepDecoderDenoise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the module description -----------------------------------------------------------------------------------


def test_xml_validates_against_the_ctk_schema():
    if not XSD.exists():
        pytest.skip(f"CTK schema not found at {XSD} (../shared is present in CI)")
    import xmlschema

    xmlschema.XMLSchema(str(XSD)).validate(str(XML))


def test_xml_parses_with_ctk_cli_and_declares_every_parameter():
    from ctk_cli import CLIArgumentParser, CLIModule

    module = CLIModule(str(XML))
    assert module.category == "Filtering.Denoising"
    assert module.title == "Deep Decoder Denoise"
    help_text = module.description.lower()
    assert "training data" in help_text and "low-contrast detail" in help_text and "slow on a cpu" in help_text
    params = {p.name: p for p in module.parameters()}
    assert set(params) == {"inputVolume", "outputVolume", "uncertaintyVolume", "strength", "iterations", "channels",
                           "blocks", "ensemble", "slab", "fp32", "compile", "device", "modality", "seed"}
    for name, index, channel in (("inputVolume", 0, "input"), ("outputVolume", 1, "output")):
        assert (params[name].typ, params[name].index, params[name].channel) == ("image", index, channel)
        assert params[name].defaultExtension() == ".nrrd"  # what Slicer writes and reads
    assert params["strength"].typ == "string-enumeration"
    assert (params["strength"].default, params["strength"].elements) == ("medium", ["low", "medium", "high"])
    assert tuple(params["strength"].elements) == STRENGTHS  # the denoising strengths of dd_medical.presets
    assert (params["device"].default, params["device"].elements) == ("auto", ["auto", "cpu", "cuda"])
    assert (params["modality"].default, params["modality"].elements) == ("auto", ["auto", "CT", "MR"])
    for name in ("iterations", "channels", "blocks", "ensemble", "slab", "seed"):
        assert params[name].typ == "integer" and params[name].default == 0
        assert params[name].longflag == f"--{name}"
        assert float(params[name].constraints.minimum) == 0
    # The description's own parser accepts the command line Slicer builds.
    args = CLIArgumentParser(str(XML)).parse_args(slicer_command_line({"strength": "high"}, Path("a.nrrd"),
                                                                      Path("b.nrrd")))
    assert (args.inputVolume, args.outputVolume, args.strength, args.iterations) == ("a.nrrd", "b.nrrd", "high", 0)
    for flag in ("fp32", "compile"):
        assert (params[flag].typ, params[flag].longflag, params[flag].default) == ("boolean", f"--{flag}", False)
    # The script's own parser takes the same command lines, the boolean as a bare flag, and its choices are the XML's.
    cli = load_cli_module()
    for name in ("strength", "device", "modality"):
        assert list(cli.xml_choices(name)) == params[name].elements
    for fp32 in ("false", "true"):
        for compile_ in ("false", "true"):
            parsed = cli.parse_args(slicer_command_line({"slab": "3", "fp32": fp32, "compile": compile_},
                                                        Path("a.nrrd"), Path("b.nrrd")))
            assert (parsed.slab, parsed.fp32, parsed.compile, parsed.inputVolume) == (3, fp32 == "true",
                                                                                       compile_ == "true", "a.nrrd")


def _xml_parameters() -> dict:
    from ctk_cli import CLIModule

    return {p.name: p for p in CLIModule(str(XML)).parameters()}


def _non_default_values(params: dict) -> dict[str, str]:
    """A value other than the default for every flagged parameter of the XML, as Slicer writes it."""
    values = {}
    for name, param in params.items():
        if param.index is not None:
            continue
        if param.typ == "boolean":
            values[name] = "true"
        elif param.typ == "image":
            values[name] = f"{name}.nrrd"
        elif param.elements:
            values[name] = next(e for e in param.elements if e != param.default)
        else:
            values[name] = str(int(param.default) + int(float(param.constraints.step or 1)))
    return values


def test_cli_arguments_are_generated_from_the_xml_and_agree_with_ctk_cli():
    """Issue 31: the CLI parsed its arguments by hand beside the XML. Now its parser is generated from the XML:
    every declared parameter is accepted with the value Slicer passes and parses to what ctk-cli parses, an argument
    the XML does not declare and a value outside the XML's constraints are refused.

    ctk-cli's own parser is not used by the script: it expects ``--fp32 true``, while Slicer passes a true boolean
    of a command-line module (a scripted CLI is one) as the bare flag, and it is not installed in Slicer."""
    from ctk_cli import CLIArgumentParser

    cli = load_cli_module()
    params = _xml_parameters()
    parser = cli.build_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(params)
    for values in ({}, _non_default_values(params)):
        argv = slicer_command_line(values, Path("in.nrrd"), Path("out.nrrd"))
        booleans = {p.longflag: name for name, p in params.items() if p.typ == "boolean"}
        ctk_argv = [a for a in argv if a not in booleans]
        ctk_argv += [item for flag, name in booleans.items() for item in (flag, values.get(name, "false"))]
        ours, theirs = vars(cli.parse_args(argv)), vars(CLIArgumentParser(str(XML)).parse_args(ctk_argv))
        assert ours == {name: theirs[name] for name in params}, values
        for name, value in values.items():
            assert str(ours[name]).lower() == value.lower(), name
    for argv in (["--undeclared", "1", "a", "b"], ["--iterations", "20001", "a", "b"], ["--channels", "-8", "a", "b"],
                 ["--modality", "PET", "a", "b"], ["a"]):
        with pytest.raises(SystemExit) as refused:
            cli.parse_args(argv)
        assert refused.value.code == 2, argv


def test_a_parameter_added_to_the_xml_needs_no_code(tmp_path):
    """The XML is the one definition: a parameter added there alone is accepted by the script (the hand-written
    parser of before refused it with exit status 2)."""
    (tmp_path / CLI.name).write_text(CLI.read_text(encoding="utf-8"), encoding="utf-8")
    extra = """    <integer>
      <name>extraSetting</name>
      <longflag>--extra-setting</longflag>
      <description><![CDATA[A parameter only the XML knows.]]></description>
      <label>Extra</label>
      <default>3</default>
      <constraints><minimum>1</minimum><maximum>9</maximum><step>1</step></constraints>
    </integer>
  </parameters>
</executable>"""
    text = XML.read_text(encoding="utf-8")
    (tmp_path / XML.name).write_text(text[: text.rindex("  </parameters>")] + extra + "\n", encoding="utf-8")
    cli = load_cli_module(tmp_path / CLI.name)
    assert cli.parse_args(["a.nrrd", "b.nrrd"]).extraSetting == 3
    assert cli.parse_args(["--extra-setting", "7", "a.nrrd", "b.nrrd"]).extraSetting == 7
    with pytest.raises(SystemExit):
        cli.parse_args(["--extra-setting", "10", "a.nrrd", "b.nrrd"])


def test_cli_modality_reaches_the_fit_and_auto_is_mr_for_positive_values(tmp_path, capsys):
    """Issue 31 (MR was windowed as CT): --modality MR fits in the MR window (robust percentiles) and gives another
    result than CT on an MR-like volume with a few bright voxels; auto, on values that are never negative (an MR
    .nrrd from Slicer records no modality), is MR."""
    cli = load_cli_module()
    rng = np.random.default_rng(4)
    mr = rng.normal(300.0, 40.0, (1, 32, 32)).clip(0)
    mr[0, :2, :2] = 4000.0  # a few very bright voxels: the MR window clips them, the CT window does not
    input_path = write_nrrd(mr.astype(np.float32), tmp_path / "mr.nrrd")
    outputs = {}
    for modality in ("CT", "MR", "auto"):
        out = tmp_path / f"{modality}.nrrd"
        argv = ["--iterations", "20", "--channels", "8", "--blocks", "3", "--ensemble", "1", "--device", "cpu",
                "--modality", modality, str(input_path), str(out)]
        assert cli.main(argv) == 0, capsys.readouterr().err
        outputs[modality] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert not np.allclose(outputs["CT"], outputs["MR"])
    np.testing.assert_array_equal(outputs["auto"], outputs["MR"])


def test_xml_flag_prints_the_shipped_description():
    done = run_cli(["--xml"], timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<?xml")
    assert done.stdout == XML.read_text(encoding="utf-8")


# --- the CLI run as Slicer runs it ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slicer_run(tmp_path_factory):
    """One CLI run on a noisy int16 CT volume with a rotated, shifted, anisotropic geometry."""
    folder = tmp_path_factory.mktemp("slicer_cli")
    clean, noisy = phantom_hu()
    input_path = write_nrrd(np.round(noisy).astype(np.int16), folder / "input.nrrd")
    output_path = folder / "output.nrrd"
    before = hashlib.sha256(input_path.read_bytes()).hexdigest()
    done = run_cli(slicer_command_line(SMALL, input_path, output_path))
    return {"done": done, "clean": clean, "input": input_path, "output": output_path, "input_sha256": before}


def test_cli_run_keeps_geometry_and_input(slicer_run):
    done = slicer_run["done"]
    assert done.returncode == 0, done.stderr
    source = sitk.ReadImage(str(slicer_run["input"]))
    result = sitk.ReadImage(str(slicer_run["output"]))
    assert result.GetSize() == source.GetSize() == (48, 48, 2)
    np.testing.assert_allclose(result.GetSpacing(), SPACING, atol=1e-9)
    np.testing.assert_allclose(result.GetOrigin(), ORIGIN, atol=1e-9)
    np.testing.assert_allclose(result.GetDirection(), DIRECTION, atol=1e-9)
    assert result.GetPixelID() == sitk.sitkFloat32
    assert hashlib.sha256(slicer_run["input"].read_bytes()).hexdigest() == slicer_run["input_sha256"]


def test_cli_reports_rising_progress_then_filter_end(slicer_run):
    lines = slicer_run["done"].stdout.splitlines()
    assert lines[0] == "<filter-start>"
    assert any(line.startswith("<filter-comment>") for line in lines)
    progress = [(i, float(m.group(1))) for i, line in enumerate(lines)
                if (m := re.fullmatch(r"<filter-progress>([0-9.]+)</filter-progress>", line))]
    values = [v for _, v in progress]
    assert len(values) >= 10
    assert values[0] == 0.0 and values[-1] == 1.0
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    end = lines.index("<filter-end>")
    assert end > progress[-1][0]
    assert lines[-1] == "</filter-end>"


def test_cli_output_is_less_noisy(slicer_run):
    clean = slicer_run["clean"]
    noisy = sitk.GetArrayFromImage(sitk.ReadImage(str(slicer_run["input"]))).astype(np.float32)
    denoised = sitk.GetArrayFromImage(sitk.ReadImage(str(slicer_run["output"])))
    before, after = psnr_hu(noisy, clean), psnr_hu(denoised, clean)
    assert after > before + 2.0, (before, after)


def _bad_input(kind: str, folder: Path) -> Path:
    clean, noisy = phantom_hu(depth=2, size=32)
    if kind == "missing":
        return folder / "does_not_exist.nrrd"
    if kind == "2D":
        return write_nrrd(noisy[0], folder / "slice2d.nrrd")
    if kind == "4D":
        volume = sitk.GetImageFromArray(noisy)
        sitk.WriteImage(sitk.JoinSeries([volume, volume]), str(folder / "series4d.nrrd"))
        return folder / "series4d.nrrd"
    if kind == "label map":
        return write_nrrd((clean > -500).astype(np.uint8) + (clean > 100), folder / "labels.nrrd")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("2D", "is a 2D image"),
        ("4D", "is a 4D image"),
        ("label map", "label map"),
    ],
)
def test_cli_refuses_bad_input_with_a_message(kind, message, tmp_path):
    input_path = _bad_input(kind, tmp_path)
    output_path = tmp_path / "out.nrrd"
    done = run_cli(slicer_command_line(SMALL, input_path, output_path), timeout=120)
    assert done.returncode == 1
    assert message in done.stderr and input_path.name in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert "<filter-end>" not in done.stdout
    assert not output_path.exists()


def test_cli_refuses_an_even_slab_before_fitting(tmp_path):
    _, noisy = phantom_hu(depth=2, size=32)
    input_path = write_nrrd(np.round(noisy).astype(np.int16), tmp_path / "in.nrrd")
    output_path = tmp_path / "out.nrrd"
    done = run_cli(slicer_command_line({**SMALL, "slab": "2"}, input_path, output_path), timeout=120)
    assert done.returncode == 1 and "slab must be an odd number" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not output_path.exists()


def test_cli_refuses_an_unknown_strength(tmp_path):
    done = run_cli(["--strength", "extreme", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd")], timeout=60)
    assert done.returncode == 2 and "extreme" in done.stderr


def test_xml_declares_the_optional_uncertainty_output():
    """Issue 29: an optional output image, passed by flag (Slicer leaves the flag out when no volume is chosen),
    labelled and described as the calibrated standard deviation in HU."""
    param = _xml_parameters()["uncertaintyVolume"]
    assert (param.typ, param.channel, param.index, param.longflag) == ("image", "output", None, "--uncertainty")
    assert param.default is None and param.defaultExtension() == ".nrrd"
    assert "SD" in param.label and "HU" in param.label
    assert "calibrated standard deviation" in param.description and "HU" in param.description
    node = next(n for n in ET.parse(XML).getroot().iter("image") if n.findtext("name") == "uncertaintyVolume")
    assert node.get("type") == "scalar"
    cli = load_cli_module()
    assert cli.parse_args(["a.nrrd", "b.nrrd"]).uncertaintyVolume is None
    assert cli.parse_args(["--uncertainty", "sd.nrrd", "a.nrrd", "b.nrrd"]).uncertaintyVolume == "sd.nrrd"


def test_cli_writes_no_uncertainty_map_unless_asked(slicer_run):
    assert slicer_run["done"].returncode == 0, slicer_run["done"].stderr
    assert sorted(p.name for p in slicer_run["input"].parent.iterdir()) == ["input.nrrd", "output.nrrd"]


def test_cli_writes_the_uncertainty_map_with_the_input_geometry(tmp_path):
    """Issue 29: with ``--uncertainty`` (as Slicer passes a chosen output volume) the map is written beside the
    output: float32, the input's size, spacing, origin and direction, finite and >= 0 (HU; the calibration is
    being refitted, so no value is asserted). The denoised output is written too, and the input is untouched."""
    _, noisy = phantom_hu(depth=2, size=32)
    input_path = write_nrrd(np.round(noisy).astype(np.int16), tmp_path / "in.nrrd")
    before = hashlib.sha256(input_path.read_bytes()).hexdigest()
    output_path, sd_path = tmp_path / "out.nrrd", tmp_path / "sd.nrrd"
    values = {"iterations": "20", "channels": "8", "blocks": "3", "ensemble": "2", "device": "cpu",
              "uncertaintyVolume": str(sd_path)}
    done = run_cli(slicer_command_line(values, input_path, output_path), timeout=180)
    assert done.returncode == 0, done.stderr
    source, sd = sitk.ReadImage(str(input_path)), sitk.ReadImage(str(sd_path))
    for result in (sitk.ReadImage(str(output_path)), sd):
        assert result.GetSize() == source.GetSize() == (32, 32, 2)
        np.testing.assert_allclose(result.GetSpacing(), SPACING, atol=1e-9)
        np.testing.assert_allclose(result.GetOrigin(), ORIGIN, atol=1e-9)
        np.testing.assert_allclose(result.GetDirection(), DIRECTION, atol=1e-9)
        assert result.GetPixelID() == sitk.sitkFloat32
    values_sd = sitk.GetArrayFromImage(sd)
    assert np.isfinite(values_sd).all() and (values_sd >= 0).all() and values_sd.max() > 0
    assert "writing the uncertainty map" in done.stdout and done.stdout.splitlines()[-1] == "</filter-end>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd", "out.nrrd", "sd.nrrd"]
    assert hashlib.sha256(input_path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize("case", ["ensemble 1", "map is the output"])
def test_cli_refuses_an_uncertainty_map_it_cannot_make_before_fitting(tmp_path, capsys, case):
    cli = load_cli_module()
    _, noisy = phantom_hu(depth=1, size=32)
    input_path = write_nrrd(np.round(noisy).astype(np.int16), tmp_path / "in.nrrd")
    output_path = tmp_path / "out.nrrd"
    sd_path, ensemble = (tmp_path / "sd.nrrd", "1") if case == "ensemble 1" else (output_path, "2")
    argv = ["--iterations", "5000", "--ensemble", ensemble, "--device", "cpu", "--uncertainty", str(sd_path),
            str(input_path), str(output_path)]
    assert cli.main(argv) == 1  # at once: 5000 iterations would take minutes
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert ("ensemble of at least 2" in err) if case == "ensemble 1" else ("other than the input and the output" in err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]


def test_label_map_rule_accepts_integer_ct_and_many_valued_unsigned_images(tmp_path):
    cli = load_cli_module()
    _, noisy = phantom_hu(depth=1, size=32)
    cli.check_input(write_nrrd(np.round(noisy).astype(np.int16), tmp_path / "ct.nrrd"))  # negative HU: accepted
    mr = np.random.default_rng(1).integers(0, 4000, size=(1, 32, 32)).astype(np.uint16)
    cli.check_input(write_nrrd(mr, tmp_path / "mr.nrrd"))  # many distinct values: accepted
    cli.check_input(write_nrrd(np.round(noisy - noisy.min()).astype(np.float32), tmp_path / "float.nrrd"))
    few = (np.arange(32 * 32).reshape(1, 32, 32) % cli.LABEL_MAP_MAX_VALUES).astype(np.uint16)
    with pytest.raises(ValueError, match="label map"):
        cli.check_input(write_nrrd(few, tmp_path / "few.nrrd"))


# --- the scripted module --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [MODULE, CLI], ids=lambda p: p.name)
def test_plugin_python_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)


def _dd_medical_imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, name) for every import of dd_medical in ``tree``; name None for ``import dd_medical[.x]``."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dd_medical":
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "dd_medical"]
    return found


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_logic_calls_only_the_public_dd_medical_api():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    imports = _dd_medical_imports(tree)
    assert ("dd_medical.api", "denoise") in imports
    for module_name, name in imports:
        assert module_name in ("dd_medical", "dd_medical.api"), module_name
        if name is not None:
            assert not name.startswith("_") and hasattr(importlib.import_module(module_name), name), name
    for node in ast.walk(tree):  # dd_medical.<attribute> used directly
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "dd_medical":
            assert not node.attr.startswith("_") and hasattr(importlib.import_module("dd_medical"), node.attr)
    logic = _class(tree, "DeepDecoderLogic")
    calls = {n.func.id for n in ast.walk(logic) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "denoise" in calls
    numeric = {"numpy", "torch", "SimpleITK", "scipy"}
    for node in ast.walk(logic):  # no numerical code of its own
        if isinstance(node, ast.Import):
            assert not {a.name.split(".")[0] for a in node.names} & numeric
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] not in numeric


def test_cli_calls_only_the_public_dd_medical_api():
    for module_name, name in _dd_medical_imports(ast.parse(CLI.read_text(encoding="utf-8"))):
        assert module_name in ("dd_medical", "dd_medical.api", "dd_medical.io", "dd_medical.errors"), module_name
        if name is not None:
            assert not name.startswith("_") and hasattr(importlib.import_module(module_name), name), name


def load_module_lib():
    """``plugin/DeepDecoder/DeepDecoderLib/logic.py``, the scripted module's decisions (no Slicer needed)."""
    spec = importlib.util.spec_from_file_location("DeepDecoderLib.logic", LIB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parameter_node_defaults(tree: ast.Module) -> dict[str, object]:
    body = _class(tree, "DeepDecoderParameterNode").body
    return {n.target.id: ast.literal_eval(n.value) if n.value is not None else None
            for n in body if isinstance(n, ast.AnnAssign)}


def test_the_panel_offers_every_setting_of_the_cli():
    """Issue 31 (blocks and ensemble were missing from the panel, and modality): every setting the CLI module
    declares has a parameter-node field with the XML's default, a widget bound to it in the .ui, and reaches both a
    background run (CLI parameters) and an in-process run; the choices are the XML's and dd_medical.presets'."""
    lib = load_module_lib()
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    defaults = _parameter_node_defaults(tree)
    params = _xml_parameters()
    settings = {name for name, p in params.items() if p.index is None and p.typ != "image"}
    assert set(lib.DEFAULT_SETTINGS) == settings
    for name in settings:
        assert defaults[name] == lib.DEFAULT_SETTINGS[name] == params[name].default, name
    assert set(defaults) == settings | {"inputVolume", "outputVolume", "uncertaintyVolume", "runInBackground"}
    ui = ET.parse(UI).getroot()
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == set(defaults)
    widget_names = {w.get("name") for w in ui.iter("widget")}
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used and used <= widget_names, used - widget_names
    for name, choices in (("strength", lib.STRENGTHS), ("device", lib.DEVICES), ("modality", lib.MODALITIES)):
        assert choices == params[name].elements, name
        combo = next(w for w in ui.iter("widget") if any(
            p.get("name") == "SlicerParameterName" and p.find("string").text == name for p in w.findall("property")))
        assert [i.find("property/string").text for i in combo.findall("item")] == choices, name
    assert lib.STRENGTHS == list(STRENGTHS)
    assert set(lib.cli_parameters("in", "out", {})) == set(params) - {"uncertaintyVolume"}
    assert set(lib.cli_parameters("in", "out", {}, "sd")) == set(params)
    apply = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "onApplyButton")
    call = next(n for n in ast.walk(apply) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id == "dict")
    assert {k.arg for k in call.keywords} == settings  # what Apply passes to process / processInBackground


@pytest.mark.parametrize(("chosen", "dicom", "expected"), [
    ("auto", "MR", "MR"), ("auto", "CT", "CT"), ("auto", " mr ", "MR"), ("auto", "", "auto"), ("auto", None, "auto"),
    ("auto", "PT", "auto"), ("CT", "MR", "CT"), ("MR", "", "MR"),
])
def test_modality_comes_from_the_dicom_series_or_the_choice(chosen, dicom, expected):
    lib = load_module_lib()
    assert lib.resolve_modality(chosen, dicom) == expected
    note = lib.modality_note(chosen, dicom)
    assert note.startswith(expected if expected != "auto" else "from the values")
    preset, arguments = lib.denoise_arguments(lib.run_settings(modality=lib.resolve_modality(chosen, dicom)))
    assert preset == "medium" and arguments["modality"] == {"auto": "OT"}.get(expected, expected)


def test_modality_rejects_what_the_xml_does_not_offer():
    lib = load_module_lib()
    with pytest.raises(ValueError, match="modality 'PT'"):
        lib.resolve_modality("PT", "")
    with pytest.raises(TypeError, match="uncertainty"):
        lib.run_settings(uncertainty=True)


def test_in_process_arguments_are_those_of_dd_medical_api_denoise():
    lib = load_module_lib()
    preset, arguments = lib.denoise_arguments(lib.run_settings(iterations=3, channels=8, blocks=3, ensemble=1,
                                                               modality="MR", fp32=True, device="cpu"))
    assert arguments["slab"] is None and arguments["amp"] is False and arguments["compile"] is None
    _, noisy = phantom_hu(depth=1, size=16)
    out = denoise(noisy - noisy.min(), preset, progress=False, **arguments)
    assert out.shape == noisy.shape and np.isfinite(out).all()


def test_background_parameters_are_what_slicer_passes_to_the_cli():
    lib = load_module_lib()
    settings = lib.run_settings(strength="high", modality="MR", iterations=500, blocks=4, ensemble=3, fp32=True,
                                seed=9)
    parameters = lib.cli_parameters("vtkMRMLScalarVolumeNode1", "vtkMRMLScalarVolumeNode2", settings)
    values = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in parameters.items()}
    parsed = load_cli_module().parse_args(slicer_command_line(values, Path("in.nrrd"), Path("out.nrrd")))
    for name, value in settings.items():
        assert getattr(parsed, name) == value, name


# --- the scripted module's glue, run against a stand-in for Slicer -------------------------------------------


class FakeDisplayNode:
    """The vtkMRMLScalarVolumeDisplayNode methods the module uses."""

    def __init__(self, window=350.0, level=50.0, auto=1, presets=(), color="vtkMRMLColorTableNodeGrey", interp=1):
        self.window, self.level, self.auto, self.presets = window, level, auto, list(presets)
        self.color, self.interpolate = color, interp

    def GetWindow(self): return self.window
    def GetLevel(self): return self.level
    def GetAutoWindowLevel(self): return self.auto
    def SetAutoWindowLevel(self, value): self.auto = value
    def SetWindowLevel(self, window, level): self.window, self.level = window, level
    def GetNumberOfWindowLevelPresets(self): return len(self.presets)
    def GetWindowPreset(self, p): return self.presets[p][0]
    def GetLevelPreset(self, p): return self.presets[p][1]
    def ResetWindowLevelPresets(self): self.presets = []
    def AddWindowLevelPreset(self, window, level): self.presets.append((window, level))
    def GetColorNodeID(self): return self.color
    def SetAndObserveColorNodeID(self, color): self.color = color
    def GetInterpolate(self): return self.interpolate
    def SetInterpolate(self, value): self.interpolate = value


class FakeVolumeNode:
    """The vtkMRMLScalarVolumeNode methods the module uses; ``array`` is (D, H, W) in KJI order."""

    def __init__(self, node_id, array=None, transform=None, display=None):
        self.node_id, self.array, self.transform, self.display = node_id, array, transform, display
        self.ijk_to_ras = None

    def GetID(self): return self.node_id
    def GetName(self): return self.node_id
    def IsA(self, class_name): return False
    def GetImageData(self): return None if self.array is None else object()
    def GetTransformNodeID(self): return self.transform
    def SetAndObserveTransformNodeID(self, node_id): self.transform = node_id
    def GetDisplayNode(self): return self.display
    def GetIJKToRASMatrix(self, matrix): matrix.values = "input geometry"
    def SetIJKToRASMatrix(self, matrix): self.ijk_to_ras = matrix.values

    def CreateDefaultDisplayNodes(self):
        self.display = self.display or FakeDisplayNode()


class FakeCliNode:
    """A vtkMRMLCommandLineModuleNode: running until :meth:`end`, which fires StatusModifiedEvent."""

    def __init__(self):
        self.status, self.observers, self.next_tag = "Running", {}, 1

    def AddObserver(self, event, callback):
        self.next_tag += 1
        self.observers[self.next_tag] = callback
        return self.next_tag

    def RemoveObserver(self, tag): del self.observers[tag]
    def IsBusy(self): return self.status == "Running"
    def GetStatusString(self): return self.status

    def end(self, status):
        self.status = status
        for callback in list(self.observers.values()):
            callback(self, "StatusModifiedEvent")


@pytest.fixture()
def fake_slicer(monkeypatch):
    """``DeepDecoder.py`` imported against stand-ins for ``slicer`` and ``vtk``; returns (module, recorder)."""
    import types

    seen = {"cli_runs": [], "pip": [], "modality": {}, "layers": [],
            "color_nodes": {"vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeRainbow"}}
    slicer = types.ModuleType("slicer")
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {})
    util.arrayFromVolume = lambda node: node.array
    util.updateVolumeFromArray = lambda node, array: setattr(node, "array", array)
    util.pip_install = lambda requirements: seen["pip"].append(requirements)
    util.confirmOkCancelDisplay = lambda *args, **kwargs: True
    util.setSliceViewerLayers = lambda **layers: seen["layers"].append(layers)
    shNode = types.SimpleNamespace(GetItemByDataNode=lambda node: node.node_id,
                                   GetItemAttribute=lambda item, name: seen["modality"].get(item, ""))
    slicer.util = util
    slicer.mrmlScene = types.SimpleNamespace(
        GetSubjectHierarchyNode=lambda: shNode,
        GetNodeByID=lambda node_id: node_id if node_id in seen["color_nodes"] else None)
    slicer.vtkMRMLSubjectHierarchyConstants = types.SimpleNamespace(
        GetDICOMSeriesModalityAttributeName=lambda: "DICOM.Modality")
    slicer.vtkMRMLCommandLineModuleNode = types.SimpleNamespace(StatusModifiedEvent="StatusModifiedEvent")
    slicer.vtkMRMLScalarVolumeNode = FakeVolumeNode
    slicer.modules = types.SimpleNamespace(deepdecoderdenoise="the CLI module")

    def cli_run(module, node, parameters, wait_for_completion=False, update_display=True):
        cli_node = FakeCliNode()
        seen["cli_runs"].append((module, dict(parameters), wait_for_completion, cli_node))
        return cli_node

    slicer.cli = types.SimpleNamespace(run=cli_run)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.Choice = wrapper.WithinRange = lambda *args: None
    wrapper.parameterNodeWrapper = lambda cls: cls
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleTest", "ScriptedLoadableModuleWidget"):
        setattr(scripted, name, type(name, (), {}))
    scripted.ScriptedLoadableModuleLogic = type("ScriptedLoadableModuleLogic", (), {"__init__": lambda self: None})
    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = type("vtkMatrix4x4", (), {"values": None})
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent="ModifiedEvent")
    for name, module in (("slicer", slicer), ("slicer.util", util), ("slicer.i18n", i18n),
                         ("slicer.parameterNodeWrapper", wrapper), ("slicer.ScriptedLoadableModule", scripted),
                         ("vtk", vtk)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    monkeypatch.delitem(sys.modules, "DeepDecoderLib", raising=False)
    monkeypatch.delitem(sys.modules, "DeepDecoderLib.logic", raising=False)
    spec = importlib.util.spec_from_file_location("DeepDecoder", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, seen


def _input_volume() -> FakeVolumeNode:
    display = FakeDisplayNode(window=400.0, level=40.0, auto=0, presets=[(400.0, 40.0), (1500.0, -600.0)],
                              color="vtkMRMLColorTableNodeInvertedGrey", interp=0)
    _, noisy = phantom_hu(depth=1, size=16)
    return FakeVolumeNode("vtkMRMLScalarVolumeNode1", noisy, transform="vtkMRMLLinearTransformNode7", display=display)


def _assert_shown_like_the_input(output: FakeVolumeNode, source: FakeVolumeNode) -> None:
    assert output.transform == source.transform == "vtkMRMLLinearTransformNode7"
    shown, reference = output.display, source.display
    assert (shown.auto, shown.window, shown.level) == (0, 400.0, 40.0)
    assert shown.presets == reference.presets and shown.color == reference.color
    assert shown.interpolate == reference.interpolate == 0


def test_background_run_keeps_the_parent_transform_and_the_window_level(fake_slicer):
    """Issue 31: a background run dropped the input's parent transform and showed the output with its own
    automatic window/level. Now the output is placed under the input's transform when the run starts, and shown
    with the input's window/level, presets, colours and interpolation when it completes (without the widget)."""
    module, seen = fake_slicer
    source, output = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2")
    seen["modality"][source.node_id] = "MR"
    cli_node = module.DeepDecoderLogic().processInBackground(source, output, blocks=4, ensemble=3, device="cpu")
    (cli_module, parameters, wait, _), = seen["cli_runs"]
    assert cli_module == "the CLI module" and wait is False
    assert set(parameters) == set(_xml_parameters()) - {"uncertaintyVolume"}  # no map asked for: none written
    assert (parameters["modality"], parameters["blocks"], parameters["ensemble"]) == ("MR", 4, 3)
    assert output.transform == source.transform  # in place while it runs
    output.transform = None  # as if Slicer had replaced the node's content on reading the CLI's output
    cli_node.end("Completed")
    _assert_shown_like_the_input(output, source)
    assert cli_node.observers == {}


@pytest.mark.parametrize("status", ["Cancelled", "Completed with errors"])
def test_a_cancelled_or_failed_background_run_leaves_the_output_alone(fake_slicer, status):
    module, _ = fake_slicer
    source, output = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2")
    cli_node = module.DeepDecoderLogic().processInBackground(source, output)
    cli_node.end(status)
    assert output.display is None and cli_node.observers == {}


def test_in_process_run_passes_the_modality_and_shows_the_output_like_the_input(fake_slicer, monkeypatch):
    module, seen = fake_slicer
    calls = []

    def spy(array, preset, **kwargs):
        calls.append((preset, kwargs))
        return (array + 1).astype(np.float32)

    monkeypatch.setattr("dd_medical.api.denoise", spy)
    for dicom, expected in (("CT", "CT"), ("", "OT"), ("MR", "MR")):
        source, output = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2")
        seen["modality"][source.node_id] = dicom
        module.DeepDecoderLogic().process(source, output, strength="low", blocks=5)
        preset, kwargs = calls[-1]
        assert (preset, kwargs["modality"], kwargs["blocks"], kwargs["ensemble"]) == ("low", expected, 5, None)
        np.testing.assert_array_equal(output.array, source.array + 1)
        assert output.ijk_to_ras == "input geometry"
        _assert_shown_like_the_input(output, source)


def _assert_uncertainty_overlay(seen: dict, output: FakeVolumeNode, sd_node: FakeVolumeNode, color: str) -> None:
    """The map is the foreground layer over the denoised background, half transparent, in a colour table, with a
    fixed window from 0 to a high percentile of the map."""
    (layers,) = seen["layers"]
    assert layers["background"] is output and layers["foreground"] is sd_node
    assert 0.4 <= layers["foregroundOpacity"] <= 0.5
    shown = sd_node.display
    assert shown.color == color and shown.auto == 0
    high = float(np.percentile(sd_node.array, 99))
    assert shown.level - shown.window / 2 == pytest.approx(0.0)
    assert shown.window == pytest.approx(high) and high < sd_node.array.max()


def _sd_volume(node_id: str = "vtkMRMLScalarVolumeNode3") -> FakeVolumeNode:
    return FakeVolumeNode(node_id)


def test_in_process_run_with_an_uncertainty_volume_shows_it_as_a_colour_overlay(fake_slicer, monkeypatch):
    """Issue 29: an uncertainty volume gets the calibrated SD from ``dd_medical.api.denoise(..., uncertainty=True)``
    with the input's geometry and transform, and is shown over the denoised volume as a colour overlay."""
    module, seen = fake_slicer
    calls = []

    def spy(array, preset, **kwargs):
        calls.append(kwargs)
        sd = np.full(array.shape, 10.0, np.float32)
        sd[0, 0, 0] = 1000.0  # one extreme voxel: the display window ignores it
        return (array + 1).astype(np.float32), sd

    monkeypatch.setattr("dd_medical.api.denoise", spy)
    source, output, sd_node = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2"), _sd_volume()
    module.DeepDecoderLogic().process(source, output, uncertaintyVolume=sd_node, ensemble=3)
    assert calls[-1]["uncertainty"] is True and calls[-1]["ensemble"] == 3
    np.testing.assert_array_equal(output.array, source.array + 1)
    assert sd_node.array.shape == source.array.shape and sd_node.array.max() == 1000.0
    assert sd_node.ijk_to_ras == output.ijk_to_ras == "input geometry"
    assert sd_node.transform == source.transform
    _assert_shown_like_the_input(output, source)
    _assert_uncertainty_overlay(seen, output, sd_node, "vtkMRMLColorTableNodeFileInferno.txt")
    # Without an uncertainty volume: no map asked for, no overlay.
    seen["layers"].clear()
    module.DeepDecoderLogic().process(source, FakeVolumeNode("vtkMRMLScalarVolumeNode4"))
    assert calls[-1]["uncertainty"] is False and seen["layers"] == []


def test_in_process_uncertainty_from_the_engine(fake_slicer):
    """The same path with the real engine (tiny): the map it returns fits the node, finite and >= 0."""
    module, seen = fake_slicer
    seen["color_nodes"].discard("vtkMRMLColorTableNodeFileInferno.txt")  # a Slicer without Inferno: Rainbow
    source, output, sd_node = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2"), _sd_volume()
    module.DeepDecoderLogic().process(source, output, uncertaintyVolume=sd_node, iterations=20, channels=8, blocks=3,
                                      ensemble=2, device="cpu")
    assert sd_node.array.shape == output.array.shape == source.array.shape
    assert sd_node.array.dtype == np.float32 and np.isfinite(sd_node.array).all() and (sd_node.array >= 0).all()
    assert sd_node.display.color == "vtkMRMLColorTableNodeRainbow"
    assert seen["layers"][-1]["foreground"] is sd_node


def test_background_run_with_an_uncertainty_volume(fake_slicer):
    """The CLI gets the uncertainty node's ID (Slicer writes the map there); when the run completes the map is
    shown as a colour overlay under the input's transform; a cancelled run shows nothing."""
    module, seen = fake_slicer
    source, output, sd_node = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2"), _sd_volume()
    cli_node = module.DeepDecoderLogic().processInBackground(source, output, uncertaintyVolume=sd_node, seed=4)
    (_, parameters, _, _), = seen["cli_runs"]
    assert set(parameters) == set(_xml_parameters()) and parameters["uncertaintyVolume"] == sd_node.node_id
    values = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in parameters.items()}
    parsed = load_cli_module().parse_args(slicer_command_line(values, Path("in.nrrd"), Path("out.nrrd")))
    assert (parsed.uncertaintyVolume, parsed.seed) == (sd_node.node_id, 4)
    assert sd_node.transform == source.transform  # in place while it runs
    sd_node.array = np.linspace(0, 50, 16 * 16, dtype=np.float32).reshape(1, 16, 16)  # as Slicer reads it back
    cli_node.end("Completed")
    _assert_uncertainty_overlay(seen, output, sd_node, "vtkMRMLColorTableNodeFileInferno.txt")

    seen["layers"].clear()
    other = _sd_volume("vtkMRMLScalarVolumeNode5")
    module.DeepDecoderLogic().processInBackground(source, output, uncertaintyVolume=other).end("Cancelled")
    assert seen["layers"] == [] and other.display is None


@pytest.mark.parametrize("background", [False, True], ids=["in-process", "background"])
def test_an_uncertainty_map_is_refused_clearly_before_any_run(fake_slicer, monkeypatch, background):
    """Issue 29: the map is the spread of the ensemble, so ensemble 1 is refused with a message naming the
    setting, before fitting or starting the CLI; so is an uncertainty volume that is the output or the input."""
    module, seen = fake_slicer
    monkeypatch.setattr("dd_medical.api.denoise", lambda *args, **kwargs: pytest.fail("fitting started"))
    logic = module.DeepDecoderLogic()
    run = logic.processInBackground if background else logic.process
    source, output = _input_volume(), FakeVolumeNode("vtkMRMLScalarVolumeNode2")
    with pytest.raises(ValueError, match="ensemble of at least 2.*Ensemble is 1"):
        run(source, output, uncertaintyVolume=_sd_volume(), ensemble=1)
    for same in (output, source):
        with pytest.raises(ValueError, match="uncertainty volume other than the input and the output"):
            run(source, output, uncertaintyVolume=same)
    assert seen["cli_runs"] == [] and seen["layers"] == [] and output.array is None


def test_overlay_window_runs_from_zero_to_a_high_percentile():
    lib = load_module_lib()
    sd = np.full((2, 16, 16), 20.0)
    sd[0, :2, :2] = 5000.0  # a few extreme voxels
    sd[1, 0, 0] = np.nan
    window, level = lib.overlay_window(sd)
    assert level - window / 2 == 0.0 and window == pytest.approx(20.0)
    assert lib.overlay_window(np.zeros((1, 4, 4))) == (1.0, 0.5)


def test_installing_dd_medical_keeps_slicers_pydicom(fake_slicer, monkeypatch):
    """Issue 31 (Slicer bundles pydicom 2.4; extensions that replaced it were removed from the index): the module
    pins the installed pydicom while pip installs dd-medical, which runs on pydicom 2.4 and 3.x."""
    import types
    from importlib.metadata import version

    module, seen = fake_slicer
    torch_utils = types.ModuleType("PyTorchUtils")
    torch_utils.PyTorchUtilsLogic = lambda: types.SimpleNamespace(torchInstalled=lambda: True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils)
    monkeypatch.setitem(sys.modules, "dd_medical", None)  # not installed yet
    module.DeepDecoderLogic.setupPythonRequirements(askConfirmation=False)
    assert seen["pip"] == [f"dd-medical pydicom=={version('pydicom')}"]
    assert load_module_lib().pip_requirements(None) == "dd-medical"
    requirement = next(r for r in _project_dependencies() if r.startswith("pydicom"))
    assert requirement == "pydicom>=2.4"  # the pin is satisfiable on Slicer 5.10's pydicom 2.4


def _project_dependencies() -> list[str]:
    """The quoted requirements of pyproject.toml's ``dependencies = [...]`` (tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return re.findall(r'"([^"]+)"', block)


# --- extension packaging --------------------------------------------------------------------------------------


def _cmake_sets(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


RAW_URL = "https://raw.githubusercontent.com/dd-medical/dd-medical/main/"
SCREENSHOT = PLUGIN / "Screenshots" / "1.png"
SLICER_STUB = Path(__file__).resolve().parent / "slicer_stub"


def test_extension_cmake_and_catalog_entry():
    """Issue 31: the Slicer ExtensionsIndex builds the repository root (build_subdirectory "."), so the extension's
    CMakeLists.txt (Slicer's template) is the root one; the catalog entry, the CMake metadata and the modules'
    categories agree, and the icon and screenshot URLs name files of this repository."""
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert not (PLUGIN / "CMakeLists.txt").exists()  # one extension file, where the index looks for it
    assert re.search(r"^project\(DDMedical\)$", text, re.M)
    meta = _cmake_sets(text)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert meta.get(f"EXTENSION_{key}"), key
    assert meta["EXTENSION_DEPENDS"] == "PyTorch"
    order = [text.index(line) for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                           "add_subdirectory(plugin/DeepDecoderDenoise)",
                                           "add_subdirectory(plugin/DeepDecoder)",
                                           "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                           "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)
    assert "SlicerMacroBuildScriptedCLI" in (CLI_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    for url in (meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()):
        assert url.startswith(RAW_URL) and (ROOT / url[len(RAW_URL):]).is_file(), url

    entry = json.loads((PLUGIN / "DDMedical.json").read_text(encoding="utf-8"))
    # Slicer's catalog entry schema v1.0.1: required keys, no others (additionalProperties: false).
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split() and entry["tier"] in (1, 3, 5)
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["build_subdirectory"] == meta["EXTENSION_BUILD_SUBDIRECTORY"] == "."
    repository = entry["scm_url"].removesuffix(".git")
    assert meta["EXTENSION_HOMEPAGE"].startswith(repository) and RAW_URL.startswith(
        repository.replace("https://github.com/", "https://raw.githubusercontent.com/"))
    # Both modules show up under the extension's category.
    assert ET.parse(XML).getroot().findtext("category").split(".")[0] == entry["category"]
    module_tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    categories = next(n.value for n in ast.walk(module_tree) if isinstance(n, ast.Assign)
                      and any(isinstance(t, ast.Attribute) and t.attr == "categories" for t in n.targets))
    assert ast.literal_eval(categories) == ["Filtering.Denoising"]


def _has_compilers() -> bool:
    """cmake, make (its default generator's build tool, which it also needs to check the compilers) and a C and a
    C++ compiler (the template's project() enables both): .ci/run installs them from Debian's packages."""
    import shutil

    return bool(shutil.which("cmake") and shutil.which("make") and (shutil.which("cc") or shutil.which("gcc"))
                and (shutil.which("c++") or shutil.which("g++")))


@pytest.mark.skipif(not _has_compilers(),
                    reason="cmake, make and a C/C++ compiler are needed to configure the extension")
def test_extension_configures_with_cmake_and_describes_itself_as_the_catalog_entry(tmp_path):
    """What a developer runs first: configure the extension (here against tests/slicer_stub, a stand-in for a
    Slicer build tree whose macros check the modules' files). The description file it writes (.s4ext, the form
    Slicer generates from the CMake metadata) agrees with plugin/DDMedical.json and names files that exist."""
    done = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DSlicer_DIR={SLICER_STUB}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    description = dict(line.split(" ", 1) for line in (tmp_path / "DDMedical.s4ext").read_text().splitlines())
    entry = json.loads((PLUGIN / "DDMedical.json").read_text(encoding="utf-8"))
    assert description["category"] == entry["category"]
    assert description["depends"].split() == entry["build_dependencies"]
    assert description["build_subdirectory"] == entry["build_subdirectory"]
    for url in (description["iconurl"], *description["screenshoturls"].split()):
        assert (ROOT / url[len(RAW_URL):]).is_file(), url
    modules = (tmp_path / "modules.txt").read_text().split("\n")
    assert f"cli DeepDecoderDenoise {CLI_DIR}" in modules and f"scripted DeepDecoder {MODULE_DIR}" in modules


def test_the_scripted_module_lists_every_python_file_it_needs():
    """slicerMacroBuildScriptedModule installs only the files it is given: DeepDecoderLib must be among them."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", "DeepDecoder")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png|ui))$", text, re.M))
    shipped = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
               if p.suffix in (".py", ".png", ".ui") and "__pycache__" not in p.parts}
    assert listed == shipped


@pytest.mark.parametrize("path", [ICON, PLUGIN / "DDMedical.png"], ids=["module", "extension"])
def test_icons_are_png_images(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sitk.ReadImage(str(path)).GetSize() == (128, 128)


def test_the_screenshot_is_a_small_png_of_input_and_output():
    from PIL import Image

    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size < 200_000
    with Image.open(SCREENSHOT) as image:
        assert image.width >= 2 * image.height > 600


def test_the_images_are_made_by_a_script_from_the_demo_data(tmp_path):
    """plugin/make_images.py draws the icon and the screenshot from the demo series (a few iterations here)."""
    from PIL import Image

    spec = importlib.util.spec_from_file_location("make_images", PLUGIN / "make_images.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--out", str(tmp_path), "--iterations", "3"]) == 0
    made = [tmp_path / "DDMedical.png", tmp_path / "DeepDecoder" / "Resources" / "Icons" / "DeepDecoder.png",
            tmp_path / "Screenshots" / "1.png"]
    sizes = [Image.open(path).size for path in made]
    assert sizes[:2] == [(128, 128)] * 2 and sizes[2] == Image.open(SCREENSHOT).size


# --- the numpy entry point, called as the plugin calls it ------------------------------------------------------


def plugin_denoise(array, strength="medium", *, fp32=False, compile=False, callback=None, device="cpu", seed=0,
                   **fitting):
    """``dd_medical.api.denoise`` as the scripted module and the CLI call it: the strength as the preset, the progress
    callback, ``amp=False`` for ``fp32``, ``compile=True`` for ``compile``, the decoder settings as overrides."""
    return denoise(array, strength, device=device, progress=callback or False, seed=seed,
                   amp=False if fp32 else None, compile=True if compile else None, **fitting)


def test_denoise_improves_psnr_and_reports_progress():
    clean, noisy = phantom_hu(depth=2, size=48)
    original = noisy.copy()
    seen: list[float] = []
    out = plugin_denoise(noisy, "medium", iterations=300, channels=24, blocks=4, ensemble=1, callback=seen.append)
    assert out.shape == noisy.shape and out.dtype == np.float32
    np.testing.assert_array_equal(noisy, original)
    assert psnr_hu(out, clean) > psnr_hu(noisy, clean) + 2.0
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("strength", ["low", "high"])
def test_denoise_is_deterministic_for_each_strength(strength):
    _, noisy = phantom_hu(depth=1, size=32)
    settings = dict(iterations=20, channels=8, blocks=3, ensemble=1, seed=5)
    first = plugin_denoise(noisy, strength, **settings)
    np.testing.assert_array_equal(first, plugin_denoise(noisy, strength, **settings))
    assert not np.array_equal(first, plugin_denoise(noisy, strength, **{**settings, "seed": 6}))


@pytest.mark.parametrize(
    "array_shape, strength, message",
    [
        ((1, 2, 32, 32), "medium", r"\(D, H, W\)"),
        ((2, 32, 32), "extreme", "unknown preset 'extreme'"),
    ],
)
def test_denoise_rejects_bad_arguments(array_shape, strength, message):
    with pytest.raises(InputError, match=message):
        plugin_denoise(np.zeros(array_shape, np.float32), strength, iterations=1, channels=4)


def test_denoise_slab_fp32_and_compile():
    clean, noisy = phantom_hu(depth=3, size=32)
    settings = dict(iterations=60, channels=8, blocks=3, ensemble=1, seed=2)
    flat = plugin_denoise(noisy, "medium", **settings)
    slab = plugin_denoise(noisy, "medium", slab=3, **settings)
    assert slab.shape == noisy.shape and np.isfinite(slab).all()
    assert not np.allclose(slab, flat)  # slab 3 fits other decoders (3 output channels each)
    np.testing.assert_array_equal(slab, plugin_denoise(noisy, "medium", slab=3, **settings))
    # float32 is already what a CPU fits: the flag changes nothing there.
    np.testing.assert_array_equal(flat, plugin_denoise(noisy, "medium", fp32=True, **settings))
    np.testing.assert_array_equal(flat, plugin_denoise(noisy, "medium", compile=True, **settings))  # CUDA only
    with pytest.raises(InputError, match="slab must be an odd number"):
        plugin_denoise(noisy, "medium", slab=4, **settings)
