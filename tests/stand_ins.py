"""Tiny stand-ins shared by the test folders: a random mini TRELLIS, a tiny evaluator, a fake renderer,
a tiny BERT configuration.

The folder helpers (``audit_helpers``, ``eval_helpers``, ``ft_helpers``) build on these so one
definition serves every stage's tests.
"""

from __future__ import annotations

import numpy as np
import torch

from debias3d.models.evaluator.config import EvaluatorModelConfig

TINY_EVALUATOR = EvaluatorModelConfig(
    image_size=16, dim=16, cnn_widths=(8, 8, 16), n_ctx=2, quality_dim=8, head_hidden=(8,), hyper_trunk=16
)


class FakeRenderer:
    """Renders a mesh as flat colour patches sized by its extents (fast, no GL); counts its calls."""

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

    def render_tensor(self, mesh, rig):
        return torch.from_numpy(self.render(mesh, rig)).permute(0, 3, 1, 2).float() / 255.0


def tiny_evaluator(text_encoder, seed: int = 0):
    """A random tiny HyperScore-style evaluator (:data:`TINY_EVALUATOR`) rendering with :class:`FakeRenderer`."""
    from debias3d.models.evaluator.model import ShapeWorldHyperScore
    from debias3d.models.evaluator.views import ViewCache

    torch.manual_seed(seed)
    ev = ShapeWorldHyperScore(TINY_EVALUATOR, text_encoder=text_encoder).eval()
    size = TINY_EVALUATOR.image_size
    ev.view_cache = ViewCache(renderer=FakeRenderer(size), image_size=size)
    return ev


def tiny_bert_config(vocab_size: int, hidden: int = 16, max_positions: int = 512):
    """A 1-layer, 2-head ``BertConfig`` of width ``hidden`` (feed-forward ``2 * hidden``)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=2 * hidden, max_position_embeddings=max_positions)  # fmt: skip


def random_mini_trellis(resolution: int, seed: int = 0, with_encoder: bool = False, **config):
    """A random mini TRELLIS (width 32, one block per stage) with EVERY parameter drawn from N(0, 0.05²).

    The shipped init zeroes ``out_layer`` and the adaLN gates, which would give empty shapes and
    LoRA zero gradients on the first steps; tests that check "every LoRA parameter changed" need a
    live network. ``config`` holds further :class:`MiniTrellisConfig` fields (sampler settings,
    occupancy threshold); ``with_encoder`` builds a MiniLM text encoder right after seeding.
    """
    from debias3d.models.backbone.flow import FlowModelConfig
    from debias3d.models.backbone.generator import MiniTrellisConfig, MiniTrellisGenerator

    torch.manual_seed(seed)
    width = {"model_channels": 32, "cond_channels": 384, "num_blocks": 1, "num_heads": 2}
    cfg = MiniTrellisConfig(
        stage1=FlowModelConfig(resolution=resolution, patch_size=4, **width),
        stage2=FlowModelConfig(resolution=resolution, in_channels=3, out_channels=3, **width),
        **config,
    )
    if with_encoder:
        from debias3d.models.text_encoder import MiniLMTextEncoder

        gen = MiniTrellisGenerator(cfg, text_encoder=MiniLMTextEncoder())
    else:
        gen = MiniTrellisGenerator(cfg)
    with torch.no_grad():
        for m in gen.flow_models.values():
            for p in m.parameters():
                p.normal_(0.0, 0.05)
    return gen


def byte_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-level alphabet (the 256 characters a byte-level BPE starts from)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]
