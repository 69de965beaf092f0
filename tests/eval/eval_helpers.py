"""Tiny stand-ins for the eval tests: a random mini TRELLIS (R = 16), a tiny evaluator, a ranker."""

from __future__ import annotations

import numpy as np
import torch

from debias3d.models.ranker.base import RankerBase

STANDIN = "eval-standin"


def tiny_generator(seed: int = 0):
    """A random mini TRELLIS at ShapeWorld's R = 16, width 32, one block per stage, 2 sampler steps.

    Every parameter is random (the shipped init zeroes the output layers, which would give empty
    shapes and zero LoRA gradients).
    """
    from debias3d.models.backbone.flow import FlowModelConfig
    from debias3d.models.backbone.generator import MiniTrellisConfig, MiniTrellisGenerator

    torch.manual_seed(seed)
    params = {"steps": 2, "cfg_strength": 2.0, "cfg_interval": [0.0, 1.0], "rescale_t": 1.0}
    cfg = MiniTrellisConfig(
        stage1=FlowModelConfig(resolution=16, model_channels=32, cond_channels=384, num_blocks=1, num_heads=2,
                               patch_size=4),
        stage2=FlowModelConfig(resolution=16, in_channels=3, out_channels=3, model_channels=32, cond_channels=384,
                               num_blocks=1, num_heads=2),
        sparse_structure_sampler_params=dict(params),
        slat_sampler_params=dict(params),
        occupancy_threshold=1.6,  # ~260 of 4096 voxels: random weights would fill half the grid
    )  # fmt: skip
    from debias3d.models.text_encoder import MiniLMTextEncoder

    gen = MiniTrellisGenerator(cfg, text_encoder=MiniLMTextEncoder())
    with torch.no_grad():
        for m in gen.flow_models.values():
            for p in m.parameters():
                p.normal_(0.0, 0.05)
    return gen


class FakeRenderer:
    """Renders a mesh as flat colour patches sized by its extents (fast, no GL)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def render(self, mesh, rig):
        n = len(rig)
        img = np.full((n, self.size, self.size, 3), 255, np.uint8)
        ext = np.asarray(mesh.extents)
        col = np.asarray(mesh.visual.vertex_colors)[:, :3].mean(0).astype(np.uint8)
        for v in range(n):
            h = int(np.clip(ext[v % 3] * 6, 2, self.size - 2))
            img[v, self.size - h :, 4:12] = col
        return img

    def render_tensor(self, mesh, rig):
        return torch.from_numpy(self.render(mesh, rig)).permute(0, 3, 1, 2).float() / 255.0


def tiny_evaluator(text_encoder, seed: int = 0):
    """A random tiny HyperScore-style evaluator on MiniLM, rendering with :class:`FakeRenderer`."""
    from debias3d.models.evaluator.config import EvaluatorModelConfig
    from debias3d.models.evaluator.model import ShapeWorldHyperScore
    from debias3d.models.evaluator.views import ViewCache

    tiny = EvaluatorModelConfig(image_size=16, dim=16, cnn_widths=(8, 8, 16), n_ctx=2, quality_dim=8,
                                head_hidden=(8,), hyper_trunk=16)  # fmt: skip
    torch.manual_seed(seed)
    ev = ShapeWorldHyperScore(tiny, text_encoder=text_encoder).eval()
    ev.view_cache = ViewCache(renderer=FakeRenderer(16), image_size=16)
    return ev


class StandInRanker(RankerBase):
    """Deterministic ranker stand-in: object coverage of each view + colour spread."""

    image_size = 32
    name = STANDIN

    def __init__(self) -> None:
        super().__init__(batch_size=64)

    @classmethod
    def from_pretrained(cls, path=None):
        return cls()

    def image_scores(self, images, prompts):
        coverage = (images.min(dim=1).values < 0.95).float().mean(dim=(1, 2))
        return 10.0 * coverage + images.std(dim=(2, 3)).mean(dim=1)


def register_standin() -> None:
    from debias3d.registry import _REGISTRY, register

    if STANDIN not in _REGISTRY["ranker"]:
        register("ranker", STANDIN)(StandInRanker)
