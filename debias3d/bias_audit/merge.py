"""The main process's merge: the record shards read back into the prompt, word and sample tables, the summary and the report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.bias_audit.config import AuditConfig
from debias3d.runs import atomic_write_json


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
    method's score (probes: that sample's drop or choice probability; gradients: the prompt's ``|attr|``)."""
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
    probe_cols = [f"{c}_{m}" for m in att.probe_methods for c in ("lo", "hi", "verdict", "thr")]
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
            probe_word_table(words_df, m, pc.n_boot, pc.ci, pc.threshold_of(m))
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
