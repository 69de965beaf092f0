"""T3Bench preset: the rig matches T3Bench's render script, the config preset fills every setting,
the label says which ranker produced T3Bench-style numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import trimesh

from debias3d.models.ranker.t3bench import T3BenchConfig, T3BenchQuality, t3bench_comparable, t3bench_label
from debias3d.render.cameras import T3BENCH_FOVS, rig_preset


def t3bench_pose(v: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation exactly as T3Bench's render/meshrender.py builds it."""
    f = v / np.linalg.norm(v)
    u = np.array([0, 0, 1]) if np.abs(np.dot(f, [0, 0, 1])) < 0.99 else np.array([0, 1, 0])
    r = np.cross(u, -v)
    r = r / np.linalg.norm(r)
    u_ = np.cross(-v, r)
    u_ = u_ / np.linalg.norm(u_)
    return np.stack([-r, u_, f], axis=1)


def test_t3bench_rig_preset_is_t3bench_render_script():
    rig = rig_preset("t3bench")
    ico = trimesh.creation.icosphere(subdivisions=2, radius=2.2)
    assert (len(rig), rig.n_positions, rig.fovs) == (810, 162, T3BENCH_FOVS)
    assert (rig.image_size, rig.background, rig.lighting, rig.normalize) == (
        512,
        "black",
        "flat",
        "unit_cube",
    )
    assert np.allclose(rig.positions, ico.vertices)
    for p, v in enumerate(ico.vertices):
        pose = t3bench_pose(v)
        for f, fov in enumerate(T3BENCH_FOVS):
            cam = rig.cameras[p * 5 + f]
            assert cam.fov == pytest.approx(fov)
            assert np.allclose(cam.position, v) and np.allclose(cam.focal_point, 0)
            assert np.allclose(cam.up, pose[:, 1], atol=1e-9), (p, cam.up, pose[:, 1])
    # the two pole views are where T3Bench's up rule differs from the project's default one
    default = T3BenchConfig()
    q = T3BenchQuality(None, default)
    poles = [p for p, v in enumerate(ico.vertices) if abs(v[2]) / 2.2 > 0.99]
    assert poles and any(not np.allclose(q.rig.cameras[p * 5].up, rig.cameras[p * 5].up) for p in poles)


def test_t3bench_caption_rig_uses_upstream_radius():
    rig = rig_preset("t3bench-caption")
    ico = trimesh.creation.icosphere(subdivisions=0, radius=2.2)
    assert len(rig) == 12 and rig.fovs == (pytest.approx(math.pi / 3),)
    assert np.allclose(rig.positions, ico.vertices * 2.2)  # meshrender_cap.py scales by the radius twice
    assert rig.image_size == 512 and rig.background == "black"
    with pytest.raises(ValueError, match="unknown rig preset 'nope'"):
        rig_preset("nope")


def test_config_preset_fills_every_setting_and_refuses_conflicts():
    c = T3BenchConfig(preset="t3bench")
    assert (c.level, c.fovs, c.radius, c.smooth_iterations, c.scale, c.offset) == (
        2,
        T3BENCH_FOVS,
        2.2,
        3,
        20,
        50,
    )
    assert (c.image_size, c.background, c.lighting, c.up_rule) == (512, "black", "flat", "t3bench")
    assert T3BenchConfig(preset="t3bench", image_size=512).image_size == 512  # agreeing value is fine
    with pytest.raises(ValueError, match=r"T3BenchConfig.level=0 conflicts with preset 't3bench'"):
        T3BenchConfig(preset="t3bench", level=0)
    with pytest.raises(ValueError, match="T3BenchConfig.preset"):
        T3BenchConfig(preset="T3Bench")
    with pytest.raises(ValueError, match="T3BenchConfig.lighting"):
        T3BenchConfig(lighting="dark")
    # round trip through the YAML dict (fingerprints, run.json) keeps the preset valid
    from debias3d.config import from_dict, to_dict

    assert from_dict(T3BenchConfig, to_dict(c)) == c


def test_quality_renders_with_the_rig_settings():
    class R:
        image_size = 64

    q = T3BenchQuality(R(), T3BenchConfig(preset="t3bench"))
    r = q.renderer
    assert (r.width, r.height, r.background_rgb, r.lighting) == (512, 512, (0, 0, 0), "flat")
    q2 = T3BenchQuality(R(), T3BenchConfig(level=0, fovs=(1.0,)))  # the project's reduced rig
    r2 = q2.renderer
    assert (r2.width, r2.background_rgb, r2.lighting) == (64, (255, 255, 255), "soft")


def test_label_says_which_ranker_and_if_comparable():
    t3 = T3BenchConfig(preset="t3bench")
    reduced = T3BenchConfig(level=0, fovs=(1.0,))
    assert t3bench_comparable("imagereward", t3)
    assert not t3bench_comparable("hpsv2", t3)
    assert not t3bench_comparable("imagereward", reduced)
    assert "comparable with published T3Bench" in t3bench_label("imagereward", t3)
    assert "not comparable" in t3bench_label("imagereward", reduced)
    assert t3bench_label("shapeworld", reduced).startswith("shapeworld, 12 cameras x 1 FoV")
    assert "calibrated for ImageReward" in t3bench_label("hpsv2", t3)


def test_t3bench_table_carries_the_ranker_label():
    from debias3d.eval.benchmarks import t3bench_table

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "prompt_index": np.arange(6),
            "sample": 0,
            "t3_group": ["single", "multi"] * 3,
            "t3_quality": rng.normal(50, 5, 6),
            "score_alignment": rng.uniform(size=6),
        }
    )
    label = t3bench_label("imagereward", T3BenchConfig(preset="t3bench"))
    t = t3bench_table({"base": df}, n_boot=50, ranker=label)
    assert set(t.loc[t["metric"] == "quality", "ranker"]) == {label}
    assert set(t.loc[t["metric"] == "alignment", "ranker"]) == {"evaluator alignment dimension"}
    assert "ranker" not in t3bench_table({"base": df}, n_boot=50).columns
