"""What the Deep Decoder module decides, in plain Python: importable and testable without Slicer.

``DeepDecoder.py`` keeps the Qt and MRML glue (widgets, nodes, ``slicer.cli.run``) and calls these functions for
every decision: which modality a volume is denoised as, the arguments of an in-process run
(:func:`dd_medical.api.denoise`) and of a background run (the ``DeepDecoderDenoise`` CLI module), what pip
installs into Slicer's Python, how the output volume is placed (parent transform) and shown (window/level) like
the input, and how the optional uncertainty map is shown (a colour overlay over the output). Node arguments are
duck-typed (any object with the MRML methods used), so the tests pass stand-ins. No denoising code here (numpy only
for the overlay's display window), and no import of ``dd_medical`` (the module loads before dd-medical is installed).
"""

from __future__ import annotations

from collections.abc import Mapping

#: ``dd_medical.presets.STRENGTHS`` (a test checks the two agree, and the CLI module's XML).
STRENGTHS = ["low", "medium", "high"]
DEVICES = ["auto", "cpu", "cuda"]
#: auto: the DICOM Modality of the volume's series when it is CT or MR, else dd-medical's rule on the values.
MODALITIES = ["auto", "CT", "MR"]
#: Decoder settings where 0 means "the strength preset's value".
FIT_SETTINGS = ("iterations", "channels", "blocks", "ensemble", "slab")
#: Every setting of a run, with its default (the CLI module's XML declares the same names and defaults).
DEFAULT_SETTINGS = {"strength": "medium", "iterations": 0, "channels": 0, "blocks": 0, "ensemble": 0, "slab": 0,
                    "fp32": False, "compile": False, "device": "auto", "modality": "auto", "seed": 0}
PIP_REQUIREMENT = "dd-medical"
#: How the uncertainty map (calibrated SD, HU for CT) is shown over the denoised volume in the slice views: as the
#: foreground layer, in this colour table (dark: low SD, bright: high SD), at this opacity, with a display window
#: from 0 to this percentile of the map (a few extreme voxels do not wash out the rest).
UNCERTAINTY_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
UNCERTAINTY_FALLBACK_COLOR_NODE_ID = "vtkMRMLColorTableNodeRainbow"  # built into every Slicer
UNCERTAINTY_OPACITY = 0.45
UNCERTAINTY_PERCENTILE = 99.0


def resolve_modality(chosen: str, dicom_modality: str | None = "") -> str:
    """The modality a volume is denoised as: ``"CT"`` or ``"MR"`` when chosen; for ``"auto"`` the DICOM Modality
    (0008,0060) of the volume's series when it is CT or MR, else ``"auto"``: dd-medical's own rule on the values
    (any negative voxel: CT, else MR), for volumes not loaded from DICOM and for other modalities (PT, US, ...)."""
    if chosen not in MODALITIES:
        raise ValueError(f"modality {chosen!r}: choose one of {', '.join(MODALITIES)}")
    if chosen != "auto":
        return chosen
    found = (dicom_modality or "").strip().upper()
    return found if found in ("CT", "MR") else "auto"


def modality_note(chosen: str, dicom_modality: str | None = "") -> str:
    """One line for the panel saying how the modality was decided, e.g. ``"MR (DICOM modality of the series)"``."""
    resolved = resolve_modality(chosen, dicom_modality)
    if chosen != "auto":
        return f"{resolved} (chosen)"
    if resolved != "auto":
        return f"{resolved} (DICOM modality of the series)"
    found = (dicom_modality or "").strip().upper()
    why = f"DICOM modality {found}" if found else "no DICOM modality"
    return f"from the values: CT if any voxel is negative, else MR ({why})"


def run_settings(**settings: object) -> dict[str, object]:
    """All settings of a run: ``settings`` over :data:`DEFAULT_SETTINGS`; an unknown name is refused."""
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return {**DEFAULT_SETTINGS, **settings}


def denoise_arguments(settings: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """``(preset, keyword arguments)`` of :func:`dd_medical.api.denoise` for an in-process run: 0 decoder settings
    become ``None`` (the preset's value), ``fp32`` becomes ``amp=False``, ``compile`` ``compile=True``, and the
    modality ``"auto"`` becomes ``"OT"`` (dd-medical's "not recorded": decided from the values)."""
    settings = run_settings(**settings)
    modality = str(settings["modality"])
    arguments: dict[str, object] = {name: int(settings[name]) or None for name in FIT_SETTINGS}
    arguments.update(
        device=settings["device"], seed=int(settings["seed"]), amp=False if settings["fp32"] else None,
        compile=True if settings["compile"] else None, modality="OT" if modality == "auto" else modality,
    )
    return str(settings["strength"]), arguments


def check_uncertainty(settings: Mapping[str, object]) -> None:
    """Refuse an uncertainty map with an ensemble of 1 (the map is the spread of the decoders fitted to each slice,
    so it needs 2 or more; 0, the strength preset's value, is 2), before any run starts: ``ValueError``."""
    ensemble = int(run_settings(**settings)["ensemble"])
    if ensemble == 1:
        raise ValueError("The uncertainty map needs an ensemble of at least 2 decoders per slice (Ensemble is 1): "
                         "set Ensemble to 2 or more (or 0, the preset's value), or choose no uncertainty volume")


def cli_parameters(input_id: str, output_id: str, settings: Mapping[str, object],
                   uncertainty_id: str | None = None) -> dict[str, object]:
    """The parameters of the ``DeepDecoderDenoise`` CLI module (``slicer.cli.run``) for a background run: the
    volume node IDs and every setting, under the names of ``DeepDecoderDenoise.xml``; ``uncertaintyVolume`` only
    when ``uncertainty_id`` is given (an unset optional output is left out, so the CLI writes no map)."""
    settings = run_settings(**settings)
    parameters: dict[str, object] = {"inputVolume": input_id, "outputVolume": output_id}
    if uncertainty_id:
        parameters["uncertaintyVolume"] = uncertainty_id
    for name, default in DEFAULT_SETTINGS.items():
        parameters[name] = type(default)(settings[name])
    return parameters


def pip_requirements(installed_pydicom: str | None) -> str:
    """What ``slicer.util.pip_install`` is given (a string, which every Slicer 5 accepts): dd-medical, and Slicer's
    own pydicom pinned at its installed version, so that installing dd-medical can never replace it (Slicer's
    DICOM modules need it; dd-medical runs on pydicom 2.4 and 3.x); pip would fail rather than upgrade it."""
    requirements = [PIP_REQUIREMENT]
    if installed_pydicom:
        requirements.append(f"pydicom=={installed_pydicom}")
    return " ".join(requirements)


def keep_parent_transform(input_node, output_node) -> None:
    """Place the output under the input's parent transform (none when the input has none): the CLI module and
    ``arrayFromVolume`` see the volume without it, so the output must be put back where the input is shown."""
    output_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())


def copy_display(input_display, output_display) -> None:
    """Show the output as the input is shown: the same window/level, fixed (an automatic window would be computed
    on the smoother output and differ, hiding the comparison), the same window/level presets (e.g. from DICOM),
    colour table and interpolation. Nothing happens when either volume has no display node."""
    if input_display is None or output_display is None:
        return
    output_display.SetAutoWindowLevel(0)
    output_display.SetWindowLevel(input_display.GetWindow(), input_display.GetLevel())
    output_display.ResetWindowLevelPresets()
    for preset in range(input_display.GetNumberOfWindowLevelPresets()):
        output_display.AddWindowLevelPreset(input_display.GetWindowPreset(preset), input_display.GetLevelPreset(preset))
    color = input_display.GetColorNodeID()
    if color:
        output_display.SetAndObserveColorNodeID(color)
    output_display.SetInterpolate(input_display.GetInterpolate())


def overlay_window(sd, percentile: float = UNCERTAINTY_PERCENTILE) -> tuple[float, float]:
    """``(window, level)`` that shows the uncertainty map ``sd`` ((D, H, W), calibrated SD, HU for CT) from 0 to its
    ``percentile`` (non-finite voxels ignored); ``(1.0, 0.5)`` when that is not positive (an all-zero map)."""
    import numpy as np

    values = np.asarray(sd, dtype=np.float64)
    values = values[np.isfinite(values)]
    high = float(np.percentile(values, percentile)) if values.size else 0.0
    if not high > 0:
        high = 1.0
    return high, high / 2


def show_uncertainty_display(display, color_node_id: str, sd) -> None:
    """Make ``display`` (the uncertainty map's scalar volume display node) a colour overlay: the colour table
    ``color_node_id``, a fixed window from 0 to a high percentile of ``sd`` (:func:`overlay_window`), linear
    interpolation. Nothing happens when ``display`` is None."""
    if display is None:
        return
    window, level = overlay_window(sd)
    display.SetAndObserveColorNodeID(color_node_id)
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(window, level)
    display.SetInterpolate(1)
