"""ShapeWorld measurer: the ground truth. Acceptance: recall >= 95%, FPR < 10% per word."""

import logging

import numpy as np
import pytest

from debias3d.data.assets import VoxelGrid
from debias3d.data.shapeworld import vocab
from debias3d.data.shapeworld.builder import build, build_voxels
from debias3d.data.shapeworld.measurer import fidelity, measure, score_prompt, self_check
from debias3d.data.shapeworld.parser import parse

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def report():
    # 320 freshly built shapes over all categories, FPR claims on the first 200
    return self_check(n_shapes=320, seed=2024, fpr_shapes=200)


def test_acceptance_recall(report):
    total = sum(n for _h, n in report.recall.values())
    logger.info("measurer recall %.3f over %d attribute words", report.total_recall, total)
    assert total >= 600
    assert report.total_recall >= 0.95
    # every word kind is exercised, and no single word is badly read
    assert {vocab.WORD_KIND[w] for w in report.recall} == set(vocab.ATTRIBUTE_WORDS)
    for w, (h, n) in report.recall.items():
        if n >= 10:
            assert h / n >= 0.8, (w, h, n)


def test_acceptance_false_positive_rate(report):
    for w in vocab.MODIFIERS:
        h, n = report.false_positive.get(w, (0, 0))
        assert n >= 5, f"too few claims of {w!r} to estimate its FPR"
        assert h / n < 0.10, (w, h, n)
    for w in (*vocab.ACTIONS, *vocab.SIZES):
        h, n = report.false_positive.get(w, (0, 0))
        assert n == 0 or h / n < 0.10, (w, h, n)


def test_measure_fields():
    m = measure(build_voxels(parse("a red cup next to a blue vase"), rng=0))
    assert m.count == 2
    assert {c.colour for c in m.components} == {"red", "blue"}
    assert any(kind == "next to" for _i, _j, kind in m.relations)
    assert measure(VoxelGrid.empty()).count == 0


def _recolour(g, rgb):
    col = g.colors.copy()
    col[g.occupancy] = rgb
    return VoxelGrid(g.occupancy, col)


def test_corrupted_shapes_score_lower():
    spec = parse("a tall red vase with a long narrow neck")
    g = build_voxels(spec, rng=1)
    assert fidelity(spec, g) == 1.0
    # wrong colour
    wrong = _recolour(g, vocab.COLOURS["green"])
    assert score_prompt(spec, wrong)["red"] is False
    assert fidelity(spec, wrong) < 1.0
    # dropped neck: remove the top slices
    top = np.flatnonzero(g.occupancy.any((0, 1))).max()
    occ = g.occupancy.copy()
    occ[:, :, top - 5 :] = False
    no_neck = VoxelGrid(occ, g.colors * occ[..., None])
    s = score_prompt(spec, no_neck)
    assert not s["long"] and fidelity(spec, no_neck) < 1.0
    # squashed: keep every other slice
    squashed = VoxelGrid(
        np.pad(g.occupancy[:, :, ::2], ((0, 0), (0, 0), (0, 8))),
        np.pad(g.colors[:, :, ::2], ((0, 0), (0, 0), (0, 8), (0, 0))),
    )
    assert not score_prompt(spec, squashed)["tall"]
    assert fidelity(spec, squashed) < fidelity(spec, g)


def test_relation_and_count_corruptions():
    spec = parse("a red cup on top of a blue table")
    g = build_voxels(spec, rng=0)
    assert fidelity(spec, g) == 1.0
    swapped = build_voxels(parse("a blue table next to a red cup"), rng=0)
    assert score_prompt(spec, swapped)["on top of"] is False
    two = parse("three yellow boxes")
    assert score_prompt(two, build_voxels(parse("two yellow boxes"), rng=0))["three"] is False


def test_ignored_word_is_caught():
    # a generator that ignores "spiky" / "flat" / "floating" makes the plain object
    for word, text in [("spiky", "a spiky tower"), ("flat", "a flat box"), ("floating", "a floating lamp")]:
        plain = build_voxels(parse(text).without(word), rng=5)
        assert score_prompt(text, plain)[word] is False, word


@pytest.mark.parametrize("p_occ", [0.0, 0.03, 0.1, 0.3, 0.6, 1.0])
def test_random_and_empty_grids_score_low(p_occ):
    rng = np.random.default_rng(int(p_occ * 100))
    occ = rng.random((16, 16, 16)) < p_occ
    noise = VoxelGrid(occ, rng.random((16, 16, 16, 3)).astype(np.float32) * occ[..., None])
    fids = [
        fidelity(t, noise)
        for t in ["a tall red vase with a long neck", "two blue cups", "a spiky green tower", "a vase"]
    ]
    assert np.mean(fids) <= 0.25, fids


def test_mesh_input_matches_voxel_input():
    spec = parse("a large purple bottle with a wide base")
    asset = build(spec, rng=3)
    assert fidelity(spec, asset.mesh) == fidelity(spec, asset.voxels) == 1.0
    assert fidelity(spec, asset) == 1.0
