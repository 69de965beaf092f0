"""The project's MATE-3D-style and T3Bench-style tables, base against fine-tuned.

Both tables are built from one *per-sample* table per model (one row per prompt × sample, the same
prompts and seeds for every model), so the before/after difference of a cell is a paired difference:

* **MATE-3D-style** (Zhang et al., MATE-3D / HyperScore): 8 prompt categories × 4 evaluator
  dimensions (alignment, geometry, texture, overall). Each cell: mean and 95% bootstrap CI per model,
  and the paired difference with its CI.
* **T3Bench-style** (He et al., T3Bench): prompt groups *single* / *surroundings* / *multi*.
  *Quality* is the ranker's icosphere aggregation (:class:`~debias3d.models.ranker.t3bench.T3BenchQuality`,
  ``best smoothed vertex * 20 + 50``); *alignment* is the evaluator's alignment dimension. T3Bench's
  own alignment route (caption the views, then an LLM rates caption vs prompt) is the documented
  option for real models (``alignment_route: caption_llm``, see docs/eval.md).

ShapeWorld prompts map to T3Bench groups by their meaning, not their category name: several
objects or a count > 1 → *multi*; one object placed in a context (floating, lying, upside-down,
leaning) → *surroundings*; otherwise *single*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from debias3d.eval.stats import bootstrap_ci, bootstrap_diff_ci

__all__ = [
    "DIMENSIONS",
    "NO_CATEGORY",
    "NO_CATEGORY_NOTE",
    "has_categories",
    "t3bench_group",
    "mate3d_table",
    "t3bench_table",
    "paired_table",
    "categories_improved",
]

DIMENSIONS: tuple[str, ...] = ("alignment", "geometry", "texture", "overall")
#: Category label of prompts that have none (a flat prompt list such as ``prompt_MATE_3D.json``).
NO_CATEGORY = "(no category)"
#: What tables and reports say when no prompt has a category.
NO_CATEGORY_NOTE = (
    "no categories: the prompts carry none, so the category rows hold all prompts under "
    f"{NO_CATEGORY!r}; give a category file (eval `categories`, e.g. MATE-3D's prompt_MATE_3D.xlsx)"
)


def has_categories(frames: Mapping[str, pd.DataFrame] | pd.DataFrame) -> bool:
    """Whether any sample has a real category (not :data:`NO_CATEGORY` / missing)."""
    fs = [frames] if isinstance(frames, pd.DataFrame) else list(frames.values())
    present = set().union(*(set(f["category"].dropna()) for f in fs)) if fs else set()
    return bool(present - {NO_CATEGORY})


def t3bench_group(prompt: str, spec: Any = None) -> str:
    """T3Bench group of a prompt: ``single``, ``surroundings`` or ``multi``.

    ShapeWorld prompts are read through their parsed spec; a prompt the parser cannot read falls
    back on words (" and ", "two", "three", "next to", "on top of" → multi).

    >>> t3bench_group("two red cups"), t3bench_group("a vase floating in the air"), t3bench_group("a vase")
    ('multi', 'surroundings', 'single')
    """
    if spec is None:
        try:
            from debias3d.data.shapeworld.parser import parse

            spec = parse(prompt)
        except ValueError:
            spec = None
    if spec is not None:
        if len(spec.objects) > 1 or spec.count > 1:
            return "multi"
        if any(getattr(o, "action", None) for o in spec.objects):
            return "surroundings"
        return "single"
    text = f" {prompt.lower()} "
    if any(k in text for k in (" and ", " two ", " three ", " next to ", " on top of ", " stacked ")):
        return "multi"
    if any(k in text for k in (" in ", " on the ", " under ", " floating ", " lying ")):
        return "surroundings"
    return "single"


def paired_table(
    frames: Mapping[str, pd.DataFrame],
    group_col: str,
    metrics: Sequence[str],
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    key: Sequence[str] = ("prompt_index", "sample"),
    total: str | None = "all",
) -> pd.DataFrame:
    """Mean + CI per (group, metric, model) and, with two models, the paired difference.

    Args:
        frames: model name → per-sample table (``key`` columns, ``group_col``, ``metrics``).
            The first model is the reference ("before"); with a second one (``"after"``) the
            table gets ``delta`` / ``delta_lo`` / ``delta_hi`` columns (after − before, paired on ``key``).
        group_col: column holding the group (category, T3Bench group).
        metrics: columns to summarise.
        groups: group order (default: sorted unique values of the first frame).
        n_boot / ci / seed: bootstrap settings.
        key: columns that pair rows across models.
        total: add a row over all groups under this name (None: no total row).

    Returns:
        One row per (group, metric): ``<model>_mean``, ``<model>_lo``, ``<model>_hi``, ``n`` and the
        delta columns.
    """
    names = list(frames)
    if not names:
        raise ValueError("paired_table needs at least one model")
    first = frames[names[0]]
    order = list(groups) if groups is not None else sorted(first[group_col].dropna().unique())
    if total is not None:
        order = [*order, total]
    key = list(key)
    rows = []
    for g in order:
        for m in metrics:
            row: dict[str, Any] = {group_col: g, "metric": m}
            vals = {}
            for name in names:
                df = frames[name]
                sub = df if g == total else df[df[group_col] == g]
                sub = sub.dropna(subset=[m]) if m in sub else sub.iloc[0:0]
                c = bootstrap_ci(sub[m].to_numpy() if m in sub else [], n_boot, ci, seed)
                row.update({f"{name}_mean": c.mean, f"{name}_lo": c.lo, f"{name}_hi": c.hi})
                row["n"] = c.n
                vals[name] = sub
            if len(names) >= 2:
                a, b = vals[names[0]], vals[names[1]]
                if m in a and m in b and len(a) and len(b):
                    j = a[[*key, m]].merge(b[[*key, m]], on=key, suffixes=("_a", "_b"))
                    d = bootstrap_diff_ci(
                        j[f"{m}_a"], j[f"{m}_b"], paired=True, n_boot=n_boot, ci=ci, seed=seed
                    )
                else:
                    d = bootstrap_diff_ci([], [], paired=True)
                row.update({"delta": d.mean, "delta_lo": d.lo, "delta_hi": d.hi})
            rows.append(row)
    return pd.DataFrame(rows)


def mate3d_table(
    frames: Mapping[str, pd.DataFrame],
    categories: Sequence[str] | None = None,
    dimensions: Sequence[str] = DIMENSIONS,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """MATE-3D-style table: category × evaluator dimension (``score_<dim>`` columns), per model.

    Args:
        frames: model → per-sample table with ``category`` and ``score_<dim>`` columns.
        categories: category order (default: ShapeWorld's 8 when they all appear, else sorted;
            :data:`NO_CATEGORY` last).
        dimensions: evaluator dimensions.

    Returns:
        :func:`paired_table` with ``metric`` renamed ``dimension`` (``score_`` prefix removed). When
        no prompt has a category (:func:`has_categories`), ``t.attrs["note"]`` says so.
    """
    frames = {k: f.assign(category=f["category"].fillna(NO_CATEGORY)) for k, f in frames.items()}
    if categories is None:
        from debias3d.data.shapeworld.vocab import CATEGORIES

        present = set().union(*(set(f["category"]) for f in frames.values()))
        rest = sorted(present - set(CATEGORIES) - {NO_CATEGORY})
        categories = (
            [c for c in CATEGORIES if c in present] + rest + ([NO_CATEGORY] if NO_CATEGORY in present else [])
        )
    t = paired_table(frames, "category", [f"score_{d}" for d in dimensions], categories, n_boot, ci, seed)
    t = t.rename(columns={"metric": "dimension"})
    t["dimension"] = t["dimension"].str.removeprefix("score_")
    if not has_categories(frames):
        t.attrs["note"] = NO_CATEGORY_NOTE
    return t


def t3bench_table(
    frames: Mapping[str, pd.DataFrame],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    ranker: str | None = None,
) -> pd.DataFrame:
    """T3Bench-style table: group (single / surroundings / multi) × {quality, alignment}, per model.

    ``quality`` is the ``t3_quality`` column (NaN for samples not rendered on the icosphere),
    ``alignment`` the evaluator's ``score_alignment``. ``ranker``: which ranker and settings
    produced ``quality`` (:func:`debias3d.models.ranker.t3bench.t3bench_label`), written in a
    ``ranker`` column on the quality rows so the CSV carries it.
    """
    from debias3d.eval.config import T3BENCH_GROUPS

    renamed = {
        k: v.rename(columns={"t3_quality": "quality", "score_alignment": "alignment"})
        for k, v in frames.items()
    }
    present = set().union(*(set(f["t3_group"].dropna()) for f in renamed.values()))
    groups = [g for g in T3BENCH_GROUPS if g in present]
    t = paired_table(renamed, "t3_group", ["quality", "alignment"], groups, n_boot, ci, seed)
    if ranker is not None:
        t["ranker"] = np.where(t["metric"] == "quality", ranker, "evaluator alignment dimension")
    return t


def categories_improved(
    table: pd.DataFrame, dimension: str = "overall", total: str = "all"
) -> dict[str, Any]:
    """How many categories' ``dimension`` rose after fine-tuning (``delta > 0``) in a MATE-3D table.

    Prompts without a category (:data:`NO_CATEGORY`) are not a category; with none left,
    ``improved`` is None and ``note`` says why.
    """
    if "delta" not in table:
        return {"improved": None, "of": None, "categories": {}}
    t = table[
        (table["dimension"] == dimension) & (table["category"] != total) & (table["category"] != NO_CATEGORY)
    ]
    if t.empty:
        return {"improved": None, "of": 0, "categories": {}, "note": NO_CATEGORY_NOTE}
    per = {str(c): float(d) for c, d in zip(t["category"], t["delta"], strict=True)}
    finite = {c: d for c, d in per.items() if not math.isnan(d)}
    return {
        "improved": int(sum(d > 0 for d in finite.values())),
        "of": len(finite),
        "categories": per,
    }
