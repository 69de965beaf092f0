"""Tiny stand-ins for the audit tests: a random tiny evaluator, a fast generator, a fake renderer."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from debias3d.data.assets import Asset
from debias3d.models.evaluator.config import EvaluatorModelConfig
from debias3d.models.evaluator.model import ShapeWorldHyperScore
from debias3d.models.evaluator.views import ViewCache

TINY = EvaluatorModelConfig(
    image_size=16, dim=16, cnn_widths=(8, 8, 16), n_ctx=2, quality_dim=8, head_hidden=(8,), hyper_trunk=16
)


class FakeRenderer:
    """Renders a mesh as flat colour patches sized by its extents (fast, no GL)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.calls = 0

    def render(self, mesh, rig):
        self.calls += 1
        n = len(rig)
        img = np.full((n, self.size, self.size, 3), 255, np.uint8)
        ext = np.asarray(mesh.extents)
        col = np.asarray(mesh.visual.vertex_colors)[:, :3].mean(0).astype(np.uint8)
        for v in range(n):
            h = int(np.clip(ext[v % 3] * 6, 2, self.size - 2))
            img[v, self.size - h :, 4:12] = col
        return img


def tiny_evaluator(text_encoder, seed: int = 0) -> ShapeWorldHyperScore:
    torch.manual_seed(seed)
    ev = ShapeWorldHyperScore(TINY, text_encoder=text_encoder).eval()
    ev.view_cache = ViewCache(renderer=FakeRenderer(TINY.image_size), image_size=TINY.image_size)
    return ev


class BoxGenerator:
    """Generator stand-in: a coloured box whose shape depends on the prompt and the seed.

    Prompts containing ``"broken"`` give an empty mesh (a bad sample); ``"explode"`` raises.
    """

    name = "box"

    def __init__(self, use_shapeworld: bool = False) -> None:
        self.use_shapeworld = use_shapeworld
        self.calls = 0

    def _one(self, prompt: str, seed: int) -> Asset:
        if "explode" in prompt:
            raise ValueError("cannot generate this prompt")
        if self.use_shapeworld:
            from debias3d.data.shapeworld.builder import build
            from debias3d.data.shapeworld.parser import parse

            a = build(parse(prompt), rng=seed, mesh_resolution=None, prompt=prompt)
            a.seed = seed
            return a
        rng = np.random.default_rng(abs(hash((prompt, seed))) % 2**32)
        if "broken" in prompt:
            return Asset(prompt, trimesh.Trimesh(), seed=seed)
        m = trimesh.creation.box(extents=rng.uniform(0.3, 1.8, 3))
        m.visual.vertex_colors = np.tile([*rng.integers(0, 255, 3), 255], (len(m.vertices), 1)).astype(
            np.uint8
        )
        return Asset(prompt, m, seed=seed)

    def generate(self, prompts, seeds=None, num_samples=1, **kwargs):
        self.calls += 1
        seeds = [0] * len(prompts) if seeds is None else seeds
        out = []
        for p, s in zip(prompts, seeds, strict=True):
            for d in range(num_samples):
                a = self._one(p, s + d)
                a.metadata = {"sample": d}
                out.append(a)
        return out
