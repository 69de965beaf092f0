"""ShapeWorld fidelity: does a generated shape show the words of its prompt? (ground truth)

For each prompt, D samples are generated and each is read back by the ShapeWorld measurer
(:func:`debias3d.data.shapeworld.measurer.word_scores`), which decides word by word whether the shape
shows it. From these verdicts:

* ``words.csv``      — per word: fidelity = share of (prompt, sample) uses where the word is shown,
  its kind, its corpus count / frequency and its group (``frequent`` / ``rare``).
* ``categories.csv`` — per prompt category: mean sample fidelity and word-level fidelity.
* ``samples.csv``    — per sample: fidelity = share of its prompt's words it shows.
* ``verdicts.csv``   — one row per (prompt, sample, word).
* ``summary.json``   — overall, frequent-word and rare-word fidelity and the gap between them.

Frequent vs rare: a word is *rare* when its share of the training corpus prompts is below
``rare_fraction`` × the median share of the evaluated words (the corpus skew sets this, not the
metric). The corpus counts come from the generator's training record (``word_counts``) or from a
corpus passed in.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from debias3d.eval.benchmarks import NO_CATEGORY
from debias3d.models.settings import GeneratorSettings

logger = logging.getLogger(__name__)

__all__ = ["FidelityResult", "run_fidelity", "FidelityConfig", "fidelity_command"]


@dataclass
class FidelityResult:
    """Tables and headline figures of one fidelity run."""

    verdicts: pd.DataFrame
    samples: pd.DataFrame
    words: pd.DataFrame
    categories: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def write(self, out_dir: str | os.PathLike) -> Path:
        """Write ``*.csv`` + ``*.json`` tables and ``summary.json`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("verdicts", "samples", "words", "categories"):
            df: pd.DataFrame = getattr(self, name)
            df.to_csv(out / f"{name}.csv", index=False)
            if name != "verdicts":
                df.to_json(out / f"{name}.json", orient="records", indent=2)
        (out / "summary.json").write_text(json.dumps(self.summary, indent=2, default=float))
        return out


def _as_prompt_records(prompts: Sequence[Any]) -> list[tuple[str, str | None, Any]]:
    from debias3d.data.shapeworld.parser import parse

    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append((p, None, parse(p)))
        else:
            text = getattr(p, "text", None) or p.prompt
            spec = getattr(p, "spec", None) or parse(text)
            out.append((text, getattr(p, "category", None), spec))
    return out


def run_fidelity(
    generator: Any,
    prompts: Sequence[Any],
    D: int = 4,  # noqa: N803 — the paper's symbol
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    word_counts: Mapping[str, Any] | None = None,
    rare_fraction: float = 0.4,
    batch_size: int = 64,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> FidelityResult:
    """Generate D samples per prompt and score them against ShapeWorld ground truth.

    Args:
        generator: any generator with ``generate(prompts, seeds, num_samples, ...) -> list[Asset]``.
        prompts: ShapeWorld ``Prompt`` objects (text, category, spec) or prompt strings.
        D: samples per prompt.
        out_dir: where to write the tables (optional).
        seed: seed of every prompt (sample d uses seed + d).
        word_counts: ``{"n_prompts": N, "counts": {...}}`` of the training corpus; default: the
            generator's training record, if it has one.
        rare_fraction: a word is rare below this share of the median corpus frequency.
        batch_size: forwarded to ``generate`` when it accepts it.
        generate_kwargs: extra ``generate`` arguments (steps, cfg, ...).

    Returns:
        :class:`FidelityResult`.
    """
    from debias3d.data.shapeworld.measurer import word_scores

    records = _as_prompt_records(prompts)
    texts = [r[0] for r in records]
    kwargs = dict(generate_kwargs or {})
    if "batch_size" in inspect.signature(generator.generate).parameters:
        kwargs.setdefault("batch_size", batch_size)
    assets = generator.generate(texts, seeds=[seed] * len(texts), num_samples=D, **kwargs)
    if len(assets) != len(texts) * D:
        raise ValueError(f"generator returned {len(assets)} assets for {len(texts)} prompts x D={D}")

    rows, srows = [], []
    for k, asset in enumerate(assets):
        pi, d = divmod(k, D)
        text, cat, spec = records[pi]
        shape = asset.voxels if asset.voxels is not None else asset.mesh
        scores = word_scores(spec, shape)
        for s in scores:
            rows.append({"prompt_index": pi, "prompt": text, "category": cat, "sample": d, "word": s.word,
                         "kind": s.kind, "object_index": s.object_index, "shown": bool(s.shown)})  # fmt: skip
        fid = float(np.mean([s.shown for s in scores])) if scores else float("nan")
        srows.append({"prompt_index": pi, "prompt": text, "category": cat, "sample": d, "seed": asset.seed,
                      "n_words": len(scores), "fidelity": fid})  # fmt: skip
    verdicts = pd.DataFrame(rows)
    samples = pd.DataFrame(srows)

    if word_counts is None:
        record = getattr(generator, "metadata", {}).get("training_record", {})
        word_counts = record.get("corpus", {}).get("word_counts")
    words = (
        verdicts.groupby(["word", "kind"], as_index=False)
        .agg(n=("shown", "size"), n_prompts=("prompt_index", "nunique"), fidelity=("shown", "mean"))
        .sort_values("fidelity", ascending=False)
    )
    summary: dict[str, Any] = {"D": D, "seed": seed, "n_prompts": len(texts), "n_samples": len(assets),
                               "fidelity": float(samples["fidelity"].mean()),
                               "word_fidelity": float(verdicts["shown"].mean()) if len(verdicts) else float("nan")}  # fmt: skip
    if word_counts:
        n_corpus = max(1, int(word_counts.get("n_prompts", 1)))
        counts = word_counts.get("counts", {})
        words["corpus_count"] = words["word"].map(lambda w: int(counts.get(w, 0)))
        words["corpus_freq"] = words["corpus_count"] / n_corpus
        median = float(words["corpus_freq"].median())
        threshold = rare_fraction * median
        words["group"] = np.where(words["corpus_freq"] < threshold, "rare", "frequent")
        group_of = dict(zip(words["word"], words["group"], strict=True))
        verdicts["group"] = verdicts["word"].map(group_of)
        for g in ("frequent", "rare"):
            sel = verdicts[verdicts["group"] == g]
            summary[f"{g}_fidelity"] = float(sel["shown"].mean()) if len(sel) else float("nan")
            summary[f"{g}_words"] = sorted(words.loc[words["group"] == g, "word"].tolist())
        summary["gap_points"] = 100 * (summary["frequent_fidelity"] - summary["rare_fidelity"])
        summary["rare_threshold_freq"] = threshold
        summary["corpus_n_prompts"] = n_corpus
    categories = (
        samples.assign(category=samples["category"].fillna(NO_CATEGORY))
        .groupby("category", as_index=False)
        .agg(
            n_prompts=("prompt_index", "nunique"), n_samples=("sample", "size"), fidelity=("fidelity", "mean")
        )
    )
    wcat = (
        verdicts.assign(category=verdicts["category"].fillna(NO_CATEGORY))
        .groupby("category", as_index=False)
        .agg(word_fidelity=("shown", "mean"))
    )
    categories = categories.merge(wcat, on="category", how="left")
    summary["categories"] = dict(
        zip(categories["category"], categories["fidelity"].astype(float), strict=True)
    )
    result = FidelityResult(verdicts, samples, words.reset_index(drop=True), categories, summary)
    if out_dir is not None:
        result.write(out_dir)
    return result


@dataclass
class FidelityConfig(GeneratorSettings):
    """``debias3d world fidelity``: the fixed ShapeWorld evaluation set, D samples per prompt."""

    adapter: str | None = field(default=None, metadata={"help": "a LoRA adapter folder to apply"})
    samples: int = field(default=4, metadata={"help": "D, samples per prompt"})
    per_category: int = field(default=8, metadata={"help": "evaluation prompts per category"})
    seed: int = field(
        default=0,
        metadata={
            "help": "base seed of the samples (sample d uses seed + d) and of the evaluation prompt set"
        },
    )

    def __post_init__(self) -> None:
        for name in ("samples", "per_category"):
            if getattr(self, name) < 1:
                raise ValueError(f"FidelityConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"FidelityConfig.seed must be >= 0, got {self.seed}")


def fidelity_command(cfg: FidelityConfig, out: str | os.PathLike) -> FidelityResult:
    """``debias3d world fidelity``: build the generator (with its adapter), measure, write ``out``."""
    from debias3d.data.shapeworld.grammar import evaluation_prompts
    from debias3d.models.generator import GeneratorSpec, build_generator

    gen = build_generator(GeneratorSpec(cfg.generator, cfg.generator_weights), adapter=cfg.adapter)
    prompts = evaluation_prompts(cfg.per_category, seed=cfg.seed)
    res = run_fidelity(gen, prompts, D=cfg.samples, out_dir=out, seed=cfg.seed)
    s = res.summary
    logger.info(
        "fidelity %.3f | frequent %.3f | rare %.3f | gap %.1f points (%d prompts x D=%d) -> %s",
        s["fidelity"], s.get("frequent_fidelity", float("nan")), s.get("rare_fidelity", float("nan")),
        s.get("gap_points", float("nan")), s["n_prompts"], cfg.samples, out,
    )  # fmt: skip
    return res
