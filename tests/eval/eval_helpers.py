"""Tiny stand-ins for the eval tests: a random mini TRELLIS (R = 16), a tiny evaluator, a ranker."""

from __future__ import annotations

import sys
from pathlib import Path

from debias3d.models.ranker.base import RankerBase

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stand_ins import FakeRenderer, random_mini_trellis, tiny_evaluator  # noqa: E402

__all__ = ["STANDIN", "FakeRenderer", "StandInRanker", "register_standin", "tiny_evaluator", "tiny_generator"]

STANDIN = "eval-standin"


def tiny_generator(seed: int = 0):
    """A random mini TRELLIS at ShapeWorld's R = 16 with MiniLM, 2 sampler steps.

    Every parameter is random (the shipped init zeroes the output layers, which would give empty
    shapes and zero LoRA gradients).
    """
    params = {"steps": 2, "cfg_strength": 2.0, "cfg_interval": [0.0, 1.0], "rescale_t": 1.0}
    return random_mini_trellis(
        16,
        seed,
        with_encoder=True,
        sparse_structure_sampler_params=dict(params),
        slat_sampler_params=dict(params),
        occupancy_threshold=1.6,  # ~260 of 4096 voxels: random weights would fill half the grid
    )


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
