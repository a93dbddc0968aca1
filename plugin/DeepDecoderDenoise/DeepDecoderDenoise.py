#!/usr/bin/env python-real
"""Deep Decoder Denoise: the 3D Slicer CLI module (Filtering > Denoising) over :func:`dd_medical.api.denoise`.

Slicer runs it as ``python-real DeepDecoderDenoise.py [--flag value ...] input.nrrd output.nrrd`` (the flags and
positional arguments of ``DeepDecoderDenoise.xml``) and reads progress from stdout. It also runs from a shell::

    python DeepDecoderDenoise.py --strength medium noisy.nrrd denoised.nrrd
    python DeepDecoderDenoise.py --uncertainty sd.nrrd noisy.nrrd denoised.nrrd    # also the uncertainty map
    python DeepDecoderDenoise.py --xml          # the module description, exactly DeepDecoderDenoise.xml

The arguments are generated from the XML (:func:`build_parser`): it is their one definition. Advanced integers
given as 0 (their default) mean "the strength preset's value"; ``--fp32`` and ``--compile`` are flags (Slicer
passes them only when the box is ticked); ``--modality auto`` (the default) lets dd-medical decide from the values
(any negative value: CT, else MR), since the .nrrd files Slicer passes record no modality. ``--uncertainty PATH``
(optional, an output image) also writes the per-voxel uncertainty map: the calibrated standard deviation of the
denoised value (HU for CT, stored values for MR), float32 with the input's geometry; it needs an ensemble of 2 or
more decoders per slice (ensemble 1 is refused before fitting). Inputs that are refused, with a one-line message
on stderr and exit status 1: a missing or unreadable file; an image that is not 3D (2D, 4D) or not
single-component; and a label map, i.e. an integer-typed image with no negative values and at most
``LABEL_MAP_MAX_VALUES`` (64) distinct values (segmentations, masks). CT/MR volumes, even integer-typed, have
negative values (CT) or many more distinct values. Bad flags exit with status 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

XML_PATH = Path(__file__).resolve().with_name("DeepDecoderDenoise.xml")
MODULE_NAME = "DeepDecoderDenoise"
LABEL_MAP_MAX_VALUES = 64


def xml_description() -> str:
    """The module description (Slicer Execution Model XML), exactly as shipped beside this script."""
    return XML_PATH.read_text(encoding="utf-8")


def xml_choices(name: str) -> tuple[str, ...]:
    """The ``<element>`` values of the string enumeration ``name`` in the XML: the choices are defined there once
    (the strengths are ``dd_medical.presets.STRENGTHS``; a test checks the two agree)."""
    for node in ElementTree.fromstring(xml_description()).iter("string-enumeration"):
        if node.findtext("name") == name:
            return tuple(element.text for element in node.findall("element"))
    raise KeyError(name)


#: Parameter types of the XML and the Python type of their values (the Execution Model's scalar types).
_SCALAR_TYPES = {"integer": int, "float": float, "double": float, "string": str, "image": str, "file": str,
                 "directory": str, "string-enumeration": str, "integer-enumeration": int,
                 "float-enumeration": float, "double-enumeration": float}


def build_parser(xml_text: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser generated from the module description (``DeepDecoderDenoise.xml`` by default), so
    the XML is the one definition of the arguments: a ``<longflag>`` parameter becomes ``--flag value`` (a boolean
    a bare ``--flag``, passed only when true, as Slicer does), an ``<index>`` parameter a positional argument in
    index order; defaults, enumeration ``<element>`` choices and ``<constraints>`` minimum/maximum come from the XML.
    An argument the XML does not declare is refused (exit status 2)."""
    root = ElementTree.fromstring(xml_text if xml_text is not None else xml_description())
    parser = argparse.ArgumentParser(prog=MODULE_NAME, description=(root.findtext("title") or "").strip())
    positional: list[tuple[int, str, str]] = []
    for group in root.iter("parameters"):
        for node in group:
            if node.tag in ("label", "description"):
                continue
            name = (node.findtext("name") or "").strip()
            label = (node.findtext("label") or name).strip()
            if node.findtext("index") is not None:
                positional.append((int(node.findtext("index")), name, label))
                continue
            flags = [f"--{node.findtext('longflag').strip().lstrip('-')}"] if node.findtext("longflag") else []
            if node.findtext("flag"):
                flags.insert(0, f"-{node.findtext('flag').strip().lstrip('-')}")
            if not flags:
                raise ValueError(f"{XML_PATH.name}: parameter {name!r} has neither a flag nor an index")
            default = (node.findtext("default") or "").strip()
            if node.tag == "boolean":
                if default.lower() == "true":
                    raise ValueError(f"{XML_PATH.name}: boolean {name!r} defaults to true: a bare flag cannot unset it")
                parser.add_argument(*flags, dest=name, action="store_true", help=label)
                continue
            if node.tag not in _SCALAR_TYPES:
                raise ValueError(f"{XML_PATH.name}: parameter type <{node.tag}> of {name!r} is not supported here")
            kind = _SCALAR_TYPES[node.tag]
            choices = [kind(e.text.strip()) for e in node.findall("element")] or None
            value_type = _bounded(kind, node.findtext("constraints/minimum"), node.findtext("constraints/maximum"))
            parser.add_argument(*flags, dest=name, type=value_type, choices=choices,
                                default=value_type(default) if default else None, help=label)
    for _, name, label in sorted(positional):
        parser.add_argument(name, help=label)
    return parser


def _bounded(kind: type, minimum: str | None, maximum: str | None):
    """A parser of ``kind`` values that refuses those outside ``[minimum, maximum]`` (XML ``<constraints>``)."""
    low = kind(minimum) if minimum not in (None, "") else None
    high = kind(maximum) if maximum not in (None, "") else None

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from err
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Arguments as Slicer passes them (``--flag value`` pairs, then the input and output paths), by the parser
    generated from the XML (:func:`build_parser`)."""
    return build_parser().parse_args(argv)


def emit(line: str) -> None:
    """One line of Slicer's progress protocol on stdout, flushed at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class ProgressReporter:
    """Writes ``<filter-progress>`` lines for fractions in [0, 1], rising, at most one per ``step``."""

    def __init__(self, step: float = 0.01) -> None:
        self.step = step
        self.last = -1.0

    def __call__(self, fraction: float) -> None:
        fraction = min(1.0, max(self.last, float(fraction)))
        if fraction - self.last >= self.step or (fraction == 1.0 and self.last < 1.0):
            self.last = fraction
            emit(f"<filter-progress>{fraction:.4f}</filter-progress>")


def check_input(path: Path) -> None:
    """Refuse a missing file, a non-3D or multi-component image, or a label map, with SimpleITK alone (fast: before
    torch is imported). Raises ``ValueError("<path>: <problem>")``.

    A label map is an integer-typed image with no negative values and at most :data:`LABEL_MAP_MAX_VALUES` distinct
    values; integer CT has negative HU, and integer MR has many more values.
    """
    import numpy as np
    import SimpleITK as sitk

    if not path.is_file():
        raise ValueError(f"{path}: " + ("input file does not exist" if not path.exists() else "input is not a file"))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise ValueError(f"{path}: cannot read the image header (not an image file?)") from err
    dim, size = reader.GetDimension(), "x".join(str(s) for s in reader.GetSize())
    if dim != 3:
        raise ValueError(f"{path}: is a {dim}D image of size {size}; expected a 3D volume (one slice: depth 1)")
    if reader.GetNumberOfComponents() != 1:
        raise ValueError(f"{path}: has {reader.GetNumberOfComponents()} components per voxel; expected a scalar volume")
    if reader.GetPixelID() in _integer_pixel_ids(sitk):
        image = reader.Execute()
        values = sitk.GetArrayViewFromImage(image)  # a view: valid while `image` lives
        if values.min() >= 0:
            distinct = np.unique(values).size
            if distinct <= LABEL_MAP_MAX_VALUES:
                raise ValueError(f"{path}: looks like a label map (integer voxels, {distinct} distinct values); "
                                 "choose a CT or MR volume")


def _integer_pixel_ids(sitk) -> set[int]:
    names = ("sitkUInt8", "sitkInt8", "sitkUInt16", "sitkInt16", "sitkUInt32", "sitkInt32", "sitkUInt64", "sitkInt64")
    return {getattr(sitk, name) for name in names if hasattr(sitk, name)}


def run(args: argparse.Namespace) -> None:
    """Read, denoise and write (with ``args.uncertaintyVolume``, the uncertainty map too: the calibrated per-voxel
    standard deviation, float32, the input's geometry), reporting progress on stdout (Slicer's ``<filter-...>``
    protocol)."""
    from dd_medical.api import denoise
    from dd_medical.errors import InputError
    from dd_medical.io import read_image, write_image

    start = time.perf_counter()
    in_path, out_path = Path(args.inputVolume), Path(args.outputVolume)
    sd_path = Path(args.uncertaintyVolume) if args.uncertaintyVolume else None
    if out_path.resolve() == in_path.resolve():
        raise InputError("output is the input (inputs are never modified)", out_path)
    if sd_path is not None:
        if sd_path.resolve() in (in_path.resolve(), out_path.resolve()):
            raise InputError("the uncertainty map must be a file other than the input and the output", sd_path)
        if args.ensemble == 1:
            raise InputError("an uncertainty map needs an ensemble of at least 2 decoders per slice (ensemble is 1); "
                             "use --ensemble 2 or more, or 0 for the preset's value")
    # auto: the file records no modality (Slicer writes .nrrd): dd-medical decides from the values (negative: CT).
    volume = read_image(in_path, modality=None if args.modality == "auto" else args.modality)
    depth, height, width = volume.shape
    emit("<filter-start>")
    emit(f"<filter-name>{MODULE_NAME}</filter-name>")
    emit(f"<filter-comment>Deep Decoder denoising of {depth} slice(s) of {height}x{width}, strength "
         f"{args.strength}</filter-comment>")
    emit("</filter-start>")
    report = ProgressReporter()
    report(0.0)
    fitting = {name: getattr(args, name) or None for name in ("iterations", "channels", "blocks", "ensemble", "slab")}
    result = denoise(
        volume.array, args.strength, device=args.device, modality=volume.modality,
        progress=lambda fraction: report(0.95 * fraction), seed=args.seed, amp=False if args.fp32 else None,
        compile=True if args.compile else None, uncertainty=sd_path is not None, **fitting,
    )
    denoised, sd = result if sd_path is not None else (result, None)
    emit("<filter-comment>writing the output volume</filter-comment>")
    write_image(volume.with_array(denoised), out_path, overwrite=True)
    if sd is not None:
        emit("<filter-comment>writing the uncertainty map</filter-comment>")
        write_image(volume.with_array(sd), sd_path, overwrite=True)
    report(1.0)
    emit("<filter-end>")
    emit(f"<filter-name>{MODULE_NAME}</filter-name>")
    emit(f"<filter-time>{time.perf_counter() - start:.1f}</filter-time>")
    emit("</filter-end>")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (0 done, 1 bad input or failure, 2 bad arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--xml" in argv:
        sys.stdout.write(xml_description())
        sys.stdout.flush()
        return 0
    args = parse_args(argv)
    try:
        check_input(Path(args.inputVolume))
    except ValueError as err:
        print(f"{MODULE_NAME}: error: {err}", file=sys.stderr)
        return 1
    try:
        import dd_medical  # noqa: F401
    except ImportError as err:
        print(f"{MODULE_NAME}: error: the dd-medical package is not installed in this Python ({err}); open the "
              "Deep Decoder module in Slicer to install it, or run slicer.util.pip_install('dd-medical')",
              file=sys.stderr)
        return 1
    from dd_medical.errors import DDMedicalError

    try:
        run(args)
    except (DDMedicalError, ValueError, OSError) as err:
        print(f"{MODULE_NAME}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
