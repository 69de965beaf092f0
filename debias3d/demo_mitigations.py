"""One comparison of mitigations from one audit and one pair budget, judged on ground truth.

``debias3d demo --mitigations`` runs::

    audit (base model) → augment (strategy both, losers kept) → fine-tune SFT and DPO on the same
    pair budget → evaluate on ShapeWorld's fixed evaluation set:

    base | SFT (the paper) | DPO | refocusing alone | SFT + refocusing

Refocusing is training-free: while sampling, the cross-attention to the audit's neglected words
(the ``w_l`` each audited prompt selected) is multiplied by ``refocus_factor`` wherever those words
occur in an evaluation prompt (:class:`~debias3d.models.refocus.RefocusedGenerator`). It never sees
the evaluation's ground truth.

Every model is measured by the ShapeWorld measurer on the same prompts and seeds. The neglected
words are the bottom quartile of the BASE model's per-word fidelity on the evaluation set (the same
split as ``debias3d eval``), the rest are the other words. Each row gives the share of word uses
shown on both groups, and its change against the base and against SFT in points with a paired 95 %
bootstrap interval over the word uses (same prompt, sample and word in both models).

Outputs under ``OUT/``: ``mitigations.csv``, ``mitigations.png`` (the plot), ``mitigations.json``
and ``mitigations.html`` (table + plot), beside the usual ``audit/``, ``aug/``, ``finetune_sft/``,
``finetune_dpo/`` and ``eval/`` folders.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["MitigationSettings", "MITIGATIONS", "mitigation_table", "run_mitigations"]

#: key → row name, in the order of the table.
MITIGATIONS: dict[str, str] = {
    "base": "base (no mitigation)",
    "sft": "SFT (supervised LoRA, the paper)",
    "dpo": "DPO (preference LoRA)",
    "refocus": "refocusing alone",
    "sft_refocus": "SFT + refocusing",
}


@dataclass
class MitigationSettings:
    """Settings of ``demo --mitigations`` (the stages use the demo config's audit / augment / ...)."""

    refocus_factor: float = field(default=2.0, metadata={"help": "cross-attention factor on neglected words"})
    refocus_t_interval: tuple[float, float] = field(
        default=(0.0, 1.0), metadata={"help": "sampling times (t = 1 is noise) that are refocused"}
    )
    refocus_stages: tuple[str, ...] = field(
        default=("stage1", "stage2"), metadata={"help": "flow models that are refocused"}
    )
    dpo_steps: int | None = field(
        default=None, metadata={"help": "DPO optimizer steps (null = finetune.train.max_train_steps)"}
    )
    dpo_learning_rate: float | None = field(
        default=None, metadata={"help": "DPO learning rate (null = finetune.train.learning_rate)"}
    )

    def __post_init__(self) -> None:
        if not (self.refocus_factor > 0 and math.isfinite(self.refocus_factor)):
            raise ValueError(f"MitigationSettings.refocus_factor must be > 0, got {self.refocus_factor}")
        self.refocus_t_interval = tuple(float(x) for x in self.refocus_t_interval)  # type: ignore[assignment]
        lo, hi = self.refocus_t_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"MitigationSettings.refocus_t_interval must be 0 <= lo <= hi <= 1, got {(lo, hi)}"
            )
        self.refocus_stages = tuple(self.refocus_stages)
        if self.dpo_steps is not None and self.dpo_steps < 1:
            raise ValueError(f"MitigationSettings.dpo_steps must be >= 1, got {self.dpo_steps}")
        if self.dpo_learning_rate is not None and not self.dpo_learning_rate > 0:
            raise ValueError(
                f"MitigationSettings.dpo_learning_rate must be > 0, got {self.dpo_learning_rate}"
            )


# ------------------------------------------------------------------------------------- table
def _uses(verdicts: Any, words: set[str]) -> Any:
    """``shown`` as floats for the word uses in ``words``, keyed by (prompt_index, sample, word, #)."""
    v = verdicts[verdicts["word"].isin(words)].copy()
    v["_k"] = v.groupby(["prompt_index", "sample", "word"]).cumcount()
    return v.set_index(["prompt_index", "sample", "word", "_k"])["shown"].astype(float)


def mitigation_table(
    runs: Mapping[str, Any],
    neglected: Sequence[str],
    rest: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
) -> Any:
    """One row per model: shares shown on the neglected words and on the rest, with paired bootstrap
    intervals of the change against ``base`` and against ``sft`` (points).

    Args:
        runs: key (``base``, ``sft``, ...) → :class:`~debias3d.eval.pipeline.ModelRun`; must hold
            ``base``.
        neglected / rest: the base model's word split.

    Returns:
        A DataFrame with ``mitigation``, ``name``, ``neglected``, ``neglected_lo``/``hi``, ``rest``, ...,
        ``neglected_gain`` (points vs base) with ``_lo``/``_hi``, ``rest_change`` likewise, and
        ``neglected_vs_sft`` / ``rest_vs_sft`` likewise (NaN without an ``sft`` row).
    """
    import pandas as pd

    from debias3d.eval.stats import bootstrap_ci, bootstrap_diff_ci

    kw = {"n_boot": n_boot, "ci": ci, "seed": 0}
    groups = {"neglected": set(neglected), "rest": set(rest)}
    uses = {k: {g: _uses(r.verdicts, ws) for g, ws in groups.items()} for k, r in runs.items()}
    rows = []
    for key in runs:
        row: dict[str, Any] = {"mitigation": key, "name": MITIGATIONS.get(key, key)}
        for g in groups:
            c = bootstrap_ci(uses[key][g].to_numpy(), **kw)
            row[g], row[f"{g}_lo"], row[f"{g}_hi"], row[f"{g}_uses"] = c.mean, c.lo, c.hi, c.n
        for ref, suffix in (("base", {"neglected": "neglected_gain", "rest": "rest_change"}),
                            ("sft", {"neglected": "neglected_vs_sft", "rest": "rest_vs_sft"})):  # fmt: skip
            for g, col in suffix.items():
                if ref not in runs:
                    row[col] = row[f"{col}_lo"] = row[f"{col}_hi"] = math.nan
                    continue
                a, b = uses[ref][g].align(uses[key][g], join="inner")
                d = bootstrap_diff_ci(a.to_numpy(), b.to_numpy(), paired=True, **kw)
                row[col], row[f"{col}_lo"], row[f"{col}_hi"] = 100 * d.mean, 100 * d.lo, 100 * d.hi
        rows.append(row)
    return pd.DataFrame(rows)


def goal_met(table: Any, gain: float = 5.0, max_rest_drop: float = 2.0) -> list[str]:
    """Mitigations that beat SFT on the neglected words by ``gain`` points or more while the rest
    drop at most ``max_rest_drop`` points against the base."""
    t = table[~table["mitigation"].isin(["base", "sft"])]
    ok = t[(t["neglected_vs_sft"] >= gain) & (t["rest_change"] >= -max_rest_drop)]
    return ok["mitigation"].tolist()


def plot_table(table: Any, path: Path) -> Path:
    """Bar plot of each mitigation's neglected-word gain and rest-word change vs base, with 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = table[table["mitigation"] != "base"].reset_index(drop=True)
    x = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    for off, col, label, color in ((-0.18, "neglected_gain", "neglected words", "#2f6fb0"),
                                   (0.18, "rest_change", "the rest", "#c9822b")):  # fmt: skip
        y = t[col].to_numpy(float)
        err = np.vstack([y - t[f"{col}_lo"].to_numpy(float), t[f"{col}_hi"].to_numpy(float) - y])
        ax.bar(x + off, y, width=0.36, yerr=err, capsize=3, label=label, color=color)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [MITIGATIONS.get(m, m).split(" (")[0] for m in t["mitigation"]], fontsize=8)
    ax.set_ylabel("change vs base (points of words shown)")
    ax.set_title("Mitigations on ShapeWorld ground truth (95 % paired bootstrap)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt_ci(v: float, lo: float, hi: float, pct: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    s = 100.0 if pct else 1.0
    sign = "" if pct else "+" if v >= 0 else ""
    return f"{sign}{s * v:.1f} [{s * lo:.1f}, {s * hi:.1f}]"


def table_markdown(table: Any) -> str:
    """The table as Markdown (BENCHMARKS.md)."""
    lines = [
        "| mitigation | neglected shown % [95 % CI] | rest shown % | neglected Δ vs base (pts) | rest Δ vs base | neglected Δ vs SFT | rest Δ vs SFT |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        lines.append(
            f"| {r['name']} | {_fmt_ci(r['neglected'], r['neglected_lo'], r['neglected_hi'], True)} | "
            f"{_fmt_ci(r['rest'], r['rest_lo'], r['rest_hi'], True)} | "
            f"{_fmt_ci(r['neglected_gain'], r['neglected_gain_lo'], r['neglected_gain_hi'])} | "
            f"{_fmt_ci(r['rest_change'], r['rest_change_lo'], r['rest_change_hi'])} | "
            f"{_fmt_ci(r['neglected_vs_sft'], r['neglected_vs_sft_lo'], r['neglected_vs_sft_hi'])} | "
            f"{_fmt_ci(r['rest_vs_sft'], r['rest_vs_sft_lo'], r['rest_vs_sft_hi'])} |"
        )
    return "\n".join(lines)


def write_report(out: Path, table: Any, summary: Mapping[str, Any], plot: Path) -> Path:
    """``mitigations.html``: the question, the table, the plot, the settings (text escaped)."""
    img = base64.b64encode(plot.read_bytes()).decode("ascii")
    head = ["mitigation", "neglected shown %", "rest shown %", "neglected Δ vs base", "rest Δ vs base",
            "neglected Δ vs SFT", "rest Δ vs SFT"]  # fmt: skip
    body = []
    for r in table.to_dict("records"):
        cells = [
            r["name"],
            _fmt_ci(r["neglected"], r["neglected_lo"], r["neglected_hi"], True),
            _fmt_ci(r["rest"], r["rest_lo"], r["rest_hi"], True),
            _fmt_ci(r["neglected_gain"], r["neglected_gain_lo"], r["neglected_gain_hi"]),
            _fmt_ci(r["rest_change"], r["rest_change_lo"], r["rest_change_hi"]),
            _fmt_ci(r["neglected_vs_sft"], r["neglected_vs_sft_lo"], r["neglected_vs_sft_hi"]),
            _fmt_ci(r["rest_vs_sft"], r["rest_vs_sft_lo"], r["rest_vs_sft_hi"]),
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    goal = summary.get("goal_met") or []
    words = ", ".join(summary.get("neglected_words", []))
    refocus_words = ", ".join(summary.get("refocus_words", []))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>debias3d mitigations</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}th{{background:#f3f3f3}}</style></head><body>
<h1>Which repair helps the words this generator ignores?</h1>
<p>Each model made the same evaluation prompts with the same seeds; the ShapeWorld measurer says, for
every use of every attribute word, whether the shape shows it. Neglected words (the base model's
bottom quartile): {html.escape(words)}. Intervals: 95 % paired bootstrap over word uses.
Pair budget: {html.escape(str(summary.get("pair_budget")))} pairs for SFT and DPO;
refocusing: factor {html.escape(str(summary.get("refocus_factor")))} on the audit's neglected words
({html.escape(refocus_words)}).</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr>{"".join(body)}</table>
<p>Goal (beat SFT on the neglected words by ≥ 5 points, rest ≥ −2 points vs base):
{html.escape(", ".join(goal) if goal else "not met by any mitigation in this run")}.</p>
<img alt="change vs base per mitigation" src="data:image/png;base64,{img}">
</body></html>"""
    path = out / "mitigations.html"
    path.write_text(doc, encoding="utf-8")
    return path


# -------------------------------------------------------------------------------------- run
def _refocus_words(audit_dir: Path) -> list[str]:
    """The audit's neglected words: every prompt's selected ``w_l``."""
    import pandas as pd

    df = pd.read_parquet(audit_dir / "prompts.parquet")
    return sorted({str(w).strip() for w in df["w_l"] if isinstance(w, str) and w.strip()})


def _winner_count(pairs: Path) -> int:
    from datasets import load_from_disk

    ds = load_from_disk(str(pairs))
    return int(sum(bool(w) for w in ds["winner"])) if len(ds) else 0


def run_mitigations(
    out: str | os.PathLike,
    cfg: Any,
    *,
    evaluator: Any = None,
    ranker: Any = None,
    augment_components: Any = None,
) -> dict[str, Any]:
    """Run the comparison (see the module doc) with a :class:`~debias3d.demo.DemoConfig`.

    Returns:
        The summary (also ``OUT/mitigations.json``).
    """
    from debias3d.bias_audit.pipeline import run_audit
    from debias3d.demo import (
        _audit_prompts,
        _base_weights,
        _fresh_generator,
        _load_models,
        _replay_corpus,
        _start,
    )
    from debias3d.demo_ablations import augment_strategy, finetune_strategy, pair_count
    from debias3d.eval.pipeline import (
        evaluate_model,
        load_eval_prompts,
        load_generator,
        summarize,
    )
    from debias3d.eval.summary import write_summary_json
    from debias3d.models.refocus import RefocusConfig, RefocusedGenerator

    ms: MitigationSettings = cfg.mitigations
    out, stages = _start(cfg, out)
    ev_cfg = dataclasses.replace(cfg.eval, report=False)
    with stages("load models"):
        evaluator, ranker, te, base_gen = _load_models(ev_cfg, evaluator, ranker)
    base_weights = _base_weights(cfg)

    with stages("audit"):
        run_audit(_audit_prompts(cfg), cfg.audit, out / "audit", generator=base_gen, evaluator=evaluator)
    with stages("augment"):
        aug_cfg = dataclasses.replace(
            cfg.augment, visual=dataclasses.replace(cfg.augment.visual, keep_losers=True)
        )
        aug = augment_strategy(out / "audit", aug_cfg, "both", out / "aug", components=augment_components)
    pairs = out / "aug" / "pairs"
    n_rows = pair_count(aug)
    budget = _winner_count(pairs) if n_rows else 0
    if budget == 0:
        raise ValueError(f"augment wrote no winning pair in {pairs}; nothing to fine-tune")
    logger.info("mitigations: pair budget %d (winning pairs; %d duel rows with losers)", budget, n_rows)

    with stages("finetune"):
        corpus = _replay_corpus(cfg, out)
        sft_cfg = dataclasses.replace(cfg.finetune, generator_weights=base_weights, objective="sft")
        sft_dir = finetune_strategy(
            sft_cfg, pairs, out / "finetune_sft", budget, corpus, _fresh_generator(ev_cfg, te)
        )
        train = dataclasses.replace(
            cfg.finetune.train,
            max_train_steps=ms.dpo_steps or cfg.finetune.train.max_train_steps,
            learning_rate=ms.dpo_learning_rate or cfg.finetune.train.learning_rate,
        )
        dpo_cfg = dataclasses.replace(sft_cfg, objective="dpo", train=train)
        dpo_dir = finetune_strategy(
            dpo_cfg, pairs, out / "finetune_dpo", budget, corpus, _fresh_generator(ev_cfg, te)
        )

    words = _refocus_words(out / "audit")
    rcfg = RefocusConfig(t_interval=ms.refocus_t_interval, stages=ms.refocus_stages)
    eval_prompts = load_eval_prompts(ev_cfg)
    runs: dict[str, Any] = {}
    with stages("eval"):
        sft_gen = load_generator(ev_cfg, sft_dir, text_encoder=te)
        models = {
            "base": base_gen,
            "sft": sft_gen,
            "dpo": load_generator(ev_cfg, dpo_dir, text_encoder=te),
            "refocus": RefocusedGenerator(base_gen, words, ms.refocus_factor, rcfg),
            "sft_refocus": RefocusedGenerator(sft_gen, words, ms.refocus_factor, rcfg),
        }
        for key, gen in models.items():
            runs[key] = evaluate_model(key, gen, eval_prompts, ev_cfg, evaluator, ranker, out / "eval")
        base_summary, _ = summarize([runs["base"]], ev_cfg)
    neglected, rest = base_summary["neglected_words"], base_summary["rest_words"]
    table = mitigation_table(runs, neglected, rest, n_boot=ev_cfg.bootstrap, ci=ev_cfg.ci)
    table.to_csv(out / "mitigations.csv", index=False)
    plot = plot_table(table, out / "mitigations.png")
    stages.total()
    refocused_prompts = len(models["refocus"].targets([p.text for p in eval_prompts]))
    summary = {
        "pair_budget": budget,
        "duel_rows": n_rows,
        "finetune_steps": {"sft": cfg.finetune.train.max_train_steps, "dpo": train.max_train_steps},
        "dpo_beta": cfg.finetune.dpo.beta,
        "refocus_factor": ms.refocus_factor,
        "refocus_t_interval": list(ms.refocus_t_interval),
        "refocus_stages": list(ms.refocus_stages),
        "refocus_words": words,
        "refocused_eval_prompts": refocused_prompts,
        "eval_prompts": len(eval_prompts),
        "eval_samples": ev_cfg.samples,
        "neglected_words": neglected,
        "rest_words": rest,
        "table": table.to_dict("records"),
        "goal_met": goal_met(table),
        "timings_s": {k: round(v, 1) for k, v in stages.t.items()},
    }
    summary = write_summary_json(out / "mitigations.json", summary)
    write_report(out, table, summary, plot)
    logger.info("mitigations:\n%s", table_markdown(table))
    logger.info("mitigations finished in %.1f s; report: %s", stages.t["total"], out / "mitigations.html")
    return summary
