"""``dd-medical demo``: the shipped CT phantom series scanned at low dose (simulated), denoised, measured and shown."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .api import check, denoise
from .core.config import FitConfig
from .core.fidelity import FidelityReport
from .core.intensity import Window
from .errors import InputError
from .io import derivation_description
from .metrics import psnr, ssim
from .presets import resolve
from .simulation import photon_noise, simulate

#: Photons incident on each ray of the demo's simulated scan: a low-dose scan (about 45 HU of FBP noise in the
#: phantom's soft tissue; 1e5 would be about routine dose).
DEMO_PHOTONS = 1e4
EVAL_WINDOW = Window(-1000.0, 1000.0)  # PSNR/SSIM are computed on this window mapped to [0, 1]
DISPLAY_WINDOW = Window(-160.0, 240.0)  # soft-tissue window (W400/L40) for the PNG panel
DIFFERENCE_HU = 200.0  # the difference map spans +-200 HU
PANEL_NAME = "demo_panel.png"


def sample_series_dir() -> Path:
    """The folder of the shipped CT phantom series (8 slices, 128x128)."""
    return Path(str(resources.files("dd_medical.sample_data") / "ct_phantom"))


@dataclass
class DemoReport:
    """What the demo measured: PSNR (dB) and SSIM per slice of the noisy and the denoised series against the
    reference, on [-1000, 1000] HU mapped to [0, 1]; ``noise``: what the noisy series is, in words."""

    psnr_noisy: np.ndarray
    psnr_denoised: np.ndarray
    ssim_noisy: np.ndarray
    ssim_denoised: np.ndarray
    seconds: float
    output_dir: Path
    fidelity: FidelityReport | None = None
    noise: str = ""
    reference: str = "the clean series"

    def __str__(self) -> str:
        lines = [f"{'slice':>5}  {'PSNR noisy':>10}  {'PSNR denoised':>13}  {'SSIM noisy':>10}  {'SSIM denoised':>13}"]
        columns = (self.psnr_noisy, self.psnr_denoised, self.ssim_noisy, self.ssim_denoised)
        for i, row in enumerate(zip(*columns, strict=True)):
            lines.append(f"{i:>5}  {row[0]:>10.2f}  {row[1]:>13.2f}  {row[2]:>10.3f}  {row[3]:>13.3f}")
        lines.append(
            f"{'mean':>5}  {self.psnr_noisy.mean():>10.2f}  {self.psnr_denoised.mean():>13.2f}  "
            f"{self.ssim_noisy.mean():>10.3f}  {self.ssim_denoised.mean():>13.3f}"
        )
        lines.append(
            f"Noisy: {self.noise}. PSNR/SSIM against {self.reference}, on [-1000, 1000] HU mapped to [0, 1]. "
            f"Denoised in {self.seconds:.1f} s. Wrote {self.output_dir / 'denoised_series'} and "
            f"{self.output_dir / PANEL_NAME}"
        )
        if self.fidelity is not None:
            lines.append(self.fidelity.summary())
        return "\n".join(lines)


def _to_uint8(values: np.ndarray, window: Window) -> np.ndarray:
    return np.round(window.to_unit(values) * 255).astype(np.uint8)


def write_panel(path: Path, noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray,
                labels: tuple[str, str] = ("noisy", "clean (reference)")) -> None:
    """PNG of one ``(H, W)`` HU slice, each tile labelled and enlarged to at least 384 px: noisy | denoised | clean |
    difference (denoised - clean, +-200 HU); the images in a soft-tissue window (W400/L40). ``labels``: the noisy
    and the clean tiles' labels."""
    from PIL import Image, ImageDraw

    scale = max(1, -(-384 // noisy.shape[0]))
    tiles = {
        labels[0]: _to_uint8(noisy, DISPLAY_WINDOW), "dd-medical": _to_uint8(denoised, DISPLAY_WINDOW),
        labels[1]: _to_uint8(clean, DISPLAY_WINDOW),
        f"difference (+-{DIFFERENCE_HU:g} HU)": _to_uint8(denoised - clean, Window(-DIFFERENCE_HU, DIFFERENCE_HU)),
    }
    height, width = noisy.shape[0] * scale, noisy.shape[1] * scale
    band, gap = 24, 6
    panel = Image.new("L", (len(tiles) * (width + gap) - gap, height + band), 255)
    draw = ImageDraw.Draw(panel)
    for i, (label, tile) in enumerate(tiles.items()):
        left = i * (width + gap)
        panel.paste(Image.fromarray(tile).resize((width, height), Image.NEAREST), (left, band))
        draw.text((left + 4, 5), label, fill=0)
    panel.save(path)


def low_dose_scan(hu: np.ndarray, pixel_mm: float, photons: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy, noise_free)`` HU ``(D, H, W)`` float32: filtered back-projections (ramp) of a simulated
    parallel-beam scan of CT slices ``hu`` ``(D, H, W)`` (pixels of ``pixel_mm`` mm) with ``photons`` incident on
    each ray
    (:func:`~dd_medical.simulation.simulate`: Poisson counts plus electronic noise), and of the same scan without
    noise. Each pixel is split 2 x 2 and projected from that finer grid (so the scan does not share the
    reconstruction's discretisation), with ``round(pi / 2 * max(H, W))`` views over 180 degrees; the noise is
    correlated and strongest through the densest paths, as a scanner's FBP noise is."""
    fine = np.repeat(np.repeat(np.asarray(hu, np.float32), 2, axis=1), 2, axis=2)
    views = round(math.pi / 2 * max(hu.shape[1:]))

    sim = simulate(fine, "ct", views=views, downsample=2)
    noisy, _ = photon_noise(sim.measurements, photons, pixel_mm, seed)

    def fbp(sinogram: torch.Tensor) -> np.ndarray:
        image = sim.operator.to_image(sim.operator.fbp(sinogram)).numpy()
        return sim.to_input_units(image).astype(np.float32)

    return fbp(noisy), fbp(sim.measurements)


def run_demo(
    output_dir: str | Path = "dd-medical-demo",
    *,
    photons: float = DEMO_PHOTONS,
    noise_hu: float | None = None,
    config: FitConfig | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    seed: int = 0,
) -> DemoReport:
    """Scan the sample series at low dose (simulated, :func:`low_dose_scan` with ``photons`` per ray), denoise the
    scan, measure PSNR/SSIM per slice against the same scan without noise, and write
    ``output_dir/denoised_series`` (derived DICOM) and ``output_dir/demo_panel.png``. ``noise_hu``: instead, add
    white Gaussian noise of this standard deviation (HU) to the series and measure against the series itself.

    ``output_dir`` is replaced as a whole if it holds an earlier demo's results; any other non-empty folder is
    refused.
    """
    from .io import atomic_output_dir, read_volume, write_series

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / PANEL_NAME).exists():
        raise InputError("exists and does not hold an earlier demo's results (refusing to overwrite)", output_dir)
    series = read_volume(sample_series_dir())
    if noise_hu is None:
        scan, noise_free = low_dose_scan(series.array, float(series.spacing[0]), photons, seed)
        clean = series.with_array(noise_free)
        noisy = series.with_array(scan)
        body = noise_free > -500.0
        noise = (f"a simulated low-dose scan ({photons:g} photons per ray, filtered back-projection), noise "
                 f"{float(np.std((scan - noise_free)[body])):.0f} HU in the body")
        labels, reference = ("low-dose scan", "noise-free scan (reference)"), "the same scan without noise"
    else:
        clean = series
        rng = np.random.default_rng(seed)
        noisy = series.with_array(series.array + rng.normal(0.0, noise_hu, series.shape).astype(np.float32))
        noise = f"white Gaussian noise of {noise_hu:g} HU added"
        labels, reference = ("noisy", "clean (reference)"), "the clean series"
    t0 = time.perf_counter()
    config = config or resolve("denoise")
    result = denoise(noisy, config=config, device=device, batch_size=batch_size)  # a bar on a terminal only
    seconds = time.perf_counter() - t0

    unit = {name: EVAL_WINDOW.to_unit(v.array) for name, v in (("clean", clean), ("noisy", noisy), ("out", result))}
    report = DemoReport(
        psnr_noisy=psnr(unit["noisy"], unit["clean"]),
        psnr_denoised=psnr(unit["out"], unit["clean"]),
        ssim_noisy=ssim(unit["noisy"], unit["clean"]),
        ssim_denoised=ssim(unit["out"], unit["clean"]),
        seconds=seconds,
        output_dir=output_dir,
        fidelity=check(noisy, result),
        noise=noise,
        reference=reference,
    )
    with atomic_output_dir(output_dir, overwrite=True) as tmp:
        write_series(result, tmp / "denoised_series", series_description="DD demo: phantom denoised",
                     derivation_description=f"{derivation_description(config)}; {report.fidelity.summary()}")
        mid = clean.shape[0] // 2
        write_panel(tmp / PANEL_NAME, noisy.array[mid], result.array[mid], clean.array[mid], labels)
    return report
