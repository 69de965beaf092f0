"""Audit reports: per-prompt word heatmaps (PNG + SVG + JSON) and a self-contained ``report.html``.

Everything here reads the audit folder (``prompts.parquet``, ``words.parquet``, ``summary.json``,
``view_contradictions.json``, ``thumbs/``), so ``debias3d report heatmap --audit DIR`` re-exports
without re-running anything. The HTML is rendered by jinja2 with autoescape on, and images are
embedded as base64, so the file opens offline and a prompt containing ``<script>`` shows as text.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["attr_colour", "heatmap_figure", "write_heatmaps", "write_report", "FORMATS"]

FORMATS = ("png", "svg", "html", "json")
_CMAP = "Reds"


def attr_colour(value: float, vmax: float) -> str:
    """CSS colour for an attribution: white → red by ``|value| / vmax`` (blue for negative values)."""
    if not np.isfinite(value):
        return "#fff"
    t = 0.0 if not np.isfinite(vmax) or vmax <= 0 else min(abs(value) / vmax, 1.0)
    if value >= 0:
        r, g, b = 255, int(255 - 180 * t), int(255 - 180 * t)
    else:
        r, g, b = int(255 - 180 * t), int(255 - 120 * t), 255
    return f"rgb({r},{g},{b})"


def heatmap_figure(
    labels: Sequence[str],
    values: Sequence[float],
    title: str = "",
    ax: Any = None,
    vmax: float | None = None,
    signed: bool | None = None,
) -> Any:
    """One row of word cells coloured by attribution, with a colour bar (matplotlib Figure).

    Args:
        labels: ``W`` words (or tokens).
        values: ``W`` attributions (NaN cells are left blank).
        title: figure title (drawn as plain text, no mathtext).
        ax: draw into this Axes instead of a new figure.
        vmax: the colour scale's end (one value for every prompt of a method, so prompts
            compare); default: this row's largest ``|value|``.
        signed: a diverging scale around 0 (default: when this row has a negative value).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colors

    vals = np.asarray(values, dtype=float).reshape(1, -1)
    n = max(vals.shape[1], 1)
    if signed is None:
        signed = bool((vals[np.isfinite(vals)] < 0).any())
    if vmax is None or not np.isfinite(vmax):
        vmax = float(np.nanmax(np.abs(vals))) if vals.size and np.isfinite(vals).any() else 1.0
    vmax = vmax or 1.0
    norm = colors.TwoSlopeNorm(0.0, -vmax, vmax) if signed else colors.Normalize(0.0, vmax)
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(1.0 + 0.9 * n, 16), 1.7))
    else:
        fig = ax.figure
    im = ax.imshow(
        vals if vals.size else np.zeros((1, 1)), cmap="RdBu_r" if signed else _CMAP, norm=norm, aspect="auto"
    )
    for j, lab in enumerate(labels):
        v = vals[0, j]
        dark = abs(v) / vmax > 0.6 if np.isfinite(v) else False
        ax.text(
            j,
            0,
            str(lab),
            ha="center",
            va="center",
            fontsize=9,
            color="white" if dark else "black",
            usetex=False,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title.replace("$", r"\$"), fontsize=9, loc="left")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.01)
    fig.tight_layout()
    return fig


def _read(audit_dir: Path) -> tuple[Any, Any, dict[str, Any]]:
    import pandas as pd

    prompts = pd.read_parquet(audit_dir / "prompts.parquet")
    words = pd.read_parquet(audit_dir / "words.parquet")
    summary_path = audit_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return prompts, words, summary


def _methods(words: Any) -> list[str]:
    return [c[len("attr_") :] for c in words.columns if c.startswith("attr_")]


def _heatmap_entries(prompts: Any, words: Any, primary: str | None) -> list[dict[str, Any]]:
    methods = _methods(words)
    by_prompt = {pid: g.sort_values("word_index") for pid, g in words.groupby("prompt_id", sort=False)}
    out = []
    for r in prompts.itertuples(index=False):
        g = by_prompt.get(r.prompt_id)
        if g is None:
            continue
        out.append(
            {
                "prompt_id": r.prompt_id,
                "prompt": r.prompt,
                "category": r.category,
                "words": g["word"].tolist(),
                "is_stop": [bool(x) for x in g["is_stop"]],
                "attr": {m: [float(x) for x in g[f"attr_{m}"]] for m in methods},
                "verdict": {
                    m[len("verdict_") :]: [None if v is None or v != v else str(v) for v in g[m]]
                    for m in g.columns
                    if m.startswith("verdict_")
                },
                "primary": primary or (methods[0] if methods else None),
                "w_h": r.w_h,
                "w_l": r.w_l,
            }
        )
    return out


#: What each method's heatmap shows (the gradient is about the evaluator, probes about the shape).
_LABEL: dict[str, str] = {
    "grad": "evaluator sensitivity |dq/de| (grad)",
    "grad_x_input": "evaluator sensitivity (grad x input)",
    "integrated_gradients": "evaluator sensitivity (integrated gradients)",
    "occlusion": "shown in the shape: score drop without the word (occlusion)",
    "contrastive": "shown in the shape: score drop with a same-kind word (contrastive)",
    "choice": "shown in the shape: probability the evaluator picks the word over same-kind words (choice)",
}

#: What a probe's number is, for table headers and the intro.
_PROBE_SCORE: dict[str, str] = {
    "occlusion": "score drop",
    "contrastive": "score drop",
    "choice": "choice probability",
}


def method_scales(entries: Sequence[dict[str, Any]]) -> dict[str, float]:
    """One colour scale per method (the largest ``|attr|`` over all prompts), so prompts compare."""
    out: dict[str, float] = {}
    for e in entries:
        for m, vals in e["attr"].items():
            v = [abs(x) for x in vals if np.isfinite(x)]
            if v:
                out[m] = max(out.get(m, 0.0), max(v))
    return {m: (v or 1.0) for m, v in out.items()}


def _heatmap_rows(entry: dict[str, Any]) -> list[str]:
    """The selected method, and the paper's gradient beside it when it is another method."""
    rows = [entry["primary"]] if entry["primary"] in entry["attr"] else []
    for g in ("grad", "grad_x_input", "integrated_gradients"):
        if g in entry["attr"] and g not in rows:
            rows.append(g)
            break
    return rows or list(entry["attr"])[:1]


def _html_row(entry: dict[str, Any], method: str) -> str:
    import html

    vals = entry["attr"][method]
    vmax = max((abs(v) for v in vals), default=1.0) or 1.0
    spans = "".join(
        f'<span class="w" title="{v:.3g}" style="background:{attr_colour(v, vmax)}">{html.escape(w)}</span>'
        for w, v in zip(entry["words"], vals, strict=True)
    )
    return f"<p><b>{html.escape(str(entry['prompt']))}</b><br>{spans}</p>"


def write_heatmaps(
    audit_dir: str | Path, formats: Sequence[str] = ("png", "svg", "json"), out: str | Path | None = None
) -> list[Path]:
    """(Re-)export word heatmaps of an audit folder.

    Args:
        audit_dir: an audit output folder.
        formats: any of ``png`` / ``svg`` (one file per prompt: ``<prompt_id>.<fmt>``), ``json``
            (``heatmaps.json``) and ``html`` (``heatmaps.html``, all prompts on one page).
        out: target folder (default ``audit_dir/heatmaps``).

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    audit_dir = Path(audit_dir)
    for f in formats:
        if f not in FORMATS:
            raise ValueError(f"unknown heatmap format {f!r}; expected one of {', '.join(FORMATS)}")
    prompts, words, summary = _read(audit_dir)
    att = summary.get("config", {}).get("attribution", {})
    primary = att.get("select") or att.get("primary")
    entries = _heatmap_entries(prompts, words, primary)
    dest = Path(out) if out is not None else audit_dir / "heatmaps"
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    images = [f for f in formats if f in ("png", "svg")]
    if images:
        from debias3d.progress import tqdm

        scales = method_scales(entries)
        signed = {m for e in entries for m, v in e["attr"].items() if any(x < 0 for x in v if np.isfinite(x))}
        for e in tqdm(entries, desc="heatmaps", unit="prompt", disable=len(entries) < 16):
            rows = _heatmap_rows(e)
            fig, axes = plt.subplots(
                len(rows), 1, figsize=(min(1.0 + 0.9 * max(len(e["words"]), 1), 16), 1.5 * len(rows))
            )
            for ax, m in zip(np.atleast_1d(axes), rows, strict=True):
                heatmap_figure(
                    e["words"],
                    e["attr"][m],
                    title=f"{_LABEL.get(m, m)}: {e['prompt']}",
                    ax=ax,
                    vmax=scales.get(m),
                    signed=m in signed,
                )
            for fmt in images:
                path = dest / f"{e['prompt_id']}.{fmt}"
                fig.savefig(path, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
                written.append(path)
            plt.close(fig)
    if "json" in formats:
        path = dest / "heatmaps.json"
        path.write_text(json.dumps({"method": primary, "prompts": entries}, indent=1, ensure_ascii=False))
        written.append(path)
    if "html" in formats:
        path = dest / "heatmaps.html"
        body = "\n".join(_html_row(e, e["primary"]) for e in entries)
        path.write_text(
            "<!doctype html><meta charset='utf-8'><title>debias3d heatmaps</title>"
            "<style>.w{padding:1px 4px;margin:1px;border-radius:3px;display:inline-block}</style>" + body,
            encoding="utf-8",
        )
        written.append(path)
    return written


def _b64(path: Path) -> str | None:
    if not path.is_file():
        return None
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>debias3d bias audit</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.w{padding:1px 4px;margin:1px;border-radius:3px;display:inline-block}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0}.card img{max-width:100%}
.muted{color:#777}.issue{font-family:monospace;font-size:12px}
img.views{width:100%;max-width:960px;image-rendering:pixelated}figure{margin:4px 0}
.v-ignored{text-decoration:underline;color:#a00}.v-shown{font-weight:bold}td.v-ignored{font-weight:bold}
</style></head><body>
<h1>Bias audit</h1>
<p class="muted">{{ n_prompts }} prompts &times; D={{ samples }} samples; generator <code>{{ generator }}</code>,
evaluator <code>{{ evaluator }}</code>. Words chosen by <code>{{ primary }}</code>{% if primary == "choice" %} (a word probe:
the probability that the evaluator, shown the <i>same</i> shape, picks the prompt's word over K same-kind words;
chance is 1/(K+1), and a word near or below chance is not shown){% elif primary_is_probe %} (a word probe:
the evaluator's score drop on the <i>same</i> shape when the prompt loses the word or names a same-kind word instead;
a drop near zero means the shape does not show the word){% endif %}.</p>

<h2>Which words does this generator ignore, and how sure is that?</h2>
{% if verdict_rows %}
<p>Per word over the prompt set: mean {{ score_label }} with its {{ ci_pct }}% bootstrap interval over prompts (a single prompt: over its
samples and alternatives). <b>ignored</b>: the interval lies at or below {{ threshold }}; <b>shown</b>: above it; <b>unclear</b>: it straddles it.
{% if gt_select %}Checked against the ShapeWorld measurer on these samples: AUC {{ gt_select }}.{% endif %}</p>
<table><tr><th class="l">word</th><th class="l">verdict</th><th>{{ score_label }}</th><th>interval</th><th>prompts</th></tr>
{% for r in verdict_rows %}<tr><td class="l">{{ r.word }}</td><td class="l v-{{ r.verdict }}">{{ r.verdict }}</td>
<td>{{ "%.4f"|format(r.mean_attr) }}</td><td>[{{ "%.4f"|format(r.lo) }}, {{ "%.4f"|format(r.hi) }}]</td><td>{{ r.n_prompts }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">The selected method is a gradient method (no verdicts); add <code>choice</code>, <code>contrastive</code> or <code>occlusion</code> to
<code>attribution.methods</code> and select it for verdicts.</p>{% endif %}

<h2>Global scores q<sub>g</sub></h2>
<table><tr>{% for d in dims %}<th>{{ d }}</th>{% endfor %}</tr>
<tr>{% for d in dims %}<td>{{ "%.4f"|format(q_g[d]) }}</td>{% endfor %}</tr></table>

<h2>Per category (mean q<sub>l</sub>)</h2>
<table><tr><th class="l">category</th><th>prompts</th>{% for d in dims %}<th>{{ d }}</th>{% endfor %}</tr>
{% for cat, row in categories.items() %}<tr><td class="l">{{ cat }}</td><td>{{ row.n_prompts }}</td>
{% for d in dims %}<td>{{ "%.4f"|format(row[d]) }}</td>{% endfor %}</tr>{% endfor %}</table>

<h2>Words the evaluator is most and least sensitive to ({{ grad_method }})</h2>
<p class="muted">The paper's gradient attribution: how strongly the evaluator's score reacts to each word's embedding.
This is about the evaluator, not about what the generator showed (see the ground-truth check below).</p>
<div style="display:flex;gap:32px">
<div><h3>Most sensitive (content words)</h3><table><tr><th class="l">word</th><th>mean attr</th><th>prompts</th><th>rank</th></tr>
{% for r in top_words %}<tr><td class="l">{{ r.word }}</td><td>{{ "%.4f"|format(r.mean_attr) }}</td><td>{{ r.n_prompts }}</td><td>{{ r.rank }}</td></tr>{% endfor %}</table></div>
<div><h3>Least sensitive (content words)</h3><table><tr><th class="l">word</th><th>mean attr</th><th>prompts</th><th>rank</th></tr>
{% for r in low_words %}<tr><td class="l">{{ r.word }}</td><td>{{ "%.4f"|format(r.mean_attr) }}</td><td>{{ r.n_prompts }}</td><td>{{ r.rank }}</td></tr>{% endfor %}</table></div>
</div>

<h2>Faithfulness (deletion test)</h2>
{% if faith.n_prompts %}
<p>Removing the top-{{ faith.k }} attributed content words changes the score by {{ "%.4f"|format(faith.mean_change_top) }} on average;
removing the bottom-{{ faith.k }} by {{ "%.4f"|format(faith.mean_change_bottom) }}
({{ "%.0f"|format(100 * faith.top_exceeds_bottom) }}% of {{ faith.n_prompts }} prompts moved more with the top words).
{% if faith.passed %}The attribution passes: its top words matter more.{% else %}The attribution does <b>not</b> pass: its top words do not matter more than its bottom words.{% endif %}</p>
{% else %}<p class="muted">No prompt had enough content words for the deletion test.</p>{% endif %}

<h2>Ground truth (ShapeWorld)</h2>
{% if gt %}
{% if gt_methods %}
<p>Each method against the measurer's per-sample verdicts on this audit's own samples. AUC: does the word score predict
"the shape shows the word" (0.5 = chance; interval: bootstrap over prompts). Spearman: the set-level word table against
each word's fidelity. w<sub>l</sub> hit: the prompt's lowest-scored measurable word is its worst-shown word (prompts whose
words differ in fidelity), beside the rate of a random pick.</p>
<table><tr><th class="l">method</th><th>AUC</th><th>interval</th><th>uses</th><th>Spearman</th><th>words</th><th>w<sub>l</sub> hit</th><th>chance</th><th>prompts</th></tr>
{% for m, r in gt_methods.items() %}<tr><td class="l">{{ m }}{% if m == primary %} (selected){% endif %}</td><td>{{ r.auc_text }}</td><td>{{ r.ci_text }}</td><td>{{ r.n_uses }}</td>
<td>{{ r.rho_text }}</td><td>{{ r.n_words }}</td><td>{{ r.hit_text }}</td><td>{{ r.chance_text }}</td><td>{{ r.n_prompts }}</td></tr>{% endfor %}</table>
{% endif %}
<p>Lowest-fidelity words below 1.0 ({{ gt.lowest_fidelity|join(", ") or "none" }}): {{ gt.hits }} flagged as w<sub>l</sub> by {{ primary }}{% if gt.flagged_as_w_l %} ({{ gt.flagged_as_w_l|join(", ") }}){% endif %}.</p>
<table><tr><th class="l">word</th><th>mean score ({{ primary }})</th><th>fidelity</th><th>prompts</th></tr>
{% for r in gt.per_word %}<tr><td class="l">{{ r.word }}</td><td>{{ "%.4f"|format(r.mean_attr) }}</td><td>{{ "%.3f"|format(r.fidelity) }}</td><td>{{ r.n_prompts }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">Not measured (prompts are not ShapeWorld prompts, or ground_truth: off).</p>{% endif %}

<h2>View contradictions (D-SDS PMI)</h2>
{% if views %}
<table><tr><th class="l">prompt</th>{% for v in view_names %}<th class="l">contradicts {{ v }} view</th>{% endfor %}</tr>
{% for r in views %}<tr><td class="l">{{ r.prompt }}</td>{% for v in view_names %}<td class="l">{{ (r.flagged.get(v) or [])|join(", ") }}</td>{% endfor %}</tr>{% endfor %}</table>
{% else %}<p class="muted">Not run (use --view-contradictions).</p>{% endif %}

<h2>Per prompt</h2>
<p class="muted">Words coloured by {{ primary }} on one scale for all prompts{% if primary_is_probe %}; hover for the interval; underlined: ignored,
bold: shown{% endif %}. The image strip is the evaluator's six views of sample 0; the heatmap image adds the paper's gradient
(evaluator sensitivity) on its own common scale.</p>
{% for p in prompt_cards %}
<div class="card"><div><b>{{ p.prompt }}</b> <span class="muted">[{{ p.category }}] q<sub>l</sub>={{ "%.4f"|format(p.q) }},
w<sub>h</sub>={{ p.w_h }}, w<sub>l</sub>={{ p.w_l }}{% if p.truncated %}, truncated{% endif %}</span></div>
<div>{% for w in p.words %}<span class="w{% if w.verdict %} v-{{ w.verdict }}{% endif %}" title="{{ w.tip }}" style="background:{{ w.c }}">{{ w.t }}</span>{% endfor %}</div>
{% if p.thumb %}<figure><img class="views" alt="evaluator views of sample 0" src="{{ p.thumb }}"><figcaption class="muted">evaluator views (front, right, back, left, top, bottom), sample 0</figcaption></figure>{% endif %}
{% if p.heatmap %}<img alt="word heatmaps" src="{{ p.heatmap }}">{% endif %}
</div>
{% endfor %}

<h2>Issues</h2>
{% if issues %}{% for i in issues %}<div class="issue">{{ i }}</div>{% endfor %}{% else %}<p class="muted">None.</p>{% endif %}
</body></html>
"""


def _fmt(v: Any, f: str = "{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f.format(v)


def write_report(audit_dir: str | Path, max_prompts: int = 200) -> Path:
    """Write ``audit_dir/report.html`` (self-contained; images embedded as base64).

    Args:
        audit_dir: an audit folder with ``summary.json``, ``prompts.parquet``, ``words.parquet``.
        max_prompts: per-prompt cards shown (the rest are in ``heatmaps/``).
    """
    import jinja2

    audit_dir = Path(audit_dir)
    prompts, words, summary = _read(audit_dir)
    cfg = summary.get("config", {})
    att = cfg.get("attribution", {})
    primary = att.get("select") or att.get("primary") or "grad"
    probes = tuple(_PROBE_SCORE)
    dims = list(summary.get("q_g", {}).keys())
    tables = dict(summary.get("word_tables") or {})
    tables[primary] = summary.get("word_table", [])
    grad_method = next((m for m in ("grad", "grad_x_input", "integrated_gradients") if m in tables), None)
    gtab = [r for r in tables.get(grad_method, []) if not r.get("is_stop")]
    top_words = gtab[:10]
    low_words = [r for r in reversed(gtab[len(top_words) :])][:10]  # never a word of the top table
    verdict_rows = []
    if primary in probes:
        order = {"ignored": 0, "unclear": 1, "shown": 2}
        verdict_rows = sorted(
            [r for r in tables[primary] if not r.get("is_stop") and r.get("mean_attr") is not None],
            key=lambda r: (order.get(r.get("verdict"), 1), r["mean_attr"]),
        )
    gt = summary.get("ground_truth") or None
    gt_methods = {}
    gt_select = None
    if gt:
        gt = dict(gt)
        for m, r in (gt.get("methods") or {}).items():
            ci = r.get("auc_ci") or [None, None]
            gt_methods[m] = {
                **r,
                "auc_text": _fmt(r.get("auc")),
                "ci_text": f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
                "rho_text": _fmt(r.get("spearman"), "{:+.2f}"),
                "hit_text": _fmt(r.get("w_l_hit_rate"), "{:.0%}"),
                "chance_text": _fmt(r.get("w_l_chance"), "{:.0%}"),
            }
        if primary in gt_methods:
            gt_select = f"{gt_methods[primary]['auc_text']} {gt_methods[primary]['ci_text']}"
    vc_path = audit_dir / "view_contradictions.json"
    views = json.loads(vc_path.read_text()) if vc_path.is_file() else []
    view_names = views[0]["views"] if views else []
    all_entries = _heatmap_entries(prompts, words, primary)
    scales = method_scales(all_entries)
    entries = {e["prompt_id"]: e for e in all_entries}
    q_col = f"q_l_{att.get('dimension', 'overall')}"
    cards = []
    for r in prompts.head(max_prompts).itertuples(index=False):
        e = entries.get(r.prompt_id)
        if e is None:
            continue
        m = e["primary"] if e["primary"] in e["attr"] else next(iter(e["attr"]))
        vals = e["attr"][m]
        verd = e.get("verdict", {}).get(m) or [None] * len(vals)
        vmax = scales.get(m, 1.0)
        cards.append(
            {
                "prompt": r.prompt,
                "category": r.category or "uncategorised",
                "q": float(getattr(r, q_col, float("nan"))),
                "w_h": r.w_h or "none",
                "w_l": r.w_l or "none",
                "truncated": bool(r.truncated),
                "words": [
                    {
                        "t": w,
                        "c": attr_colour(v, vmax),
                        "verdict": vd,
                        "tip": "not scored"
                        if not np.isfinite(v)
                        else f"{v:.3g}" + (f" ({vd})" if vd else ""),
                    }
                    for w, v, vd in zip(e["words"], vals, verd, strict=True)
                ],
                "thumb": _b64(audit_dir / "thumbs" / f"{r.prompt_id}.png"),
                "heatmap": _b64(audit_dir / "heatmaps" / f"{r.prompt_id}.png"),
            }
        )
    categories = {
        (k if k not in (None, "None", "") else "uncategorised"): v
        for k, v in summary.get("categories", {}).items()
    }
    probes_cfg = att.get("probes", {}) or {}
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    # a value missing because no prompt was audited (None / NaN) reads "n/a" instead of a TypeError
    env.filters["format"] = lambda fmt, *args: (
        "n/a" if any(a is None or (isinstance(a, float) and a != a) for a in args) else fmt % args
    )
    html_text = env.from_string(_TEMPLATE).render(
        n_prompts=len(prompts),
        samples=cfg.get("samples"),
        generator=cfg.get("generator"),
        evaluator=cfg.get("evaluator"),
        primary=primary,
        primary_is_probe=primary in probes,
        grad_method=grad_method or "none",
        verdict_rows=verdict_rows,
        ci_pct=int(round(100 * float(probes_cfg.get("ci", 0.9)))),
        score_label=_PROBE_SCORE.get(primary, "score"),
        threshold=(
            (
                "chance, 1/(K+1) for a word with K alternatives"
                if probes_cfg.get("choice_threshold") is None
                else probes_cfg.get("choice_threshold")
            )
            if primary == "choice"
            else probes_cfg.get("threshold", 0.0)
        ),
        gt_select=gt_select,
        gt_methods=gt_methods,
        target=att.get("target"),
        dimension=att.get("dimension"),
        dims=dims,
        q_g=summary.get("q_g", {}),
        categories=categories,
        top_words=top_words,
        low_words=low_words,
        faith=next(iter((summary.get("faithfulness") or {}).values()), {"n_prompts": 0}),
        gt=gt,
        views=views,
        view_names=view_names,
        prompt_cards=cards,
        issues=summary.get("issues", []),
    )
    path = audit_dir / "report.html"
    path.write_text(html_text, encoding="utf-8")
    return path
