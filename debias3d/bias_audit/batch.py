"""One batch of prompts: generate, score, localize (deletion, attribution, probes), ground truth and the per-word rows."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.bias_audit.config import AuditConfig
from debias3d.runs import Timer

logger = logging.getLogger(__name__)


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
    timer: Timer | None = None,
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

    timer = timer or Timer()
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
    """The substitute proposer of the ``contrastive`` / ``choice`` probes, or ``(None, one-line reason)``
    when it cannot be built."""
    from debias3d.bias_audit.probes import SWAP_PROBES

    att = cfg.attribution
    if not any(m in att.methods for m in SWAP_PROBES):
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
        skipped = " and ".join(m for m in SWAP_PROBES if m in att.methods)
        return None, f"{skipped} probe skipped: proposer {pc.proposer!r} unavailable: {msg}"


def _run_probes(
    evaluator: Any,
    texts: list[str],
    views: Any,
    valid: Any,
    att: Any,
    stop_words: frozenset[str],
    proposer: Any,
    timer: Timer,
) -> tuple[dict[str, Any], list[str]]:
    """Every configured word probe on the batch's cached view features."""
    from debias3d.bias_audit.probes import SWAP_PROBES, probe_prompts

    out: dict[str, Any] = {}
    issues: list[str] = []
    pc = att.probes
    for method in att.probe_methods:
        if method in SWAP_PROBES and proposer is None:
            continue
        with timer(f"attribute_{method}"):
            res = probe_prompts(
                evaluator,
                texts,
                views,
                valid,
                method=method,
                dimension=pc.dimension_of(method),
                proposer=proposer,
                k=pc.k,
                stop_words=stop_words,
                internal_batch_size=pc.internal_batch_size,
                n_boot=pc.n_boot,
                ci=pc.ci,
                threshold=pc.threshold_of(method),
                temperature=pc.temperature,
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
                    {
                        f"attr_{m}": math.nan,
                        f"lo_{m}": math.nan,
                        f"hi_{m}": math.nan,
                        f"verdict_{m}": None,
                        f"thr_{m}": math.nan,
                    }
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
            r[f"thr_{m}"] = w.threshold if w is not None else math.nan
            r[f"ps_{m}"] = [float(x) for x in w.per_sample] if w is not None else []
        h, lo = extremes(ws, signed=True)
        picks[m] = (h.word if h else None, lo.word if lo else None)
    for r in rows:
        del r["_start"]
    return rows, picks
