"""The work items of an augmentation run: semantic (writer + filter), original and visual (generator + ranker)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.augment.components import Components, _progress
from debias3d.augment.config import AugmentConfig
from debias3d.augment.job import JobStore, item_key
from debias3d.augment.semantic import stable_seed
from debias3d.augment.sources import Source, _load_mesh, check_mesh_file
from debias3d.data.assets import mesh_bytes
from debias3d.runs import inside

logger = logging.getLogger(__name__)


def _semantic_key(src: Source, cfg: AugmentConfig, comps: Components) -> str:
    from debias3d.config import to_dict

    return item_key(
        "semantic",
        {
            "prompt_id": src.prompt_id,
            "prompt": src.prompt,
            "keep": list(src.keep_words),
            "w_h": src.w_h,
            "w_l": src.w_l,
            "n": cfg.contexts,
            "seed": cfg.seed,
            "world": cfg.world,
            "llm": comps.writer_settings(),
            "filter": to_dict(cfg.filter),
        },
    )


def _original_key(src: Source, cfg: AugmentConfig) -> str:
    from debias3d.augment.visual import judge_settings

    return item_key(
        "original", {"mesh_sha": src.mesh_sha, "prompt": src.prompt, **judge_settings(cfg.visual)}
    )


def _visual_key(src: Source, new_prompt: str, seed: int, cfg: AugmentConfig) -> str:
    from debias3d.augment.visual import generator_settings, judge_settings

    return item_key(
        "visual",
        {
            "new_prompt": new_prompt,
            "source_prompt": src.prompt,
            "orig_mesh_sha": src.mesh_sha,
            "seed": seed,
            "gen": generator_settings(cfg.visual),
            **judge_settings(cfg.visual),
        },
    )


def _run_semantic(
    srcs: Sequence[tuple[Source, str]], cfg: AugmentConfig, comps: Components, store: JobStore, show: bool
) -> None:
    """Context writer + filter for every pending source (requests overlap in the writer)."""
    from debias3d.models.llm.base import ContextRequest, LLMResult

    pending = [(s, k) for s, k in srcs if not store.done(k)]
    if not pending:
        return
    requests = []
    for s, _k in pending:
        requests.append(
            ContextRequest(
                s.prompt, s.keep_words, cfg.contexts, stable_seed(cfg.seed, "semantic", s.prompt_id, s.prompt)
            )
        )
    bar = _progress(range(len(pending)), "contexts", show)
    no_words = [i for i, s in enumerate(pending) if not s[0].keep_words]
    for i in no_words:
        s, k = pending[i]
        store.append(
            k,
            "semantic",
            "failed",
            _semantic_result(s, LLMResult(error="no word to keep (w_h / w_l missing)"), None),
        )
        bar.update(1)
    live = [i for i in range(len(pending)) if i not in set(no_words)]
    for j, res in comps.writer.iter_write([requests[i] for i in live]):
        s, k = pending[live[j]]
        filtered = None
        if res.ok:
            filtered = comps.filter.filter(s.prompt, res.prompts, s.keep_words, s.w_h, s.w_l)
        store.append(k, "semantic", "done" if res.ok else "failed", _semantic_result(s, res, filtered))
        bar.update(1)
    bar.close()


def _semantic_result(src: Source, res: Any, filtered: Any) -> dict[str, Any]:
    return {
        "prompt_id": src.prompt_id,
        "candidates": list(res.prompts),
        "accepted": list(filtered.accepted) if filtered is not None else [],
        "rejected": [r.to_dict() for r in filtered.rejected] if filtered is not None else [],
        "diversity": filtered.diversity if filtered is not None else None,
        "llm_error": res.error,
        "usage": {
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": res.completion_tokens,
            "attempts": res.attempts,
            "cost": res.cost,
        },
    }


def encode_voxels(grid: Any) -> dict[str, Any]:
    """Compact JSON form of a voxel grid for a job record: packed occupancy bits + occupied RGB."""
    a = grid.to_arrays()
    occ = a["occupancy"].astype(bool)
    return {
        "resolution": int(occ.shape[0]),
        "occupancy": base64.b64encode(np.packbits(occ.reshape(-1))).decode("ascii"),
        "colors": base64.b64encode(a["colors"][occ].tobytes()).decode("ascii"),
    }


def decode_voxels(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_voxels`: ``occupancy`` (R, R, R) uint8, ``colors`` (R, R, R, 3) uint8."""
    r = int(d["resolution"])
    bits = np.frombuffer(base64.b64decode(d["occupancy"]), np.uint8)
    occ = np.unpackbits(bits)[: r**3].astype(bool).reshape(r, r, r)
    colors = np.zeros((r, r, r, 3), np.uint8)
    colors[occ] = np.frombuffer(base64.b64decode(d["colors"]), np.uint8).reshape(-1, 3)
    return {"occupancy": occ.astype(np.uint8), "colors": colors}


def _visual_record_intact(rec: dict[str, Any] | None, out: Path) -> bool:
    """A finished visual record whose mesh file is on disk with the recorded size."""
    if rec is None or rec.get("status") != "done":
        return rec is not None
    path = out / rec["result"]["mesh"]
    return path.is_file() and path.stat().st_size == rec["result"].get("mesh_bytes", -1)


def _orig_voxels(
    audit: Path | None, src: Source, resolution: int
) -> tuple[list[int] | None, list[int] | None]:
    """x_n's voxels (flattened occupancy, colours) for the preference columns; None when unreadable."""
    from debias3d.data.shapeworld.voxelize import mesh_to_voxels

    if audit is None:
        return None, None
    try:
        grid = mesh_to_voxels(_load_mesh(inside(audit, src.mesh, "mesh path")), resolution)
    except (ValueError, OSError, IndexError, KeyError) as err:
        logger.warning(
            "x_n %s of %s cannot be voxelised (%s); its rows have no orig_* voxels",
            src.mesh,
            src.prompt_id,
            err,
        )
        return None, None
    a = grid.to_arrays()
    return a["occupancy"].reshape(-1).tolist(), a["colors"].reshape(-1).tolist()


def _run_original(src: Source, key: str, audit: Path, comps: Components, store: JobStore) -> dict[str, Any]:
    def fn() -> tuple[str, dict[str, Any]]:
        path = inside(audit, src.mesh, "mesh path")
        why = check_mesh_file(path)
        if why is not None:
            return "failed", {"prompt_id": src.prompt_id, "error": f"cannot score x_n: {why}"}
        try:
            score = comps.judge.score(_load_mesh(path), src.prompt)
        except (ValueError, OSError, RuntimeError, IndexError, KeyError) as err:
            return "failed", {
                "prompt_id": src.prompt_id,
                "error": f"cannot score x_n: {' '.join(str(err).split())[:200]}",
            }
        return "done", {"prompt_id": src.prompt_id, "score": score}

    return store.run(key, "original", fn)


def _run_visual(
    item: dict[str, Any],
    src: Source,
    audit: Path,
    out: Path,
    cfg: AugmentConfig,
    comps: Components,
    store: JobStore,
) -> None:
    from debias3d.augment.visual import ExternalGenerationError

    key = item["key"]
    if store.done(key) and _visual_record_intact(store.get(key), out):
        return
    orig = _run_original(src, item["orig_key"], audit, comps, store)
    base = {"prompt_id": src.prompt_id, "new_prompt": item["new_prompt"], "seed": item["seed"]}
    if orig["status"] != "done":
        store.append(key, "visual", "failed", {**base, "error": orig["result"]["error"]})
        return
    try:
        gen = comps.generator
        if hasattr(gen, "generate_one"):
            asset = gen.generate_one(item["new_prompt"], item["seed"])
        else:
            asset = gen.generate([item["new_prompt"]], [item["seed"]])[0]
    except (ExternalGenerationError, ValueError, RuntimeError, OSError, IndexError, KeyError) as err:
        msg = " ".join(str(err).split())[:200]
        store.append(key, "visual", "failed", {**base, "error": f"generation failed: {msg}"})
        return
    if len(getattr(asset.mesh, "faces", ())) == 0:
        store.append(key, "visual", "failed", {**base, "error": "generation failed: empty mesh (no faces)"})
        return
    voxels = asset.voxels
    if voxels is None or voxels.resolution != cfg.visual.resolution:
        from debias3d.data.shapeworld.voxelize import mesh_to_voxels

        voxels = mesh_to_voxels(asset.mesh, cfg.visual.resolution)
    mesh_rel = f"meshes/{key}.glb"
    glb = mesh_bytes(asset.mesh, "glb")
    store.write_file(out / mesh_rel, glb)
    base = {**base, "mesh": mesh_rel, "mesh_bytes": len(glb), "voxels": encode_voxels(voxels)}
    try:
        score_new = comps.judge.score(asset.mesh, src.prompt)
    except (ValueError, RuntimeError) as err:
        store.append(key, "visual", "failed", {**base, "error": f"ranker failed: {str(err)[:200]}"})
        return
    store.append(
        key,
        "visual",
        "done",
        {
            **base,
            "score_new": float(score_new),
            "score_orig": float(orig["result"]["score"]),
        },
    )
