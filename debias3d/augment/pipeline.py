"""``run_augment``: semantic augmentation -> filter -> visual augmentation (Algorithm 1) -> dataset.

Reads an audit folder and writes::

    OUT/pairs/          HF dataset (save_to_disk), one row per new text-3D pair
    OUT/meshes/*.glb    generated meshes x_nc (the dataset's ``mesh`` column, relative to OUT)
    OUT/job/            records-<shard>.jsonl (resumable; voxels packed inside), plan.json, config.yaml
    OUT/rejected.jsonl  every rejected prompt / failed item with its stage, reason and detail
    OUT/summary.json    counts, acceptance rate, diversity, wins, LLM tokens and cost
    OUT/report.html     accepted and rejected examples with thumbnails

Work is split into items (:mod:`debias3d.augment.job`): one ``semantic`` item per source prompt
(context writer + filter), one ``original`` item per source (ranker score of x_n under t_n) and one
``visual`` item per accepted new prompt (external generator + ranker score of x_nc under t_n).
Under ``accelerate launch`` each stage's items are split between processes
(``PartialState.split_between_processes``); each process appends to its own record shard, and the
main process merges the shards and writes the outputs.

Dataset columns: prompt, source_prompt, source_prompt_id, w_h, w_l, strategy, pair_type
(``new_prompt`` | ``source_prompt``), mesh, occupancy (uint8, R^3 flattened, x-major ``[x, y, z]``),
colors (uint8, R^3 x 3 flattened), resolution, seed, ranker_score_new, ranker_score_orig, winner,
provenance (JSON string), and the other side of the row's duel, x_n: orig_mesh (relative to the audit
folder), orig_occupancy, orig_colors (null when x_n cannot be voxelised). With ``winner`` they make the
preference triple (prompt, preferred mesh, rejected mesh) that DPO fine-tuning reads.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.augment.config import AugmentConfig
from debias3d.augment.job import PLAN_NAME, JobStore, item_key, read_records, usage_totals
from debias3d.augment.job import status as job_status
from debias3d.augment.semantic import is_missing, select_keep_words, stable_seed
from debias3d.data.assets import mesh_bytes
from debias3d.data.text import words as tokens
from debias3d.runs import RunLock, atomic_write_text, estimate_line, inside

__all__ = [
    "Source",
    "Components",
    "load_sources",
    "run_augment",
    "augment_status",
    "augment_command",
    "status_command",
]

logger = logging.getLogger(__name__)

LARGE_RUN = 1000  # source prompts from which a run announces its size up front


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One audited prompt t_n with its chosen original sample x_n."""

    prompt_id: str
    prompt: str
    category: str
    w_h: str | None
    w_l: str | None
    keep_words: tuple[str, ...]
    mesh: str  # path relative to the audit folder
    sample: int
    seed: int
    mesh_sha: str


def _file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:24]


def _clean(word: Any) -> str | None:
    return None if is_missing(word) else str(word).strip().lower()


def check_mesh_file(path: Path) -> str | None:
    """Why a mesh file cannot serve as x_n / x_nc (``None`` when it loads with faces).

    Empty, truncated or malformed GLB files make trimesh raise a variety of errors (IndexError,
    KeyError, UnboundLocalError, ...); all of them are a reason here, never a traceback.
    """
    if not path.is_file():
        return "mesh file is missing"
    if path.stat().st_size == 0:
        return "mesh file is empty (0 bytes)"
    try:
        mesh = _load_mesh(path)
    except Exception as err:  # noqa: BLE001 — any parser error of a foreign file is this item's failure
        return f"mesh file is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    if len(getattr(mesh, "faces", ())) == 0:
        return "mesh has no faces (empty scene)"
    return None


def load_sources(
    audit_dir: str | Path, cfg: AugmentConfig, skipped: list[dict[str, Any]] | None = None
) -> list[Source]:
    """The source prompts of an audit with their x_n (``cfg.original``: ``first`` or ``best``).

    A source whose x_n cannot be used (no sample, a mesh path that leaves the audit folder, a
    missing, empty or unreadable mesh) is skipped before any LLM call; when ``skipped`` is given,
    one ``{"stage": "source", "reason", "detail", ...}`` row per skipped source is appended to it.

    Raises:
        FileNotFoundError: a missing ``prompts.parquet`` / ``samples.parquet``.
        ValueError: missing columns.
    """
    import pandas as pd

    audit = Path(audit_dir)
    for name in ("prompts.parquet", "samples.parquet"):
        if not (audit / name).is_file():
            raise FileNotFoundError(f"{audit / name} not found: is {audit} an audit output folder?")
    prompts = pd.read_parquet(audit / "prompts.parquet")
    samples = pd.read_parquet(audit / "samples.parquet")
    need_p = {"prompt_id", "prompt", "w_h", "w_l"}
    need_s = {"prompt_id", "sample", "seed", "mesh"}
    if need_p - set(prompts.columns):
        raise ValueError(f"prompts.parquet lacks columns {sorted(need_p - set(prompts.columns))}")
    if need_s - set(samples.columns):
        raise ValueError(f"samples.parquet lacks columns {sorted(need_s - set(samples.columns))}")
    score_col = f"score_{cfg.original_score}"
    if cfg.original == "best" and score_col not in samples.columns:
        raise ValueError(f"original=best needs column {score_col!r} in samples.parquet")
    samples = samples.assign(_pid=samples["prompt_id"].astype(str))
    by_prompt = {pid: g.sort_values("sample") for pid, g in samples.groupby("_pid", sort=False)}
    if cfg.max_prompts:
        prompts = prompts.iloc[: cfg.max_prompts]
    out = []

    def skip(row: Any, reason: str, detail: str) -> None:
        logger.warning("augment: prompt %s skipped: %s", row.prompt_id, detail)
        if skipped is not None:
            skipped.append(
                {"stage": "source", "source_prompt_id": str(row.prompt_id), "source_prompt": str(row.prompt),
                 "prompt": None, "reason": reason, "detail": detail}
            )  # fmt: skip

    for row in prompts.itertuples(index=False):
        pid = str(row.prompt_id)
        g = by_prompt.get(pid)
        if g is None or g.empty:
            skip(row, "no_sample", "no audit sample")
            continue
        if cfg.original == "best":
            pick = g.iloc[int(np.argmax(g[score_col].to_numpy()))]  # first maximum = lowest sample
        else:
            pick = g.iloc[0]
        w_h, w_l = _clean(row.w_h), _clean(row.w_l)
        keep = select_keep_words(row.prompt, w_h, w_l, cfg.strategy, cfg.seed, k=cfg.random_words, key=pid)
        try:
            mesh_path = inside(audit, str(pick["mesh"]), "mesh path")
        except ValueError as err:
            skip(row, "original_unusable", str(err))
            continue
        why = check_mesh_file(mesh_path)
        if why is not None:
            skip(row, "original_unusable", f"x_n {pick['mesh']}: {why}")
            continue
        out.append(
            Source(
                prompt_id=pid,
                prompt=str(row.prompt),
                category=str(getattr(row, "category", "") or ""),
                w_h=w_h,
                w_l=w_l,
                keep_words=keep,
                mesh=str(pick["mesh"]),
                sample=int(pick["sample"]),
                seed=int(pick["seed"]),
                mesh_sha=_file_sha(mesh_path),
            )
        )
    return out


# ------------------------------------------------------------------------------------------------
# Components (lazily built; tests inject stand-ins)
# ------------------------------------------------------------------------------------------------
class Components:
    """The backends of one run, built from the config on first use.

    Args:
        cfg: the run's config.
        writer / prompt_filter / generator / judge: stand-ins that replace the configured backends.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        writer: Any = None,
        prompt_filter: Any = None,
        generator: Any = None,
        judge: Any = None,
    ) -> None:
        self.cfg = cfg
        self._writer, self._filter, self._generator, self._judge = writer, prompt_filter, generator, judge

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from debias3d.registry import find

            cls = find("llm", self.cfg.llm.backend)
            self._writer = cls.from_config(self.cfg.llm) if hasattr(cls, "from_config") else cls()
        return self._writer

    @property
    def filter(self) -> Any:
        if self._filter is None:
            from debias3d.augment.filters import PromptFilter

            self._filter = PromptFilter(self.cfg.filter, self.cfg.world)
        return self._filter

    @property
    def generator(self) -> Any:
        if self._generator is None:
            from debias3d.augment.visual import build_external_generator

            self._generator = build_external_generator(self.cfg.visual)
        return self._generator

    @property
    def judge(self) -> Any:
        if self._judge is None:
            from debias3d.augment.visual import build_judge

            self._judge = build_judge(self.cfg.visual)
        return self._judge

    def writer_settings(self) -> dict[str, Any]:
        w = self.writer
        return w.describe() if hasattr(w, "describe") else {"backend": getattr(w, "name", type(w).__name__)}


class _SingleProcess:
    """The subset of ``accelerate.PartialState`` the runner uses, for plain single-process runs."""

    process_index = 0
    num_processes = 1
    is_main_process = True

    @contextmanager
    def split_between_processes(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        yield items

    def wait_for_everyone(self) -> None:
        return None


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Any:
    from debias3d.progress import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------
# Items
# ------------------------------------------------------------------------------------------------
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


def _load_mesh(path: Path) -> Any:
    from debias3d.data.assets import load_mesh

    return load_mesh(path)


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


# ------------------------------------------------------------------------------------------------
# Plan and merge
# ------------------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return " ".join(tokens(text))


def _visual_plan(
    sources: Sequence[tuple[Source, str]], records: dict[str, dict[str, Any]], cfg: AugmentConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Visual items in source order, and the cross-source exact duplicates rejected on the way."""
    items, dups = [], []
    first_seen: dict[str, str] = {}
    for src, skey in sources:
        rec = records.get(skey)
        if rec is None or rec.get("status") != "done":
            continue
        okey = _original_key(src, cfg)
        for j, prompt in enumerate(rec["result"]["accepted"]):
            n = _norm(prompt)
            if cfg.filter.dedupe_across_sources and n in first_seen and first_seen[n] != src.prompt_id:
                dups.append(
                    {
                        "stage": "filter",
                        "source_prompt_id": src.prompt_id,
                        "source_prompt": src.prompt,
                        "prompt": prompt,
                        "reason": "duplicate_exact",
                        "detail": f"already accepted for source prompt {first_seen[n]}",
                    }
                )
                continue
            first_seen.setdefault(n, src.prompt_id)
            seed = stable_seed(cfg.seed, "visual", src.prompt_id, prompt) + cfg.visual.seed_offset
            items.append(
                {
                    "key": _visual_key(src, prompt, seed, cfg),
                    "orig_key": okey,
                    "prompt_id": src.prompt_id,
                    "new_prompt": prompt,
                    "context_index": j,
                    "seed": seed,
                }
            )
    return items, dups


def _features(resolution: int) -> Any:
    from datasets import Features, Sequence, Value

    return Features(
        {
            "prompt": Value("string"),
            "source_prompt": Value("string"),
            "source_prompt_id": Value("string"),
            "w_h": Value("string"),
            "w_l": Value("string"),
            "strategy": Value("string"),
            "pair_type": Value("string"),
            "mesh": Value("string"),
            "occupancy": Sequence(Value("uint8"), length=resolution**3),
            "colors": Sequence(Value("uint8"), length=resolution**3 * 3),
            "resolution": Value("int32"),
            "seed": Value("int64"),
            "ranker_score_new": Value("float64"),
            "ranker_score_orig": Value("float64"),
            "winner": Value("bool"),
            "provenance": Value("string"),
            "orig_mesh": Value("string"),
            "orig_occupancy": Sequence(Value("uint8"), length=resolution**3),
            "orig_colors": Sequence(Value("uint8"), length=resolution**3 * 3),
        }
    )


def _reason_key(error: str) -> str:
    """A short, countable reason from a one-line error (``"HTTP 500: ..."`` -> ``"HTTP 500"``)."""
    head = error.split(":")[0].strip()
    return head if len(head) <= 40 else head[:37] + "..."


def outcome_line(o: dict[str, Any]) -> str:
    """One line with every source prompt counted by outcome (done / failed by reason / skipped)."""

    def by(reasons: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))

    failed, skipped = sum(o["failed"].values()), sum(o["skipped"].values())
    line = f"{o['sources']} source prompts: {o['done']} gave winning pairs, {failed} failed"
    if failed:
        line += f" ({by(o['failed'])})"
    line += f", {skipped} skipped"
    if skipped:
        line += f" ({by(o['skipped'])})"
    return line + f"; {o['pairs']} dataset rows"


def _merge(
    sources: Sequence[tuple[Source, str]],
    items: Sequence[dict[str, Any]],
    dups: Sequence[dict[str, Any]],
    out: Path,
    cfg: AugmentConfig,
    comps_settings: dict[str, Any],
    run_id: str,
    timing: dict[str, float],
    bookkeeping_s: float,
    skipped: Sequence[dict[str, Any]] = (),
    audit: Path | None = None,
) -> dict[str, Any]:
    """Build the dataset, rejected.jsonl and summary.json from all records (main process).

    Always writes all three, also when nothing came out (an empty dataset with the same columns).
    """
    import shutil

    from datasets import Dataset

    from debias3d.augment.visual import duel, generator_settings, judge_settings, make_pairs
    from debias3d.config import to_dict

    records, _torn = read_records(out / "job")
    by_id = {s.prompt_id: s for s, _ in sources}
    rejected: list[dict[str, Any]] = [dict(r) for r in skipped]
    reasons: Counter[str] = Counter()
    llm_errors: Counter[str] = Counter()
    n_candidates = n_accepted = 0
    diversities: dict[str, float | None] = {}
    # per source: None = still open, else its failure reason
    src_fail: dict[str, str | None] = {}
    for src, skey in sources:
        rec = records.get(skey)
        if rec is None:
            src_fail[src.prompt_id] = "not run"
            continue
        r = rec["result"]
        if rec["status"] != "done":
            reason = _reason_key(r["llm_error"] or "llm error")
            llm_errors[reason] += 1
            src_fail[src.prompt_id] = f"llm: {reason}"
            rejected.append(
                {"stage": "llm", "source_prompt_id": src.prompt_id, "source_prompt": src.prompt, "prompt": None,
                 "reason": "llm_error", "detail": r["llm_error"]}
            )  # fmt: skip
            continue
        n_candidates += len(r["candidates"])
        n_accepted += len(r["accepted"])
        diversities[src.prompt_id] = r["diversity"]
        if not r["accepted"]:
            src_fail[src.prompt_id] = "filter: no candidate accepted"
        for rej in r["rejected"]:
            reasons[rej["reason"]] += 1
            rejected.append(
                {"stage": "filter", "source_prompt_id": src.prompt_id, "source_prompt": src.prompt, **rej}
            )
    for d in dups:
        reasons[d["reason"]] += 1
        n_accepted -= 1
        rejected.append(dict(d))

    rows: list[dict[str, Any]] = []
    orig_vox: dict[str, tuple[list[int] | None, list[int] | None]] = {}
    wins = losses = failed = 0
    src_items: dict[str, Counter[str]] = {}
    for it in items:
        rec = records.get(it["key"])
        src = by_id[it["prompt_id"]]
        tally = src_items.setdefault(src.prompt_id, Counter())
        if rec is None:
            tally["not run"] += 1
            continue
        r = rec["result"]
        if rec["status"] != "done":
            failed += 1
            tally[_reason_key(r["error"])] += 1
            rejected.append(
                {"stage": "visual", "source_prompt_id": src.prompt_id, "source_prompt": src.prompt,
                 "prompt": it["new_prompt"], "reason": "generation_failed", "detail": r["error"]}
            )  # fmt: skip
            continue
        d = duel(r["score_new"], r["score_orig"], cfg.visual.margin)
        wins += d.winner
        losses += not d.winner
        tally["won" if d.winner else "ranker: x_nc never beat x_n"] += 1
        if not d.winner:
            rejected.append(
                {"stage": "visual", "source_prompt_id": src.prompt_id, "source_prompt": src.prompt,
                 "prompt": it["new_prompt"], "reason": "ranker_lost", "mesh": r["mesh"],
                 "detail": f"score_new {d.score_new:.3f} <= score_orig {d.score_orig:.3f} + margin {cfg.visual.margin:g}"}
            )  # fmt: skip
        pairs = make_pairs(it["new_prompt"], src.prompt, d, cfg.visual)
        if not pairs:
            continue
        vox = decode_voxels(r["voxels"])
        if src.prompt_id not in orig_vox:
            orig_vox[src.prompt_id] = _orig_voxels(audit, src, cfg.visual.resolution)
        o_occ, o_col = orig_vox[src.prompt_id]
        occ = vox["occupancy"].reshape(-1).tolist()
        col = vox["colors"].reshape(-1).tolist()
        prov = json.dumps(
            {
                "item_key": it["key"],
                "source_prompt_id": src.prompt_id,
                "category": src.category,
                "keep_words": list(src.keep_words),
                "strategy": cfg.strategy,
                "new_prompt": it["new_prompt"],
                "context_index": it["context_index"],
                "llm": comps_settings,
                "external_generator": generator_settings(cfg.visual),
                "external_seed": it["seed"],
                "original": {
                    "mesh": src.mesh,
                    "sample": src.sample,
                    "seed": src.seed,
                    "selection": cfg.original,
                },
                **judge_settings(cfg.visual),
                "margin": cfg.visual.margin,
            },
            sort_keys=True,
        )
        for p in pairs:
            rows.append(
                {
                    "prompt": p["prompt"],
                    "source_prompt": src.prompt,
                    "source_prompt_id": src.prompt_id,
                    "w_h": src.w_h,
                    "w_l": src.w_l,
                    "strategy": cfg.strategy,
                    "pair_type": p["pair_type"],
                    "mesh": r["mesh"],
                    "occupancy": occ,
                    "colors": col,
                    "resolution": cfg.visual.resolution,
                    "seed": it["seed"],
                    "ranker_score_new": d.score_new,
                    "ranker_score_orig": d.score_orig,
                    "winner": d.winner,
                    "provenance": prov,
                    "orig_mesh": src.mesh,
                    "orig_occupancy": o_occ,
                    "orig_colors": o_col,
                }
            )
    if not cfg.progress:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    features = _features(cfg.visual.resolution)
    # from_list([]) cannot infer the columns; an empty dict of columns keeps the schema
    ds = (
        Dataset.from_list(rows, features=features)
        if rows
        else Dataset.from_dict({k: [] for k in features}, features=features)
    )
    tmp = out / f".pairs.tmp-{run_id}"
    if tmp.exists():
        shutil.rmtree(tmp)
    ds.save_to_disk(str(tmp), num_shards=1 if not rows else None)  # an empty one still gets its file
    if (out / "pairs").exists():
        shutil.rmtree(out / "pairs")
    tmp.rename(out / "pairs")
    atomic_write_text(out / "rejected.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))

    # every source prompt by outcome
    with_pairs = {r["source_prompt_id"] for r in rows if r["winner"]}
    fail_reasons: Counter[str] = Counter()
    for src, _k in sources:
        if src.prompt_id in with_pairs:
            continue
        why = src_fail.get(src.prompt_id)
        if why is None:
            tally = src_items.get(src.prompt_id, Counter())
            tally.pop("won", None)
            why = f"visual: {tally.most_common(1)[0][0]}" if tally else "no visual item"
        fail_reasons[why] += 1
    skip_reasons = Counter(str(r["reason"]) for r in skipped)
    outcome = {
        "sources": len(sources) + len(skipped),
        "done": len(with_pairs),
        "failed": dict(fail_reasons),
        "skipped": dict(skip_reasons),
        "pairs": len(rows),
    }
    outcome["line"] = outcome_line(outcome)

    usage = usage_totals(out / "job", [k for _, k in sources])
    divs = [v for v in diversities.values() if v is not None]
    by_stage = Counter(f"{r['stage']}: {r['reason']}" for r in rejected)
    summary = {
        "run_id": run_id,
        "outcome": outcome,
        "sources": len(sources),
        "contexts_per_source": cfg.contexts,
        "strategy": cfg.strategy,
        "rejected": {"rows": len(rejected), "by_stage_reason": dict(sorted(by_stage.items()))},
        "llm": {
            "backend": cfg.llm.backend,
            "items_failed": sum(llm_errors.values()),
            "errors": dict(llm_errors),
            "requests": int(usage["attempts"]),
            "prompt_tokens": int(usage["prompt_tokens"]),
            "completion_tokens": int(usage["completion_tokens"]),
            "cost": round(float(usage["cost"]), 6),
        },
        "filter": {
            "candidates": n_candidates,
            "accepted": n_accepted,
            "rejected": int(sum(reasons.values())),
            "acceptance_rate": (n_accepted / n_candidates) if n_candidates else 0.0,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "diversity_mean": float(np.mean(divs)) if divs else None,
            "diversity_per_source": diversities,
        },
        "visual": {
            "backend": cfg.visual.backend,
            "ranker": cfg.visual.ranker,
            "items": len(items),
            "failed": failed,
            "wins": int(wins),
            "losses": int(losses),
            "win_rate": wins / (wins + losses) if wins + losses else 0.0,
        },
        "pairs": {
            "rows": len(rows),
            "new_prompt": sum(r["pair_type"] == "new_prompt" for r in rows),
            "source_prompt": sum(r["pair_type"] == "source_prompt" for r in rows),
        },
        "timing": {
            **{k: round(v, 3) for k, v in timing.items()},
            "wall_s": round(sum(timing.values()), 3),
            "bookkeeping_s": round(bookkeeping_s, 4),
        },
        "config": to_dict(cfg),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=False))
    return summary


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------
def run_augment(
    audit_dir: str | Path,
    cfg: AugmentConfig,
    out_dir: str | Path,
    *,
    components: Components | None = None,
    state: Any = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the augmentation of ``audit_dir`` into ``out_dir``; returns the summary.

    Args:
        audit_dir: an audit output folder (``prompts.parquet``, ``samples.parquet``, ``meshes/``).
        cfg: the run's :class:`AugmentConfig`.
        out_dir: output folder; finished items already recorded there are skipped.
        components: backends (default: built from ``cfg``); tests pass stand-ins.
        state: an ``accelerate.PartialState`` (default: one process, no accelerate needed).
        retry_failed: run items whose record says ``failed`` again.

    Returns:
        The summary dict (also ``out_dir/summary.json``) on the main process; on other processes a
        dict with this process's item counts.
    """
    t0 = time.perf_counter()
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    audit, out = Path(audit_dir), Path(out_dir)
    state = state or _SingleProcess()
    out.mkdir(parents=True, exist_ok=True)
    # one run per folder: a second one on the same --out is refused (the lock dies with its process)
    lock = RunLock(out).acquire() if state.is_main_process else None
    try:
        return _run_augment(audit, cfg, out, components, state, retry_failed, t0)
    finally:
        if lock is not None:
            lock.release()


def _run_augment(
    audit: Path,
    cfg: AugmentConfig,
    out: Path,
    components: Components | None,
    state: Any,
    retry_failed: bool,
    t0: float,
) -> dict[str, Any]:
    from debias3d.config import dump_config, to_dict

    comps = components or Components(cfg)
    comps.judge  # noqa: B018 - the ranker loads (or fails in one line) before any LLM call
    show = cfg.progress and state.is_main_process
    store = JobStore(out / "job", shard=state.process_index, retry_failed=retry_failed)

    skipped: list[dict[str, Any]] = []
    sources = load_sources(audit, cfg, skipped)
    sem = [(s, _semantic_key(s, cfg, comps)) for s in sources]
    run_id = item_key(
        "run", {"config": to_dict(cfg), "sources": [k for _, k in sem], "llm": comps.writer_settings()}
    )
    if state.is_main_process:
        dump_config(cfg, out / "job" / "config.yaml")
        plan = {
            "run_id": run_id,
            "stage": "semantic",
            "sources": len(sem),
            "skipped_sources": len(skipped),
            "semantic_keys": [k for _, k in sem],
        }
        atomic_write_text(out / "job" / PLAN_NAME, json.dumps(plan, indent=1))
        pending = sum(not store.done(k) for _, k in sem)
        if pending >= LARGE_RUN:
            logger.warning(
                "%s; the external generator and the ranker then run once per accepted prompt",
                estimate_line("augment", pending, None, unit="source prompts to write contexts for"),
            )
    logger.info(
        "augment: %d source prompts (%d skipped), C=%d, strategy=%s, llm=%s",
        len(sem),
        len(skipped),
        cfg.contexts,
        cfg.strategy,
        cfg.llm.backend,
    )

    t_sem = time.perf_counter()
    with state.split_between_processes(sem) as mine:
        _run_semantic(list(mine), cfg, comps, store, show)
    store.sync()
    state.wait_for_everyone()
    store.reload()
    t_vis = time.perf_counter()

    items, dups = _visual_plan(sem, store.records(), cfg)
    if state.is_main_process:
        okeys = sorted({it["orig_key"] for it in items})
        plan.update(stage="visual", visual_keys=[it["key"] for it in items], original_keys=okeys)
        atomic_write_text(out / "job" / PLAN_NAME, json.dumps(plan, indent=1))
    by_id = {s.prompt_id: s for s, _ in sem}
    with state.split_between_processes(items) as mine:
        for it in _progress(list(mine), "meshes", show):
            _run_visual(it, by_id[it["prompt_id"]], audit, out, cfg, comps, store)
    store.sync()
    state.wait_for_everyone()
    t_merge = time.perf_counter()

    summary: dict[str, Any] = {"process_index": state.process_index, "items": len(items)}
    if state.is_main_process:
        settings = comps.writer_settings()
        timing = {"setup_s": t_sem - t0, "semantic_s": t_vis - t_sem, "visual_s": t_merge - t_vis}
        summary = _merge(
            sem, items, dups, out, cfg, settings, run_id, timing, store.bookkeeping_s, skipped, audit=audit
        )
        if cfg.report:
            from debias3d.augment.report import write_report

            write_report(out, summary, cfg, audit_dir=audit)
        plan.update(stage="done")
        atomic_write_text(out / "job" / PLAN_NAME, json.dumps(plan, indent=1))
        level = logging.INFO if summary["pairs"]["rows"] else logging.WARNING
        logger.log(level, "augment: %s -> %s", summary["outcome"]["line"], out)
    state.wait_for_everyone()
    return summary


def augment_status(out_dir: str | Path) -> dict[str, Any]:
    """Progress of an augmentation folder (see :func:`debias3d.augment.job.status`)."""
    return job_status(out_dir)


def augment_command(
    audit: str | Path,
    config: str | Path | None,
    overrides: Sequence[str] | None,
    out: str | Path,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """CLI body of ``debias3d augment --audit A --config C --out O [key=value ...]``.

    Raises:
        debias3d.config.ConfigError: a bad config file or override (one line).
    """
    from debias3d.config import load_config

    cfg = load_config(AugmentConfig, config, list(overrides or []))
    state = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by accelerate: split the items
        import torch
        from accelerate import PartialState

        # Without CUDA, cpu=True makes the ranks join a gloo group (configs/accelerate/cpu_2proc.yaml).
        state = PartialState(cpu=not torch.cuda.is_available())
    return run_augment(audit, cfg, out, state=state, retry_failed=retry_failed)


def format_status(st: dict[str, Any]) -> str:
    """Human-readable lines of :func:`augment_status`."""
    lines = [
        f"{st['out_dir']}: stage {st['stage']}, {st['sources']} source prompts, finished: {st['finished']}"
    ]
    for stage, c in st["stages"].items():
        total = "?" if c["total"] < 0 else str(c["total"])
        lines.append(f"  {stage:<9} {c['done']:>6} done  {c['failed']:>5} failed  of {total}")
    if st["torn_lines"]:
        lines.append(f"  {st['torn_lines']} torn record line(s) from an interrupted run (ignored)")
    return "\n".join(lines)


def status_command(out: str | Path) -> str:
    """CLI body of ``debias3d augment status OUT``: returns the text to print."""
    return format_status(augment_status(out))
