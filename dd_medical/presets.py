"""Every named setting, keyed by task, and the one place where settings are merged (:func:`resolve`).

Tasks: ``denoise``, ``reconstruct/mri`` (MRI, coil images fitted), ``reconstruct/sense`` (MRI through coil
sensitivities), ``reconstruct/ct``, ``reconstruct/inpaint``, ``reconstruct/cs`` (the reconstruction task of a forward
model is ``"reconstruct/" + operator.kind``) and ``compress``. Each task has a
default (:data:`DEFAULT_PRESET`); ``"default"`` names it for every task. How well each setting did is measured in the
documentation, not here.
"""

from __future__ import annotations

from dataclasses import fields, replace

from .core.config import FitConfig
from .errors import InputError

#: The clinician-facing denoising strengths, weakest first: a stronger setting stops the fit earlier (at a higher
#: misfit relative to the estimated noise), so less fine texture, and less noise, is reproduced. The MONAI
#: transform, the Slicer module and the command line offer these names.
STRENGTHS = ("low", "medium", "high")

_DENOISE = FitConfig()
_RECONSTRUCT = FitConfig(blocks=6, iterations=1000, ensemble=1, stopping="fixed", amp=False)

PRESETS: dict[str, dict[str, FitConfig]] = {
    "denoise": {
        "low": replace(_DENOISE, discrepancy_factor=0.92),
        "medium": _DENOISE,
        "high": replace(_DENOISE, discrepancy_factor=1.0),
        "fast": FitConfig(channels=32, iterations=300, ensemble=1, stopping="fixed"),
        "quality": replace(_DENOISE, ensemble=4),
        "sure": replace(_DENOISE, stopping="sure", ensemble=1),
        "speed": replace(_DENOISE, ensemble=1, iterations=450, compile=True),
    },
    "reconstruct/mri": {"default": replace(_RECONSTRUCT, ensemble=2, architecture="both")},
    "reconstruct/sense": {"default": replace(_RECONSTRUCT, ensemble=2, iterations=3000)},
    "reconstruct/ct": {"default": replace(_RECONSTRUCT, iterations=12000, final_learning_rate=0.001,
                                          tv_weight=0.02)},
    "reconstruct/inpaint": {"default": _RECONSTRUCT},
    "reconstruct/cs": {"default": replace(_RECONSTRUCT, channels=32, blocks=5)},
    "compress": {
        # the reference code's compression recipe (reinhardh/supplement_deep_decoder, include/compression.py)
        "reference": FitConfig(channels=32, blocks=6, iterations=15000, learning_rate=0.004, ensemble=1,
                               result="last", stopping="fixed", amp=False, norm_first=True, input_noise=0.005),
        # for short encodes (the input noise is meant for long fits)
        "decay": FitConfig(channels=32, blocks=6, iterations=2000, learning_rate=0.01, final_learning_rate=0.003,
                           ensemble=1, result="last", stopping="fixed", amp=False),
    },
}

#: The preset each task uses when none is named.
DEFAULT_PRESET = {"denoise": "medium", "compress": "reference"} | {
    task: "default" for task in PRESETS if task.startswith("reconstruct/")}

TASKS = tuple(PRESETS)
_FIELDS = {f.name for f in fields(FitConfig)}


def presets(task: str) -> list[str]:
    """The preset names of ``task``, its default first, then ``"default"`` (an alias of the default) where it is
    not itself called so."""
    _check_task(task)
    names = [DEFAULT_PRESET[task], *(n for n in PRESETS[task] if n != DEFAULT_PRESET[task])]
    return names if "default" in names else [*names, "default"]


def resolve(task: str, preset: str | None = None, config: FitConfig | None = None, **overrides) -> FitConfig:
    """The :class:`FitConfig` for ``task``: ``config`` if given, else the named ``preset`` (default: the task's),
    with ``overrides`` (``FitConfig`` fields; ``None`` values are ignored) applied, then checked against the task.

    Raises :class:`InputError` (one line, naming the settings) for an unknown task, preset or field, a preset and a
    config given together, a value out of range, or settings that do not go together.
    """
    _check_task(task)
    if config is not None and preset is not None:
        raise InputError(f"give a preset or a config, not both (preset {preset!r} and a FitConfig)")
    if config is None:
        name = DEFAULT_PRESET[task] if preset in (None, "default") else preset
        if name not in PRESETS[task]:
            raise InputError(f"unknown preset {preset!r} for {task}; choose one of {', '.join(presets(task))}")
        config = PRESETS[task][name]
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)}; FitConfig has {', '.join(sorted(_FIELDS))}")
    try:
        config = replace(config, **given)
    except ValueError as err:
        raise InputError(str(err)) from None
    _check_combination(task, config)
    return config


def _check_task(task: str) -> None:
    if task not in PRESETS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(PRESETS)}")


def _check_combination(task: str, config: FitConfig) -> None:
    """Settings that do not go together raise an error naming both."""
    denoising = task == "denoise"
    if config.slab != 1 and not denoising:
        raise InputError(f"slab={config.slab} applies to denoising only; {task} fits one slice per decoder")
    if config.stopping != "fixed" and not denoising:
        raise InputError(f"stopping={config.stopping!r} needs image-shaped measurements (denoising); {task} runs "
                         "stopping='fixed'")
    if config.architecture == "both" and not task.startswith("reconstruct/"):
        raise InputError(f"architecture='both' applies to reconstruction; {task} fits one decoder kind "
                         "('deep' or 'conv')")
    if task == "compress" and (config.architecture != "deep" or config.ensemble != 1 or config.result != "last"):
        raise InputError("compress stores one 'deep' decoder per slice: architecture='deep', ensemble=1 and "
                         f"result='last' (got {config.architecture!r}, {config.ensemble}, {config.result!r})")
