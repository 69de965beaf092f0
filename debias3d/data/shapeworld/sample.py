"""``debias3d world sample``: ShapeWorld prompts → GLB meshes + a labelled contact-sheet PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from debias3d.data.assets import save_mesh
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.builder import build
from debias3d.data.shapeworld.grammar import sample_prompts

log = logging.getLogger(__name__)


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

    from debias3d.render import Camera, Renderer, contact_sheet

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
    log.info("wrote %d meshes and %s", len(paths), sheet_path)
    return {"meshes": paths, "sheet": sheet_path, "prompts": out / "prompts.csv"}
