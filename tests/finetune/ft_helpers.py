"""Tiny fixtures for the fine-tuning tests: a random mini TRELLIS and tiny pairs / corpus datasets."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stand_ins import random_mini_trellis  # noqa: E402

RES = 8
PROMPTS = ["a red vase", "a blue cube on a table", "a tall green lamp", "a small yellow chair"]


def tiny_generator(seed: int = 0):
    """A random mini TRELLIS (R = 8, width 32, one block per stage) with EVERY parameter random.

    The shipped init zeroes ``out_layer`` and the adaLN gates, which would give LoRA zero gradients
    on the first steps; a test that checks "every LoRA parameter changed" needs a live network.
    """
    return random_mini_trellis(RES, seed)


def shape_row(i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random box of voxels with a random colour: occupancy (R,R,R) uint8, colours (R,R,R,3) uint8."""
    occ = np.zeros((RES, RES, RES), np.uint8)
    lo = rng.integers(0, RES // 2, 3)
    hi = lo + rng.integers(2, RES // 2 + 1, 3)
    occ[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    col = np.zeros((RES, RES, RES, 3), np.uint8)
    col[occ.astype(bool)] = rng.integers(0, 256, 3, dtype=np.uint8)
    return occ, col


def write_glb(path: Path, occ: np.ndarray) -> Path:
    """A real GLB (a box mesh) for a pair's ``mesh`` column."""
    import trimesh

    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=[1, 1, 1]).export(path, file_type="glb")
    return path


def write_pairs(root: Path, n: int = 8, seed: int = 0, broken: dict[int, str] | None = None) -> Path:
    """``root/pairs`` (HF dataset, the augment stage's columns) with meshes under ``root/meshes``.

    ``broken`` maps row → ``"missing"`` (no mesh file), ``"garbage"`` (not a GLB) or ``"voxels"``
    (malformed occupancy).
    """
    from datasets import Dataset

    broken = broken or {}
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("prompt", "source_prompt", "w_h", "w_l", "mesh", "occupancy",
                                             "colors", "seed", "winner", "strategy")}  # fmt: skip
    for i in range(n):
        occ, col = shape_row(i, rng)
        mesh = Path("meshes") / f"pair_{i:03d}.glb"
        kind = broken.get(i)
        if kind != "missing":
            write_glb(root / mesh, occ)
        if kind == "garbage":
            (root / mesh).write_bytes(b"this is not a mesh")
        if kind == "voxels":
            occ = np.zeros((RES, RES, RES), np.uint8)
        rows["prompt"].append(f"{PROMPTS[i % len(PROMPTS)]} in a garden {i}")
        rows["source_prompt"].append(PROMPTS[i % len(PROMPTS)])
        rows["w_h"].append("red")
        rows["w_l"].append("vase")
        rows["mesh"].append(str(mesh))
        rows["occupancy"].append(occ)
        rows["colors"].append(col)
        rows["seed"].append(i)
        rows["winner"].append(True)
        rows["strategy"].append("context")
    out = root / "pairs"
    Dataset.from_dict(rows).save_to_disk(str(out))
    return out


def write_corpus(path: Path, n: int = 6, seed: int = 1) -> Path:
    """A tiny ShapeWorld-like corpus (prompt, category, occupancy, colors, seed)."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    occs, cols = zip(*(shape_row(i, rng) for i in range(n)), strict=True)
    Dataset.from_dict(
        {
            "prompt": [f"{PROMPTS[i % len(PROMPTS)]}" for i in range(n)],
            "category": ["basic"] * n,
            "occupancy": list(occs),
            "colors": list(cols),
            "seed": list(range(n)),
        }
    ).save_to_disk(str(path))
    return path
