"""Fixtures for the fine-tuning tests (tiny random mini TRELLIS, tiny pairs and corpus)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import ft_helpers as helpers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict[str, Path]:
    """``base`` (random tiny mini TRELLIS, save_pretrained), ``pairs`` (8 rows, 3 broken), ``corpus``."""
    root = tmp_path_factory.mktemp("ft_world")
    gen = helpers.tiny_generator()
    base = gen.save_pretrained(root / "base")
    pairs = helpers.write_pairs(root / "aug", n=8, broken={1: "missing", 2: "garbage", 3: "voxels"})
    corpus = helpers.write_corpus(root / "corpus")
    return {"root": root, "base": base, "pairs": pairs, "corpus": corpus}


@pytest.fixture(scope="session")
def tiny_gen_loader(tiny_world):
    """Fresh generator from ``tiny_world['base']`` on every call (sharing one text encoder)."""
    from debias3d.models.backbone.generator import MiniTrellisGenerator

    first = MiniTrellisGenerator.from_pretrained(tiny_world["base"])

    def load():
        return MiniTrellisGenerator.from_pretrained(tiny_world["base"], text_encoder=first.text_encoder)

    return load
