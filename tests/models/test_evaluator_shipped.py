"""Shipped embedded weights: they load, stay small, and prefer correct shapes to corrupted ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from debias3d.models.evaluator.model import ShapeWorldHyperScore, default_weights_dir
from debias3d.models.ranker.model import ShapeWorldRanker
from debias3d.models.ranker.model import default_weights_dir as ranker_dir

PROMPTS = [
    "a red vase with a long neck",
    "a blue tall tower",
    "two green cups",
    "a yellow mushroom with a thick stem",
    "a purple bottle with a wide base",
    "a black chair with long legs",
]


@pytest.fixture(scope="module")
def pairs():
    """(clean, corrupted) assets per prompt: wrong colour + floating fragments."""
    from dataclasses import replace

    from debias3d.data.shapeworld.builder import build_voxels
    from debias3d.data.shapeworld.parser import parse
    from debias3d.data.shapeworld.voxelize import voxels_to_mesh
    from debias3d.models.evaluator.data import _grid_corruption

    rng = np.random.default_rng(0)
    clean, bad = [], []
    for i, p in enumerate(PROMPTS):
        spec = parse(p)
        clean.append(voxels_to_mesh(build_voxels(spec, rng=i)))
        obj = spec.objects[0]
        wrong = "orange" if obj.colour != "orange" else "white"
        grid = build_voxels(replace(spec, objects=(replace(obj, colour=wrong),)), rng=i)
        grid, _ = _grid_corruption("fragments", grid, rng)
        bad.append(voxels_to_mesh(grid))
    return clean, bad


def test_shipped_evaluators_are_small_and_documented():
    total = 0
    for variant in ("default", "scene"):
        d = default_weights_dir(variant)
        total += (d / "model.safetensors").stat().st_size
        record = json.loads((d / "training_record.json").read_text())
        assert set(record["mean_over_folds"]) == {"alignment", "geometry", "texture", "overall"}
    assert total <= 10 * 2**20
    with pytest.raises(ValueError, match="variant"):
        default_weights_dir("nope")


@pytest.mark.parametrize("variant", ["default", "scene"])
def test_shipped_evaluator_prefers_correct_shapes(text_encoder, pairs, variant):
    ev = ShapeWorldHyperScore.from_pretrained(variant, text_encoder=text_encoder)
    assert ev.config.view_frame == ("scene" if variant == "scene" else "unit_sphere")
    clean, bad = pairs
    q_clean = ev.score(ev.prepare_views(clean), PROMPTS)
    q_bad = ev.score(ev.prepare_views(bad), PROMPTS)
    assert torch.isfinite(q_clean).all() and torch.isfinite(q_bad).all()
    overall = ev.dimensions.index("overall")
    assert q_clean[:, overall].mean() > q_bad[:, overall].mean()
    assert (q_clean[:, overall] > q_bad[:, overall]).float().mean() >= 0.5


def test_shipped_ranker_prefers_correct_shapes(text_encoder, pairs):
    d = ranker_dir()
    assert (d / "model.safetensors").stat().st_size <= 5 * 2**20
    ranker = ShapeWorldRanker.from_pretrained(text_encoder=text_encoder)
    clean, bad = pairs
    s_clean = ranker.score_many(ranker.render_views(clean), PROMPTS)
    s_bad = ranker.score_many(ranker.render_views(bad), PROMPTS)
    assert np.isfinite(s_clean).all()
    assert s_clean.mean() > s_bad.mean()


def test_ranker_shares_no_weights_with_evaluator(text_encoder):
    ev = ShapeWorldHyperScore.from_pretrained(text_encoder=text_encoder)
    ranker = ShapeWorldRanker.from_pretrained(text_encoder=text_encoder)
    ev_ptrs = {p.data_ptr() for n, p in ev.named_parameters() if not n.startswith("text_encoder.")}
    rk_ptrs = {p.data_ptr() for n, p in ranker.named_parameters() if not n.startswith("text_encoder.")}
    assert not ev_ptrs & rk_ptrs
