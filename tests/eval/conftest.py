"""Fixtures of the eval / demo tests: tiny random models, a stand-in ranker, no network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, text_encoder):
    """``{"weights": dir of a random tiny mini TRELLIS, "evaluator": tiny evaluator, "ranker": stand-in}``."""
    import eval_helpers as h

    root = tmp_path_factory.mktemp("tiny_models")
    weights = h.tiny_generator().save_pretrained(root / "generator")
    h.register_standin()
    return {"weights": weights, "evaluator": h.tiny_evaluator(text_encoder), "ranker": h.StandInRanker()}
