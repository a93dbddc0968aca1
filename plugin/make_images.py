"""Draw the extension's icon and screenshot from dd-medical's demo data (the shipped CT phantom series).

    python plugin/make_images.py        # plugin/DDMedical.png, the module's icon, plugin/Screenshots/1.png
    python plugin/make_images.py --out /tmp/x --iterations 20      # a quick trial elsewhere

The data are those of ``dd-medical demo``: the phantom series scanned at low dose (simulated with ``DEMO_PHOTONS``
photons per ray, seed 0, ``dd_medical.demo.low_dose_scan``);
the middle slice is denoised the way the Deep Decoder module does it, ``dd_medical.api.denoise`` with the
``medium`` strength (about 2 minutes on one CPU core). The screenshot is rendered with Pillow, not captured in
Slicer: three slice views as Slicer shows them (input | Deep Decoder output | the output with the uncertainty map
as a colour overlay, Inferno at opacity 0.45 as the module shows it; the same window/level W 400 / L 40) beside the
module's settings. The icon (128 x 128, the extension's and the module's) is the same slice in a
disc, noisy on the left half and denoised on the right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PLUGIN = Path(__file__).resolve().parent
ICON_SIZE = 128
WINDOW, LEVEL = 400.0, 40.0  # soft tissue, HU
VIEW = 384  # slice view side, pixels
SLICER_RED = (244, 107, 89)  # the red (axial) slice view's bar
PANEL_GREY = (240, 240, 240)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def to_grey(hu: np.ndarray, window: float = WINDOW, level: float = LEVEL) -> np.ndarray:
    """uint8 grey levels of ``hu`` ((H, W), HU) through a window/level, as a slice view shows them."""
    low = level - window / 2
    return np.round(np.clip((hu - low) / window, 0, 1) * 255).astype(np.uint8)


def render_icon(noisy: np.ndarray, denoised: np.ndarray) -> Image.Image:
    """128 x 128 RGBA: the slice in a disc, the noisy input on the left half, the denoised output on the right,
    parted by a white line; transparent outside the disc."""
    grey = np.concatenate([to_grey(noisy)[:, : noisy.shape[1] // 2], to_grey(denoised)[:, denoised.shape[1] // 2:]],
                          axis=1)
    tile = Image.fromarray(grey).resize((ICON_SIZE, ICON_SIZE), Image.LANCZOS).convert("RGBA")
    mask = Image.new("L", (ICON_SIZE, ICON_SIZE), 0)
    ImageDraw.Draw(mask).ellipse((1, 1, ICON_SIZE - 2, ICON_SIZE - 2), fill=255)
    icon = Image.new("RGBA", (ICON_SIZE, ICON_SIZE), (0, 0, 0, 0))
    icon.paste(tile, (0, 0), mask)
    draw = ImageDraw.Draw(icon)
    draw.line((ICON_SIZE // 2, 2, ICON_SIZE // 2, ICON_SIZE - 3), fill=(255, 255, 255, 255), width=3)
    draw.ellipse((1, 1, ICON_SIZE - 2, ICON_SIZE - 2), outline=(40, 60, 120, 255), width=3)
    return icon


def overlay(hu: np.ndarray, sd: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """(H, W, 3) uint8: ``hu`` in the slice view's window, ``sd`` (HU) over it in Inferno from 0 to its 99th
    percentile at ``opacity``, as the module shows the map (foreground layer)."""
    from matplotlib import colormaps

    grey = to_grey(hu).astype(np.float64)[..., None] / 255
    top = max(float(np.percentile(sd, 99)), 1e-6)
    colour = colormaps["inferno"](np.clip(sd / top, 0, 1))[..., :3]
    return np.round(((1 - opacity) * grey + opacity * colour) * 255).astype(np.uint8)


def _slice_view(hu: np.ndarray, name: str, sd: np.ndarray | None = None, foreground: str = "") -> Image.Image:
    bar = 22
    view = Image.new("RGB", (VIEW, VIEW + bar), (0, 0, 0))
    draw = ImageDraw.Draw(view)
    draw.rectangle((0, 0, VIEW, bar - 1), fill=SLICER_RED)
    draw.text((6, 3), "R", fill=(0, 0, 0), font=_font(14))
    draw.text((26, 3), "Axial", fill=(0, 0, 0), font=_font(14))
    pixels = to_grey(hu) if sd is None else overlay(hu, sd)
    view.paste(Image.fromarray(pixels).resize((VIEW, VIEW), Image.BICUBIC).convert("RGB"), (0, bar))
    small = _font(13)
    draw.text((6, bar + 4), f"B: {name}", fill=(255, 255, 255), font=small)
    if sd is not None:
        draw.text((6, bar + 20), f"F: {foreground} (0-{np.percentile(sd, 99):.0f} HU)", fill=(255, 255, 255),
                  font=small)
    draw.text((6, bar + VIEW - 36), f"W: {WINDOW:g}", fill=(255, 255, 255), font=small)
    draw.text((6, bar + VIEW - 20), f"L: {LEVEL:g}", fill=(255, 255, 255), font=small)
    return view


def render_screenshot(noisy: np.ndarray, denoised: np.ndarray, settings: dict[str, str], sd: np.ndarray
                      ) -> Image.Image:
    """The module's result as Slicer shows it: the module panel with ``settings`` (label -> value), then three red
    slice views (input | output | output under the uncertainty overlay) in the same window/level. ``noisy``,
    ``denoised`` and the map ``sd``: (H, W) in HU."""
    panel_width, gap = 300, 4
    height = max(VIEW + 22, 60 + 22 * len(settings) + 110)
    shot = Image.new("RGB", (panel_width + 3 * (VIEW + gap), height), (60, 60, 60))
    panel = Image.new("RGB", (panel_width, height), PANEL_GREY)
    draw = ImageDraw.Draw(panel)
    draw.rectangle((0, 0, panel_width, 30), fill=(215, 225, 240))
    draw.text((10, 6), "Deep Decoder", fill=(0, 0, 0), font=_font(17))
    y = 40
    for label, value in settings.items():
        draw.text((10, y), f"{label}:", fill=(60, 60, 60), font=_font(13))
        draw.text((150, y), value, fill=(0, 0, 0), font=_font(13))
        y += 22
    y += 8
    draw.rectangle((10, y, panel_width - 10, y + 26), fill=(225, 225, 225), outline=(150, 150, 150))
    draw.text((panel_width // 2 - 20, y + 5), "Apply", fill=(0, 0, 0), font=_font(14))
    y += 36
    draw.rectangle((10, y, panel_width - 10, y + 18), fill=(95, 170, 95), outline=(150, 150, 150))
    draw.text((panel_width // 2 - 16, y + 2), "100%", fill=(255, 255, 255), font=_font(13))
    draw.text((10, y + 26), "Done", fill=(0, 0, 0), font=_font(13))
    shot.paste(panel, (0, 0))
    shot.paste(_slice_view(noisy, "phantom LD"), (panel_width + gap, 0))
    shot.paste(_slice_view(denoised, "phantom LD DD"), (panel_width + 2 * gap + VIEW, 0))
    shot.paste(_slice_view(denoised, "phantom LD DD", sd, "phantom LD DD SD"),
               (panel_width + 3 * gap + 2 * VIEW, 0))
    return shot


def demo_slice(iterations: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """The middle slice of ``dd-medical demo``'s low-dose scan of the phantom, that slice denoised as the module does it
    (``medium``; ``iterations`` > 0 overrides the preset's), its uncertainty map, and the settings shown in the
    screenshot."""
    from dd_medical.api import denoise
    from dd_medical.demo import DEMO_PHOTONS, low_dose_scan, sample_series_dir
    from dd_medical.io import read_volume

    clean = read_volume(sample_series_dir())
    noisy, _ = low_dose_scan(clean.array, float(clean.spacing[0]), DEMO_PHOTONS, seed=0)
    middle = noisy[clean.shape[0] // 2][None]
    denoised, sd = denoise(middle, "medium", device=device, progress=False, seed=0, modality=clean.modality,
                           iterations=iterations or None, uncertainty=True)
    settings = {"Input volume": "phantom LD", "Output volume": "phantom LD DD",
                "Uncertainty (SD)": "phantom LD DD SD", "Strength": "medium",
                "Modality": f"auto: {clean.modality} (DICOM)",
                "Iterations": str(iterations) if iterations else "preset",
                "Channels": "preset", "Blocks": "preset", "Ensemble": "preset", "Device": device,
                "Run in background": "yes"}
    return middle[0], denoised[0], sd[0], settings


def as_png(image: Image.Image) -> Image.Image:
    """``image`` with an adaptive palette of 256 colours (a PNG a third the size, no visible change)."""
    return image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PLUGIN, help="folder for the images (default: plugin/)")
    parser.add_argument("--iterations", type=int, default=0, help="0: the medium preset's (as the module)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    noisy, denoised, sd, settings = demo_slice(args.iterations, args.device)
    icon = render_icon(noisy, denoised)
    icons = [args.out / "DDMedical.png", args.out / "DeepDecoder" / "Resources" / "Icons" / "DeepDecoder.png"]
    screenshot = args.out / "Screenshots" / "1.png"
    for path in icons:
        path.parent.mkdir(parents=True, exist_ok=True)
        icon.save(path, optimize=True)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    as_png(render_screenshot(noisy, denoised, settings, sd)).save(screenshot, optimize=True)
    for path in [*icons, screenshot]:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
