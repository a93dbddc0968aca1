"""Where MONAI ``SaveImage`` / ``SaveImaged`` transforms will write, known (and checked) before any fitting.

A MONAI pipeline writes its outputs last, after every slice has been fitted; a clash with an existing output would
then cost the whole run. :func:`check_outputs` asks the savers' own folder layout for the paths they will write for
each item of a datalist, and refuses existing ones up front. The bundle in ``examples/monai_bundle`` calls it in its
``initialize`` step:

```json
"imports": ["$import dd_medical.monai_outputs as monai_outputs"],
"initialize": ["$monai_outputs.check_outputs([@save_nifti, @save_dicom], @datalist, @overwrite)"]
```

A saved key that the pipeline derives from a loaded one (``image_uncertainty`` from ``image``) carries that
image's file name: ``source_keys={"image_uncertainty": "image"}`` says so.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.transforms import SaveImage, SaveImaged
from monai.utils import ImageMetaKey

from .monai_writer import DCM_EXT, series_folder

__all__ = ["OutputExistsError", "as_flag", "check_outputs", "planned_outputs"]

_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0", "")


class OutputExistsError(FileExistsError):
    """An output a pipeline would write exists already, and overwriting was not asked for."""


def as_flag(value: bool | int | str) -> bool:
    """A yes/no option as a command line gives it: ``True``/``False``, ``1``/``0``, or the strings ``"true"``,
    ``"false"``, ``"yes"``, ``"no"`` (any case). ``python -m monai.bundle run --overwrite false`` passes the string
    ``"false"``, which Python would take for true. Anything else is a ``ValueError``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def _saver_and_keys(saver: SaveImage | SaveImaged) -> tuple[SaveImage, list[Any]]:
    if isinstance(saver, SaveImaged):
        return saver.saver, list(saver.keys)
    if isinstance(saver, SaveImage):
        return saver, [None]
    raise TypeError(f"expected SaveImage or SaveImaged, got {type(saver).__name__}")


def _output_path(saver: SaveImage, source: Any) -> Path:
    """The path ``saver`` writes for an image that ``LoadImage`` read from ``source`` (its ``filename_or_obj``)."""
    meta = {ImageMetaKey.FILENAME_OR_OBJ: os.fspath(Path(str(source)))}  # as LoadImage records it: no trailing /
    layout = copy.copy(saver.folder_layout)
    if hasattr(layout, "makedirs"):
        layout.makedirs = False  # only ask for the name: create nothing
    path = Path(layout.filename(**saver.fname_formatter(meta, saver)))
    return series_folder(path) if path.suffix.lower() == f".{DCM_EXT}" else path


def planned_outputs(savers: Sequence[SaveImage | SaveImaged], data: Sequence[Mapping] | Mapping,
                    source_keys: Mapping[Hashable, Hashable] | None = None) -> list[Path]:
    """The files (a folder for a DICOM series) that ``savers`` will write for ``data``, a datalist as given to a
    ``Dataset``: each item maps the savers' keys to the source path ``LoadImage`` reads (a file or a DICOM folder).
    A ``SaveImage`` (no keys) uses each item's ``"image"``. ``source_keys`` maps a saver's key made by the pipeline
    to the datalist key whose image it was derived from (and whose file name it carries), e.g.
    ``{"image_uncertainty": "image"}``. Items without a saver's (source) key are skipped."""
    items = [data] if isinstance(data, Mapping) else list(data)
    sources = dict(source_keys or {})
    paths: list[Path] = []
    for item in items:
        for saver in savers:
            array_saver, keys = _saver_and_keys(saver)
            for key in keys:
                key = "image" if key is None else key
                source = item.get(sources.get(key, key))
                if source is not None:
                    paths.append(_output_path(array_saver, source))
    return paths


def _exists(path: Path) -> bool:
    """A file, or a non-empty folder (an empty one is filled, as ``dd_medical.io`` does)."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def check_outputs(savers: Sequence[SaveImage | SaveImaged], data: Sequence[Mapping] | Mapping,
                  overwrite: bool | int | str = False,
                  source_keys: Mapping[Hashable, Hashable] | None = None) -> list[Path]:
    """:func:`planned_outputs`, checked: raises :class:`OutputExistsError` naming the existing ones (and how to
    replace them) unless ``overwrite`` (:func:`as_flag`). Call it before the pipeline runs: nothing is fitted for
    nothing."""
    paths = planned_outputs(savers, data, source_keys)
    existing = [p for p in paths if _exists(p)]
    if existing and not as_flag(overwrite):
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        shown = ", ".join(str(p) for p in existing[:3]) + more
        raise OutputExistsError(f"{len(existing)} output(s) exist already: {shown}; choose another output folder, "
                                "or overwrite them (bundle: --overwrite true)")
    return paths
