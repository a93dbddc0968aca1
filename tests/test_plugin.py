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
    flag, only when true), then the index parameters in index order."""
    from ctk_cli import CLIModule

    argv: list[str] = []
    indexed = []
    for param in CLIModule(str(XML)).parameters():
        if param.index is not None:
            indexed.append(param)
            continue
        value = values.get(param.name, param.default)
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


def load_cli_module():
    spec = importlib.util.spec_from_file_location("DeepDecoderDenoise", CLI)
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
    assert set(params) == {"inputVolume", "outputVolume", "strength", "iterations", "channels", "blocks", "ensemble",
                           "slab", "fp32", "compile", "device", "modality", "seed"}
    for name, index, channel in (("inputVolume", 0, "input"), ("outputVolume", 1, "output")):
        assert (params[name].typ, params[name].index, params[name].channel) == ("image", index, channel)
        assert params[name].defaultExtension() == ".nrrd"  # what Slicer writes and reads
    assert params["strength"].typ == "string-enumeration"
    assert (params["strength"].default, params["strength"].elements) == ("medium", ["low", "medium", "high"])
    assert tuple(params["strength"].elements) == STRENGTHS  # the denoising strengths of dd_medical.presets
    assert (params["device"].default, params["device"].elements) == ("auto", ["auto", "cpu", "cuda"])
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


def test_ui_widgets_match_the_parameter_node_and_the_cli():
    from ctk_cli import CLIModule

    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    fields = {n.target.id for n in _class(tree, "DeepDecoderParameterNode").body if isinstance(n, ast.AnnAssign)}
    ui = ET.parse(UI).getroot()
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == fields
    widget_names = {w.get("name") for w in ui.iter("widget")}
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used and used <= widget_names, used - widget_names
    constants = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and t.id in ("STRENGTHS", "DEVICES")}
    params = {p.name: p for p in CLIModule(str(XML)).parameters()}
    assert constants["STRENGTHS"] == params["strength"].elements == list(STRENGTHS)
    assert constants["DEVICES"] == params["device"].elements
    # The background run passes only parameters the CLI declares.
    method = next(n for n in _class(tree, "DeepDecoderLogic").body
                  if isinstance(n, ast.FunctionDef) and n.name == "processInBackground")
    passed = next(n.value for n in ast.walk(method) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "parameters" for t in n.targets))
    keys = {ast.literal_eval(k) for k in passed.keys}
    assert {"inputVolume", "outputVolume", "strength"} <= keys <= set(params)


# --- extension packaging --------------------------------------------------------------------------------------


def _cmake_sets(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text)}


def test_extension_cmake_and_catalog_entry():
    text = (PLUGIN / "CMakeLists.txt").read_text(encoding="utf-8")
    meta = _cmake_sets(text)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert meta.get(f"EXTENSION_{key}"), key
    assert meta["EXTENSION_DEPENDS"] == "PyTorch"
    for module_dir in ("DeepDecoderDenoise", "DeepDecoder"):
        assert f"add_subdirectory({module_dir})" in text
    assert "SlicerMacroBuildScriptedCLI" in (CLI_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule" in module_cmake
    for resource in re.findall(r"Resources/\S+", module_cmake):
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "DeepDecoder")).is_file(), resource

    entry = json.loads((PLUGIN / "DDMedical.json").read_text(encoding="utf-8"))
    # Slicer's catalog entry schema v1.0.1: required keys, no others (additionalProperties: false).
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert entry["build_dependencies"] == ["PyTorch"] and entry["tier"] in (1, 3, 5)
    assert entry["category"] == meta["EXTENSION_CATEGORY"]


@pytest.mark.parametrize("path", [ICON, PLUGIN / "DDMedical.png"], ids=["module", "extension"])
def test_icons_are_png_images(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sitk.ReadImage(str(path)).GetSize() == (128, 128)


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
