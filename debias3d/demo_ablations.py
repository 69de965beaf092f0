"""Ablations (the paper's table: w/o grad guide, only w_l, only w_h, full; and which method guides).

``grad_guided`` is the full strategy with w_h / w_l picked by the paper's gradient instead of
``attribution.select`` (the word probes by default), from the same audit and with the same pair
budget, so the table shows whether the choice of attribution method changes what the loop repairs.

One loop per augmentation strategy (:data:`debias3d.augment.semantic` strategies), with the same
budget for every strategy: the same audit, the same number of augmented pairs (the smallest count
any strategy produced, ``data.max_pairs``) and the same fine-tuning steps. Each fine-tuned model is
measured on the same evaluation prompts and seeds as the base model, and the neglected words are the
base model's, so the rows of the table are directly comparable.

The paper reports full > only w_h > base > only w_l > w/o grad guide; :func:`ablation_table`
reports the ordering this run finds, whatever it is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from debias3d.eval.summary import shown_share

logger = logging.getLogger(__name__)

__all__ = [
    "STRATEGY_NAMES",
    "PAPER_ORDER",
    "augment_strategy",
    "finetune_strategy",
    "ablation_table",
    "ordering",
    "derive_audit",
    "GUIDED_BY",
]

#: Augmentation strategy → the paper's row name.
STRATEGY_NAMES: dict[str, str] = {
    "both": "full (w_h + w_l, chosen by attribution.select)",
    "grad_guided": "full, w_h + w_l chosen by the paper's gradient",
    "only_wh": "only w_h",
    "only_wl": "only w_l",
    "random_words": "w/o grad guide (random words)",
}
#: The paper's ordering on its benchmark, best first ("base" is the un-tuned model).
PAPER_ORDER: tuple[str, ...] = ("both", "only_wh", "base", "only_wl", "random_words")


#: Ablation strategies that augment with ``both`` on another method's w_h / w_l.
GUIDED_BY: dict[str, str] = {"grad_guided": "grad"}


def derive_audit(audit_dir: str | os.PathLike, method: str, out_dir: str | os.PathLike) -> Path:
    """A copy of an audit folder whose w_h / w_l are ``method``'s picks (``w_h_<method>`` columns).

    The augmentation reads ``prompts.parquet`` (w_h, w_l) and the original meshes, so this is what
    it takes to run the same loop guided by another attribution method with the same budget.

    Raises:
        ValueError: the audit did not run ``method``.
    """
    import shutil

    src, dst = Path(audit_dir), Path(out_dir)
    prompts = pd.read_parquet(src / "prompts.parquet")
    cols = [f"w_h_{method}", f"w_l_{method}"]
    if any(c not in prompts for c in cols):
        raise ValueError(f"{src}: the audit did not run attribution method {method!r} (no {cols[0]} column)")
    dst.mkdir(parents=True, exist_ok=True)
    prompts = prompts.assign(w_h=prompts[cols[0]], w_l=prompts[cols[1]])
    prompts.to_parquet(dst / "prompts.parquet", index=False)
    for name in ("samples.parquet", "words.parquet", "summary.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    if (src / "meshes").is_dir() and not (dst / "meshes").exists():
        shutil.copytree(src / "meshes", dst / "meshes")
    return dst


def augment_strategy(audit_dir: str | os.PathLike, augment_cfg: Any, strategy: str, out_dir: str | os.PathLike,
                     components: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run the augmentation of ``audit_dir`` with ``strategy`` into ``out_dir`` (resumable).

    Returns:
        The augment summary (``summary["pairs"]["rows"]`` is the pair count).
    """
    from debias3d.augment.pipeline import run_augment

    if strategy in GUIDED_BY:
        audit_dir = derive_audit(audit_dir, GUIDED_BY[strategy], Path(out_dir).parent / f"audit_{strategy}")
        strategy = "both"
    cfg = dataclasses.replace(augment_cfg, strategy=strategy)
    return run_augment(audit_dir, cfg, out_dir, components=components)


def pair_count(summary: Mapping[str, Any]) -> int:
    """Number of winning pairs an augment summary reports."""
    return int((summary.get("pairs") or {}).get("rows", 0) or 0)


def finetune_strategy(
    finetune_cfg: Any,
    pairs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_pairs: int | None = None,
    corpus: str | os.PathLike | None = None,
    generator: Any = None,
) -> Path:
    """Fine-tune on ``pairs_dir`` with the shared budget (``max_pairs``, the config's steps).

    Args:
        finetune_cfg: the :class:`~debias3d.finetune.config.FinetuneConfig` shared by all strategies.
        pairs_dir: the strategy's ``aug/pairs``.
        out_dir: adapter folder.
        max_pairs: use at most this many pairs (the same for every strategy).
        corpus: replay corpus folder (None: the config's).
        generator: a freshly loaded base generator (the trainer adds LoRA to it in place).

    Returns:
        ``out_dir``.
    """
    from debias3d.finetune.trainer import finetune

    data = dataclasses.replace(
        finetune_cfg.data,
        pairs=str(pairs_dir),
        max_pairs=max_pairs if max_pairs is not None else finetune_cfg.data.max_pairs,
        corpus=str(corpus) if corpus is not None else finetune_cfg.data.corpus,
    )
    cfg = dataclasses.replace(finetune_cfg, data=data)
    finetune(cfg, out_dir, generator=generator)
    return Path(out_dir)


def ablation_table(
    base: Any, runs: Mapping[str, Any], neglected: Sequence[str], rest: Sequence[str],
    pairs: Mapping[str, int] | None = None, steps: int | None = None,
) -> pd.DataFrame:  # fmt: skip
    """One row per model (base + each strategy), in the order found (best neglected fidelity first).

    Args:
        base: the base :class:`~debias3d.eval.pipeline.ModelRun`.
        runs: strategy → fine-tuned :class:`~debias3d.eval.pipeline.ModelRun`.
        neglected / rest: the base model's word split.
        pairs: strategy → pairs used in fine-tuning.
        steps: fine-tuning steps (same for all).

    Returns:
        Columns ``strategy``, ``name``, ``pairs``, ``steps``, ``neglected``, ``rest``, ``fidelity``,
        ``evaluator_overall``, ``neglected_gain_points``, ``rest_change_points``, ``rank``.
    """
    rows = []
    b_neg, b_rest = shown_share(base.verdicts, neglected), shown_share(base.verdicts, rest)
    for key, run in [("base", base), *runs.items()]:
        neg, rst = shown_share(run.verdicts, neglected), shown_share(run.verdicts, rest)
        rows.append({
            "strategy": key,
            "name": "base (no fine-tuning)" if key == "base" else STRATEGY_NAMES.get(key, key),
            "pairs": 0 if key == "base" else (pairs or {}).get(key),
            "steps": 0 if key == "base" else steps,
            "neglected": neg,
            "rest": rst,
            "fidelity": float(run.samples["fidelity"].mean()),
            "evaluator_overall": float(run.samples["score_overall"].mean()) if "score_overall" in run.samples else math.nan,
            "neglected_gain_points": 100 * (neg - b_neg),
            "rest_change_points": 100 * (rst - b_rest),
        })  # fmt: skip
    t = (
        pd.DataFrame(rows)
        .sort_values("neglected", ascending=False, na_position="last")
        .reset_index(drop=True)
    )
    t["rank"] = range(1, len(t) + 1)
    return t


def ordering(table: pd.DataFrame) -> str:
    """The ordering found, e.g. ``both > only_wh > base > only_wl > random_words``."""
    return " > ".join(table.sort_values("rank")["strategy"].tolist())
