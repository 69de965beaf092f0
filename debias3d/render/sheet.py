"""Contact sheets: many rendered views in one labelled grid image (``debias3d world sample``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["contact_sheet"]


def _to_uint8_rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (3, H, W) -> (H, W, 3)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {np.asarray(img).shape}")
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a[..., :3]


def contact_sheet(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[str] | None = None,
    cols: int | None = None,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
    label_height: int | None = None,
) -> Image.Image:
    """Arrange images in a grid, each with an optional caption underneath.

    Args:
        images: ``K`` images, each ``(H, W, 3)`` uint8 (or float in ``[0, 1]``, or ``(3, H, W)``);
            an array ``(K, H, W, 3)`` works too. Cells take the size of the largest image.
        labels: ``K`` captions or ``None``; long captions are cut to the cell width.
        cols: grid columns; default ``ceil(sqrt(K))``.
        pad: pixels between cells and around the sheet.
        background: sheet colour.
        label_height: caption strip height in pixels; default from the font size, 0 without labels.

    Returns:
        An RGB ``PIL.Image``.

    >>> sheet = contact_sheet([np.zeros((8, 8, 3), np.uint8)] * 3, ["a", "b", "c"], cols=2)
    >>> sheet.mode
    'RGB'
    """
    imgs = [_to_uint8_rgb(im) for im in images]
    if not imgs:
        raise ValueError("contact_sheet needs at least one image")
    if labels is not None and len(labels) != len(imgs):
        raise ValueError(f"got {len(labels)} labels for {len(imgs)} images")
    cols = cols or math.ceil(math.sqrt(len(imgs)))
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    rows = math.ceil(len(imgs) / cols)
    cell_h = max(im.shape[0] for im in imgs)
    cell_w = max(im.shape[1] for im in imgs)
    font = ImageFont.load_default()
    if label_height is None:
        label_height = 0
        if labels is not None:
            top, bottom = font.getbbox("Ag")[1::2]
            label_height = int(bottom - top) + 6
    sheet = Image.new(
        "RGB",
        (pad + cols * (cell_w + pad), pad + rows * (cell_h + label_height + pad)),
        background,
    )
    draw = ImageDraw.Draw(sheet)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        x = pad + c * (cell_w + pad)
        y = pad + r * (cell_h + label_height + pad)
        sheet.paste(Image.fromarray(im), (x + (cell_w - im.shape[1]) // 2, y + (cell_h - im.shape[0]) // 2))
        if labels is not None and label_height:
            text = str(labels[k])
            while text and draw.textlength(text, font=font) > cell_w:
                text = text[:-1]
            draw.text((x + 2, y + cell_h + 3), text, fill=(0, 0, 0), font=font)
    return sheet
