"""Small pictures the commands write: colour-mapped maps and class overlays, each with a legend (Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A dark-to-bright ramp (dark blue, blue, teal, green, yellow), evenly spaced; low values stay dark.
_RAMP = np.array([(20, 12, 60), (40, 70, 160), (30, 150, 150), (110, 200, 80), (250, 230, 40)], dtype=np.float64)


def font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's own scalable font at ``size`` (older Pillow: its small bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def colour_map(values: np.ndarray, high: float) -> np.ndarray:
    """HxW values in [0, high] as HxWx3 uint8 colours of the ramp (values above ``high`` saturate)."""
    t = np.clip(np.asarray(values, dtype=np.float64) / high, 0, 1) if high > 0 else np.zeros(np.shape(values))
    position = t * (len(_RAMP) - 1)
    low = np.minimum(position.astype(int), len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return np.rint(_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def map_with_legend(values: np.ndarray, title: str) -> Image.Image:
    """The map colour-mapped from 0 to its maximum, above a colour bar labelled with both ends and ``title``."""
    values = np.asarray(values, dtype=np.float64)
    height, width = values.shape
    high = float(values.max()) if values.size else 0.0
    band = 48
    canvas = Image.new("RGB", (max(width, 240), height + band), "white")
    canvas.paste(Image.fromarray(colour_map(values, high)), (0, 0))
    bar_width = canvas.width - 20
    ramp = colour_map(np.linspace(0, 1, bar_width)[None, :].repeat(10, axis=0), 1.0)
    canvas.paste(Image.fromarray(ramp), (10, height + 6))
    draw = ImageDraw.Draw(canvas)
    small = font(12)
    draw.text((10, height + 17), "0", fill="black", font=small)
    label = f"{high:.3g}"
    draw.text((10 + bar_width - draw.textlength(label, font=small), height + 17), label, fill="black", font=small)
    draw.text((10, height + 31), title, fill="black", font=small)
    return canvas


def overlay_with_legend(rgb: np.ndarray, labels: np.ndarray, names: list[str] | tuple[str, ...],
                        palette: np.ndarray, opacity: float = 0.5) -> Image.Image:  # fmt: skip
    """The photo (HxWx3 uint8 RGB) blended with its class colours, above a legend of the classes present.

    ``palette`` is the label space's Nx3 uint8 colours by id; ids at or past
    ``len(names)`` (void) keep the photo. The legend lists each class
    present with its share of the pixels, most first.
    """
    labels = np.asarray(labels)
    known = labels < len(names)
    colours = palette[np.minimum(labels, len(palette) - 1)].astype(np.float32)
    blended = rgb.astype(np.float32)
    blended[known] = (1 - opacity) * blended[known] + opacity * colours[known]
    ids, counts = np.unique(labels[known], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    small = font(12)
    row, per_row = 18, max(1, rgb.shape[1] // 170)
    rows = -(-len(ids) // per_row) if len(ids) else 1
    canvas = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + 8 + rows * row), "white")
    canvas.paste(Image.fromarray(np.rint(blended).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for slot, i in enumerate(order):
        x, y = 6 + (slot % per_row) * 170, rgb.shape[0] + 6 + (slot // per_row) * row
        draw.rectangle([x, y + 2, x + 12, y + 14], fill=tuple(int(v) for v in palette[ids[i]]), outline="black")
        draw.text((x + 18, y + 1), f"{names[ids[i]]} {100 * counts[i] / labels.size:.1f}%", fill="black", font=small)
    return canvas
