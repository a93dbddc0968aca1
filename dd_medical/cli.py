"""``dd-medical`` command line: a front-end over :mod:`dd_medical.pipeline` and :mod:`dd_medical.io`."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

from . import __version__
from .compression import RECIPES
from .errors import DDMedicalError
from .fitting import PRESETS, FitConfig, preset
from .reconstruction import CT_TV_WEIGHT

log = logging.getLogger("dd_medical")


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


def _fit_options(default_preset: str = "default"):
    """Options shared by the fitting commands; the command receives them as ``config=FitConfig``."""
    options = [
        click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default=default_preset,
                     show_default=True,
                     help="Named settings (fast: quicker, a little less quality; speed: GPU volumes, see README)."),
        click.option("--iterations", type=click.IntRange(min=1), default=None,
                     help="Maximum Adam steps per slice [default: the preset's; fitting stops at the noise level]."),
        click.option("--channels", type=click.IntRange(min=1), default=None,
                     help="Decoder channels k per block [default: the preset's, 64]."),
        click.option("--blocks", type=click.IntRange(min=1), default=None,
                     help="Decoder blocks [default: the preset's, 6]."),
        click.option("--ensemble", type=click.IntRange(min=1), default=None,
                     help="Decoders averaged per slice [default: the preset's]."),
        click.option("--slab", type=click.IntRange(min=1), default=None,
                     help="2.5D: adjacent slices fitted together by each decoder, odd (1: slice by slice) "
                          "[default: the preset's, 1]. Denoising only; see README for what it gains and costs."),
        click.option("--fp32", is_flag=True,
                     help="On CUDA, fit in float32 instead of bf16 autocast (bf16 measured equal within 0.01 dB, "
                          "1.6x faster, on an H200). No effect on a CPU."),
        click.option("--compile", "compile_", is_flag=True,
                     help="On CUDA, fuse the decoder's kernels with torch.compile (20-30 s to compile per batch "
                          "shape, then 1.7x per iteration at 512x512 on an H200; the speed preset has it). "
                          "No effect on a CPU."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Slices fitted at once [default: from free device memory]."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same output)."),
    ]

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, preset_name, iterations, channels, blocks, ensemble, slab, fp32, compile_, seed,
                    **kwargs):
            given = dict(iterations=iterations, channels=channels, blocks=blocks, ensemble=ensemble, slab=slab,
                         seed=seed, amp=False if fp32 else None, compile=True if compile_ else None)
            try:
                config = preset(preset_name, **{k: v for k, v in given.items() if v is not None})
            except ValueError as err:
                raise click.BadParameter(str(err)) from err
            return func(*args, config=config, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dd-medical")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (file names and UIDs only).")
def cli(verbose: bool) -> None:
    """Untrained Deep Decoder denoising for CT/MR: no training data, no downloaded weights."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@_fit_options()
@click.option("--window", nargs=2, type=float, default=None, metavar="LOW HIGH",
              help="Intensity window in HU mapped to [0,1] [default: the volume's full range, nothing clipped].")
@_handle_errors
def denoise(input_path: Path, output_path: Path, config: FitConfig, batch_size: int | None, device: str,
            window: tuple[float, float] | None) -> None:
    """Denoise INPUT (a DICOM series folder or a NIfTI/NRRD/MHA file) into OUTPUT.

    OUTPUT is a folder for a derived DICOM series, or a file whose extension (.nii.gz, .nrrd, .mha) gives the
    format. Nothing is written until the result is complete; INPUT is never modified.
    """
    from .api import denoise_file

    summary = denoise_file(input_path, output_path, config, device=device, batch_size=batch_size, window=window)
    click.echo(summary)


@cli.command()
@click.option("--output", "output_dir", type=click.Path(path_type=Path), default=Path("dd-medical-demo"),
              show_default=True, help="Folder for the derived DICOM series and the PNG panel.")
@click.option("--noise-hu", type=float, default=None,
              help="Gaussian noise added, in HU [default: 25/255 of a 2000 HU window, ~196 HU].")
@_fit_options(default_preset="fast")
@_handle_errors
def demo(output_dir: Path, noise_hu: float | None, config: FitConfig, batch_size: int | None, device: str) -> None:
    """Denoise the shipped CT phantom series with known added noise, and measure the result."""
    from .demo import DEMO_NOISE_HU, run_demo

    report = run_demo(
        output_dir, noise_hu=DEMO_NOISE_HU if noise_hu is None else noise_hu,
        config=config, device=device, batch_size=batch_size, seed=config.seed,
    )
    click.echo(report)


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
@_fit_options()
@click.option("--window", nargs=2, type=float, default=None, metavar="LOW HIGH",
              help="Intensity window in HU mapped to [0,1] [default: each volume's full range].")
@_handle_errors
def batch(input_root: Path, output_root: Path, task: str, retry_failed: bool, org_root: str | None, engine: str,
          ray_address: str | None, gpus_per_task: float | None, max_retries: int, chunk_slices: int | None,
          config: FitConfig, batch_size: int | None, device: str, window: tuple[float, float] | None) -> None:
    """Process every DICOM image series under INPUT_ROOT into derived series under OUTPUT_ROOT.

    OUTPUT_ROOT gets manifest.sqlite (status per series), series/<hash>/ (one derived series each), report.html
    and report/<hash>.png. Rerun the same command to resume: finished series are verified and skipped. Exit code
    0 only if every series succeeded; INPUT_ROOT is never modified. With --engine ray (pip install
    'dd-medical[ray]') series run as Ray tasks, on every GPU of this machine or of a cluster; outputs are the same.
    """
    from .batch import RayExecutor, run_batch

    ctx = click.get_current_context()
    ray_only = [f"--{n.replace('_', '-')}" for n in ("ray_address", "gpus_per_task", "max_retries", "chunk_slices")
                if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)]
    if engine == "serial" and ray_only:
        _fail(f"{', '.join(ray_only)} only apply with --engine ray")
    executor = engine
    if engine == "ray":
        executor = RayExecutor(ray_address, gpus_per_task=gpus_per_task, max_retries=max_retries,
                               chunk_slices=chunk_slices)
    summary = run_batch(input_root, output_root, task=task, config=config, device=device, batch_size=batch_size,
                        window=window, org_root=org_root, retry_failed=retry_failed, executor=executor)
    click.echo(summary.format())
    if not summary.ok:
        sys.exit(1)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@_fit_options()
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
@click.option("--missing", type=float, default=0.5, show_default=True,
              help="Inpainting: fraction of pixels removed (--simulate inpaint).")
@click.option("--image-size", type=int, default=None, help="CT sinogram input: image size N [default: from detectors].")
@click.option("--real-object", is_flag=True, default=False,
              help="--simulate mri: fit a real, non-negative image (the simulated object is a magnitude image).")
@click.option("--architecture", type=click.Choice(["both", "auto", "deep", "conv"]), default=None,
              help="Decoder: deep (the paper's 1x1 convolutions), conv (ConvDecoder: 3x3 convolutions, nearest "
                   "upsampling, ~4x the time), both (MRI: two of each kind per slice, all averaged) or auto (MRI: "
                   "the same fits, keeping per slice the kind whose two decoders disagree least on the unmeasured "
                   "k-space; see README) [default: both for MRI, else deep].")
@click.option("--tv-weight", type=click.FloatRange(min=0), default=None,
              help="Weight of a total-variation penalty on the decoder's image, added to the data term (0: none; "
                   f"see FitConfig.tv_weight) [default: {CT_TV_WEIGHT:g} for CT, 0 otherwise].")
@_handle_errors
def reconstruct(input_path: Path, output_path: Path, config: FitConfig, batch_size: int | None, device: str,
                simulate_kind: str | None, acceleration: float, center_fraction: float,
                mask_type: str, mask_path: Path | None, views: int | None, arc_deg: float, missing: float,
                image_size: int | None, real_object: bool, architecture: str | None,
                tv_weight: float | None) -> None:
    """Reconstruct undersampled measurements in INPUT into OUTPUT, the untrained decoder as the prior.

    INPUT is raw data (fastMRI .h5 k-space, .npy k-space or sinogram) or, with --simulate, an image file or
    DICOM series measured retrospectively. OUTPUT is a folder (derived DICOM series) or an image file. Without
    --preset the decoder settings are the reconstruction defaults for the modality (RECONSTRUCTION_DEFAULTS),
    with --iterations/--channels/--blocks/--ensemble/--tv-weight applied on top.
    """
    from .reconstruction import reconstruct_file

    ctx = click.get_current_context()
    given = {n for n in ("iterations", "channels", "blocks", "ensemble", "seed", "preset_name")
             if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)}
    overrides = {n: getattr(config, n) for n in given - {"preset_name"}} | {"seed": config.seed}
    if architecture is not None:
        overrides["architecture"] = architecture
    if tv_weight is not None:
        overrides["tv_weight"] = tv_weight
    summary = reconstruct_file(
        input_path, output_path, simulate_kind=simulate_kind, config=config if "preset_name" in given else None,
        overrides=overrides, acceleration=acceleration,
        center_fraction=center_fraction, mask_type=mask_type, mask_path=mask_path, views=views, arc_deg=arc_deg,
        missing=missing, image_size=image_size, device=device, batch_size=batch_size, real_object=real_object,
    )
    click.echo(summary)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUT.ddc", type=click.Path(path_type=Path))
@click.option("--channels", type=click.IntRange(min=1), default=32, show_default=True,
              help="Decoder channels k (more: larger file, better image).")
@click.option("--blocks", type=click.IntRange(min=1), default=6, show_default=True, help="Decoder blocks.")
@click.option("--bits", type=click.Choice(["8", "16"]), default="8", show_default=True,
              help="Bits per stored weight.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default="reference", show_default=True,
              help="Encoder settings: 'reference' (the reference code's: normalisation before ReLU, constant step "
                   "0.004, decaying input noise, 15000 steps; the best images, minutes per slice on a GPU); 'decay' "
                   "(step size 0.01 -> 0.003, 2000 steps) for short fits.")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Adam steps per slice (more: better image, slower encoding) [default: the recipe's].")
@click.option("--refine-iterations", type=click.IntRange(min=0), default=None,
              help="Quantisation-aware refinement steps after the fit (0: none) [default: a tenth of --iterations].")
@click.option("--window", nargs=2, type=float, default=None, metavar="LOW HIGH",
              help="Intensity window in HU that is encoded [default: the volume's full range, nothing clipped].")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present, else CPU), cpu, cuda.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same file).")
@_handle_errors
def compress(input_path: Path, output_path: Path, channels: int, blocks: int, bits: str, recipe: str,
             iterations: int | None, refine_iterations: int | None, window: tuple[float, float] | None, device: str,
             seed: int) -> None:
    """Compress INPUT (a DICOM series folder or image file) into OUT.ddc: one fitted decoder per slice (lossy)."""
    from .compression import compress_file

    settings = dict(RECIPES[recipe])
    if iterations is not None:
        settings["iterations"] = iterations
    click.echo(compress_file(input_path, output_path, channels=channels, blocks=blocks, bits=int(bits),
                             refine_iterations=refine_iterations, window=window, device=device, seed=seed,
                             **settings))


@cli.command()
@click.argument("input_path", metavar="IN.ddc", type=click.Path(path_type=Path))
@click.argument("output_path", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True,
              help="cpu reproduces exactly the image compress measured; cuda is faster, equal to float rounding.")
@_handle_errors
def decompress(input_path: Path, output_path: Path, device: str) -> None:
    """Decompress IN.ddc into OUTPUT: a folder (new DICOM series marked lossy) or an image file (.nrrd, .nii.gz)."""
    from .compression import decompress_file

    click.echo(decompress_file(input_path, output_path, device=device))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dd-medical")


if __name__ == "__main__":
    main()
