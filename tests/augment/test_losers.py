"""The pairs dataset keeps the other side of each duel (x_n), so DPO can read (prompt, winner, loser)."""

from __future__ import annotations

import numpy as np

from debias3d.augment.config import AugmentConfig
from debias3d.augment.pipeline import run_augment
from debias3d.config import load_config


def test_pairs_carry_the_original_mesh_voxels(tmp_path, audit_dir):
    from datasets import load_from_disk

    from debias3d.data.assets import load_mesh
    from debias3d.data.shapeworld.voxelize import mesh_to_voxels

    overrides = ["num_threads=1", "visual.ranker=standin", "contexts=3", "progress=false", "report=false",
                 "visual.keep_losers=true"]  # fmt: skip
    cfg = load_config(AugmentConfig, overrides=overrides)
    run_augment(audit_dir, cfg, tmp_path / "aug")
    ds = load_from_disk(str(tmp_path / "aug" / "pairs"))
    assert {"orig_mesh", "orig_occupancy", "orig_colors"} <= set(ds.column_names)
    assert {True, False} <= set(ds["winner"])  # keep_losers: both outcomes are rows
    for row in ds:
        orig = mesh_to_voxels(load_mesh(audit_dir / row["orig_mesh"]), 16).to_arrays()
        assert np.array_equal(np.array(row["orig_occupancy"], np.uint8), orig["occupancy"].reshape(-1))
        assert np.array_equal(np.array(row["orig_colors"], np.uint8), orig["colors"].reshape(-1))
        # x_n is the source prompt's sample, never the new mesh
        assert row["orig_mesh"].startswith("meshes/p") and row["orig_mesh"] != row["mesh"]
