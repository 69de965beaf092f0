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
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.bias_audit.config import AuditConfig
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


_Timer = Timer  # one timer class for every stage (debias3d.runs)


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


def _thumb(views: Any, path: Path) -> None:
    """Save the ``(V, 3, H, W)`` views of one sample side by side as a PNG."""
    from PIL import Image

    arr = (views.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)  # (V, H, W, 3)
    strip = np.concatenate(list(arr), axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(strip).save(path)


def _deletion(
    evaluator: Any, texts: list[str], views: Any, valid: Any, words: list[list[Any]], k: int, column: int
) -> list[dict]:
    """Deletion test for one method: scores with the top-k / bottom-k content words masked out."""
    import torch

    from debias3d.bias_audit.attribute import EvaluatorScore
    from debias3d.bias_audit.words import deletion_masks

    enc = evaluator.tokenize(texts)
    mask = enc["attention_mask"]
    tops, bots, ks = [], [], []
    for b, ws in enumerate(words):
        t, bt, kk = deletion_masks(ws, mask[b].cpu().numpy(), k)
        tops.append(t)
        bots.append(bt)
        ks.append(kk)
    n = len(texts)
    fwd = EvaluatorScore(evaluator)
    with torch.no_grad():
        emb = evaluator.embed_tokens(enc["input_ids"])
        m3 = torch.cat(
            [
                mask,
                torch.as_tensor(np.stack(tops), dtype=mask.dtype),
                torch.as_tensor(np.stack(bots), dtype=mask.dtype),
            ]
        )
        q = fwd.all_dimensions(
            emb.repeat(3, 1, 1), views.repeat(3, *([1] * (views.dim() - 1))), valid.repeat(3, 1), m3
        )
    q = q[:, column].double().cpu().numpy()
    return [
        {"q": float(q[b]), "q_top": float(q[n + b]), "q_bottom": float(q[2 * n + b]), "k": ks[b]}
        for b in range(n)
    ]


def _word_truth(
    prompt: str, assets: Sequence[Any], mode: str
) -> tuple[list[dict[str, bool]] | None, str | None]:
    """Per sample ``{word: shown}`` from the ShapeWorld measurer (``None`` if the prompt does not parse)."""
    if mode == "off":
        return None, None
    from debias3d.data.shapeworld.measurer import score_prompt
    from debias3d.data.shapeworld.parser import ParseError, parse

    try:
        spec = parse(prompt)
    except (ParseError, ValueError, KeyError) as exc:
        return None, (
            f"ground truth: {prompt!r} is not a ShapeWorld prompt ({exc})" if mode == "on" else None
        )
    out = []
    for a in assets:
        if a is None:
            out.append({})
            continue
        try:
            out.append(score_prompt(spec, a.voxels if getattr(a, "voxels", None) is not None else a))
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            logger.debug("measurer failed on %r: %s", prompt, exc)
            out.append({})
    return out, None


def process_batch(
    batch: Sequence[tuple[int, Any]],
    generator: Any,
    evaluator: Any,
    cfg: AuditConfig,
    out_dir: Path,
    n_total: int,
    stop_words: frozenset[str],
    timer: _Timer | None = None,
    proposer: Any = None,
) -> list[dict[str, Any]]:
    """Localize and attribute one batch of prompts; returns one JSON-able record per prompt.

    Args:
        batch: ``(index in the set, Prompt)`` pairs.
        n_total: prompts in the whole set (``q_g = mean q_l``, so ``∂q_g/∂e = ∂q_l/∂e / n_total``).
        proposer: substitute proposer of the ``contrastive`` probe (:func:`build_probe_proposer`);
            ``None`` skips that probe (its words get no score).
    """
    from debias3d.bias_audit.attribute import attribute_prompts
    from debias3d.bias_audit.localize import localize_batch

    timer = timer or _Timer()
    att = cfg.attribution
    dims = list(evaluator.dimensions)
    texts = [p.text for _, p in batch]
    ids = [p.id for _, p in batch]
    with timer("localize"):
        lb = localize_batch(
            generator,
            evaluator,
            texts,
            ids,
            cfg.samples,
            cfg.seed,
            out_dir,
            cfg.steps,
            cfg.generate_batch_size,
        )
    issues = list(lb.issues)
    check = getattr(generator, "cannot_represent", None)  # test stand-ins may lack the hook
    for text in texts if check is not None else ():
        why = check(text)
        if why:
            msg = f"prompt {text!r}: {why}; its scores say little"
            logger.warning("%s", msg)
            issues.append(msg)
    ok = [i for i in range(len(batch)) if bool(lb.valid[i].any())]
    q_l, spread = lb.q_l.numpy(), lb.spread.numpy()
    scale = 1.0 / n_total if att.target == "global" else 1.0
    column = dims.index(att.dimension)
    words_by_method: dict[str, list[list[Any]]] = {}
    deletion: dict[str, list[dict]] = {}
    deltas: dict[str, list[float]] = {}
    probe_words: dict[str, Any] = {}
    if ok:
        views, valid = lb.inputs[ok], lb.valid[ok]  # cached view features when the evaluator has them
        ok_texts = [texts[i] for i in ok]
        probe_words, probe_issues = _run_probes(
            evaluator, ok_texts, views, valid, att, stop_words, proposer, timer
        )
        issues += probe_issues
        for method in att.gradient_methods:
            with timer(f"attribute_{method}"):
                res = attribute_prompts(
                    evaluator,
                    ok_texts,
                    views,
                    valid,
                    method=method,
                    dimension=att.dimension,
                    scale=scale,
                    n_steps=att.n_steps,
                    baseline=att.baseline,
                    internal_batch_size=att.internal_batch_size if method == "integrated_gradients" else None,
                )
            words_by_method[method] = [res.words(j, att.aggregate, stop_words) for j in range(len(ok))]
            deltas[method] = [float(x) for x in res.delta]
            if att.deletion_k > 0:
                with timer("deletion"):
                    deletion[method] = _deletion(
                        evaluator, ok_texts, views, valid, words_by_method[method], att.deletion_k, column
                    )
    records = []
    for j, i in enumerate(ok):
        idx, prompt = batch[i]
        truth = None
        with timer("ground_truth"):
            truth, msg = _word_truth(prompt.text, lb.assets[i], cfg.ground_truth)
        if msg:
            issues.append(msg)
        if cfg.heatmaps or cfg.report:
            first = int(np.flatnonzero(lb.valid[i].numpy())[0])
            _thumb(lb.views[i, first], out_dir / "thumbs" / f"{prompt.id}.png")
        words, picks = _word_rows(j, att, words_by_method, probe_words)
        w_h, w_l = picks.get(att.select, (None, None))
        if w_h is None and w_l is None and att.select in att.probe_methods:
            fb = att.gradient_methods[0] if att.gradient_methods else None
            if fb is not None:
                w_h, w_l = picks[fb]
            issues.append(
                f"select {att.select}: prompt {prompt.text!r}: no word could be probed; "
                + (f"w_h / w_l from {fb}" if fb else "no w_h / w_l")
            )
        samples = []
        for d in range(cfg.samples):
            srow = {
                "sample": d,
                "seed": cfg.seed + d,
                "mesh": lb.mesh_paths[i][d],
                "valid": bool(lb.valid[i, d]),
            }
            for k, dim in enumerate(dims):
                v = float(lb.scores[i, d, k])
                srow[f"score_{dim}"] = v if math.isfinite(v) else None
            if truth is not None:
                srow["truth"] = truth[d]
            samples.append(srow)
        records.append(
            {
                "index": idx,
                "prompt_id": prompt.id,
                "prompt": prompt.text,
                "category": prompt.category,
                "truncated": bool(prompt.truncated),
                "q_l": {dim: float(q_l[i, k]) for k, dim in enumerate(dims)},
                "spread": {dim: float(spread[i, k]) for k, dim in enumerate(dims)},
                "w_h": w_h,
                "w_l": w_l,
                "picks": {m: list(v) for m, v in picks.items()},
                "words": words,
                "samples": samples,
                "deletion": {m: deletion[m][j] for m in deletion},
                "delta": {m: deltas[m][j] for m in deltas},
                "issues": [],
            }
        )
    if records:
        records[0]["issues"] = issues
    elif issues:
        # nothing usable in this batch; still keep its messages (a record without words)
        records.append({"index": -1, "prompt_id": None, "issues": issues})
    return records


def build_probe_proposer(
    cfg: AuditConfig, out_dir: Path, stop_words: frozenset[str]
) -> tuple[Any, str | None]:
    """The ``contrastive`` probe's substitute proposer, or ``(None, one-line reason)`` when it cannot be built."""
    att = cfg.attribution
    if "contrastive" not in att.methods:
        return None, None
    from debias3d.bias_audit.substitutes import build_proposer

    pc = att.probes
    options: dict[str, Any] = {}
    if pc.proposer == "wordlist":
        options["path"] = pc.wordlist
    elif pc.proposer == "mlm":
        options.update(path=pc.mlm_path, device=cfg.device)
    elif pc.proposer == "llm":
        options.update(
            base_url=pc.llm_base_url,
            model=pc.llm_model,
            cache_dir=pc.llm_cache or str(out_dir / "substitutes_cache"),
            timeout_s=pc.llm_timeout_s,
        )
    try:
        return build_proposer(pc.proposer, stop_words=stop_words, **options), None
    except (FileNotFoundError, OSError, ValueError, KeyError, ImportError) as exc:
        msg = " ".join(str(exc).split())
        return None, f"contrastive probe skipped: proposer {pc.proposer!r} unavailable: {msg}"


def _run_probes(
    evaluator: Any,
    texts: list[str],
    views: Any,
    valid: Any,
    att: Any,
    stop_words: frozenset[str],
    proposer: Any,
    timer: _Timer,
) -> tuple[dict[str, Any], list[str]]:
    """Every configured word probe on the batch's cached view features."""
    from debias3d.bias_audit.probes import probe_prompts

    out: dict[str, Any] = {}
    issues: list[str] = []
    pc = att.probes
    for method in att.probe_methods:
        if method == "contrastive" and proposer is None:
            continue
        with timer(f"attribute_{method}"):
            res = probe_prompts(
                evaluator,
                texts,
                views,
                valid,
                method=method,
                dimension=pc.occlusion_dimension if method == "occlusion" else pc.contrastive_dimension,
                proposer=proposer,
                k=pc.k,
                stop_words=stop_words,
                internal_batch_size=pc.internal_batch_size,
                n_boot=pc.n_boot,
                ci=pc.ci,
                threshold=pc.threshold,
            )
        out[method] = res
        issues += res.issues
    return out, issues


def _word_rows(
    j: int, att: Any, words_by_method: dict[str, list[list[Any]]], probe_words: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, tuple[str | None, str | None]]]:
    """One prompt's word rows (every method's score) and each method's ``(w_h, w_l)``.

    Gradient words (merged from tokens) and probe words (split from the text) are matched by
    their character span; a word a method did not score gets NaN.
    """
    from debias3d.bias_audit.words import extremes

    base: list[Any] = (
        words_by_method[att.gradient_methods[0]][j]
        if att.gradient_methods
        else next(iter(probe_words.values())).words(j)
        if probe_words
        else []
    )
    rows = []
    for w in base:
        rows.append({"word": w.word, "word_index": w.index, "is_stop": bool(w.is_stop), "_start": w.start})
    picks: dict[str, tuple[str | None, str | None]] = {}
    for m in att.gradient_methods:
        ws = words_by_method[m][j]
        by_start = {w.start: w for w in ws}
        for r in rows:
            w = by_start.get(r["_start"])
            r[f"attr_{m}"] = float(w.attr) if w is not None else math.nan
        h, lo = extremes(ws)
        picks[m] = (h.word if h else None, lo.word if lo else None)
    for m in att.probe_methods:
        if m not in probe_words:
            for r in rows:
                r.update(
                    {f"attr_{m}": math.nan, f"lo_{m}": math.nan, f"hi_{m}": math.nan, f"verdict_{m}": None}
                )
                r[f"ps_{m}"] = []
            picks[m] = (None, None)
            continue
        ws = probe_words[m].words(j)
        by_start = {w.start: w for w in ws}
        for r in rows:
            w = by_start.get(r["_start"])
            r[f"attr_{m}"] = w.score if w is not None else math.nan
            r[f"lo_{m}"] = w.lo if w is not None else math.nan
            r[f"hi_{m}"] = w.hi if w is not None else math.nan
            r[f"verdict_{m}"] = w.verdict if w is not None else None
            r[f"ps_{m}"] = [float(x) for x in w.per_sample] if w is not None else []
        h, lo = extremes(ws, signed=True)
        picks[m] = (h.word if h else None, lo.word if lo else None)
    for r in rows:
        del r["_start"]
    return rows, picks


def _round(obj: Any, digits: int = 6) -> Any:
    """Round floats to ``digits`` significant digits (batching changes the last bits); NaN → None."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    if isinstance(obj, np.floating):
        return _round(float(obj), digits)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _read_shards(shard_dir: Path) -> list[dict[str, Any]]:
    """Every record of every shard; a torn last line is dropped (read_jsonl) and its prompt redone."""
    from debias3d.runs import read_jsonl

    return [r for path in sorted(shard_dir.glob("shard-*.jsonl")) for r in read_jsonl(path)]


def _word_sample_rows(recs: Sequence[dict[str, Any]], att: Any) -> Any:
    """One row per (prompt, measurable word, valid sample): the measurer's verdict and every
    method's score (probes: that sample's drop; gradients: the prompt's ``|attr|``)."""
    import pandas as pd

    out = []
    for r in recs:
        for s in r["samples"]:
            truth = s.get("truth") or {}
            if not s.get("valid") or not truth:
                continue
            d = int(s["sample"])
            seen = set()
            for w in r["words"]:
                if w["word"] not in truth or w["word"] in seen or w["is_stop"]:
                    continue
                seen.add(w["word"])
                row = {
                    "prompt_id": r["prompt_id"],
                    "word": w["word"],
                    "sample": d,
                    "shown": bool(truth[w["word"]]),
                }
                for m in att.methods:
                    ps = w.get(f"ps_{m}")
                    v = (
                        ps[d]
                        if ps
                        else (abs(w.get(f"attr_{m}", math.nan)) if m in att.gradient_methods else math.nan)
                    )
                    row[f"score_{m}"] = math.nan if v is None else float(v)
                out.append(row)
    cols = ["prompt_id", "word", "sample", "shown", *[f"score_{m}" for m in att.methods]]
    return pd.DataFrame(out, columns=cols)


def _fidelity_from_table(path: str) -> dict[str, float]:
    import pandas as pd

    if Path(path).is_dir():  # a `debias3d world fidelity --out DIR` folder
        path = str(Path(path) / "words.csv")
    frame = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)
    if "word" not in frame or "fidelity" not in frame:
        raise ValueError(f"{path}: a fidelity table needs columns word, fidelity")
    return {str(w): float(f) for w, f in zip(frame["word"], frame["fidelity"], strict=True)}


def merge_shards(
    out_dir: Path, cfg: AuditConfig, prompt_set: Any, dims: Sequence[str], view_auditor: Any = None
) -> dict[str, Any]:
    """Merge every shard into the tables, compute set-level results, write summary and report."""
    import pandas as pd

    from debias3d.bias_audit.localize import category_means, global_scores
    from debias3d.bias_audit.words import faithfulness_summary, global_word_table, ground_truth_agreement
    from debias3d.config import to_dict

    att = cfg.attribution
    order = {p.id: i for i, p in enumerate(prompt_set)}
    by_id: dict[str, dict[str, Any]] = {}
    issues: list[str] = [str(i) for i in getattr(prompt_set, "issues", [])]
    for r in _read_shards(out_dir / "shards"):
        issues += r.get("issues", [])
        if r.get("prompt_id") in order:
            by_id[r["prompt_id"]] = r
    recs = sorted(by_id.values(), key=lambda r: order[r["prompt_id"]])
    issues = list(dict.fromkeys(issues))

    prompt_rows, word_rows, sample_rows = [], [], []
    for r in recs:
        row = {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "category": r["category"]}
        row.update({f"q_l_{d}": r["q_l"][d] for d in dims})
        row.update({f"spread_{d}": r["spread"][d] for d in dims})
        row.update({"w_h": r["w_h"], "w_l": r["w_l"], "truncated": r["truncated"]})
        for m in att.methods:
            h, lo = (r.get("picks") or {}).get(m, (None, None))
            row.update({f"w_h_{m}": h, f"w_l_{m}": lo})
        prompt_rows.append(row)
        for w in r["words"]:
            word_rows.append(
                {"prompt_id": r["prompt_id"], **{k: v for k, v in w.items() if not k.startswith("ps_")}}
            )
        for s in r["samples"]:
            sample_rows.append({"prompt_id": r["prompt_id"], **{k: v for k, v in s.items() if k != "truth"}})
    prompts_df = pd.DataFrame(
        prompt_rows,
        columns=[
            "prompt_id",
            "prompt",
            "category",
            *[f"q_l_{d}" for d in dims],
            *[f"spread_{d}" for d in dims],
            "w_h",
            "w_l",
            "truncated",
            *[f"w_{s}_{m}" for m in att.methods for s in ("h", "l")],
        ],
    )
    attr_cols = [f"attr_{m}" for m in att.methods]
    probe_cols = [f"{c}_{m}" for m in att.probe_methods for c in ("lo", "hi", "verdict")]
    words_df = pd.DataFrame(
        word_rows, columns=["prompt_id", "word", "word_index", *attr_cols, "is_stop", *probe_cols]
    )
    words_df["word_index"] = words_df["word_index"].astype("int64")
    samples_df = pd.DataFrame(
        sample_rows, columns=["prompt_id", "sample", "seed", "mesh", *[f"score_{d}" for d in dims], "valid"]
    )
    samples_df["sample"] = samples_df["sample"].astype("int64")
    samples_df["seed"] = samples_df["seed"].astype("int64")
    prompts_df.to_parquet(out_dir / "prompts.parquet", index=False)
    words_df.to_parquet(out_dir / "words.parquet", index=False)
    samples_df.to_parquet(out_dir / "samples.parquet", index=False)

    q_g = (
        global_scores(prompts_df[[f"q_l_{d}" for d in dims]].to_numpy(), dims)
        if len(prompts_df)
        else dict.fromkeys(dims, float("nan"))
    )
    from debias3d.bias_audit.words import probe_word_table

    pc = att.probes
    tables = {
        m: (
            probe_word_table(words_df, m, pc.n_boot, pc.ci, pc.threshold)
            if m in att.probe_methods
            else global_word_table(words_df, m)
        )
        for m in att.methods
    }
    table = tables[att.select]
    faith = {
        m: faithfulness_summary([r["deletion"][m] for r in recs if m in r.get("deletion", {})])
        for m in att.gradient_methods
    }
    completeness = {}
    if "integrated_gradients" in att.methods:
        d = np.array(
            [r["delta"]["integrated_gradients"] for r in recs if "integrated_gradients" in r.get("delta", {})]
        )
        q = np.array([r["q_l"][att.dimension] for r in recs]) * (
            1.0 / len(prompt_set) if att.target == "global" else 1.0
        )
        completeness = {
            "mean_abs_delta": float(np.abs(d).mean()) if len(d) else None,
            "mean_abs_score": float(np.abs(q).mean()) if len(q) else None,
        }

    # Ground truth: per-word fidelity measured on the audit's own samples (or a given table).
    gt = None
    fidelity: dict[str, float] = {}
    if cfg.fidelity_table:
        fidelity = _fidelity_from_table(cfg.fidelity_table)
    elif cfg.ground_truth != "off":
        shown: dict[str, list[bool]] = {}
        for r in recs:
            for s in r["samples"]:
                for w, v in (s.get("truth") or {}).items():
                    shown.setdefault(w, []).append(bool(v))
        fidelity = {w: float(np.mean(v)) for w, v in shown.items() if v}
    if fidelity:
        from debias3d.data.shapeworld.vocab import ATTRIBUTE_WORDS

        attribute = [w for ws in ATTRIBUTE_WORDS.values() for w in ws if " " not in w]
        w_l_all = prompts_df["w_l"].dropna().tolist()
        gt = ground_truth_agreement(table, fidelity, w_l_all, k=cfg.ground_truth_k, words=attribute)
        mods = ground_truth_agreement(
            table, fidelity, w_l_all, k=cfg.ground_truth_k, words=list(ATTRIBUTE_WORDS["modifier"])
        )
        gt["modifiers_only"] = {
            k: mods[k] for k in ("spearman", "n_words", "lowest_fidelity", "flagged_as_w_l", "hits")
        }
        gt["source"] = cfg.fidelity_table or "measured on the audit samples (ShapeWorld measurer)"
        gt["method"] = att.select
        uses = _word_sample_rows(recs, att)
        if len(uses):
            from debias3d.bias_audit.truth import method_truth

            gt["methods"] = method_truth(uses, att.methods, tables, fidelity, n_boot=pc.n_boot, ci=pc.ci)
            uses.to_parquet(out_dir / "word_samples.parquet", index=False)

    content = table[~table["is_stop"].astype(bool)] if len(table) else table
    if "mean_attr" in content and len(content):
        content = content[np.isfinite(content["mean_attr"].astype(float))]
    view_results = []
    if view_auditor is not None and len(prompts_df):
        view_results = [v.to_dict() for v in view_auditor.audit(prompts_df["prompt"].tolist())]
        (out_dir / "view_contradictions.json").write_text(
            json.dumps(view_results, indent=1, ensure_ascii=False)
        )
    n_failed = len(prompt_set) - len(prompts_df)
    outcome = {"prompts": len(prompt_set), "audited": len(prompts_df), "failed": n_failed}
    outcome["line"] = f"{len(prompt_set)} prompts: {len(prompts_df)} audited, {n_failed} failed" + (
        " (no valid sample; see issues)" if n_failed else ""
    )
    summary = {
        "outcome": outcome,
        "config": to_dict(cfg),
        "n_prompts": len(prompt_set),
        "n_audited": len(prompts_df),
        "dimensions": list(dims),
        "q_g": q_g,
        "categories": category_means(prompts_df, dims),
        "select": att.select,
        "w_h": content["word"].iloc[0] if len(content) else None,
        "w_l": content["word"].iloc[-1] if len(content) > 1 else None,
        "word_table": table.to_dict("records"),
        "word_tables": {m: t.to_dict("records") for m, t in tables.items() if m != att.select},
        "faithfulness": faith,
        "completeness": completeness,
        "ground_truth": gt,
        "view_contradictions": (
            {
                "n_prompts": len(view_results),
                "flagged": {
                    v: sum(len(r["flagged"].get(v, [])) for r in view_results)
                    for v in (view_results[0]["views"] if view_results else [])
                },
            }
            if view_results
            else None
        ),
        "issues": issues,
    }
    summary = _round(summary)
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


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
    timer = _Timer()
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
