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

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from debias3d.augment.components import (
    Components,
    _progress,
    _SingleProcess,
)
from debias3d.augment.config import AugmentConfig
from debias3d.augment.items import (
    _run_semantic,
    _run_visual,
    _semantic_key,
)
from debias3d.augment.job import PLAN_NAME, JobStore, item_key
from debias3d.augment.job import status as job_status
from debias3d.augment.merge import (
    _merge,
    _visual_plan,
)
from debias3d.augment.sources import (
    Source,
    load_sources,
)
from debias3d.data.text import words as tokens  # noqa: F401  (augment's word splitter, as before)
from debias3d.runs import RunLock, atomic_write_text, estimate_line

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
