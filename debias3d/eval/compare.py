"""``debias3d eval compare A/ B/``: the difference between two eval runs, printed and plotted.

Each run's *last* model (``finetuned`` when it has one, else ``base``) is compared: headline
fidelity (overall, neglected, rest, rare, frequent), evaluator means, diversity, and fidelity per
category and per word. The neglected words are A's (its base model's bottom quartile), so both runs
are read on the same word sets when they share the prompt set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from debias3d.models.persistence import read_json

__all__ = ["load_run", "compare_runs", "compare_command"]


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """``summary.json`` + ``tables/*.csv`` of an eval folder.

    Raises:
        FileNotFoundError: not an eval folder.
    """
    d = Path(path)
    if not (d / "summary.json").is_file():
        raise FileNotFoundError(f"{d}: no summary.json; is this a `debias3d eval` output folder?")
    tables = {p.stem: pd.read_csv(p) for p in sorted((d / "tables").glob("*.csv"))}
    return {"path": d, "summary": read_json(d / "summary.json"), "tables": tables}


def _num(x: Any) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f


def compare_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Tables of ``b − a`` for the last model of each run.

    Returns:
        ``{"headline": metric/a/b/delta, "categories": category/a/b/delta, "words": word/a/b/delta/neglected}``.
    """
    sa, sb = a["summary"], b["summary"]
    ma, mb = sa["models"][-1], sb["models"][-1]
    fa, fb = sa["fidelity"][ma], sb["fidelity"][mb]
    rows = []
    for key in ("neglected", "rest", "rare", "frequent", "word"):
        rows.append((f"fidelity.{key}", _num(fa.get(key)), _num(fb.get(key))))
    rows.append(("fidelity.per_sample", _num(fa["overall"]["mean"]), _num(fb["overall"]["mean"])))
    for dim, v in sa.get("evaluator", {}).get(ma, {}).items():
        rows.append((f"evaluator.{dim}", _num(v), _num(sb.get("evaluator", {}).get(mb, {}).get(dim))))
    rows.append(("diversity", _num(sa.get("diversity", {}).get(ma)), _num(sb.get("diversity", {}).get(mb))))
    headline = pd.DataFrame(rows, columns=["metric", "a", "b"])
    headline["delta"] = headline["b"] - headline["a"]

    ca, cb = sa.get("categories", {}).get(ma, {}), sb.get("categories", {}).get(mb, {})
    cats = [c for c in ca if c in cb] + [c for c in cb if c not in ca]
    categories = pd.DataFrame(
        [(c, _num(ca.get(c)), _num(cb.get(c))) for c in cats], columns=["category", "a", "b"]
    )
    categories["delta"] = categories["b"] - categories["a"]

    wa, wb = a["tables"].get("fidelity_words"), b["tables"].get("fidelity_words")
    if wa is not None and wb is not None and ma in wa and mb in wb:
        words = (
            wa[["word", ma, "neglected"]]
            .rename(columns={ma: "a"})
            .merge(wb[["word", mb]].rename(columns={mb: "b"}), on="word", how="outer")
        )
        words["neglected"] = words["neglected"].fillna(False).astype(bool)
        words["delta"] = words["b"] - words["a"]
        words = words.sort_values(["neglected", "delta"], ascending=[False, False]).reset_index(drop=True)
    else:
        words = pd.DataFrame(columns=["word", "a", "b", "neglected", "delta"])
    return {"headline": headline, "categories": categories, "words": words}


def _print(tables: dict[str, pd.DataFrame], a: Path, b: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def f(x: Any, signed: bool = False) -> str:
        x = _num(x)
        if not math.isfinite(x):
            return "–"
        return f"{x:+.3f}" if signed else f"{x:.3f}"

    for name, key in (("headline", "metric"), ("categories", "category"), ("words", "word")):
        t = tables[name]
        table = Table(title=f"{name}: B − A   (A = {a}, B = {b})")
        for col in (key, "A", "B", "B − A"):
            table.add_column(col, justify="left" if col == key else "right")
        for r in t.itertuples(index=False):
            d = r._asdict()
            label = str(d[key]) + (" *" if d.get("neglected") else "")
            style = "green" if _num(d["delta"]) > 0 else ("red" if _num(d["delta"]) < 0 else None)
            table.add_row(label, f(d["a"]), f(d["b"]), f(d["delta"], True), style=style)
        console.print(table)
    console.print("* neglected word (bottom quartile of A's base fidelity)")


def _plot(tables: dict[str, pd.DataFrame], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    c = tables["categories"]
    axes[0].bar(
        c["category"], c["delta"], color=["#2ca02c" if d > 0 else "#d62728" for d in c["delta"].fillna(0)]
    )
    axes[0].set_title("fidelity per category, B − A")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].axhline(0, color="black", lw=0.6)
    w = tables["words"].sort_values("delta")
    colours = ["#d62728" if n else "#1f77b4" for n in w["neglected"]]
    axes[1].bar(w["word"], w["delta"], color=colours)
    axes[1].set_title("fidelity per word, B − A (red: neglected)")
    axes[1].tick_params(axis="x", rotation=75, labelsize=7)
    axes[1].axhline(0, color="black", lw=0.6)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compare.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_command(
    a: str | os.PathLike, b: str | os.PathLike, out: str | os.PathLike | None = None
) -> dict[str, pd.DataFrame]:
    """CLI body of ``debias3d eval compare A/ B/ [--out DIR]``.

    Prints the three difference tables with rich and, with ``out``, writes ``compare.png`` and
    ``compare_{headline,categories,words}.csv`` there.

    Raises:
        FileNotFoundError: either folder is not an eval output.
    """
    ra, rb = load_run(a), load_run(b)
    tables = compare_runs(ra, rb)
    _print(tables, ra["path"], rb["path"])
    if out is not None:
        o = Path(out)
        _plot(tables, o)
        for name, t in tables.items():
            t.to_csv(o / f"compare_{name}.csv", index=False)
    return tables
