"""Self-contained HTML reports (jinja2 with autoescape, images inlined as base64 PNG).

* :func:`write_eval_report` — ``eval OUT/report.html``: headline, targets, per-word fidelity plot
  (neglected words highlighted), category tables, MATE-3D-style and T3Bench-style tables.
* Figure helpers shared with the demo report: :func:`word_fidelity_figure`,
  :func:`category_figure`, :func:`fig_to_b64`, :func:`png_to_b64`, :func:`table_rows`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "fig_to_b64",
    "png_to_b64",
    "word_fidelity_figure",
    "category_figure",
    "table_rows",
    "fmt",
    "render_template",
    "write_eval_report",
]

BEFORE_COLOUR = "#9aa5b1"
AFTER_COLOUR = "#1f77b4"
NEGLECTED_COLOUR = "#d62728"


def fmt(x: Any, digits: int = 3) -> str:
    """Number → short string; ``None`` / NaN → ``–``."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "–" if not math.isfinite(f) else f"{f:.{digits}f}"


def fig_to_b64(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def png_to_b64(path: str | os.PathLike) -> str | None:
    """A PNG file as base64 (None when missing)."""
    p = Path(path)
    return base64.b64encode(p.read_bytes()).decode("ascii") if p.is_file() else None


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def word_fidelity_figure(words: pd.DataFrame, before: str, after: str | None, title: str = "") -> Any:
    """Per-word fidelity, before vs after (paired bars), neglected words in red, sorted by base fidelity.

    Args:
        words: ``tables/fidelity_words.csv``: ``word``, ``before``/``after`` columns, ``neglected``.
        before / after: the two model columns (``after`` None: one bar per word).
    """
    plt = _plt()
    w = words[words["in_split"].astype(bool)] if "in_split" in words else words
    w = w.sort_values([before, "word"])
    if "neglected" not in w:
        w = w.assign(neglected=False)
    n = len(w)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n + 1.5), 3.6))
    x = list(range(n))
    width = 0.4 if after else 0.8
    ax.bar([i - (width / 2 if after else 0) for i in x], w[before], width, color=BEFORE_COLOUR, label=before)
    if after:
        ax.bar([i + width / 2 for i in x], w[after], width, color=AFTER_COLOUR, label=after)
    ax.set_xticks(x)
    ax.set_xticklabels(w["word"], rotation=70, fontsize=8)
    for lbl, neg in zip(ax.get_xticklabels(), w["neglected"], strict=True):
        if bool(neg):
            lbl.set_color(NEGLECTED_COLOUR)
            lbl.set_fontweight("bold")
    k = int(w["neglected"].sum())
    if k:
        ax.axvspan(
            -0.5, k - 0.5, color=NEGLECTED_COLOUR, alpha=0.08, label="neglected (bottom quartile, base)"
        )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fidelity (share shown)")
    ax.set_title(title or "ShapeWorld ground truth: does the shape show the word?")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


def category_figure(
    table: pd.DataFrame, group_col: str, models: Sequence[str], ylabel: str, title: str
) -> Any:
    """Grouped bars with CI whiskers from a :func:`~debias3d.eval.benchmarks.paired_table`."""
    plt = _plt()
    t = table.reset_index(drop=True)
    n, m = len(t), len(models)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * n + 1.5), 3.2))
    width = 0.8 / max(1, m)
    colours = [BEFORE_COLOUR, AFTER_COLOUR, "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for j, name in enumerate(models):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(n)]
        mean = t[f"{name}_mean"].astype(float)
        err = [(mean - t[f"{name}_lo"]).clip(lower=0), (t[f"{name}_hi"] - mean).clip(lower=0)]
        ax.bar(xs, mean, width, yerr=err, capsize=2, color=colours[j % len(colours)], label=name)
    ax.set_xticks(range(n))
    ax.set_xticklabels(t[group_col], rotation=30, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def table_rows(df: pd.DataFrame, columns: Sequence[str] | None = None, digits: int = 3) -> dict[str, Any]:
    """``{"columns": [...], "rows": [[str, ...], ...]}`` for the templates (values pre-formatted)."""
    cols = list(columns) if columns is not None else list(df.columns)
    cols = [c for c in cols if c in df.columns]
    rows = [
        [fmt(v, digits) if not isinstance(v, str) else v for v in r] for r in df[cols].itertuples(index=False)
    ]
    return {"columns": cols, "rows": rows}


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600} .muted{color:#777}
.lead{font-size:1.1em;background:#f6f8fa;padding:.8em 1em;border-radius:6px}
img{max-width:100%} .grid{display:flex;flex-wrap:wrap;gap:12px} .cell{border:1px solid #eee;padding:6px;font-size:12px}
.neg{color:#d62728;font-weight:600}
"""

_TABLE_MACRO = """
{% macro table(t) -%}
<table><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in t.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
{%- endmacro %}
{%- macro targets_table(targets) -%}
{% if targets %}<h2>Targets</h2>
<table><tr><th>target</th><th>required</th><th>measured</th><th>met</th></tr>
{% for t in targets %}<tr><td>{{ t.name }}</td><td>{{ t.target }}</td><td>{{ t.value }}</td>
<td class="{{ 'ok' if t.met else 'bad' }}">{{ 'yes' if t.met else 'no' }}</td></tr>{% endfor %}</table>{% endif %}
{%- endmacro %}
"""

_EVAL_TEMPLATE = (
    _TABLE_MACRO
    + """<!doctype html><html><head><meta charset="utf-8"><title>debias3d eval</title>
<style>{{ style }}</style></head><body>
<h1>debias3d eval</h1>
<p class="muted">{{ n_prompts }} prompts × D={{ D }} samples, same prompts and seeds for every model: {{ models|join(", ") }}.
{% if adapter %}Adapter: <code>{{ adapter }}</code>.{% endif %}</p>
<div class="lead">{{ lead }}</div>
{{ targets_table(targets) }}
<h2>Ground truth: fidelity per word</h2>
<p>Neglected words (red) = bottom quartile of the base model's fidelity: {% for w in neglected %}<span class="neg">{{ w }}</span> {% endfor %}</p>
{% if word_plot %}<img alt="per-word fidelity" src="data:image/png;base64,{{ word_plot }}">{% endif %}
{{ table(fidelity_groups) }}
<h2>Ground truth: fidelity per category</h2>
{% if categories_note %}<p class="bad">{{ categories_note }}</p>{% endif %}
{% if cat_plot %}<img alt="category fidelity" src="data:image/png;base64,{{ cat_plot }}">{% endif %}
{{ table(fidelity_categories) }}
<h2>MATE-3D-style table (evaluator, mean [95% CI])</h2>
{% if categories_note %}<p class="bad">{{ categories_note }}</p>{% endif %}
<p class="{{ 'bad' if range_note.clamped else 'muted' }}">{{ range_note.text }}</p>
{{ table(mate3d) }}
<h2>T3Bench-style table</h2>
<p class="muted">quality = ranker, icosphere aggregation (best smoothed vertex × 20 + 50){% if t3bench_ranker %}, from {{ t3bench_ranker }}{% endif %}; alignment = evaluator alignment dimension.</p>
{{ table(t3bench) }}
<h2>Diversity (mean pairwise Chamfer between a prompt's samples)</h2>
{{ table(diversity) }}
</body></html>"""
)


def render_template(source: str, **ctx: Any) -> str:
    """Render ``source`` with jinja2 (autoescape on; only base64 strings and escaped text go in)."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source).render(style=_STYLE, **ctx)


def _ci_table(
    t: pd.DataFrame, group_col: str, models: Sequence[str], extra: Sequence[str] = ()
) -> dict[str, Any]:
    """Rows ``group [metric] model: mean [lo, hi] ... delta [lo, hi]`` for the HTML tables."""
    cols = (
        [group_col, *extra] + [str(m) for m in models] + (["delta (after − before)"] if "delta" in t else [])
    )
    rows = []
    for r in t.itertuples(index=False):
        d = r._asdict()
        row = [str(d[group_col]), *[str(d[e]) for e in extra]]
        for m in models:
            row.append(f"{fmt(d[f'{m}_mean'])} [{fmt(d[f'{m}_lo'])}, {fmt(d[f'{m}_hi'])}]")
        if "delta" in t:
            row.append(f"{fmt(d['delta'], 3)} [{fmt(d['delta_lo'])}, {fmt(d['delta_hi'])}]")
        rows.append(row)
    return {"columns": cols, "rows": rows}


def signed(x: Any, digits: int = 1) -> str:
    """A change with its sign (``+28.6``, ``-7.0``); ``None`` / NaN → ``–``."""
    text = fmt(x, digits)
    return text if text == "–" or text.startswith("-") else "+" + text


def lead_sentence(summary: dict[str, Any]) -> str:
    """One plain sentence: what was biased and what changed."""
    models = summary["models"]
    fid = summary["fidelity"]
    neg = ", ".join(summary.get("neglected_words", [])[:8]) or "none"
    base = fid[models[0]]
    s = (
        f"The base model shows its neglected words ({neg}) {fmt(100 * base['neglected'] if base['neglected'] is not None else None, 1)}% "
        f"of the time against {fmt(100 * base['rest'] if base['rest'] is not None else None, 1)}% for the rest."
    )
    if len(models) >= 2:
        d = summary["delta_points"]
        s += (
            f" After fine-tuning: neglected words {signed(d['neglected'])} points, the rest "
            f"{signed(d['rest'])} points, overall fidelity {signed(d['fidelity'])} points."
        )
    return s


def score_range_note(summary: dict[str, Any]) -> dict[str, Any]:
    """What range the evaluator scores lie on and how many samples were clamped to it, per model.

    Returns:
        ``{"text": str, "clamped": bool}`` (``clamped``: some sample had a score outside the range).
    """
    ranges = summary.get("evaluator_score_range") or {}
    counts = summary.get("evaluator_clamped") or {}
    totals = summary.get("evaluator_samples") or {}
    models = summary["models"]
    known = {tuple(r) for m in models if (r := ranges.get(m))}
    if not known:
        return {
            "text": "The evaluator declares no score range; its scores are shown as they came.",
            "clamped": False,
        }
    rng = "; ".join(f"[{lo:g}, {hi:g}]" for lo, hi in sorted(known))
    parts = [
        f"{m} {counts[m]} of {totals.get(m, '?')}" if counts.get(m) is not None else f"{m} not recorded"
        for m in models
    ]
    text = (
        f"Evaluator scores lie on the evaluator's documented range {rng}; per-sample scores outside it "
        f"were clamped to it before averaging. Samples clamped: {', '.join(parts)}."
    )
    return {"text": text, "clamped": any(counts.get(m) for m in models)}


def target_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets as template rows."""
    names = {
        "neglected_gain_points": "neglected-word fidelity gain, after − before (points)",
        "rest_change_points": "fidelity change on the rest, after − before (points; negative = a drop)",
        "rest_drop_points": "fidelity drop on the rest (points)",
        "evaluator_overall_categories": "categories where evaluator overall rose (interval above 0)",
    }
    out = []
    for k, t in (summary.get("targets") or {}).items():
        v = t["value"]
        if k == "evaluator_overall_categories":
            val = f"{v}/{t.get('of')}" if v is not None else "no categories"
        else:
            val = signed(v, 1)
            if t.get("ci"):
                val += f" [{signed(t['ci'][0], 1)}, {signed(t['ci'][1], 1)}] (n = {t.get('n')})"
        out.append({"name": names.get(k, k), "target": t["target"], "value": val, "met": t["met"]})
    return out


def fidelity_group_table(summary: dict[str, Any]) -> dict[str, Any]:
    """Neglected / rest / frequent / rare / overall fidelity per model."""
    models = summary["models"]
    fid = summary["fidelity"]
    rows = []
    for key, label in [("neglected", "neglected words"), ("rest", "the rest"), ("rare", "rare in corpus"),
                       ("frequent", "frequent in corpus"), ("word", "all word uses")]:  # fmt: skip
        rows.append([label, *[fmt(fid[m].get(key)) for m in models]])
    rows.append(["per sample (mean)", *[fmt(fid[m]["overall"]["mean"]) for m in models]])
    return {"columns": ["words", *models], "rows": rows}


def write_eval_report(
    out_dir: str | os.PathLike, summary: dict[str, Any], tables: dict[str, pd.DataFrame]
) -> Path:
    """Write ``out_dir/report.html`` from a summary and its tables."""
    models = summary["models"]
    before, after = models[0], (models[1] if len(models) > 1 else None)
    words = tables["fidelity_words"]
    word_plot = word_fidelity_figure(words, before, after) if len(words) else None
    fc = tables["fidelity_categories"]
    cat_plot = (
        category_figure(fc, "category", models, "fidelity", "fidelity per category (95% CI)")
        if len(fc)
        else None
    )
    html = render_template(
        _EVAL_TEMPLATE,
        n_prompts=summary["n_prompts"],
        D=summary["samples_per_prompt"],
        models=models,
        adapter=summary.get("adapter"),
        lead=lead_sentence(summary),
        targets=target_rows(summary),
        neglected=summary.get("neglected_words", []),
        word_plot=fig_to_b64(word_plot) if word_plot is not None else None,
        cat_plot=fig_to_b64(cat_plot) if cat_plot is not None else None,
        fidelity_groups=fidelity_group_table(summary),
        fidelity_categories=_ci_table(fc, "category", models),
        mate3d=_ci_table(tables["mate3d"], "category", models, extra=("dimension",)),
        t3bench=_ci_table(tables["t3bench"], "t3_group", models, extra=("metric",)),
        t3bench_ranker=summary.get("t3bench_ranker"),
        diversity=_ci_table(tables["diversity"], "category", models),
        categories_note=summary.get("categories_note"),
        range_note=score_range_note(summary),
    )
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


_DEMO_TEMPLATE = (
    _TABLE_MACRO
    + """<!doctype html><html><head><meta charset="utf-8"><title>debias3d demo</title>
<style>{{ style }}</style></head><body>
<h1>debias3d demo: was the word bias repaired?</h1>
<p class="muted">audit → augment → finetune → eval on the embedded ShapeWorld world; every number below is
measured against ShapeWorld ground truth (the measurer reads each word back from the generated shape).
{% if quick %}Quick budget.{% endif %} Total time {{ total }} s.</p>
<div class="lead">{{ lead }}</div>
{{ targets_table(targets) }}
<h2>Before / after per category</h2>
{{ table(categories) }}
<h2>Fidelity per word, before vs after</h2>
<p>Neglected words (red, bottom quartile of the base model's fidelity):
{% for w in neglected %}<span class="neg">{{ w }}</span> {% endfor %}</p>
{% if word_plot %}<img alt="per-word fidelity" src="data:image/png;base64,{{ word_plot }}">{% endif %}
{{ table(fidelity_groups) }}
<h2>Word heatmaps before and after</h2>
<p class="muted">Each audit's heatmaps: what the shape shows (the selected word probe) and what the evaluator
reacts to (the gradient). Colour scales are per audit: compare colours within one block, numbers across them.</p>
{% if showcase %}{% for s in showcase %}<div class="cell"><b>{{ s.prompt }}</b>
<span class="muted">({{ s.category }}; audit w_h = {{ s.w_h }}, w_l = {{ s.w_l }})</span>
<div><b>base model</b><br>{% if s.before %}<img alt="heatmap before" src="data:image/png;base64,{{ s.before }}">{% else %}<span class="muted">no heatmap</span>{% endif %}</div>
<div><b>fine-tuned model</b><br>{% if s.after %}<img alt="heatmap after" src="data:image/png;base64,{{ s.after }}">{% else %}<span class="muted">no heatmap</span>{% endif %}</div></div>{% endfor %}
{% else %}<p class="muted">no showcase prompts</p>{% endif %}
<h2>Meshes before and after (same prompts, same seeds)</h2>
{% if thumbs %}<table><tr><th>prompt</th><th>base</th><th>fine-tuned</th></tr>
{% for t in thumbs %}<tr><td>{{ t.prompt }}</td>
<td>{% if t.base %}<img alt="base" src="data:image/png;base64,{{ t.base }}"><br>{% endif %}fidelity {{ t.base_fid }}</td>
<td>{% if t.after %}<img alt="fine-tuned" src="data:image/png;base64,{{ t.after }}"><br>{% endif %}fidelity {{ t.after_fid }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">no thumbnails</p>{% endif %}
<h2>Ablations (same audit, same pair budget, same steps)</h2>
{% if ablation %}<p>Ordering found (by neglected-word fidelity): <b>{{ ordering }}</b>.
The paper reports full &gt; only w_h &gt; base &gt; only w_l &gt; w/o grad guide.</p>{{ table(ablation) }}
{% else %}<p class="muted">not run (use <code>debias3d demo --ablations</code>).</p>{% endif %}
<h2>MATE-3D-style table (evaluator)</h2>
<p class="{{ 'bad' if range_note.clamped else 'muted' }}">{{ range_note.text }}</p>
{{ table(mate3d) }}
<h2>T3Bench-style table</h2>
{{ table(t3bench) }}
<h2>Budget and time per stage</h2>
{{ table(budget) }}
{{ table(timings) }}
<p class="muted">Stage folders: audit/, aug/, finetune/, eval/ (each with its own report.html).</p>
</body></html>"""
)


def _category_before_after(summary: dict[str, Any], tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    models = summary["models"]
    fc = tables["fidelity_categories"].set_index("category")
    m3 = tables["mate3d"]
    m3 = m3[m3["dimension"] == "overall"].set_index("category")
    cols = ["category", *[f"fidelity {m}" for m in models]]
    if len(models) > 1:
        cols.append("fidelity Δ")
    cols += [f"evaluator overall {m}" for m in models] + (["evaluator Δ"] if len(models) > 1 else [])
    rows = []
    for cat in fc.index:
        r = [str(cat), *[fmt(fc.loc[cat, f"{m}_mean"]) for m in models]]
        if len(models) > 1:
            r.append(
                f"{float(fc.loc[cat, 'delta']):+.3f}" if math.isfinite(float(fc.loc[cat, "delta"])) else "–"
            )
        if cat in m3.index:
            r += [fmt(m3.loc[cat, f"{m}_mean"]) for m in models]
            if len(models) > 1:
                d = float(m3.loc[cat, "delta"])
                r.append(f"{d:+.3f}" if math.isfinite(d) else "–")
        else:
            r += ["–"] * (len(models) + (1 if len(models) > 1 else 0))
        rows.append(r)
    return {"columns": cols, "rows": rows}


def write_demo_report(
    out_dir: str | os.PathLike,
    demo_summary: dict[str, Any],
    eval_summary: dict[str, Any],
    eval_tables: dict[str, pd.DataFrame],
    ablation: pd.DataFrame | None,
    showcase: Sequence[dict[str, Any]],
    thumbs: dict[str, Any],
) -> Path:
    """Write the demo's one-page ``report.html`` (everything inlined)."""
    out = Path(out_dir)
    models = eval_summary["models"]
    words = eval_tables["fidelity_words"]
    wp = (
        word_fidelity_figure(words, models[0], models[1] if len(models) > 1 else None) if len(words) else None
    )
    shows = []
    thumb_rows = []
    for i, s in enumerate(showcase):
        pid = s["prompt_id"]
        shows.append({**{k: str(v) for k, v in s.items()},
                      "before": png_to_b64(out / "audit" / "heatmaps" / f"{pid}.png"),
                      "after": png_to_b64(out / "audit_after" / "heatmaps" / f"{pid}.png")})  # fmt: skip
        b, a = thumbs.get(f"base/{i}"), thumbs.get(f"finetuned/{i}")
        if b or a:
            thumb_rows.append({
                "prompt": s["prompt"],
                "base": png_to_b64(b["path"]) if b else None,
                "after": png_to_b64(a["path"]) if a else None,
                "base_fid": ", ".join(fmt(x, 2) for x in b["fidelity"]) if b else "–",
                "after_fid": ", ".join(fmt(x, 2) for x in a["fidelity"]) if a else "–",
            })  # fmt: skip
    abl = None
    if ablation is not None:
        abl = table_rows(ablation, ["rank", "name", "pairs", "steps", "neglected", "rest", "fidelity",
                                    "evaluator_overall", "neglected_gain_points", "rest_change_points"])  # fmt: skip
    b = demo_summary["budget"]
    budget = {"columns": ["budget", "value"],
              "rows": [[k, json.dumps(v) if isinstance(v, dict) else fmt(v)] for k, v in b.items()]}  # fmt: skip
    timings = {
        "columns": ["stage", "seconds"],
        "rows": [[k, fmt(v, 1)] for k, v in demo_summary["timings_s"].items()],
    }
    html = render_template(
        _DEMO_TEMPLATE,
        quick=demo_summary.get("quick"),
        total=fmt(demo_summary["timings_s"].get("total"), 0),
        lead=lead_sentence(eval_summary),
        targets=target_rows(eval_summary)
        + (
            [
                {
                    "name": "full beats random_words on neglected words",
                    "target": "yes",
                    "value": fmt(demo_summary["ablation"]["full_beats_random_words"]),
                    "met": bool(demo_summary["ablation"]["full_beats_random_words"]),
                }
            ]
            if demo_summary.get("ablation")
            else []
        ),  # fmt: skip
        categories=_category_before_after(eval_summary, eval_tables),
        neglected=eval_summary.get("neglected_words", []),
        word_plot=fig_to_b64(wp) if wp is not None else None,
        fidelity_groups=fidelity_group_table(eval_summary),
        showcase=shows,
        thumbs=thumb_rows,
        ablation=abl,
        ordering=(demo_summary.get("ablation") or {}).get("ordering"),
        mate3d=_ci_table(eval_tables["mate3d"], "category", models, extra=("dimension",)),
        t3bench=_ci_table(eval_tables["t3bench"], "t3_group", models, extra=("metric",)),
        range_note=score_range_note(eval_summary),
        budget=budget,
        timings=timings,
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
