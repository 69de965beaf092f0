"""Rankers: protocol glue, T3Bench aggregation, HPSv2 glue with a stand-in model, embedded ranker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from debias3d.models.ranker.base import Ranker, RankerBase
from debias3d.models.ranker.t3bench import T3BenchConfig, T3BenchQuality, t3bench_aggregate


class BrightnessRanker(RankerBase):
    """Stand-in backend: an image's score is its mean brightness; records batch sizes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.batches: list[int] = []

    def image_scores(self, images, prompts):
        assert len(images) == len(prompts)
        self.batches.append(len(images))
        return images.mean((1, 2, 3))


def test_protocol_and_packed_batches():
    r = BrightnessRanker(batch_size=4)
    assert isinstance(r, Ranker)
    views = [torch.full((3, 3, 8, 8), v) for v in (0.2, 0.8)] + [torch.rand(2, 3, 8, 8)]
    s = r.score_many(views, ["a", "b", "c"])
    assert s.shape == (3,)
    assert s[0] == pytest.approx(0.2) and s[1] == pytest.approx(0.8)
    assert r.batches == [4, 4]  # 8 images packed across assets
    assert r.score(views[1], "b") == pytest.approx(0.8)


@pytest.mark.parametrize(("aggregation", "expected"), [("mean", 0.5), ("max", 0.9), ("min", 0.1)])
def test_view_aggregation(aggregation, expected):
    r = BrightnessRanker(aggregation=aggregation)
    views = torch.stack([torch.full((3, 4, 4), v) for v in (0.1, 0.5, 0.9)])
    assert r.score(views, "x") == pytest.approx(expected)


def test_bad_aggregation_rejected():
    with pytest.raises(ValueError, match="aggregation"):
        BrightnessRanker(aggregation="median")


# --------------------------------------------------------------------------------- T3Bench
def test_t3bench_aggregate_hand_made_case():
    # path graph 0-1-2-3; two FoVs per vertex, the best one counts
    adj = ((1,), (0, 2), (1, 3), (2,))
    view_position = np.repeat(np.arange(4), 2)
    view_scores = np.array([0.0, 0.3, 0.1, 0.0, 0.9, 0.6, 0.0, 0.0])  # per-vertex max: .3 .1 .9 0
    # by hand, one smoothing pass: v0=(.3+.1)/2=.2, v1=(.1+.3+.9)/3, v2=(.9+.1+0)/3, v3=(0+.9)/2=.45
    one = t3bench_aggregate(view_scores, view_position, adj, iterations=1)
    assert one == pytest.approx(0.45 * 20 + 50)
    s = np.array([0.3, 0.1, 0.9, 0.0])
    for _ in range(3):
        s = np.array([(s[p] + s[list(nb)].sum()) / (len(nb) + 1) for p, nb in enumerate(adj)])
    assert t3bench_aggregate(view_scores, view_position, adj) == pytest.approx(s.max() * 20 + 50)
    assert t3bench_aggregate(view_scores, view_position, adj, iterations=0) == pytest.approx(0.9 * 20 + 50)


def test_t3bench_needs_every_vertex():
    with pytest.raises(ValueError, match="every icosphere vertex"):
        t3bench_aggregate([1.0], [0], ((1,), (0,)))


def test_t3bench_quality_on_reduced_rig():
    class FakeRenderer:
        def render_tensor(self, mesh, rig):
            # brightness grows with the camera's z, so the top vertex wins
            z = torch.tensor([c.position[2] for c in rig.cameras], dtype=torch.float32)
            return (z / 4.4 + 0.5).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()

    cfg = T3BenchConfig(level=0, fovs=(math.pi / 3, math.pi / 4))
    q = T3BenchQuality(BrightnessRanker(batch_size=7), cfg, renderer=FakeRenderer())
    assert len(q.rig) == 12 * 2
    res = q("mesh", "a prompt")
    assert res.vertex_scores.shape == (12,)
    assert q.rig.positions[res.best_vertex][2] == pytest.approx(q.rig.positions[:, 2].max())
    assert res.score == pytest.approx(res.vertex_scores.max() * 20 + 50)


def test_t3bench_config_validation():
    with pytest.raises(ValueError, match="fovs"):
        T3BenchConfig(fovs=())
    with pytest.raises(ValueError, match="level"):
        T3BenchConfig(level=-1)


# --------------------------------------------------------------------------------- HPSv2 glue
class StandInCLIP(torch.nn.Module):
    """Features = normalised mean colour (image) and a colour per prompt word (text)."""

    COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def __init__(self):
        super().__init__()
        self.seen_shapes: list[tuple] = []

    def forward(self, images, tokens):
        self.seen_shapes.append(tuple(images.shape))
        img = torch.nn.functional.normalize(images.mean((2, 3)), dim=-1)
        return {"image_features": img, "text_features": tokens}


def stand_in_tokenizer(prompts):
    rows = []
    for p in prompts:
        c = next((v for k, v in StandInCLIP.COLOURS.items() if k in p), (1.0, 1.0, 1.0))
        rows.append(torch.nn.functional.normalize(torch.tensor(c), dim=0))
    return torch.stack(rows)


def test_hpsv2_glue_with_stand_in_model():
    from debias3d.models.ranker.hpsv2 import HPSv2Ranker

    model = StandInCLIP()
    r = HPSv2Ranker(model=model, tokenizer=stand_in_tokenizer, batch_size=5)
    red = torch.zeros(6, 3, 32, 32)
    red[:, 0] = 1.0
    blue = torch.zeros(6, 3, 32, 32)
    blue[:, 2] = 1.0
    s = r.score_many([red, blue], ["a red vase", "a red vase"])
    assert s[0] > s[1]
    assert r.score(blue, "a blue cup") > r.score(red, "a blue cup")
    assert all(shape[1:] == (3, 224, 224) for shape in model.seen_shapes)
    assert max(shape[0] for shape in model.seen_shapes) <= 5


def test_registry_names():
    from debias3d.registry import available

    assert {"shapeworld", "hpsv2", "imagereward"} <= set(available("ranker"))
