"""The plan of visual items and the merge of all records into the dataset, rejections, summary and report."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.augment.config import AugmentConfig
from debias3d.augment.items import _orig_voxels, _original_key, _visual_key, decode_voxels
from debias3d.augment.job import read_records, usage_totals
from debias3d.augment.semantic import stable_seed
from debias3d.augment.sources import Source
from debias3d.data.text import words as tokens
from debias3d.runs import atomic_write_text


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

    def mesh(prefix: str) -> dict[str, Any]:  # a mesh path with its voxel grid (new or original side)
        return {
            f"{prefix}mesh": Value("string"),
            f"{prefix}occupancy": Sequence(Value("uint8"), length=resolution**3),
            f"{prefix}colors": Sequence(Value("uint8"), length=resolution**3 * 3),
        }

    return Features(
        {
            "prompt": Value("string"),
            "source_prompt": Value("string"),
            "source_prompt_id": Value("string"),
            "w_h": Value("string"),
            "w_l": Value("string"),
            "strategy": Value("string"),
            "pair_type": Value("string"),
            **mesh(""),
            "resolution": Value("int32"),
            "seed": Value("int64"),
            "ranker_score_new": Value("float64"),
            "ranker_score_orig": Value("float64"),
            "winner": Value("bool"),
            "provenance": Value("string"),
            **mesh("orig_"),
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
