"""``report.html`` of an augmentation run: one self-contained page (inline CSS, base64 PNG thumbnails).

Jinja2 renders it with autoescape ON, so prompt text (LLM output!) can never inject markup.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.data.assets import load_mesh
from debias3d.runs import atomic_write_text

__all__ = ["write_report", "render_report", "TEMPLATE"]

logger = logging.getLogger(__name__)

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>debias3d augmentation report</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.win{color:#1a7f37}.lose{color:#b42318}img{display:block;border:1px solid #ddd}
.muted{color:#777}.pair{display:flex;gap:6px}
</style></head><body>
<h1>Augmentation report</h1>
{% if s.outcome %}<p><b>{{ s.outcome.line }}</b></p>{% endif %}
<p>{{ s.sources }} source prompts, C = {{ s.contexts_per_source }} contexts each, strategy <b>{{ s.strategy }}</b>.</p>
<h2>Summary</h2>
<table>
<tr><th>candidates</th><td>{{ s.filter.candidates }}</td></tr>
<tr><th>accepted</th><td>{{ s.filter.accepted }}</td></tr>
<tr><th>acceptance rate</th><td>{{ "%.1f"|format(100 * s.filter.acceptance_rate) }} %</td></tr>
<tr><th>diversity (mean pairwise 1 - cos, per source)</th><td>{{ fmt(s.filter.diversity_mean) }}</td></tr>
<tr><th>rejected rows by stage and reason</th><td>{% for k, v in (s.get("rejected") or {}).get("by_stage_reason", {})|dictsort %}{{ k }}: {{ v }}<br>{% else %}none{% endfor %}</td></tr>
<tr><th>visual items / failed</th><td>{{ s.visual["items"] }} / {{ s.visual.failed }}</td></tr>
<tr><th>x_nc wins / losses (win rate)</th><td>{{ s.visual.wins }} / {{ s.visual.losses }} ({{ "%.1f"|format(100 * s.visual.win_rate) }} %)</td></tr>
<tr><th>pairs written</th><td>{{ s.pairs.rows }} ({{ s.pairs.new_prompt }} {x_nc, t_nc}, {{ s.pairs.source_prompt }} {x_nc, t_n})</td></tr>
<tr><th>LLM</th><td>{{ s.llm.backend }}: {{ s.llm.requests }} requests, {{ s.llm.prompt_tokens }} + {{ s.llm.completion_tokens }} tokens, cost {{ "%.4f"|format(s.llm.cost) }}, {{ s.llm.items_failed }} failed items</td></tr>
</table>
<h2>Accepted examples</h2>
<table><tr><th>x_n (original)</th><th>x_nc (new)</th><th>new prompt t_nc</th><th>source prompt t_n</th><th>kept words</th><th>ranker new / orig</th></tr>
{% for e in accepted %}<tr><td>{% if e.thumb_orig %}<img src="data:image/png;base64,{{ e.thumb_orig }}" alt="x_n">{% endif %}</td>
<td>{% if e.thumb_new %}<img src="data:image/png;base64,{{ e.thumb_new }}" alt="x_nc">{% endif %}</td>
<td>{{ e.prompt }}</td><td>{{ e.source_prompt }}</td><td>{{ e.keep }}</td>
<td class="{{ 'win' if e.winner else 'lose' }}">{{ fmt(e.ranker_score_new) }} / {{ fmt(e.ranker_score_orig) }}</td></tr>
{% else %}<tr><td colspan="6" class="muted">no accepted pairs</td></tr>{% endfor %}
</table>
<h2>Rejected examples</h2>
<table><tr><th>thumbnail</th><th>prompt</th><th>source prompt</th><th>stage</th><th>reason</th><th>detail</th></tr>
{% for r in rejected %}<tr><td>{% if r.thumb %}<img src="data:image/png;base64,{{ r.thumb }}" alt="x_nc">{% endif %}</td>
<td>{{ r.prompt if r.prompt is not none else "" }}</td><td>{{ r.source_prompt }}</td><td>{{ r.stage }}</td><td>{{ r.reason }}</td><td>{{ r.detail }}</td></tr>
{% else %}<tr><td colspan="6" class="muted">nothing rejected</td></tr>{% endfor %}
</table>
</body></html>
"""


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_report(
    summary: dict[str, Any], accepted: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> str:
    """The HTML text (autoescaped) for a summary and example rows."""
    from jinja2 import Environment

    env = Environment(autoescape=True)
    return env.from_string(TEMPLATE).render(s=summary, accepted=accepted, rejected=rejected, fmt=_fmt)


class _Thumbs:
    """PNG thumbnails (base64) of meshes from one 3/4 view; empty strings when rendering fails."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._renderer: Any = None
        self.failed = False

    def __call__(self, path: Path) -> str:
        if self.failed or not path.is_file():
            return ""
        try:
            from PIL import Image

            from debias3d.render import Camera, Renderer

            if self._renderer is None:
                self._renderer = Renderer(image_size=self.size)
            img = self._renderer.render(load_mesh(path), [Camera.orbit(25.0, 45.0, 2.2, math.pi / 3)])[0]
            buf = io.BytesIO()
            Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="PNG")
            return base64.b64encode(buf.getvalue()).decode("ascii")
        except (ImportError, RuntimeError, ValueError, OSError) as err:
            logger.warning("report: thumbnails disabled (%s)", " ".join(str(err).split())[:120])
            self.failed = True
            return ""

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()


def write_report(
    out_dir: str | Path, summary: dict[str, Any], cfg: Any, audit_dir: str | Path | None = None
) -> Path:
    """Write ``out_dir/report.html`` from ``pairs/``, ``rejected.jsonl`` and ``summary``."""
    from datasets import load_from_disk

    out = Path(out_dir)
    n = cfg.report_examples
    thumbs = _Thumbs(cfg.thumbnail_size)
    audit = Path(audit_dir) if audit_dir else None
    accepted: list[dict[str, Any]] = []
    try:
        if (out / "pairs").is_dir():
            ds = load_from_disk(str(out / "pairs"))
            cols = [c for c in ds.column_names if c not in ("occupancy", "colors")]
            for row in ds.select_columns(cols):
                if row["pair_type"] != "new_prompt" and any(a["mesh"] == row["mesh"] for a in accepted):
                    continue
                if len(accepted) >= n:
                    break
                prov = json.loads(row["provenance"])
                orig = audit / prov["original"]["mesh"] if audit else None
                accepted.append(
                    {
                        **row,
                        "keep": ", ".join(prov.get("keep_words", [])),
                        "thumb_new": thumbs(out / row["mesh"]),
                        "thumb_orig": thumbs(orig) if orig is not None else "",
                    }
                )
        rejected: list[dict[str, Any]] = []
        if (out / "rejected.jsonl").is_file():
            with open(out / "rejected.jsonl", encoding="utf-8") as f:
                for line in f:
                    if len(rejected) >= n:
                        break
                    r = json.loads(line)
                    r["thumb"] = thumbs(out / r["mesh"]) if r.get("mesh") else ""
                    rejected.append(r)
        html = render_report(summary, accepted, rejected)
    finally:
        thumbs.close()
    return atomic_write_text(out / "report.html", html)
