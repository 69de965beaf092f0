"""Tiny stand-ins for the audit tests: a random tiny evaluator, a fast generator, a fake renderer,
a tiny masked language model."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh

from debias3d.data.assets import Asset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stand_ins import TINY_EVALUATOR as TINY  # noqa: E402
from stand_ins import FakeRenderer, tiny_bert_config, tiny_evaluator  # noqa: E402

__all__ = ["TINY", "VIEW_VOCAB", "BoxGenerator", "FakeRenderer", "tiny_evaluator", "tiny_masked_lm"]

#: A WordPiece vocabulary for the view-contradiction prompts ("this image is depicting a ... view of ...").
VIEW_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "this", "image", "is", "depicting", "a", "view", "of",
    "front", "back", "side", "top",
    "smiling", "dog", "red", "vase", "with", "long", "neck", "##s",
]  # fmt: skip


def tiny_masked_lm(vocab: Sequence[str], folder: Path, max_positions: int = 512):
    """A random (seed 0) 1-layer, 16-d ``BertForMaskedLM`` over ``vocab`` and its WordPiece tokenizer,
    both saved to ``folder``; returns ``(model in eval mode, tokenizer)``."""
    import torch
    from transformers import BertForMaskedLM, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(len(vocab), max_positions=max_positions))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model.eval(), tok


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
