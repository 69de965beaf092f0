"""Statistics on hand-made cases: bootstrap CI, Chamfer distance, the neglected-word split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import trimesh

from debias3d.eval.benchmarks import (
    categories_improved,
    mate3d_table,
    paired_table,
    t3bench_group,
    t3bench_table,
)
from debias3d.eval.diversity import chamfer_distance, pairwise_chamfer, prompt_diversity
from debias3d.eval.stats import bootstrap_ci, bootstrap_diff_ci, neglected_split


# ------------------------------------------------------------------------------ bootstrap
@pytest.mark.parametrize("n", [5, 50, 500])
def test_bootstrap_ci_covers_the_mean(n):
    x = np.random.default_rng(n).normal(3.0, 1.0, n)
    c = bootstrap_ci(x, n_boot=400, seed=0)
    assert c.n == n and c.mean == pytest.approx(x.mean())
    assert c.lo <= c.mean <= c.hi


def test_bootstrap_ci_narrows_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (10, 100, 1000):
        c = bootstrap_ci(rng.normal(0.0, 1.0, n), n_boot=500, seed=1)
        widths.append(c.hi - c.lo)
    assert widths[0] > widths[1] > widths[2] > 0
    # ~ 2 * 1.96 / sqrt(n) for unit variance
    assert widths[2] == pytest.approx(2 * 1.96 / math.sqrt(1000), rel=0.25)


def test_bootstrap_ci_edge_cases():
    assert math.isnan(bootstrap_ci([]).mean) and bootstrap_ci([]).n == 0
    one = bootstrap_ci([0.7])
    assert (one.mean, one.lo, one.hi) == (0.7, 0.7, 0.7)
    const = bootstrap_ci([2.0] * 20)
    assert const.lo == const.hi == 2.0
    assert bootstrap_ci([1.0, np.nan, 3.0]).n == 2  # NaN dropped
    assert bootstrap_ci([1, 2, 3], seed=3) == bootstrap_ci([1, 2, 3], seed=3)  # reproducible
    with pytest.raises(ValueError, match="ci"):
        bootstrap_ci([1, 2], ci=1.0)


def test_paired_difference():
    a = np.linspace(0, 1, 40)
    d = bootstrap_diff_ci(a, a + 0.25, paired=True, n_boot=200)
    assert d.mean == pytest.approx(0.25) and d.lo == pytest.approx(0.25) and d.hi == pytest.approx(0.25)
    u = bootstrap_diff_ci(a, a + 0.25, paired=False, n_boot=200)
    assert u.lo < 0.25 < u.hi
    with pytest.raises(ValueError, match="equal lengths"):
        bootstrap_diff_ci([1, 2], [1], paired=True)


# ------------------------------------------------------------------------------ chamfer
def test_chamfer_of_identical_meshes_is_zero():
    box = trimesh.creation.box(extents=(1, 1, 1))
    assert chamfer_distance(box, box.copy()) == 0.0
    assert prompt_diversity([box, box.copy(), box.copy()]) == 0.0


def test_chamfer_grows_with_displacement():
    box = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    ds = []
    for shift in (0.0, 0.1, 0.3, 0.8):
        moved = box.copy()
        moved.apply_translation((shift, 0.0, 0.0))
        ds.append(chamfer_distance(box, moved, n_points=512))
    assert ds[0] == 0.0
    assert all(b > a for a, b in zip(ds, ds[1:], strict=False))
    # far apart, both one-sided terms approach the shift
    assert ds[-1] == pytest.approx(2 * 0.8, rel=0.35)


def test_pairwise_chamfer_symmetric_and_skips_empty_meshes():
    a = trimesh.creation.box()
    b = trimesh.creation.icosphere(subdivisions=2)
    m = pairwise_chamfer([a, b, trimesh.Trimesh()], n_points=256)
    assert m[0, 1] == m[1, 0] > 0 and m[0, 0] == 0.0
    assert np.isnan(m[2]).all()
    assert prompt_diversity([a, b, trimesh.Trimesh()], n_points=256) == pytest.approx(m[0, 1])
    assert math.isnan(prompt_diversity([a, trimesh.Trimesh()]))


# ------------------------------------------------------------------------------ neglected split
def test_neglected_split_picks_bottom_quartile():
    fid = {f"w{i}": i / 10 for i in range(8)}  # w0 lowest
    neg, rest = neglected_split(fid, 0.25)
    assert neg == ["w0", "w1"] and rest == [f"w{i}" for i in range(2, 8)]
    # ceil: 9 words -> 3 neglected; NaN ignored
    fid9 = {**{f"v{i}": i for i in range(9)}, "nan": float("nan")}
    neg9, rest9 = neglected_split(fid9)
    assert neg9 == ["v0", "v1", "v2"] and "nan" not in neg9 + rest9 and len(rest9) == 6


def test_neglected_split_ties_are_deterministic():
    fid = {"b": 0.5, "a": 0.5, "c": 0.5, "d": 0.5}
    assert neglected_split(fid) == (["a"], ["b", "c", "d"])
    assert neglected_split({}) == ([], [])


# ------------------------------------------------------------------------------ tables
def _frames():
    rows_a, rows_b = [], []
    for cat_i, cat in enumerate(("basic", "spatial")):
        for p in range(3):
            for d in range(2):
                base = {"prompt_index": cat_i * 3 + p, "sample": d, "category": cat, "t3_group": "single"}
                va = 0.2 + 0.1 * p
                rows_a.append({**base, **{f"score_{k}": va for k in ("alignment", "geometry", "texture", "overall")},
                               "t3_quality": 50.0 + p})  # fmt: skip
                vb = va + (0.1 if cat == "basic" else -0.05)
                rows_b.append({**base, **{f"score_{k}": vb for k in ("alignment", "geometry", "texture", "overall")},
                               "t3_quality": 51.0 + p})  # fmt: skip
    return {"base": pd.DataFrame(rows_a), "finetuned": pd.DataFrame(rows_b)}


def test_mate3d_and_t3bench_tables():
    frames = _frames()
    t = mate3d_table(frames, n_boot=100)
    assert set(t["category"]) == {"basic", "spatial", "all"} and set(t["dimension"]) >= {
        "overall",
        "alignment",
    }
    row = t[(t["category"] == "basic") & (t["dimension"] == "overall")].iloc[0]
    assert row["delta"] == pytest.approx(0.1) and row["base_lo"] <= row["base_mean"] <= row["base_hi"]
    imp = categories_improved(t)
    assert imp["improved"] == 1 and imp["of"] == 2
    t3 = t3bench_table(frames, n_boot=100)
    q = t3[t3["metric"] == "quality"].iloc[0]
    assert q["delta"] == pytest.approx(1.0)
    one = paired_table({"base": frames["base"]}, "category", ["score_overall"], n_boot=50)
    assert "delta" not in one


@pytest.mark.parametrize(
    ("prompt", "group"),
    [
        ("a red vase", "single"),
        ("two blue cups", "multi"),
        ("a small box next to a green vase", "multi"),
        ("a red bowl floating in the air", "surroundings"),
        ("a leaning bottle", "surroundings"),
        ("a cat and a dog", "multi"),  # not ShapeWorld: word rules
    ],
)
def test_t3bench_groups(prompt, group):
    assert t3bench_group(prompt) == group


def test_tables_say_when_there_are_no_categories():
    from debias3d.eval.benchmarks import NO_CATEGORY, NO_CATEGORY_NOTE
    from debias3d.eval.report import target_rows

    frames = {k: f.assign(category=None) for k, f in _frames().items()}  # e.g. prompt_MATE_3D.json
    t = mate3d_table(frames, n_boot=50)
    assert set(t["category"]) == {NO_CATEGORY, "all"}
    assert t.attrs["note"] == NO_CATEGORY_NOTE and "category file" in NO_CATEGORY_NOTE
    imp = categories_improved(t)
    assert imp["improved"] is None and imp["of"] == 0 and imp["note"] == NO_CATEGORY_NOTE
    rows = target_rows(
        {
            "targets": {
                "evaluator_overall_categories": {"value": None, "of": 0, "target": ">= 5", "met": False}
            }
        }
    )
    assert rows[0]["value"] == "no categories"
    # with categories, there is no note
    assert "note" not in mate3d_table(_frames(), n_boot=50).attrs


def test_eval_prompts_take_categories_from_a_category_file(tmp_path):
    from pathlib import Path

    from debias3d.eval.benchmarks import NO_CATEGORY
    from debias3d.eval.config import EvalConfig
    from debias3d.eval.pipeline import load_eval_prompts

    mate = Path(__file__).parents[1] / "data" / "fixtures" / "prompts" / "mate3d" / "prompt_MATE_3D.json"
    assert {p.category for p in load_eval_prompts(EvalConfig(prompts=str(mate)))} == {NO_CATEGORY}
    cats = tmp_path / "cats.csv"
    cats.write_text(
        "prompt,category\nA badge shaped like a shield,basic\nA wooden chair with a curved backrest,refined\n"
    )
    got = [p.category for p in load_eval_prompts(EvalConfig(prompts=str(mate), categories=str(cats)))]
    assert got == ["basic", NO_CATEGORY, "refined"]


def test_derive_audit_takes_another_methods_picks(tmp_path):
    """grad_guided augments from a copy of the audit whose w_h / w_l are the gradient's picks."""
    import pandas as pd
    import pytest

    from debias3d.demo_ablations import derive_audit

    src = tmp_path / "audit"
    (src / "meshes").mkdir(parents=True)
    (src / "meshes" / "p_0.glb").write_bytes(b"glb")
    pd.DataFrame(
        {"prompt_id": ["p"], "prompt": ["a red vase"], "w_h": ["vase"], "w_l": ["red"],
         "w_h_grad": ["red"], "w_l_grad": ["vase"]}
    ).to_parquet(src / "prompts.parquet")  # fmt: skip
    pd.DataFrame({"prompt_id": ["p"], "sample": [0], "seed": [0], "mesh": ["meshes/p_0.glb"]}).to_parquet(
        src / "samples.parquet"
    )
    dst = derive_audit(src, "grad", tmp_path / "audit_grad")
    p = pd.read_parquet(dst / "prompts.parquet")
    assert (p.w_h.tolist(), p.w_l.tolist()) == (["red"], ["vase"])
    assert (dst / "meshes" / "p_0.glb").read_bytes() == b"glb" and (dst / "samples.parquet").is_file()
    with pytest.raises(ValueError, match="did not run attribution method 'occlusion'"):
        derive_audit(src, "occlusion", tmp_path / "x")
