"""``run_eval``: base against fine-tuned on one prompt set, same prompts and seeds for both.

For every model (``base``, and ``finetuned`` when an adapter is given) the D samples of each prompt
are generated once and then read four ways:

1. the evaluator's 4 dimensions (MATE-3D-style table, :mod:`debias3d.eval.benchmarks`);
2. the ranker's T3Bench icosphere quality on the first ``t3bench_samples`` samples (T3Bench-style table);
3. ShapeWorld ground truth, word by word (:func:`debias3d.eval.fidelity.run_fidelity`), with the
   words split into *neglected* (bottom quartile of BASE fidelity) and *the rest*
   (:func:`debias3d.eval.stats.neglected_split`);
4. diversity: mean pairwise Chamfer distance between a prompt's samples (:mod:`debias3d.eval.diversity`).

Layout of ``OUT/`` (the eval folder, with per-model detail)::

    summary.json              headline numbers, targets (met or not), word split, config
    timings.json              wall time per stage (kept out of summary.json so reruns compare equal)
    tables/mate3d.csv         category x dimension: per-model mean, 95% CI, paired delta + CI
    tables/t3bench.csv        single / surroundings / multi x {quality, alignment}
    tables/fidelity_words.csv word: kind, uses, base, finetuned, delta, neglected flag, corpus freq
    tables/fidelity_categories.csv  category: per-sample fidelity per model + paired delta
    tables/diversity.csv      category: mean pairwise Chamfer per model
    tables/samples.csv        one row per (model, prompt, sample): scores, fidelity, T3Bench quality
    <model>/fidelity/         fidelity.py's tables (verdicts, words, categories, samples, summary)
    <model>/samples.parquet, <model>/diversity.parquet   what a later run can reuse (``base_run``)
    meshes/<model>/*.glb      the D samples of the first ``save_meshes`` prompts
    report.html               self-contained before/after report
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from debias3d.data.assets import save_mesh
from debias3d.eval.config import EvalConfig, EvalTargets
from debias3d.runs import (
    RunFingerprint,
    RunLock,
    Timer,
    atomic_write_json,
    fingerprint,
    read_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EvalPrompt",
    "ModelRun",
    "load_eval_prompts",
    "build_scorers",
    "load_generator",
    "evaluate_model",
    "summarize",
    "run_eval",
    "eval_command",
    "TARGETS",
]

#: The default acceptance targets (``EvalConfig.targets``; reported, never tuned for).
TARGETS: dict[str, float] = dataclasses.asdict(EvalTargets())


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: ``text``, ``category``, ShapeWorld ``spec`` (None when it does not parse)."""

    index: int
    text: str
    category: str
    spec: Any = None

    @property
    def id(self) -> str:
        from debias3d.data.prompts import prompt_id

        return prompt_id(self.text)


_Timer = Timer  # one timer class for every stage (debias3d.runs)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def load_eval_prompts(cfg: EvalConfig) -> list[EvalPrompt]:
    """The evaluation prompts: a prompt file, or ShapeWorld's fixed evaluation set.

    ShapeWorld's set (:func:`~debias3d.data.shapeworld.grammar.evaluation_prompts`) samples
    ``per_category`` prompts per category with uniform word weights and tops up every colour, size,
    modifier and action word to 3 uses, so rare words are measured even though the corpus skips them.
    """
    from debias3d.data.shapeworld.parser import parse

    out: list[EvalPrompt] = []
    if cfg.prompts:
        from debias3d.data.prompts import load_prompts
        from debias3d.eval.benchmarks import NO_CATEGORY

        for i, p in enumerate(load_prompts(cfg.prompts, categories=cfg.categories)):
            try:
                spec = parse(p.text)
            except ValueError:
                spec = None
            out.append(EvalPrompt(i, p.text, p.category or NO_CATEGORY, spec))
    else:
        from debias3d.data.shapeworld.grammar import evaluation_prompts

        for i, p in enumerate(evaluation_prompts(cfg.per_category, seed=cfg.prompt_seed)):
            out.append(EvalPrompt(i, p.text, p.category, p.spec))
    if cfg.max_prompts:
        out = out[: cfg.max_prompts]
    if not out:
        raise ValueError("no evaluation prompts")
    return out


def build_scorers(
    cfg: EvalConfig, text_encoder: Any = None, evaluator: Any = None, ranker: Any = None
) -> tuple[Any, Any]:
    """Evaluator and (when ``cfg.t3bench``) ranker from the registry, on ``cfg.device``; those given
    are kept as they are. The ranker's cheap weight check runs before either model is loaded."""
    from debias3d.registry import find

    if ranker is None and cfg.t3bench:
        check = getattr(find("ranker", cfg.ranker), "check", None)
        if check is not None:
            check(cfg.ranker_weights)  # one line naming ranker_weights, before any model loads
    if evaluator is None:
        ev_cls = find("evaluator", cfg.evaluator)
        kwargs: dict[str, Any] = {"device": cfg.device}
        if text_encoder is not None and cfg.evaluator == "shapeworld-hyperscore":
            kwargs["text_encoder"] = text_encoder
        evaluator = ev_cls.from_pretrained(cfg.evaluator_weights, **kwargs).eval()
    if ranker is None and cfg.t3bench:
        from debias3d.augment.config import VisualConfig
        from debias3d.augment.visual import build_judge

        # build_judge knows how each ranker backend takes its weights; reuse it, keep the ranker.
        vc = VisualConfig(ranker=cfg.ranker, ranker_weights=cfg.ranker_weights or "", ranking=cfg.ranking)
        ranker = build_judge(vc, device=cfg.device).ranker
    return evaluator, ranker


def load_generator(
    cfg: EvalConfig, adapter: str | os.PathLike | None = None, text_encoder: Any = None
) -> Any:
    """The base generator (``cfg.generator`` / ``cfg.generator_weights``), with ``adapter`` applied (merged).

    When ``cfg.generator_weights`` is unset and the adapter folder records its base weights, those
    are used, so an adapter is always measured on the model it was trained from.
    """
    from debias3d.models.generator import GeneratorSpec, build_generator, read_adapter_info

    weights = cfg.generator_weights
    if adapter is not None and weights is None:
        weights = read_adapter_info(adapter).get("generator_weights") or None
    spec = GeneratorSpec(cfg.generator, weights, cfg.device)
    return build_generator(spec, text_encoder=text_encoder, adapter=adapter)


def check_adapter(adapter: str | os.PathLike) -> Path:
    """Cheap, certain checks of an adapter folder, run before any model is evaluated.

    Raises:
        FileNotFoundError: not an adapter folder.
        ValueError: a malformed ``adapter_config.json`` or a truncated ``adapter_model.safetensors``
            (one line naming the file).
    """
    from debias3d.models.generator import check_adapter_dir
    from debias3d.models.persistence import load_safetensors

    d = check_adapter_dir(adapter)
    conf = read_json(d / "adapter_config.json")
    if not isinstance(conf, dict) or "r" not in conf or "target_modules" not in conf:
        raise ValueError(f"{d / 'adapter_config.json'}: not a LoRA adapter config (no r / target_modules)")
    if not load_safetensors(d / "adapter_model.safetensors"):
        raise ValueError(f"{d / 'adapter_model.safetensors'}: holds no tensors")
    return d


# ------------------------------------------------------------------------------------------------
# One model
# ------------------------------------------------------------------------------------------------
@dataclass
class ModelRun:
    """Everything measured on one model.

    Attributes:
        name: ``base``, ``finetuned`` or an ablation name.
        samples: one row per (prompt, sample): ``prompt_index``, ``prompt_id``, ``prompt``,
            ``category``, ``t3_group``, ``sample``, ``seed``, ``fidelity``, ``score_<dim>``,
            ``valid``, ``t3_quality`` (NaN when not rendered), ``mesh`` (relative path or ""),
            ``score_clamped`` (how many of the sample's scores were clamped to ``score_range``).
        verdicts: one row per (prompt, sample, word): ``prompt_index``, ``sample``, ``word``,
            ``kind``, ``shown`` (ShapeWorld ground truth; empty without parseable prompts).
        words: fidelity.py's per-word table (``word``, ``kind``, ``n``, ``fidelity``, corpus columns).
        diversity: one row per prompt: ``prompt_index``, ``category``, ``diversity``.
        fidelity_summary: fidelity.py's ``summary.json``.
        score_range: the evaluator's documented score range (``score_<dim>`` are clamped to it);
            None when the evaluator declares none.
    """

    name: str
    samples: pd.DataFrame
    verdicts: pd.DataFrame
    words: pd.DataFrame
    diversity: pd.DataFrame
    fidelity_summary: dict[str, Any] = field(default_factory=dict)
    score_range: tuple[float, float] | None = None

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the run under ``out_dir`` (reloadable with :meth:`load`)."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        self.samples.to_parquet(d / "samples.parquet", index=False)
        self.verdicts.to_parquet(d / "verdicts.parquet", index=False)
        self.words.to_parquet(d / "words.parquet", index=False)
        self.diversity.to_parquet(d / "diversity.parquet", index=False)
        meta = json.loads(
            json.dumps(
                {
                    "name": self.name,
                    "fidelity_summary": self.fidelity_summary,
                    "score_range": self.score_range,
                },
                default=float,
            )
        )
        atomic_write_json(d / "run.json", meta)
        return d

    @classmethod
    def load(cls, d: str | os.PathLike) -> ModelRun:
        """Read a run written by :meth:`save`."""
        d = Path(d)
        meta = read_json(d / "run.json")
        return cls(
            meta["name"],
            pd.read_parquet(d / "samples.parquet"),
            pd.read_parquet(d / "verdicts.parquet"),
            pd.read_parquet(d / "words.parquet"),
            pd.read_parquet(d / "diversity.parquet"),
            meta.get("fidelity_summary", {}),
            tuple(meta["score_range"]) if meta.get("score_range") else None,
        )


def _score_range(evaluator: Any) -> tuple[float, float] | None:
    r = getattr(evaluator, "score_range", None)
    return (float(r[0]), float(r[1])) if r is not None else None


class _Replay:
    """Generator shim that hands fidelity.py the assets already generated (no second generation)."""

    def __init__(self, assets: list[Any], metadata: dict[str, Any]) -> None:
        self.assets = assets
        self.metadata = metadata

    def generate(
        self, prompts: Sequence[str], seeds: Any = None, num_samples: int = 1, **_: Any
    ) -> list[Any]:
        if len(self.assets) != len(prompts) * num_samples:
            raise ValueError("replay: prompts differ from the generated ones")
        return self.assets


def _t3bench_scores(
    assets: list[Any], prompts: list[str], ranker: Any, cfg: EvalConfig, show: bool
) -> np.ndarray:
    from debias3d.models.ranker.t3bench import T3BenchQuality
    from debias3d.progress import tqdm
    from debias3d.render.renderer import RenderError

    q = T3BenchQuality(ranker, cfg.ranking)
    out = np.full(len(assets), np.nan)
    for k in tqdm(range(len(assets)), desc="t3bench", unit="mesh", disable=not show, leave=False):
        if assets[k] is None:
            continue
        try:
            out[k] = q(assets[k], prompts[k]).score
        except RenderError as exc:  # an empty or degenerate sample scores NaN, the run goes on
            logger.debug("t3bench: sample %d not rendered: %s", k, exc)
    return out


def evaluate_model(
    name: str,
    generator: Any,
    prompts: Sequence[EvalPrompt],
    cfg: EvalConfig,
    evaluator: Any,
    ranker: Any = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    timer: _Timer | None = None,
) -> ModelRun:
    """Generate D samples per prompt with ``generator`` and measure them (see the module doc).

    Args:
        name: the model's name in tables (``base`` / ``finetuned`` / ``only_wh`` ...).
        generator: any generator with ``generate(prompts, seeds, num_samples, ...)``.
        prompts: the evaluation prompts.
        cfg: evaluation settings (D, seeds, bootstrap, rig).
        evaluator: a HyperScore-style evaluator (``evaluate(assets, prompts, batch_size)``).
        ranker: a ranker for the T3Bench quality (None: quality is NaN).
        out_dir: the eval folder; ``<out_dir>/<name>/`` and ``<out_dir>/meshes/<name>/`` are written.
        progress: show progress bars.

    Returns:
        :class:`ModelRun`.
    """
    from debias3d.eval.benchmarks import t3bench_group
    from debias3d.eval.diversity import prompt_diversity
    from debias3d.eval.fidelity import run_fidelity
    from debias3d.progress import tqdm

    timer = timer or _Timer()
    D = cfg.samples  # noqa: N806 — the paper's symbol
    texts = [p.text for p in prompts]
    kwargs: dict[str, Any] = {"num_samples": D, "batch_size": cfg.generate_batch_size}
    if cfg.steps is not None:
        kwargs["steps"] = cfg.steps
    logger.info("eval[%s]: generating %d prompts x D=%d", name, len(texts), D)
    with timer(f"{name}.generate"):
        assets: list[Any] = []
        chunk = max(1, cfg.generate_batch_size // D)
        for s in tqdm(
            range(0, len(texts), chunk), desc=f"generate[{name}]", unit="batch", disable=not progress
        ):
            part = texts[s : s + chunk]
            assets += generator.generate(part, seeds=[cfg.seed] * len(part), **kwargs)
    if len(assets) != len(texts) * D:
        raise ValueError(f"{name}: generator returned {len(assets)} assets for {len(texts)} prompts x D={D}")

    rows = []
    for k in range(len(assets)):
        pi, d = divmod(k, D)
        p = prompts[pi]
        rows.append({"model": name, "prompt_index": p.index, "prompt_id": p.id, "prompt": p.text,
                     "category": p.category, "t3_group": t3bench_group(p.text, p.spec), "sample": d,
                     "seed": cfg.seed + d, "mesh": ""})  # fmt: skip
    samples = pd.DataFrame(rows)

    with timer(f"{name}.evaluator"):
        dims = list(evaluator.dimensions)
        scores, valid = [], []
        bs = cfg.evaluator_batch_size
        for s in tqdm(
            range(0, len(assets), bs), desc=f"evaluator[{name}]", unit="batch", disable=not progress
        ):
            res = evaluator.evaluate(
                assets[s : s + bs], [a.prompt for a in assets[s : s + bs]], batch_size=bs
            )
            scores.append(res.scores.cpu().numpy())
            valid.append(res.valid.cpu().numpy())
        sc = np.concatenate(scores) if scores else np.zeros((0, len(dims)))
        score_range = getattr(evaluator, "score_range", None)
        if score_range is not None:
            # The head is unbounded; a score means what its label says only on the documented range.
            lo, hi = (float(v) for v in score_range)
            clipped = np.clip(sc, lo, hi)
            samples["score_clamped"] = (clipped != sc).sum(axis=1).astype(int)
            sc = clipped
        for j, dim in enumerate(dims):
            samples[f"score_{dim}"] = sc[:, j].astype(float)
        samples["valid"] = np.concatenate(valid).astype(bool) if valid else np.zeros(0, bool)

    samples["t3_quality"] = np.nan
    if ranker is not None and cfg.t3bench:
        with timer(f"{name}.t3bench"):
            pick = [k for k in range(len(assets)) if k % D < cfg.t3bench_samples]
            q = _t3bench_scores(
                [assets[k] for k in pick], [texts[k // D] for k in pick], ranker, cfg, progress
            )
            samples.loc[pick, "t3_quality"] = q

    # ShapeWorld ground truth on the prompts the parser can read.
    with timer(f"{name}.fidelity"):
        gt = [i for i, p in enumerate(prompts) if p.spec is not None]
        samples["fidelity"] = np.nan
        verdicts = pd.DataFrame(columns=["prompt_index", "sample", "word", "kind", "shown"])
        words = pd.DataFrame(columns=["word", "kind", "n", "fidelity"])
        fsum: dict[str, Any] = {}
        if gt:
            from debias3d.data.shapeworld.grammar import Prompt as SWPrompt

            sub_assets = [assets[i * D + d] for i in gt for d in range(D)]
            recs = [SWPrompt(prompts[i].text, prompts[i].category, prompts[i].spec) for i in gt]
            meta = dict(getattr(generator, "metadata", {}) or {})
            fdir = Path(out_dir) / name / "fidelity" if out_dir is not None else None
            fres = run_fidelity(_Replay(sub_assets, meta), recs, D=D, out_dir=fdir, seed=cfg.seed,
                                rare_fraction=cfg.rare_fraction)  # fmt: skip
            back = np.asarray([prompts[i].index for i in gt])
            verdicts = fres.verdicts.copy()
            verdicts["prompt_index"] = back[verdicts["prompt_index"].to_numpy()]
            fs = fres.samples.copy()
            fs["prompt_index"] = back[fs["prompt_index"].to_numpy()]
            fid = fs.set_index(["prompt_index", "sample"])["fidelity"]
            samples["fidelity"] = [
                float(fid.get((pi, d), np.nan))
                for pi, d in zip(samples["prompt_index"], samples["sample"], strict=True)
            ]
            words, fsum = fres.words, fres.summary
        elif prompts:
            logger.warning("eval[%s]: no prompt parses as ShapeWorld; ground-truth fidelity skipped", name)

    div_rows = []
    if cfg.diversity:
        with timer(f"{name}.diversity"):
            for i, p in enumerate(
                tqdm(prompts, desc=f"diversity[{name}]", unit="prompt", disable=not progress)
            ):
                div = prompt_diversity(assets[i * D : (i + 1) * D], cfg.diversity_points, seed=cfg.seed)
                div_rows.append({"prompt_index": p.index, "category": p.category, "diversity": div})
    diversity = pd.DataFrame(div_rows, columns=["prompt_index", "category", "diversity"])

    if out_dir is not None and cfg.save_meshes:
        mdir = Path(out_dir) / "meshes" / name
        mdir.mkdir(parents=True, exist_ok=True)
        for i, p in enumerate(prompts[: cfg.save_meshes]):
            for d in range(D):
                a = assets[i * D + d]
                if a is None or len(getattr(a.mesh, "faces", ())) == 0:
                    continue
                rel = f"meshes/{name}/{p.id}_{d}.glb"
                save_mesh(a.mesh, Path(out_dir) / rel, "glb")
                samples.loc[(samples["prompt_index"] == p.index) & (samples["sample"] == d), "mesh"] = rel

    run = ModelRun(name, samples, verdicts, words, diversity, fsum, score_range=_score_range(evaluator))
    if out_dir is not None:
        run.save(Path(out_dir) / name)
    return run


# ------------------------------------------------------------------------------------------------
# Before / after
# ------------------------------------------------------------------------------------------------
def _word_fidelity(verdicts: pd.DataFrame) -> pd.DataFrame:
    if verdicts.empty:
        return pd.DataFrame(columns=["word", "kind", "n", "fidelity"])
    return (
        verdicts.groupby(["word", "kind"], as_index=False)
        .agg(n=("shown", "size"), fidelity=("shown", "mean"))
        .sort_values("word")
        .reset_index(drop=True)
    )


def _share(verdicts: pd.DataFrame, words: Sequence[str]) -> float:
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
            "neglected": _share(r.verdicts, neglected),
            "rest": _share(r.verdicts, rest),
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


def write_outputs(
    out_dir: str | os.PathLike, summary: dict[str, Any], tables: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    """Write ``summary.json`` (NaN → null) and ``tables/*.csv``; returns the JSON-safe summary."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.to_csv(out / "tables" / f"{name}.csv", index=False)
    clean = _jsonable(summary)
    atomic_write_json(out / "summary.json", clean)
    return clean


# Settings that change no model run (summary statistics, output extras, speed).
_NOT_IN_RUN = ("report", "num_threads", "device", "bootstrap", "ci", "neglected_quantile", "min_word_uses",
               "rare_fraction", "save_meshes", "evaluator_batch_size", "generate_batch_size")  # fmt: skip
RUN_FINGERPRINT = "fingerprint.json"


def _folder_digest(path: str | os.PathLike | None) -> str | None:
    """Names, sizes and modification times of a weights / adapter folder's files (cheap identity)."""
    if path is None or not Path(path).exists():
        return None
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return fingerprint([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])


def model_fingerprint(
    cfg: EvalConfig, name: str, prompts: Sequence[EvalPrompt], adapter: str | os.PathLike | None
) -> RunFingerprint:
    """What decides one model's samples in an eval folder: settings, prompts, weights and adapter."""
    from debias3d.config import to_dict

    settings = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_RUN}
    inputs = {"prompts": fingerprint([(p.index, p.text, p.category) for p in prompts])}
    weights = _folder_digest(cfg.generator_weights)
    if weights:
        inputs["generator weights"] = weights
    if adapter is not None:
        inputs["adapter"] = _folder_digest(adapter) or str(adapter)
    return RunFingerprint(f"eval:{name}", settings, inputs)


def run_eval(
    cfg: EvalConfig | None = None,
    out_dir: str | os.PathLike = "eval",
    adapter: str | os.PathLike | None = None,
    *,
    generator: Any = None,
    finetuned_generator: Any = None,
    evaluator: Any = None,
    ranker: Any = None,
    base_run: ModelRun | str | os.PathLike | None = None,
    prompts: Sequence[EvalPrompt] | None = None,
    progress: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Evaluate the base model and, with ``adapter``, the fine-tuned one; write ``out_dir``.

    Args:
        cfg: :class:`EvalConfig` (defaults).
        out_dir: output folder (see the module docstring).
        adapter: a LoRA adapter folder written by ``debias3d finetune`` (None: base only).
        generator: an already-built base generator (default: from ``cfg``).
        finetuned_generator: an already-built fine-tuned generator (default: base weights + ``adapter``).
        evaluator / ranker: already-built scorers (default: from ``cfg``; the ranker only with ``cfg.t3bench``).
        base_run: a :class:`ModelRun` (or its folder) of the base model on the same prompts and
            seeds, reused instead of re-generating (ablations evaluate the base once).
        prompts: evaluation prompts (default: :func:`load_eval_prompts`).
        progress: show progress bars.
        resume: reuse a model run already finished in ``out_dir`` (``<model>/``, sealed with its
            ``fingerprint.json``); one made with other settings, prompts, weights or adapter is a
            one-line error that says how to start fresh.

    Returns:
        The summary (also ``summary.json``), with ``NaN`` written as ``null``.
    """

    cfg = cfg or EvalConfig()
    if adapter is not None and finetuned_generator is None:
        check_adapter(adapter)  # before the base model costs any time
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):  # a second eval on the same --out is refused instead of racing this one
        return _run_eval(
            cfg,
            out,
            adapter,
            generator,
            finetuned_generator,
            evaluator,
            ranker,
            base_run,
            prompts,
            progress,
            resume,
        )


def _run_eval(
    cfg: EvalConfig,
    out: Path,
    adapter: str | os.PathLike | None,
    generator: Any,
    finetuned_generator: Any,
    evaluator: Any,
    ranker: Any,
    base_run: ModelRun | str | os.PathLike | None,
    prompts: Sequence[EvalPrompt] | None,
    progress: bool,
    resume: bool = False,
) -> dict[str, Any]:
    import torch

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    timer = _Timer()
    prompts = list(prompts) if prompts is not None else load_eval_prompts(cfg)
    with timer("load_models"):
        te = getattr(generator, "text_encoder", None)
        evaluator, ranker = build_scorers(cfg, te, evaluator, ranker)
    te = getattr(evaluator, "text_encoder", None)
    runs: list[ModelRun] = []
    if base_run is not None:
        runs.append(base_run if isinstance(base_run, ModelRun) else ModelRun.load(base_run))
    elif (done := _finished_run(out, model_fingerprint(cfg, "base", prompts, None), resume)) is not None:
        runs.append(done)
    else:
        with timer("load_models"):
            gen = generator if generator is not None else load_generator(cfg, None, text_encoder=te)
        runs.append(evaluate_model("base", gen, prompts, cfg, evaluator, ranker, out, progress, timer))
        model_fingerprint(cfg, "base", prompts, None).write(out / "base", RUN_FINGERPRINT)  # seals the run
    if adapter is not None or finetuned_generator is not None:
        fp = model_fingerprint(cfg, "finetuned", prompts, adapter)
        done = _finished_run(out, fp, resume and finetuned_generator is None)
        if done is not None:
            runs.append(done)
        else:
            with timer("load_models"):
                ft = finetuned_generator
                if ft is None:
                    ft = load_generator(cfg, adapter, text_encoder=te)
            runs.append(
                evaluate_model("finetuned", ft, prompts, cfg, evaluator, ranker, out, progress, timer)
            )
            fp.write(out / "finetuned", RUN_FINGERPRINT)
    with timer("summarize"):
        summary, tables = summarize(runs, cfg)
    from debias3d.config import to_dict

    summary["adapter"] = str(adapter) if adapter is not None else None
    summary["config"] = to_dict(cfg)
    summary = write_outputs(out, summary, tables)
    if cfg.report:
        from debias3d.eval.report import write_eval_report

        with timer("report"):
            write_eval_report(out, summary, tables)
    atomic_write_json(out / "timings.json", {k: round(v, 3) for k, v in timer.t.items()})
    _log_headline(summary)
    return summary


def _finished_run(out: Path, fp: RunFingerprint, resume: bool) -> ModelRun | None:
    """The sealed model run of ``fp`` in ``out`` when resuming, else None (it is computed again)."""
    name = fp.stage.split(":", 1)[1]
    folder = out / name
    if not resume or not (folder / RUN_FINGERPRINT).is_file() or not (folder / "run.json").is_file():
        return None
    fp.check(folder, fresh_hint="run without --resume", name=RUN_FINGERPRINT)
    logger.info("resume: %s model run reused from %s", name, folder)
    return ModelRun.load(folder)


def _log_headline(summary: dict[str, Any]) -> None:
    fid = summary["fidelity"]
    for name, f in fid.items():
        logger.info(
            "eval[%s]: fidelity %s | neglected %s | rest %s",
            name, _fmt(f["overall"]["mean"]), _fmt(f["neglected"]), _fmt(f["rest"]),
        )  # fmt: skip
    for key, t in (summary.get("targets") or {}).items():
        ci = t.get("ci")
        interval = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
        logger.info(
            "target %s: %s%s (%s) -> %s",
            key,
            _fmt(t["value"]),
            interval,
            t["target"],
            "met" if t["met"] else "NOT met",
        )


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def eval_command(
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] | None = None,
    adapter: str | os.PathLike | None = None,
    out: str | os.PathLike = "eval",
    resume: bool = False,
) -> dict[str, Any]:
    """CLI body of ``debias3d eval --config C [--adapter DIR] --out O [--resume] [key=value ...]``.

    Raises:
        debias3d.config.ConfigError: bad config file or override (one line).
        FileNotFoundError: missing weights or adapter folder.
    """
    from debias3d.config import load_config

    cfg = load_config(EvalConfig, config, list(overrides or []))
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: not an adapter folder (no adapter_config.json)")
    return run_eval(cfg, out, adapter=adapter, resume=resume)


def replace(cfg: EvalConfig, **changes: Any) -> EvalConfig:
    """``dataclasses.replace`` for :class:`EvalConfig` (re-validates)."""
    return dataclasses.replace(cfg, **changes)
