"""``run_audit``: localize → quantize → report, resumable and sharded across accelerate processes.

Layout of ``OUT/``::

    summary.json       config, q_g per dimension, per-category means, word table, faithfulness,
                       ground-truth agreement, view contradictions, issues (no timestamps)
    timings.json       wall time per stage (kept out of summary.json so reruns compare equal)
    prompts.parquet    prompt_id, prompt, category, q_l_<dim>, spread_<dim>, w_h, w_l, truncated
    words.parquet      prompt_id, word, word_index, attr_<method>..., is_stop
    samples.parquet    prompt_id, sample, seed, mesh, score_<dim>, valid
    meshes/*.glb       every generated sample
    thumbs/*.png       the evaluator's views of each prompt's first sample
    heatmaps/          <prompt_id>.png / .svg and heatmaps.json
    report.html        self-contained report
    shards/            one JSONL per process (one record per finished prompt) — what --resume reads

Every process takes its slice of the unfinished prompts (``PartialState.split_between_processes``)
and appends finished prompts to its own shard; the main process merges the shards into the tables.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from debias3d.bias_audit.batch import (
    build_probe_proposer,
    process_batch,
)
from debias3d.bias_audit.config import AuditConfig
from debias3d.bias_audit.merge import (
    _read_shards,
    merge_shards,
)
from debias3d.runs import RunFingerprint, RunLock, Timer, append_jsonl, atomic_write_json, estimate_line

logger = logging.getLogger(__name__)

__all__ = [
    "run_audit",
    "merge_shards",
    "build_models",
    "stop_words_for",
    "process_batch",
    "build_probe_proposer",
]


def stop_words_for(cfg: AuditConfig) -> frozenset[str]:
    """The configured stop words, or English function words + ShapeWorld's list; plus extras."""
    from debias3d.bias_audit.words import DEFAULT_STOP_WORDS

    if cfg.attribution.stop_words is not None:
        base = frozenset(cfg.attribution.stop_words)
    else:
        from debias3d.data.shapeworld.vocab import STOP_WORDS

        base = DEFAULT_STOP_WORDS | STOP_WORDS
    return frozenset(w.lower() for w in (*base, *cfg.attribution.extra_stop_words))


def build_models(cfg: AuditConfig, need_generator: bool = True) -> tuple[Any, Any]:
    """Evaluator and (optionally) generator from the registry (shipped weights unless configured)."""
    from debias3d.registry import find

    evaluator = find("evaluator", cfg.evaluator).from_pretrained(cfg.evaluator_weights, device=cfg.device)
    evaluator.eval()
    generator = build_models_generator(cfg, evaluator)[0] if need_generator else None
    return generator, evaluator


def _load_prompt_set(prompts: Any, evaluator: Any, cfg: AuditConfig) -> Any:
    from debias3d.data.prompts import Prompt, PromptSet, hf_token_counter, load_prompts

    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, (str, os.PathLike)):
        te = getattr(evaluator, "text_encoder", None)
        tok = getattr(te, "tokenizer", None)
        limit = cfg.max_tokens or getattr(te, "max_length", None)
        counter = hf_token_counter(tok) if tok is not None else None
        return load_prompts(prompts, max_tokens=limit if counter else None, token_counter=counter)
    items = []
    for p in prompts:
        items.append(p if isinstance(p, Prompt) else Prompt(str(p)))
    return PromptSet(items)


# Settings that change no row (speed, output extras, set-level steps done again at every merge).
_NOT_IN_ROWS = ("generate_batch_size", "device", "num_threads", "heatmaps", "report", "mesh_format",
                "ground_truth_k", "fidelity_table", "view_contradictions", "attribution.batch_size",
                "attribution.internal_batch_size")  # fmt: skip


def audit_fingerprint(cfg: AuditConfig, prompt_set: Any) -> RunFingerprint:
    """The settings and prompt set that decide an audit's shard records (see :mod:`debias3d.runs`).

    The prompt set is part of it: with ``attribution.target=global`` every record depends on the
    number of prompts (``q_g = mean q_l``).
    """
    import hashlib

    from debias3d.config import to_dict

    settings = to_dict(cfg)
    for key in _NOT_IN_ROWS:
        head, _, tail = key.partition(".")
        if tail:
            settings.get(head, {}).pop(tail, None)
        else:
            settings.pop(head, None)
    h = hashlib.sha256()
    for p in prompt_set:
        h.update(f"{p.id}\t{p.text}\n".encode())
    return RunFingerprint("audit", settings, {"prompts": h.hexdigest()[:16]})


LARGE_AUDIT = 1000  # prompts from which the audit announces its size and expected time


def run_audit(
    prompts: Any,
    cfg: AuditConfig | None = None,
    out_dir: str | os.PathLike = "audit",
    resume: bool = False,
    generator: Any = None,
    evaluator: Any = None,
    view_auditor: Any = None,
) -> dict[str, Any]:
    """Run the bias audit on a prompt set and write ``out_dir`` (see the module docstring).

    Args:
        prompts: a prompt file / benchmark folder path, a :class:`~debias3d.data.prompts.PromptSet`,
            or a list of strings.
        cfg: :class:`AuditConfig` (defaults).
        out_dir: output folder (created).
        resume: keep finished prompts from ``out_dir/shards`` and do only the rest.
        generator / evaluator: already-built backends (default: from the registry).
        view_auditor: a :class:`~debias3d.bias_audit.prompt_debias.ViewContradictionAuditor`
            (default: built from ``cfg.view_contradictions`` when enabled).

    Returns:
        The summary dict (also in ``summary.json``; the main process's copy — others get ``{}``).
    """
    import torch
    from accelerate import PartialState

    cfg = cfg or AuditConfig()
    # cpu=True puts CPU ranks on gloo (accelerate would otherwise expect CUDA for multi-process).
    state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    if cfg.device in ("cuda", "auto"):
        # one GPU per process under accelerate launch
        cfg = dataclasses.replace(cfg, device=str(state.device))
    out = Path(out_dir)
    # one run per folder: a second one on the same --out is refused (the lock dies with its process)
    lock = RunLock(out).acquire() if state.is_main_process else None
    try:
        return _run_audit(prompts, cfg, out, resume, generator, evaluator, view_auditor, state)
    finally:
        if lock is not None:
            lock.release()


def _run_audit(
    prompts: Any,
    cfg: AuditConfig,
    out: Path,
    resume: bool,
    generator: Any,
    evaluator: Any,
    view_auditor: Any,
    state: Any,
) -> dict[str, Any]:
    import torch

    from debias3d.progress import tqdm

    shard_dir = out / "shards"
    timer = Timer()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    with timer("load_models"):
        if evaluator is None:
            _, evaluator = build_models(cfg, need_generator=False)
    prompt_set = _load_prompt_set(prompts, evaluator, cfg)
    fp = audit_fingerprint(cfg, prompt_set)
    if resume and shard_dir.is_dir():
        # records made with other settings or prompts must not be mixed into this run's tables
        fp.check(out, fresh_hint="run without --resume")
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume and shard_dir.exists():
            shutil.rmtree(shard_dir)
        shard_dir.mkdir(parents=True, exist_ok=True)
        fp.write(out)
    state.wait_for_everyone()
    done = {r["prompt_id"] for r in _read_shards(shard_dir) if r.get("prompt_id")} if resume else set()
    todo = [(i, p) for i, p in enumerate(prompt_set) if p.id not in done]
    if resume and done:
        logger.info("resume: %d prompts already done, %d to go", len(prompt_set) - len(todo), len(todo))
    if len(todo) >= LARGE_AUDIT and state.is_main_process:
        logger.warning(
            "%s; the expected time follows after the first batch",
            estimate_line("audit", len(todo), None, unit=f"prompts x {cfg.samples} samples"),
        )
    stop_words = stop_words_for(cfg)
    proposer, proposer_issue = build_probe_proposer(cfg, out, stop_words) if todo else (None, None)
    if proposer_issue:
        logger.warning("%s", proposer_issue)
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
        if mine:
            if generator is None:
                with timer("load_models"):
                    generator, _ = build_models_generator(cfg, evaluator)
            shard = shard_dir / f"shard-{state.process_index:03d}.jsonl"
            bs = cfg.attribution.batch_size
            batches = [mine[s : s + bs] for s in range(0, len(mine), bs)]
            bar = tqdm(
                total=len(mine),
                desc=f"audit[{state.process_index}]",
                unit="prompt",
                disable=not state.is_local_main_process,
            )
            t_first = time.perf_counter()
            for b, batch in enumerate(batches):
                recs = process_batch(
                    batch, generator, evaluator, cfg, out, len(prompt_set), stop_words, timer, proposer
                )
                if proposer_issue and recs:
                    recs[0].setdefault("issues", []).append(proposer_issue)
                # a shard line torn by a kill is cut before this append (its prompt is redone)
                append_jsonl(shard, recs)
                if b == 0 and len(mine) >= LARGE_AUDIT and state.is_local_main_process:
                    rate = (time.perf_counter() - t_first) / max(len(batch), 1)
                    logger.warning(
                        "%s (measured on the first batch)", estimate_line("audit", len(mine), round(rate, 3))
                    )
                bar.update(len(batch))
            bar.close()
    (shard_dir / f"timings-{state.process_index:03d}.json").write_text(json.dumps(timer.t))
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    if view_auditor is None and cfg.view_contradictions.enabled:
        view_auditor = _build_view_auditor(cfg)
    with timer("merge"):
        summary = merge_shards(out, cfg, prompt_set, list(evaluator.dimensions), view_auditor)
    if cfg.view_contradictions.enabled and view_auditor is None:
        summary["issues"].append(
            "view contradictions: no masked LM (set view_contradictions.mlm_path to a bert-base-uncased folder)"
        )
        atomic_write_json(out / "summary.json", summary)
    from debias3d.bias_audit.report import write_heatmaps, write_report

    if cfg.heatmaps:
        with timer("heatmaps"):
            write_heatmaps(out, ("png", "svg", "json"))
    else:
        write_heatmaps(out, ("json",))
    if cfg.report:
        with timer("report"):
            write_report(out)
    totals: dict[str, float] = {}
    for path in sorted(shard_dir.glob("timings-*.json")):
        for k, v in json.loads(path.read_text()).items():
            totals[k] = totals.get(k, 0.0) + v
    for k in ("merge", "heatmaps", "report"):
        if k in timer.t:
            totals[k] = timer.t[k]
    atomic_write_json(out / "timings.json", {k: round(v, 3) for k, v in totals.items()})
    for msg in summary["issues"]:
        logger.warning("%s", msg)
    level = logging.WARNING if summary["outcome"]["failed"] else logging.INFO
    logger.log(level, "audit: %s -> %s", summary["outcome"]["line"], out)
    return summary


def build_models_generator(cfg: AuditConfig, evaluator: Any) -> tuple[Any, Any]:
    """Only the generator (sharing the evaluator's MiniLM encoder when both are the embedded ones)."""
    from debias3d.models.generator import GeneratorSpec, build_generator

    spec = GeneratorSpec(cfg.generator, cfg.generator_weights, cfg.device, dict(cfg.generator_options))
    return build_generator(spec, text_encoder=getattr(evaluator, "text_encoder", None)), evaluator


def _build_view_auditor(cfg: AuditConfig) -> Any:
    from debias3d.bias_audit.prompt_debias import ViewContradictionAuditor

    vc = cfg.view_contradictions
    if not vc.mlm_path:
        return None
    try:
        return ViewContradictionAuditor.from_pretrained(
            vc.mlm_path,
            device=cfg.device,
            views=vc.views,
            template=vc.template,
            threshold=vc.threshold,
            faithfulness=vc.faithfulness,
            protected=vc.protected,
        )
    except (FileNotFoundError, OSError, ValueError) as exc:
        logger.warning("view contradictions skipped: %s", exc)
        return None
