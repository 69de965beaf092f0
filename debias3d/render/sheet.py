"""Contact sheets: many rendered views in one labelled grid image (``debias3d world sample``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["contact_sheet", "write_sample"]

logger = logging.getLogger(__name__)


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


def write_sample(
    out: str | Path,
    n: int = 16,
    seed: int = 0,
    category: str | None = None,
    image_size: int = 160,
    view: tuple[float, float] = (20.0, 35.0),
) -> dict[str, object]:
    """Sample ``n`` prompts, build each shape, and write ``meshes/NNN.glb``, ``prompts.csv``, ``sheet.png``.

    Args:
        out: output folder (created).
        n: number of prompts.
        seed: grammar and jitter seed.
        category: restrict to one of the 8 categories, or None for all.
        image_size: thumbnail size of the contact sheet, in pixels.
        view: (elevation, azimuth) in degrees of the thumbnail camera.

    Returns:
        ``{"meshes": [paths], "sheet": path, "prompts": path}``.
    """
    import pandas as pd

    from debias3d.data.assets import save_mesh
    from debias3d.data.shapeworld import vocab
    from debias3d.data.shapeworld.builder import build
    from debias3d.data.shapeworld.grammar import sample_prompts
    from debias3d.render.cameras import Camera
    from debias3d.render.renderer import Renderer

    if category is not None and category not in vocab.CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(vocab.CATEGORIES)}")
    out = Path(out)
    (out / "meshes").mkdir(parents=True, exist_ok=True)
    prompts = sample_prompts(n, category=category, rng=seed)
    camera = Camera.orbit(view[0], view[1], distance=2.6)
    rows, paths, images = [], [], []
    with Renderer(image_size=image_size) as renderer:
        for i, p in enumerate(prompts):
            asset = build(p.spec, rng=np.random.default_rng([seed, i]), prompt=p.text)
            path = out / "meshes" / f"{i:03d}.glb"
            save_mesh(asset.mesh, path)
            paths.append(path)
            images.append(renderer.render(asset.mesh, [camera], normalize="none")[0])
            rows.append({"index": i, "prompt": p.text, "category": p.category, "mesh": f"meshes/{path.name}"})
    pd.DataFrame(rows).to_csv(out / "prompts.csv", index=False)
    labels = [f"{r['category']}: {r['prompt']}" for r in rows]
    sheet = contact_sheet(images, labels=labels, cols=min(4, n))
    sheet_path = out / "sheet.png"
    sheet.save(sheet_path)
    logger.info("wrote %d meshes and %s", len(paths), sheet_path)
    return {"meshes": paths, "sheet": sheet_path, "prompts": out / "prompts.csv"}
