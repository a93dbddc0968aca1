"""``dd-medical`` command line: a door over :mod:`dd_medical.api`, :mod:`dd_medical.presets` and :mod:`.io`."""

from __future__ import annotations

import functools
import logging
import sys
import time
from pathlib import Path
from typing import NamedTuple

import click
import numpy as np

from . import api, presets
from .errors import DDMedicalError, InputError
from .io import (
    atomic_output_file,
    check_output,
    derivation_description,
    read_volume,
    resolve_transfer_syntax,
    uncertainty_derivation,
    uncertainty_series_description,
    write_uncertainty,
    write_volume,
)
from .io.provenance import with_check
from .io.transfer_syntax import transfer_syntax_names
from .node.command import node as node_command
from .version import __version__
from .volume import Volume

log = logging.getLogger("dd_medical")

#: Exit codes: 0 done, 1 some batch series failed, 2 bad input or options, 3 written but the fidelity check
#: flagged a slice (the residual does not look like noise: anatomy may have been removed), or the reconstruction
#: check flagged a slice as unreliable (it may be worse than the cheap baseline).
EXIT_FIDELITY = 3

def _fail(message: str) -> None:
    click.echo(f"dd-medical: error: {message}", err=True)
    sys.exit(2)


def _handle_errors(func):
    """Turn expected failures into a one-line message and exit code 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except DDMedicalError as err:
            _fail(str(err))
        except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
            _fail(f"{err.filename}: {err.strerror}" if getattr(err, "filename", None) else str(err))
        except KeyboardInterrupt:
            _fail("interrupted; no partial output was left in place")

    return wrapper


class Settings(NamedTuple):
    """What the fit options asked for: a preset name (``None``: the task's default) and ``FitConfig`` overrides."""

    preset: str | None
    overrides: dict

    def resolve(self, task: str, **more) -> presets.FitConfig:
        return presets.resolve(task, self.preset, **self.overrides, **more)


#: Fit options that only denoising has: a reconstruction fits one slice per decoder, in float32.
DENOISING_ONLY = ("slab", "fp32", "detail_threshold")


def _fit_options(task: str, default_preset: str | None = None):
    """Options shared by the fitting commands; the command receives them as ``settings=Settings``. ``task``
    ``"reconstruct"`` stands for every ``reconstruct/<kind>`` task (the kind is known once INPUT is read) and has no
    :data:`DENOISING_ONLY` options."""
    tasks = [t for t in presets.TASKS if t.startswith("reconstruct/")] if task == "reconstruct" else [task]
    choices = list(dict.fromkeys(name for t in tasks for name in presets.presets(t)))
    shown = default_preset or ("default" if task == "reconstruct" else presets.DEFAULT_PRESET[task])
    blocks = "6" if task == "reconstruct" else "from the noise level, at most 6"
    options = {
        "preset": click.option("--preset", "preset_name", type=click.Choice(choices), default=default_preset,
                               help=f"Named settings (dd_medical.presets) [default: {shown}]."),
        "iterations": click.option("--iterations", type=click.IntRange(min=1), default=None,
                                   help="Maximum Adam steps per slice [default: the preset's]."),
        "channels": click.option("--channels", type=click.IntRange(min=1), default=None,
                                 help="Decoder channels k per block [default: the preset's, 64]."),
        "blocks": click.option("--blocks", type=click.IntRange(min=1), default=None,
                               help=f"Decoder blocks [default: the preset's: {blocks}]."),
        "ensemble": click.option("--ensemble", type=click.IntRange(min=1), default=None,
                                 help="Decoders averaged per slice [default: the preset's]."),
        "slab": click.option("--slab", type=click.IntRange(min=1), default=None,
                             help="2.5D denoising: adjacent slices fitted together by each decoder, odd (1: slice by "
                                  "slice) [default: 1]."),
        "detail_threshold": click.option(
            "--detail-threshold", type=click.FloatRange(min=0), default=None,
            help="A slice whose residual does not look like noise gets the structure of its residual back: its "
                 "starlet coefficients above this many times their scale's noise (0: off) [default: 3]."),
        "fp32": click.option("--fp32", is_flag=True, help="On CUDA, fit in float32 instead of bf16 autocast."),
        "compile": click.option("--compile", "compile_", is_flag=True,
                                help="On CUDA, fuse the decoder's kernels with torch.compile (each new batch shape is "
                                     "compiled first). No effect on a CPU."),
        "batch_size": click.option("--batch-size", type=click.IntRange(min=1), default=None,
                                   help="Slices fitted at once (memory only) [default: from free device memory]."),
        "device": click.option("--device", default="auto", show_default=True,
                               help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N."),
        "seed": click.option("--seed", type=int, default=0, show_default=True,
                             help="Random seed (same seed, same output)."),
    }
    if task == "reconstruct":
        options = {name: option for name, option in options.items() if name not in DENOISING_ONLY}

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, preset_name, iterations, channels, blocks, ensemble, compile_, seed, slab=None,
                    detail_threshold=None, fp32=False, **kwargs):
            overrides = dict(iterations=iterations, channels=channels, blocks=blocks, ensemble=ensemble, slab=slab,
                             seed=seed, amp=False if fp32 else None, compile=True if compile_ else None,
                             detail_threshold=detail_threshold)
            try:
                api.resolve_device(kwargs["device"])  # a mistyped or missing device, before any reading or fitting
            except DDMedicalError as err:
                _fail(str(err))
            return func(*args, settings=Settings(preset_name, overrides), **kwargs)

        for option in reversed(options.values()):
            wrapper = option(wrapper)
        return wrapper

    return decorate


#: How the modality of a file that does not record it is chosen (:func:`dd_medical.api.modality_of`).
MODALITY_RULE = "CT, in HU, when any value is negative, else MR"


def _modality_option(what: str):
    return click.option(
        "--modality", type=click.Choice(["auto", "CT", "MR"], case_sensitive=False), default="auto",
        show_default=True, metavar="[auto|CT|MR]",
        help=f"What INPUT is; it picks the default window (CT: the full range; MR: percentiles 0.5 and 99.5) and "
             f"the units (CT: HU; MR: stored values) {what}. auto: a DICOM series' (or MetaImage's) own modality; "
             f"for a file that does not record it (NIfTI, NRRD): {MODALITY_RULE}, said on stderr.")


def _window_option(default: str, use: str = "mapped to [0, 1] for the fit"):
    return click.option("--window", nargs=2, type=float, default=None, metavar="LOW HIGH",
                        help=f"Intensity window {use}, in the input's units: HU for CT, stored values for MR "
                             f"(default: {default}).")


def _modality(volume: Volume, given: str) -> str:
    """The modality that picks ``volume``'s window and units: ``--modality``, else its own, else the stated rule
    (said once on stderr)."""
    if given.lower() != "auto":
        return given.upper()
    modality = api.modality_of(volume)
    if volume.modality.strip().upper() in ("", "OT"):
        click.echo(f"dd-medical: INPUT does not record its modality: taken as {modality} ({MODALITY_RULE}); "
                   "--modality CT or MR sets it", err=True)
    return modality


def _units(modality: str) -> str:
    return "HU" if modality == "CT" else "stored values"


def _given(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not left at its default."""
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def _transfer_syntax_option():
    return click.option(
        "--transfer-syntax", default="auto", show_default=True, metavar="NAME|UID",
        help=f"Encoding of the derived DICOM series, always lossless: {transfer_syntax_names()} or one of their "
             "UIDs. auto keeps the source's compression when it is lossless (RLE, JPEG 2000 lossless, JPEG-LS "
             "lossless) and its encoder is installed, else writes Explicit VR Little Endian (uncompressed; a lossy "
             "source is never re-encoded lossily). An unknown one, or one whose encoder is not installed, is "
             "refused before any fitting.")


def _uncertainty_option(what: str, needs: str):
    return click.option(
        "--uncertainty", "uncertainty_path", type=click.Path(path_type=Path), default=None, metavar="SD_OUT",
        help=f"Also write {what}: an image file, or a derived DICOM series (a folder) that references OUTPUT's "
             f"series when OUTPUT is one; SD_OUT's kind is decided like OUTPUT's (--format, else its extension). "
             f"{needs}")


def _check_uncertainty_output(sd_path: Path, output_path: Path, input_path: Path, output_kind: str | None) -> str:
    """Refuse, before any work, an SD_OUT that is OUTPUT, lies inside it or holds it, or that ``check_output``
    refuses (it exists and is not an empty folder, it is INPUT, its kind is unknown); returns its kind."""
    sd, out = sd_path.resolve(), output_path.resolve()
    if sd == out:
        raise InputError("--uncertainty SD_OUT is OUTPUT; give the map its own path", sd_path)
    if out in sd.parents or sd in out.parents:
        raise InputError("--uncertainty SD_OUT and OUTPUT lie one inside the other; give each its own place", sd_path)
    return check_output(sd_path, input_path, output_kind)


def _uncertainty_summary(sd: Volume, units: str, what: str, sd_path: Path) -> str:
    """The summary line of a written map: its median and 99th percentile over the volume."""
    median, p99 = (float(v) for v in np.percentile(sd.array, [50, 99]))
    return f"uncertainty: {what}, median {median:.1f} {units}, 99th percentile {p99:.1f} {units}; wrote {sd_path}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dd-medical")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (file names and UIDs only).")
def cli(verbose: bool) -> None:
    """Untrained Deep Decoder denoising for CT/MR: no training data, no downloaded weights."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # its encoder logs a line per tile of every slice


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@_fit_options("denoise")
@_modality_option("of the summary")
@_window_option("CT: the full range, nothing clipped; MR: percentiles 0.5 and 99.5")
@click.option("--format", "output_kind", type=click.Choice(["dicom", "image"]), default=None,
              help="What OUTPUT is: a folder for a derived DICOM series, or an image file (default: from OUTPUT: "
                   "an extension .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd is an image file, no extension a folder).")
@_transfer_syntax_option()
@_uncertainty_option("the calibrated per-voxel standard deviation of the denoised value (HU for CT, stored values "
                     "for MR), from the spread of the ensemble's decoders",
                     "Needs 2 or more decoders per slice (--ensemble; the fast, sure and speed presets fit one).")
@_handle_errors
def denoise(input_path: Path, output_path: Path, settings: Settings, batch_size: int | None, device: str,
            modality: str, window: tuple[float, float] | None, output_kind: str | None,
            transfer_syntax: str, uncertainty_path: Path | None) -> None:
    """Denoise INPUT (a DICOM series folder or a NIfTI/NRRD/MHA file) into OUTPUT.

    OUTPUT is a folder for a derived DICOM series, or a file whose extension (.nii.gz, .nrrd, .mha) gives the
    format. Nothing is written until the result is complete; INPUT is never modified. Every slice is checked against
    its input (the residual must look like noise); when a slice fails, the output is still written, the summary and
    the DICOM DerivationDescription say so, and the exit code is 3. A multi-frame object is denoised frame by frame
    and written with the same frames (a legacy one as one multi-frame object).
    """
    config = settings.resolve("denoise")
    resolve_transfer_syntax(transfer_syntax)
    kinds = [check_output(output_path, input_path, output_kind)]
    if uncertainty_path is not None:
        kinds.append(_check_uncertainty_output(uncertainty_path, output_path, input_path, output_kind))
        if config.ensemble < 2:
            _fail(f"--uncertainty needs --ensemble 2 or more: the map is the spread of the decoders fitted per slice, "
                  f"and these settings fit {config.ensemble}")
    if "dicom" not in kinds and _given(click.get_current_context(), "transfer_syntax"):
        _fail("--transfer-syntax applies to a DICOM series OUTPUT, not to an image file")
    volume = read_volume(input_path)
    modality = _modality(volume, modality)
    t0 = time.perf_counter()
    result = api.denoise(volume, config=config, device=device, window=window, modality=modality,
                         batch_size=batch_size, uncertainty=uncertainty_path is not None)
    result, sd = result if uncertainty_path is not None else (result, None)
    seconds = time.perf_counter() - t0
    fidelity = api.check(volume, result)
    decoders = f"{config.ensemble} decoder{'s' if config.ensemble > 1 else ''}"
    description = f"DD denoised (k={config.channels}, {decoders})"
    write_volume(result, output_path, series_description=description,
                 derivation_description=f"{derivation_description(config)}; {fidelity.summary()}", format=output_kind,
                 transfer_syntax=transfer_syntax)
    depth, height, width = volume.shape
    units = _units(modality)
    click.echo(f"denoised {depth} slice(s) of {height}x{width} ({modality}) in {seconds:.1f} s; noise estimate "
               f"{fidelity.noise:.1f} -> {api.estimate_noise(result):.1f} {units}; {fidelity.summary()}; "
               f"wrote {output_path}")
    if sd is not None:
        write_uncertainty(sd, uncertainty_path, series_description=uncertainty_series_description(description, units),
                          derivation_description=uncertainty_derivation(config, units), units=units,
                          denoised=output_path if kinds[0] == "dicom" else None, format=output_kind,
                          transfer_syntax=transfer_syntax)
        click.echo(_uncertainty_summary(sd, units, "calibrated SD of the denoised value", uncertainty_path))
    if not fidelity.passed:
        sys.exit(EXIT_FIDELITY)


@cli.command()
@click.option("--output", "output_dir", type=click.Path(path_type=Path), default=Path("dd-medical-demo"),
              show_default=True, help="Folder for the derived DICOM series and the PNG panel.")
@click.option("--photons", type=click.FloatRange(min=1), default=None,
              help="Photons incident on each ray of the simulated scan (fewer: noisier) [default: 1e4, a low-dose "
                   "scan].")
@click.option("--noise-hu", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Instead of a simulated scan, add white Gaussian noise of this standard deviation (HU) to the "
                   "phantom.")
@_fit_options("denoise", default_preset="fast")
@_handle_errors
def demo(output_dir: Path, photons: float | None, noise_hu: float | None, settings: Settings, batch_size: int | None,
         device: str) -> None:
    """Scan the shipped CT phantom series at low dose (simulated: photon counts, filtered back-projection), denoise
    the scan, and measure the result against the same scan without noise."""
    from .demo import DEMO_PHOTONS, run_demo

    if photons is not None and noise_hu is not None:
        _fail("--photons and --noise-hu are two kinds of noise: give one")
    config = settings.resolve("denoise")
    report = run_demo(output_dir, photons=DEMO_PHOTONS if photons is None else photons, noise_hu=noise_hu,
                      config=config, device=device, batch_size=batch_size, seed=config.seed)
    click.echo(report)
    if report.fidelity is not None and not report.fidelity.passed:
        sys.exit(EXIT_FIDELITY)


@cli.command()
@click.argument("input_root", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("output_root", type=click.Path(path_type=Path))
@click.option("--task", type=click.Choice(["denoise"]), default="denoise", show_default=True,
              help="What to do to every image series.")
@click.option("--retry-failed", is_flag=True, help="Also redo series that failed in an earlier run.")
@click.option("--org-root", envvar="DD_MEDICAL_ORG_ROOT", default=None,
              help="UID root of the derived series (env DD_MEDICAL_ORG_ROOT) [default: 2.25. UUID-derived UIDs].")
@click.option("--engine", "--executor", "engine", type=click.Choice(["serial", "ray"]), default="serial",
              show_default=True, help="How series are run: here one after the other, or as tasks on a Ray cluster.")
@click.option("--ray-address", default=None, metavar="auto|ray://HOST:PORT",
              help="--engine ray: cluster to use (auto: the one `ray start` began here) [default: RAY_ADDRESS, "
                   "else a new local Ray instance using this machine's CPUs and GPUs].")
@click.option("--gpus-per-task", type=click.FloatRange(min=0), default=None,
              help="--engine ray: GPUs per task, fractional allowed (0.5: two series per GPU) [default: 1 if the "
                   "cluster has GPUs and --device is not cpu, else 0].")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="--engine ray: reruns of a task whose worker died (killed, out of memory, node lost).")
@click.option("--chunk-slices", type=click.IntRange(min=1), default=None,
              help="--engine ray: split series with more slices into chunks of this many, one task each.")
@_fit_options("denoise")
@_window_option("each series' own: CT the full range, MR percentiles 0.5 and 99.5")
@_transfer_syntax_option()
@click.option("--uncertainty", is_flag=True,
              help="Also write each series' uncertainty map (the calibrated per-voxel standard deviation of the "
                   "denoised value, HU for CT) as a derived series series/<hash>-uncertainty/ referencing the "
                   "denoised one, and show it in the report's montage. Needs --ensemble 2 or more. Series done "
                   "earlier without one are redone.")
@_handle_errors
def batch(input_root: Path, output_root: Path, task: str, retry_failed: bool, org_root: str | None, engine: str,
          ray_address: str | None, gpus_per_task: float | None, max_retries: int, chunk_slices: int | None,
          settings: Settings, batch_size: int | None, device: str, window: tuple[float, float] | None,
          transfer_syntax: str, uncertainty: bool) -> None:
    """Process every DICOM image series under INPUT_ROOT into derived series under OUTPUT_ROOT.

    OUTPUT_ROOT gets manifest.sqlite (status per series), series/<hash>/ (one derived series each), report.html
    and report/<hash>.png. Rerun the same command to resume: finished series are verified and skipped. Exit code
    0 only if every series succeeded, 1 if any failed, 3 if all were written but the fidelity check flagged one
    (status "check" in the manifest and report); INPUT_ROOT is never modified. With --engine ray (pip install
    'dd-medical[ray]') series run as Ray tasks, on every GPU of this machine or of a cluster; outputs are the same.
    """
    from .batch import RayExecutor, run_batch

    ctx = click.get_current_context()
    ray_only = [f"--{n.replace('_', '-')}" for n in ("ray_address", "gpus_per_task", "max_retries", "chunk_slices")
                if _given(ctx, n)]
    if engine == "serial" and ray_only:
        _fail(f"{', '.join(ray_only)} only apply with --engine ray")
    resolve_transfer_syntax(transfer_syntax)
    config = settings.resolve("denoise")
    executor = engine
    if engine == "ray":
        executor = RayExecutor(ray_address, gpus_per_task=gpus_per_task, max_retries=max_retries,
                               chunk_slices=chunk_slices)
    summary = run_batch(input_root, output_root, task=task, config=config, device=device, batch_size=batch_size,
                        window=window, org_root=org_root, retry_failed=retry_failed, executor=executor,
                        transfer_syntax=transfer_syntax, uncertainty=uncertainty)
    click.echo(summary.format())
    if not summary.ok:
        sys.exit(1)
    if summary.flagged:
        sys.exit(EXIT_FIDELITY)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@_fit_options("reconstruct")
@click.option("--simulate", "simulate_kind", type=click.Choice(["mri", "ct", "inpaint"]), default=None,
              help="Simulate measurements from INPUT (an image or DICOM series) and report PSNR/SSIM against it.")
@click.option("--acceleration", type=float, default=4.0, show_default=True, help="MRI undersampling factor (>= 1).")
@click.option("--center-fraction", type=float, default=0.08, show_default=True,
              help="MRI: fraction of central k-space lines always sampled.")
@click.option("--mask-type", type=click.Choice(["equispaced", "random", "variable-density"]), default="equispaced",
              show_default=True, help="MRI mask for --simulate mri.")
@click.option("--mask", "mask_path", type=click.Path(path_type=Path), default=None,
              help="Mask .npy: k-space lines (W,) or (H, W) [default for raw k-space: the sampled columns].")
@click.option("--views", type=int, default=None, help="CT: number of views [--simulate ct: 60].")
@click.option("--arc", "arc_deg", type=float, default=180.0, show_default=True,
              help="CT: angular range of the views in degrees (< 180: limited angle).")
@click.option("--counts", "counts_path", type=click.Path(path_type=Path), default=None,
              help="A .npy sinogram's detected photon counts (its shape, or (views, detectors) for every slice): "
                   "rays short of photons are weighted by their counts, rays under 30 counts left out, the rest "
                   "alike.")
@click.option("--photons", type=click.FloatRange(min=1), default=None,
              help="--simulate ct: a noisy scan with this many photons incident on each ray (about 1e5 routine "
                   "dose, 1e4 low dose; Poisson counts plus electronic noise; the path lengths from INPUT's pixel "
                   "spacing in mm) [default: noise-free].")
@click.option("--missing", type=float, default=0.5, show_default=True,
              help="Inpainting: fraction of pixels removed (--simulate inpaint).")
@click.option("--image-size", type=int, default=None, help="CT sinogram input: image size N [default: from detectors].")
@click.option("--real-object", is_flag=True, default=False,
              help="--simulate mri: fit a real, non-negative image (the simulated object is a magnitude image).")
@click.option("--architecture", default=None, metavar="[both|deep|conv]",
              help="Decoder: deep (the paper's 1x1 convolutions), conv (ConvDecoder: 3x3 convolutions, nearest "
                   "upsampling, ~4x the time) or both (each kind fitted, all averaged) [default: both for "
                   "single-coil MRI, else deep].")
@click.option("--tv-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of a total-variation penalty on the decoder's image, added to the data term (0: none) "
                   "[default: the preset's: 0.02 for CT, 0 otherwise].")
@click.option("--format", "output_kind", type=click.Choice(["dicom", "image"]), default=None,
              help="What OUTPUT is: a folder for a derived DICOM series, or an image file (default: from OUTPUT: "
                   "an extension .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd is an image file, no extension a folder).")
@_uncertainty_option("the per-pixel standard deviation of the decoders' images (their spread, in OUTPUT's units)",
                     "It is NOT calibrated: it shows where the decoders disagree, not an error bar. Needs 2 or more "
                     "decoders per slice (--ensemble 2, or --architecture both).")
@_handle_errors
def reconstruct(input_path: Path, output_path: Path, settings: Settings, batch_size: int | None, device: str,
                simulate_kind: str | None, acceleration: float, center_fraction: float,
                mask_type: str, mask_path: Path | None, views: int | None, arc_deg: float,
                counts_path: Path | None, photons: float | None, missing: float, image_size: int | None,
                real_object: bool, architecture: str | None,
                tv_weight: float | None, output_kind: str | None, uncertainty_path: Path | None) -> None:
    """Reconstruct undersampled measurements in INPUT into OUTPUT, the untrained decoder as the prior.

    INPUT is raw data (fastMRI .h5 k-space, .npy k-space or sinogram) or, with --simulate, an image file or
    DICOM series measured retrospectively. OUTPUT is a folder (derived DICOM series) or an image file. The
    decoder settings are the reconstruction preset of the modality (dd_medical.presets), with the options above
    applied on top.

    Every slice is checked without ground truth: the fit's data misfit (the part of the measurements it leaves
    unexplained) and, with two or more decoders per slice, their disagreement where nothing was measured; higher
    is worse for both. When a slice exceeds a limit it is flagged as unreliable (it may be worse than the
    zero-filled or FBP baseline): the output is still written, the summary, a warning and the DICOM
    DerivationDescription say so, and the exit code is 3.
    """
    from .io.raw import is_raw_path, load_mask, read_raw

    out_kind = check_output(output_path, input_path, output_kind)
    if uncertainty_path is not None:
        _check_uncertainty_output(uncertainty_path, output_path, input_path, output_kind)
    if not input_path.exists():
        raise InputError("path does not exist", input_path)
    raw = is_raw_path(input_path)
    if simulate_kind is None and not raw:
        raise InputError("not raw measurements (.h5/.npy); to simulate from an image use --simulate mri|ct|inpaint",
                         input_path)
    if simulate_kind is not None and raw:
        raise InputError("--simulate needs an image or DICOM series, not raw measurements", input_path)
    if simulate_kind is not None:
        _refuse_unused(click.get_current_context(), f"simulate {simulate_kind}")
    like = read_volume(input_path) if simulate_kind else None
    if like is not None:
        sim = api.simulate(like.array, simulate_kind, modality=like.modality, acceleration=acceleration,
                           center_fraction=center_fraction, mask_type=mask_type,
                           mask=load_mask(mask_path) if mask_path else None, views=60 if views is None else views,
                           arc_deg=arc_deg, missing=missing, seed=settings.overrides["seed"], real_object=real_object,
                           photons=photons, pixel_mm=float(like.spacing[0]))
        measurements, operator = sim.measurements, sim.operator
    else:
        measurements, operator, modality = read_raw(input_path, mask_path=mask_path, views=views, arc_deg=arc_deg,
                                                    image_size=image_size, counts_path=counts_path)
        _refuse_unused(click.get_current_context(), f"raw {operator.kind}")
    config = settings.resolve(f"reconstruct/{operator.kind}", architecture=architecture, tv_weight=tv_weight)
    decoders = config.ensemble * (2 if config.architecture == "both" else 1)
    if uncertainty_path is not None and decoders < 2:
        _fail(f"--uncertainty needs 2 or more decoders per slice (--ensemble 2, or --architecture both): the map is "
              f"their spread, and these settings fit {decoders}")
    t0 = time.perf_counter()
    result, check = api.reconstruct(measurements, operator, config=config, device=device, batch_size=batch_size,
                                    uncertainty=uncertainty_path is not None, report=True)
    result, spread = result if uncertainty_path is not None else (result, None)
    seconds = time.perf_counter() - t0
    quality = ""
    if like is not None:
        quality = _quality(result, api.baseline(measurements, operator), sim.reference, operator.baseline_name)
        out_volume = like.with_array(sim.to_input_units(result))
    else:
        out_volume = Volume(result, modality=modality)
    job = f"reconstruction ({operator.kind})"
    write_volume(out_volume, output_path, series_description="DD reconstruction",
                 derivation_description=with_check(derivation_description(config, job), check.summary()),
                 format=output_kind)
    depth, height, width = out_volume.shape
    click.echo(f"reconstructed {depth} slice(s) of {height}x{width} in {seconds:.1f} s (decoder: "
               f"{config.architecture}){quality}; wrote {output_path}")
    click.echo(check.summary())
    if spread is not None:
        units = _units(api.modality_of(like)) if like is not None else "image units"
        if like is not None:  # the input's units: only the scale of an affine map applies to a spread
            spread = np.abs(sim.to_input_units(spread) - sim.to_input_units(np.zeros_like(spread)))
        sd = out_volume.with_array(np.asarray(spread, dtype=np.float32))
        write_uncertainty(sd, uncertainty_path, units=units, format=output_kind,
                          series_description=uncertainty_series_description("DD reconstruction", units,
                                                                            calibrated=False),
                          derivation_description=uncertainty_derivation(config, units, job=job, calibrated=False),
                          denoised=output_path if out_kind == "dicom" else None)
        click.echo(_uncertainty_summary(sd, units, "spread of the decoders, not calibrated", uncertainty_path))
    if check.unreliable:
        flagged = len(check.flagged)
        log.warning("the reconstruction may be worse than the %s baseline on %d of %d slice(s): the reconstruction "
                    "check flagged %s as unreliable (exit code 3)", operator.baseline_name, flagged,
                    len(check.slices), "it" if flagged == 1 else "them")
        sys.exit(EXIT_FIDELITY)


#: Where each measurement option of ``reconstruct`` has an effect: ``"simulate <kind>"`` or ``"raw <kind>"``.
_APPLIES = {"acceleration": ("simulate mri",), "center_fraction": ("simulate mri",), "mask_type": ("simulate mri",),
            "real_object": ("simulate mri",), "mask_path": ("simulate mri", "raw mri", "raw sense"),
            "views": ("simulate ct", "raw ct"), "arc_deg": ("simulate ct", "raw ct"), "image_size": ("raw ct",),
            "photons": ("simulate ct",), "counts_path": ("raw ct",),
            "missing": ("simulate inpaint",)}
_CONTEXTS = {"raw mri": "raw k-space", "raw sense": "raw k-space", "raw ct": "a raw sinogram"}


def _refuse_unused(ctx: click.Context, context: str) -> None:
    """Exit 2 naming the first measurement option given on the command line that has no effect in ``context``."""
    for param in ctx.command.params:
        where = _APPLIES.get(param.name)
        if where is None or context in where or ctx.get_parameter_source(param.name) in (
                None, click.core.ParameterSource.DEFAULT):
            continue
        said = [_CONTEXTS.get(c, f"--{c}") for c in where]
        _fail(f"{param.opts[0]} applies to {' or '.join(dict.fromkeys(said))}, not to "
              f"{_CONTEXTS.get(context, f'--{context}')}")


def _quality(result, baseline, reference, baseline_name: str) -> str:
    """PSNR (dB) and SSIM against the image the measurements were simulated from (on its range; higher is better),
    of the reconstruction and of the forward model's cheap baseline, and which of the two is better."""
    from .metrics import psnr, ssim

    span = float(reference.max() - reference.min()) or 1.0
    ours, theirs = (round(float(psnr(x, reference, span).mean()), 2) for x in (result, baseline))
    ours_ssim, theirs_ssim = (float(ssim(x, reference, span).mean()) for x in (result, baseline))
    verdict = "as good as" if ours == theirs else f"{abs(ours - theirs):.2f} dB " + (
        "better than" if ours > theirs else "worse than")
    return (f"; against INPUT, which the measurements were simulated from (higher is better): PSNR {ours:.2f} dB, "
            f"SSIM {ours_ssim:.3f}; {baseline_name} baseline PSNR {theirs:.2f} dB, SSIM {theirs_ssim:.3f}; the "
            f"reconstruction is {verdict} the baseline")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUT.ddc", type=click.Path(path_type=Path))
@click.option("--channels", type=click.IntRange(min=1), default=None,
              help="Decoder channels k (more: larger file, better image) [default: the recipe's, 32].")
@click.option("--blocks", type=click.IntRange(min=1), default=None, help="Decoder blocks [default: 6].")
@click.option("--bits", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Bits per stored weight.")
@click.option("--recipe", type=click.Choice(presets.presets("compress")), default=None,
              help="Encoder settings: 'reference' (the default; the reference code's: normalisation before ReLU, "
                   "constant step 0.004, decaying input noise, 15000 steps; minutes per slice on a GPU); 'decay' "
                   "(step size 0.01 -> 0.003, 2000 steps) for short fits.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Adam steps per slice (more: better image, slower encoding) [default: the recipe's].")
@click.option("--refine-iterations", type=click.IntRange(min=0), default=None,
              help="Quantisation-aware refinement steps after the fit (0: none) [default: a tenth of --iterations].")
@_modality_option("of the PSNR's window")
@_window_option("CT: the full range, nothing clipped; MR: percentiles 0.5 and 99.5", "that is encoded")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present, else CPU), cpu, cuda.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same file).")
@_handle_errors
def compress(input_path: Path, output_path: Path, channels: int | None, blocks: int | None, bits: str,
             recipe: str | None, iterations: int | None, refine_iterations: int | None, modality: str,
             window: tuple[float, float] | None, device: str, seed: int) -> None:
    """Compress INPUT (a DICOM series folder or image file) into OUT.ddc: one fitted decoder per slice (lossy)."""
    config = presets.resolve("compress", recipe, channels=channels, blocks=blocks, iterations=iterations, seed=seed)
    if output_path.suffix.lower() != ".ddc":
        raise InputError(f"a compressed file ends in .ddc, not {output_path.suffix or '(no extension)'!r}",
                         output_path)
    if output_path.exists():
        raise InputError("output file already exists (refusing to overwrite)", output_path)
    volume = read_volume(input_path)
    modality = _modality(volume, modality)
    encoded = api.compress(volume, config=config, bits=int(bits), refine_iterations=refine_iterations,
                           window=window, device=device, modality=modality)
    with atomic_output_file(output_path) as tmp:
        tmp.write_bytes(encoded.data)
    depth, height, width = volume.shape
    click.echo(
        f"compressed {depth} slice(s) of {height}x{width} into {len(encoded.data)} bytes "
        f"({8 * len(encoded.data) / volume.array.size:.3f} bits/pixel, {encoded.ratio:.1f}:1 against 16-bit pixels) "
        f"in {encoded.seconds:.1f} s; PSNR {sum(encoded.psnr) / len(encoded.psnr):.2f} dB on the window "
        f"[{encoded.header['window'][0]:g}, {encoded.header['window'][1]:g}] {_units(modality)} ({modality}); "
        f"wrote {output_path}"
    )


@cli.command()
@click.argument("input_path", metavar="IN.ddc", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True,
              help="cpu reproduces exactly the image compress measured; cuda is faster, equal to float rounding.")
@click.option("--format", "output_kind", type=click.Choice(["dicom", "image"]), default=None,
              help="What OUTPUT is: a folder for a derived DICOM series, or an image file (default: from OUTPUT: "
                   "an extension .nii.gz, .nii, .nrrd, .nhdr, .mha or .mhd is an image file, no extension a folder).")
@_handle_errors
def decompress(input_path: Path, output_path: Path, device: str, output_kind: str | None) -> None:
    """Decompress IN.ddc into OUTPUT: a folder (new DICOM series marked lossy) or an image file (.nrrd, .nii.gz)."""
    from .codec.format import DICOM_METHOD, compression_ratio, read_header
    from .io import write_image, write_lossy_series

    kind = check_output(output_path, input_path, output_kind)
    if not input_path.is_file():
        raise InputError("no such .ddc file" if not input_path.exists() else "not a file", input_path)
    data = input_path.read_bytes()
    header, _ = read_header(data, input_path)  # every check of the file, naming it, before decoding
    volume = api.decompress(data, device=device)
    if kind == "image":
        write_image(volume, output_path)
    else:
        arch, bits = header["architecture"], header["quantisation"]["bits"]
        ratio = compression_ratio(header, len(data))
        write_lossy_series(volume, output_path, ratio=ratio, method=DICOM_METHOD,
                           series_description=f"DD decompressed (k={arch['channels']})",
                           derivation_description=f"Lossy compression by dd-medical .ddc: one Deep Decoder per slice "
                           f"(k={arch['channels']}, {arch['blocks']} blocks), {bits}-bit weights, ratio {ratio:.1f}:1")
    click.echo(f"decompressed {volume.shape[0]} slice(s) of {volume.shape[1]}x{volume.shape[2]}; wrote {output_path}")


cli.add_command(node_command)  # dd-medical node: the DICOM node (dd_medical/node/command.py)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dd-medical")


if __name__ == "__main__":
    main()
