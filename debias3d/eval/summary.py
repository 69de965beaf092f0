"""Before / after: the per-word and per-category tables, the targets' verdicts and the written outputs."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from debias3d.eval.config import EvalConfig, EvalTargets
from debias3d.eval.model_run import ModelRun
from debias3d.runs import (
    atomic_write_json,
)

TARGETS: dict[str, float] = dataclasses.asdict(EvalTargets())


def _word_fidelity(verdicts: pd.DataFrame) -> pd.DataFrame:
    if verdicts.empty:
        return pd.DataFrame(columns=["word", "kind", "n", "fidelity"])
    return (
        verdicts.groupby(["word", "kind"], as_index=False)
        .agg(n=("shown", "size"), fidelity=("shown", "mean"))
        .sort_values("word")
        .reset_index(drop=True)
    )


def shown_share(verdicts: pd.DataFrame, words: Sequence[str]) -> float:
    """Share of the uses of ``words`` that the measurer found shown (NaN when there are none)."""
    if verdicts.empty or not words:
        return math.nan
    sel = verdicts[verdicts["word"].isin(set(words))]
    return float(sel["shown"].astype(float).mean()) if len(sel) else math.nan


def _macro(table: pd.DataFrame, words: Sequence[str], col: str) -> float:
    sel = table[table["word"].isin(set(words))][col]
    return float(sel.mean()) if len(sel) else math.nan


def _pts(x: float) -> float:
    return 100.0 * x if x is not None and math.isfinite(x) else math.nan


def summarize(runs: Sequence[ModelRun], cfg: EvalConfig) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Headline numbers and tables of ``runs`` (first = base / before, second = after, if any).

    Returns:
        ``(summary, tables)``; ``tables`` maps a CSV name (``mate3d`` ...) to its frame.
    """
    from debias3d.eval.benchmarks import categories_improved, mate3d_table, paired_table, t3bench_table
    from debias3d.eval.stats import bootstrap_ci, neglected_split

    if not runs:
        raise ValueError("summarize needs at least one run")
    base = runs[0]
    names = [r.name for r in runs]
    frames = {r.name: r.samples for r in runs}
    kw = {"n_boot": cfg.bootstrap, "ci": cfg.ci, "seed": 0}
    tables: dict[str, pd.DataFrame] = {}
    tables["mate3d"] = mate3d_table(frames, **kw)
    from debias3d.models.ranker.t3bench import t3bench_label

    t3_label = t3bench_label(cfg.ranker, cfg.ranking)
    tables["t3bench"] = t3bench_table(frames, ranker=t3_label, **kw)
    cats = [c for c in tables["mate3d"]["category"].unique() if c != "all"]
    tables["fidelity_categories"] = paired_table(frames, "category", ["fidelity"], cats, **kw).drop(
        columns="metric"
    )
    div_frames = {r.name: r.diversity.assign(sample=0) for r in runs}
    tables["diversity"] = paired_table(div_frames, "category", ["diversity"], cats, **kw).drop(
        columns="metric"
    )
    tables["samples"] = pd.concat([r.samples for r in runs], ignore_index=True)

    # Words: fidelity per model; the split is fixed by the BASE model's fidelity.
    wt = _word_fidelity(base.verdicts).rename(columns={"fidelity": base.name})
    for r in runs[1:]:
        w = _word_fidelity(r.verdicts)[["word", "fidelity"]].rename(columns={"fidelity": r.name})
        wt = wt.merge(w, on="word", how="left")
    if not base.words.empty and "corpus_freq" in base.words:
        wt = wt.merge(base.words[["word", "corpus_count", "corpus_freq", "group"]], on="word", how="left")
    eligible = wt[wt["n"] >= cfg.min_word_uses]
    neglected, rest = neglected_split(
        dict(zip(eligible["word"], eligible[base.name], strict=True)), cfg.neglected_quantile
    )
    wt["neglected"] = wt["word"].isin(neglected)
    wt["in_split"] = wt["word"].isin(set(neglected) | set(rest))
    if len(runs) >= 2:
        wt["delta"] = wt[runs[1].name] - wt[base.name]
    tables["fidelity_words"] = wt.sort_values([base.name, "word"]).reset_index(drop=True)

    fidelity: dict[str, Any] = {}
    for r in runs:
        fs = r.samples["fidelity"].to_numpy(dtype=float)
        fidelity[r.name] = {
            "overall": bootstrap_ci(fs, **kw).as_dict(),
            "word": float(r.verdicts["shown"].astype(float).mean()) if len(r.verdicts) else math.nan,
            "neglected": shown_share(r.verdicts, neglected),
            "rest": shown_share(r.verdicts, rest),
            "neglected_macro": _macro(wt, neglected, r.name),
            "rest_macro": _macro(wt, rest, r.name),
            "frequent": r.fidelity_summary.get("frequent_fidelity", math.nan),
            "rare": r.fidelity_summary.get("rare_fidelity", math.nan),
        }
    evaluator_means = {
        r.name: {
            d: float(r.samples[f"score_{d}"].mean())
            for d in ("alignment", "geometry", "texture", "overall")
            if f"score_{d}" in r.samples
        }  # fmt: skip
        for r in runs
    }
    summary: dict[str, Any] = {
        "models": names,
        "categories_note": tables["mate3d"].attrs.get("note"),
        "n_prompts": int(base.samples["prompt_index"].nunique()),
        "samples_per_prompt": cfg.samples,
        "seed": cfg.seed,
        "neglected_words": neglected,
        "rest_words": rest,
        "neglected_rule": f"bottom {cfg.neglected_quantile:.0%} of base word fidelity (words with >= {cfg.min_word_uses} uses)",
        "fidelity": fidelity,
        "evaluator": evaluator_means,
        "evaluator_score_range": {r.name: list(r.score_range) if r.score_range else None for r in runs},
        "evaluator_clamped": {
            r.name: int((r.samples["score_clamped"] > 0).sum()) if "score_clamped" in r.samples else None
            for r in runs
        },
        "evaluator_samples": {r.name: len(r.samples) for r in runs},
        "t3bench_ranker": t3_label,
        "t3bench": {
            r.name: {
                g: {"quality": float(s["t3_quality"].mean()), "alignment": float(s["score_alignment"].mean())}
                for g, s in r.samples.groupby("t3_group")
            }
            if "score_alignment" in r.samples
            else {}
            for r in runs
        },
        "diversity": {
            r.name: float(r.diversity["diversity"].mean()) if len(r.diversity) else math.nan for r in runs
        },
        "categories": {
            r.name: {str(c): float(v) for c, v in r.samples.groupby("category")["fidelity"].mean().items()}
            for r in runs
        },
    }
    if len(runs) >= 2:
        after = runs[1].name
        gain = _pts(fidelity[after]["neglected"] - fidelity[base.name]["neglected"])
        drop = _pts(fidelity[base.name]["rest"] - fidelity[after]["rest"])
        imp = categories_improved(tables["mate3d"], "overall")
        summary["delta_points"] = {
            "fidelity": _pts(fidelity[after]["overall"]["mean"] - fidelity[base.name]["overall"]["mean"]),
            "neglected": gain,
            "rest": -drop if math.isfinite(drop) else math.nan,
            "rare": _pts(fidelity[after]["rare"] - fidelity[base.name]["rare"]),
            "frequent": _pts(fidelity[after]["frequent"] - fidelity[base.name]["frequent"]),
        }
        summary["evaluator_overall_categories"] = imp
        summary["targets"] = decide_targets(
            base.verdicts,
            runs[1].verdicts,
            neglected,
            rest,
            tables["mate3d"],
            kw,
            targets=dataclasses.asdict(cfg.targets),
        )
    return summary, tables


def _paired_share_ci(
    before: pd.DataFrame, after: pd.DataFrame, words: Sequence[str], kw: dict[str, Any]
) -> Any:
    """Bootstrap CI (points) of the change in the share of word uses shown, paired on the same uses.

    Both models saw the same prompts and seeds, so a use (prompt, sample, object, word) is one pair.
    """
    from debias3d.eval.stats import CI, bootstrap_diff_ci

    if before.empty or after.empty or not words:
        return CI(math.nan, math.nan, math.nan, 0)
    keys = [
        k for k in ("prompt_index", "sample", "object_index", "kind", "word") if k in before and k in after
    ]
    sel = set(words)
    a = before[before["word"].isin(sel)][[*keys, "shown"]]
    b = after[after["word"].isin(sel)][[*keys, "shown"]]
    m = a.merge(b, on=keys, how="inner", suffixes=("_a", "_b"))
    if m.empty:
        return CI(math.nan, math.nan, math.nan, 0)
    ci = bootstrap_diff_ci(m["shown_a"].astype(float), m["shown_b"].astype(float), paired=True, **kw)
    return CI(100 * ci.mean, 100 * ci.lo, 100 * ci.hi, ci.n)


def decide_targets(
    before: pd.DataFrame,
    after: pd.DataFrame,
    neglected: Sequence[str],
    rest: Sequence[str],
    mate3d: pd.DataFrame,
    kw: dict[str, Any],
    targets: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Every target decided on its interval, never on a point estimate (``targets``: the bars,
    default :data:`TARGETS`).

    * neglected-word gain (after − before, points): met when the interval's *lower* bound clears the bar;
    * change on the rest (after − before, points; negative = a drop): met when the lower bound is
      above ``-bar``, i.e. a drop larger than the bar is ruled out;
    * categories whose evaluator overall rose: counted only where the paired delta's lower bound > 0.
    """
    g = _paired_share_ci(before, after, neglected, kw)
    r = _paired_share_ci(before, after, rest, kw)
    targets = targets or TARGETS
    gain_bar, drop_bar = targets["neglected_gain_points"], targets["rest_drop_points"]
    cats = mate3d[(mate3d.get("dimension") == "overall")] if "dimension" in mate3d else mate3d.iloc[0:0]
    from debias3d.eval.benchmarks import NO_CATEGORY

    if "delta_lo" in cats:
        cats = cats[
            (cats["category"] != "all") & (cats["category"] != NO_CATEGORY) & cats["delta_lo"].notna()
        ]
    n_sure = int((cats["delta_lo"] > 0).sum()) if "delta_lo" in cats else None
    n_cats = len(cats) if "delta_lo" in cats else None
    cat_bar = targets["evaluator_overall_categories"]

    def iv(ci: Any) -> list[float]:
        return [ci.lo, ci.hi]

    return {
        "neglected_gain_points": {
            "value": g.mean, "ci": iv(g), "n": g.n, "target": f">= {gain_bar:g} (lower bound)",
            "met": bool(math.isfinite(g.lo) and g.lo >= gain_bar),
        },
        "rest_change_points": {
            "value": r.mean, "ci": iv(r), "n": r.n, "target": f">= -{drop_bar:g} (lower bound; negative = a drop)",
            "met": bool(math.isfinite(r.lo) and r.lo >= -drop_bar),
        },
        "evaluator_overall_categories": {
            "value": n_sure, "of": n_cats, "target": f">= {cat_bar} (categories whose delta interval is above 0)",
            "met": bool(n_sure is not None and n_sure >= cat_bar),
        },
    }  # fmt: skip


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return round(f, 6) if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_summary_json(path: str | os.PathLike, summary: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary`` as JSON, atomically (numpy values made plain, NaN as null); returns what was written."""
    clean = _jsonable(summary)
    atomic_write_json(path, clean)
    return clean


def write_outputs(
    out_dir: str | os.PathLike, summary: dict[str, Any], tables: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    """Write ``summary.json`` (NaN → null) and ``tables/*.csv``; returns the JSON-safe summary."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(out / "tables" / f"{name}.csv", index=False)
    return write_summary_json(out / "summary.json", summary)
