"""``debias3d demo``: audit → augment → finetune → eval on the embedded ShapeWorld default.

The run proves (or fails to prove) the mitigation against ShapeWorld ground truth and ends with one
self-contained ``OUT/report.html``: what was biased, what changed, and how long each stage took.

Layout of ``OUT/``::

    demo_config.yaml    the resolved :class:`DemoConfig`
    prompts.jsonl       the audit prompts (a uniform sample of the grammar, not chosen by word)
    audit/              bias audit of the base model (the audit folder layout)
    aug/                augmented pairs, strategy ``both`` (full); aug_<strategy>/ with --ablations
    corpus/             replay share of the original (skewed) corpus distribution
    finetune/           LoRA adapter (full); finetune_<strategy>/ with --ablations
    eval/               before/after evaluation (the eval folder layout)
    audit_after/        the fine-tuned model's audit of the heatmap prompts (word heatmaps after)
    thumbs/             mesh thumbnails, base vs fine-tuned, same prompts and seeds
    summary.json        headline numbers, targets, ablation table, timings, budget
    timings.json        wall time per stage
    report.html         the report

Budget: ``configs/shapeworld/demo.yaml`` (≤ 10 min on 2 CPU cores) and ``demo_quick.yaml``
(``--quick``, ≤ 3 min). The world's bias comes only from corpus coverage, and the fix only from the
augmented pairs; nothing here looks at the eval set's neglected words before the eval runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debias3d.augment.config import AugmentConfig
from debias3d.bias_audit.config import AuditConfig
from debias3d.config import check_bounds
from debias3d.demo_mitigations import MitigationSettings
from debias3d.eval.config import EvalConfig
from debias3d.finetune.config import FinetuneConfig
from debias3d.runs import Timer

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo", "demo_command", "default_config_path"]

_STRATEGIES = ("both", "grad_guided", "only_wh", "only_wl", "random_words")


@dataclass
class DemoConfig:
    """The whole loop's budget and every stage's config (``configs/shapeworld/demo.yaml``)."""

    prompts_per_category: int = field(
        default=6, metadata={"help": "audit prompts per category (8 categories)"}
    )
    prompt_seed: int = field(default=1, metadata={"help": "seed of the audit prompt sample"})
    replay_corpus: int = field(
        default=400, metadata={"help": "rows of the skewed corpus drawn for replay (0 = no replay)"}
    )
    corpus_seed: int = field(default=7, metadata={"help": "seed of the replay corpus draw"})
    heatmap_prompts: int = field(default=4, metadata={"help": "prompts shown with heatmaps + thumbnails"})
    thumbnail_samples: int = field(default=2, metadata={"help": "samples per prompt in the thumbnails"})
    thumbnail_size: int = field(default=128, metadata={"help": "thumbnail size (px)"})
    ablation_strategies: tuple[str, ...] = field(
        default=_STRATEGIES, metadata={"help": "strategies run by --ablations (both = full)"}
    )
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads for the whole run"})
    audit: AuditConfig = field(default_factory=AuditConfig, metadata={"help": "stage 1: bias audit"})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "stage 2: augmentation"})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, metadata={"help": "stage 3: LoRA"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "stage 4: evaluation"})
    mitigations: MitigationSettings = field(
        default_factory=MitigationSettings, metadata={"help": "--mitigations: refocusing / DPO settings"}
    )

    def __post_init__(self) -> None:
        self.ablation_strategies = tuple(self.ablation_strategies)
        check_bounds(self, ("prompts_per_category", "thumbnail_samples", "num_threads"))
        if self.replay_corpus < 0 or self.heatmap_prompts < 0:
            raise ValueError("DemoConfig.replay_corpus and DemoConfig.heatmap_prompts must be >= 0")
        if self.thumbnail_size < 16:
            raise ValueError(f"DemoConfig.thumbnail_size must be >= 16, got {self.thumbnail_size}")
        bad = [s for s in self.ablation_strategies if s not in _STRATEGIES]
        if bad or "both" not in self.ablation_strategies:
            raise ValueError(
                f"DemoConfig.ablation_strategies must be from {_STRATEGIES} and include 'both', got {self.ablation_strategies}"
            )


class _Stages(Timer):
    """A :class:`~debias3d.runs.Timer` of the demo's stages that logs each one as it starts and ends."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = time.perf_counter()

    def total(self) -> float:
        """Record and return the wall time since the run started (``t["total"]``)."""
        self.t["total"] = time.perf_counter() - self.t0
        return self.t["total"]

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        logger.info("demo: %s ...", name)
        try:
            with super().__call__(name):
                yield
        finally:
            logger.info("demo: %s done in %.1f s", name, self.t[name])


def default_config_path(quick: bool = False) -> Path | None:
    """``configs/shapeworld/demo[_quick].yaml`` of the source checkout, when there is one."""
    name = "demo_quick.yaml" if quick else "demo.yaml"
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        p = root / "configs" / "shapeworld" / name
        if p.is_file():
            return p
    return None


def _audit_prompts(cfg: DemoConfig) -> Any:
    """A uniform grammar sample: ``prompts_per_category`` per category (word weights untouched)."""
    import numpy as np

    from debias3d.data.prompts import Prompt, PromptSet
    from debias3d.data.shapeworld.grammar import sample_prompts
    from debias3d.data.shapeworld.vocab import CATEGORIES

    rng = np.random.default_rng(cfg.prompt_seed)
    items, seen = [], set()
    for cat in CATEGORIES:
        for p in sample_prompts(cfg.prompts_per_category, category=cat, rng=rng):
            if p.text not in seen:
                seen.add(p.text)
                items.append(Prompt(p.text, cat))
    return PromptSet(items)


def _pick_showcase(audit_dir: Path, neglected: Sequence[str], k: int) -> list[dict[str, Any]]:
    """Audit prompts to show: those using the most neglected words first, then the rest in order."""
    import pandas as pd

    from debias3d.data.shapeworld.parser import parse

    if k <= 0:
        return []
    df = pd.read_parquet(audit_dir / "prompts.parquet")
    neg = set(neglected)

    def n_neg(text: str) -> int:
        try:
            return len(neg & set(parse(text).words()))
        except ValueError:
            return 0

    df = df.assign(_n=[n_neg(t) for t in df["prompt"]], _i=range(len(df)))
    df = df.sort_values(["_n", "_i"], ascending=[False, True]).head(k)
    return df[["prompt_id", "prompt", "category", "w_h", "w_l"]].to_dict("records")


def _thumbnails(
    gens: dict[str, Any], prompts: list[str], seed: int, n: int, size: int, out: Path
) -> dict[str, Any]:
    """Render sample ``0..n-1`` of each prompt with each generator (same seeds); PNG strips + verdicts."""
    import numpy as np
    from PIL import Image

    from debias3d.data.shapeworld.measurer import fidelity
    from debias3d.render.cameras import orbit_rig
    from debias3d.render.renderer import Renderer, RenderError

    out.mkdir(parents=True, exist_ok=True)
    rig = orbit_rig(1, elev=25.0)
    res: dict[str, Any] = {}
    with Renderer(image_size=size) as r:
        for name, gen in gens.items():
            assets = gen.generate(prompts, seeds=[seed] * len(prompts), num_samples=n)
            for i, p in enumerate(prompts):
                imgs, fids = [], []
                for d in range(n):
                    a = assets[i * n + d]
                    try:
                        imgs.append(r.render(a.mesh, rig)[0])
                    except RenderError:
                        imgs.append(np.full((size, size, 3), 235, np.uint8))
                    try:
                        fids.append(float(fidelity(p, a.voxels if a.voxels is not None else a.mesh)))
                    except ValueError:
                        fids.append(math.nan)
                path = out / f"{name}_{i:02d}.png"
                Image.fromarray(np.concatenate(imgs, axis=1)).save(path)
                res[f"{name}/{i}"] = {"path": path, "fidelity": fids}
    return res


def _fresh_generator(cfg: EvalConfig, text_encoder: Any) -> Any:
    from debias3d.eval.pipeline import load_generator

    return load_generator(cfg, None, text_encoder=text_encoder)


def _load_models(ev_cfg: EvalConfig, evaluator: Any, ranker: Any) -> tuple[Any, Any, Any, Any]:
    """``(evaluator, ranker, text encoder, base generator)``; the generator shares a MiniLM evaluator's encoder."""
    from debias3d.eval.pipeline import build_scorers

    evaluator, ranker = build_scorers(ev_cfg, None, evaluator, ranker)
    te = getattr(evaluator, "text_encoder", None)
    te = te if getattr(te, "name", None) == "minilm" else None
    return evaluator, ranker, te, _fresh_generator(ev_cfg, te)


def _start(cfg: DemoConfig, out: str | os.PathLike) -> tuple[Path, _Stages]:
    """Create ``out``, write the config into it and set torch's threads; the run's clock starts."""
    import torch

    from debias3d.config import dump_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "demo_config.yaml")
    torch.set_num_threads(cfg.num_threads)
    return out, _Stages()


def _replay_corpus(cfg: DemoConfig, out: Path) -> Path | None:
    """The corpus rows fine-tuning replays (``out/corpus``, written once); None when it replays none."""
    if not (cfg.replay_corpus and cfg.finetune.data.corpus is None and cfg.finetune.data.replay_share > 0):
        return None
    from debias3d.data.shapeworld.corpus import CorpusConfig, write_corpus

    corpus = out / "corpus"
    if not (corpus / "dataset_info.json").is_file():
        write_corpus(CorpusConfig(n=cfg.replay_corpus, seed=cfg.corpus_seed), corpus)
    return corpus


def _base_weights(cfg: DemoConfig) -> Any:
    """The base generator's weights: the first of eval's, audit's and finetune's settings."""
    return cfg.eval.generator_weights or cfg.audit.generator_weights or cfg.finetune.generator_weights


def run_demo(
    out: str | os.PathLike = "demo",
    quick: bool = False,
    ablations: bool = False,
    config: DemoConfig | str | os.PathLike | None = None,
    overrides: Sequence[str] | None = None,
    *,
    evaluator: Any = None,
    ranker: Any = None,
    augment_components: Any = None,
) -> dict[str, Any]:
    """Run the whole loop and write ``out/report.html`` (see the module docstring).

    Args:
        out: output folder.
        quick: use the quick budget (``demo_quick.yaml``) when ``config`` is not given.
        ablations: also run ``grad_guided`` (w_h / w_l from the paper's gradient instead of the
            selected probe), ``only_wh``, ``only_wl`` and ``random_words`` with the same budget.
        config: a :class:`DemoConfig`, a YAML file, or None (the default YAML for ``quick``).
        overrides: ``key.sub=value`` overrides (e.g. ``finetune.train.max_train_steps=100``).
        evaluator / ranker / augment_components: already-built backends (tests pass tiny ones).

    Returns:
        The demo summary (also ``out/summary.json``).
    """
    from debias3d.config import load_config, to_dict

    if not isinstance(config, DemoConfig):
        path = config if config is not None else default_config_path(quick)
        config = load_config(DemoConfig, path, list(overrides or []))
    elif overrides:
        raise ValueError("overrides need a config file or None, not a DemoConfig object")
    cfg = config
    out, stages = _start(cfg, out)

    from debias3d.bias_audit.pipeline import run_audit
    from debias3d.demo_ablations import (
        ablation_table,
        augment_strategy,
        finetune_strategy,
        ordering,
        pair_count,
    )
    from debias3d.eval.pipeline import (
        evaluate_model,
        load_eval_prompts,
        load_generator,
        summarize,
    )

    strategies = list(cfg.ablation_strategies) if ablations else ["both"]
    if "grad_guided" in strategies and "grad" not in cfg.audit.attribution.methods:
        logger.warning("demo: grad_guided needs 'grad' in audit.attribution.methods; not run")
        strategies.remove("grad_guided")
    ev_cfg = dataclasses.replace(cfg.eval, report=True)
    with stages("load models"):
        evaluator, ranker, te, base_gen = _load_models(ev_cfg, evaluator, ranker)
    base_weights = _base_weights(cfg)

    # 1. audit ------------------------------------------------------------------------------
    prompt_set = _audit_prompts(cfg)
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for p in prompt_set:
            fh.write(json.dumps({"prompt": p.text, "category": p.category}) + "\n")
    with stages("audit"):
        audit_summary = run_audit(
            prompt_set, cfg.audit, out / "audit", generator=base_gen, evaluator=evaluator
        )

    # 2. augment ----------------------------------------------------------------------------
    aug_summaries: dict[str, dict[str, Any]] = {}
    with stages("augment"):
        for s in strategies:
            dest = out / ("aug" if s == "both" else f"aug_{s}")
            aug_summaries[s] = augment_strategy(
                out / "audit", cfg.augment, s, dest, components=augment_components
            )
    counts = {s: pair_count(v) for s, v in aug_summaries.items()}
    budget = min(counts.values()) if ablations else None
    if ablations:
        logger.info("demo: ablation pair budget = %d (min over %s)", budget, counts)

    # 3. finetune ---------------------------------------------------------------------------
    adapters: dict[str, Path] = {}
    with stages("finetune"):
        corpus = _replay_corpus(cfg, out)
        ft_cfg = dataclasses.replace(cfg.finetune, generator_weights=base_weights)
        for s in strategies:
            if counts[s] == 0:
                logger.warning("demo: strategy %s produced no pairs; not fine-tuned", s)
                continue
            dest = out / ("finetune" if s == "both" else f"finetune_{s}")
            pairs = (out / ("aug" if s == "both" else f"aug_{s}")) / "pairs"
            adapters[s] = finetune_strategy(ft_cfg, pairs, dest, budget, corpus, _fresh_generator(ev_cfg, te))

    # 4. eval -------------------------------------------------------------------------------
    eval_dir = out / "eval"
    eval_prompts = load_eval_prompts(ev_cfg)
    runs: dict[str, Any] = {}
    with stages("eval"):
        base_run = evaluate_model("base", base_gen, eval_prompts, ev_cfg, evaluator, ranker, eval_dir)
        ft_gens: dict[str, Any] = {}
        for s, ad in adapters.items():
            ft_gens[s] = load_generator(ev_cfg, ad, text_encoder=te)
            name = "finetuned" if s == "both" else s
            runs[s] = evaluate_model(name, ft_gens[s], eval_prompts, ev_cfg, evaluator, ranker, eval_dir)
        main_runs = [base_run] + ([runs["both"]] if "both" in runs else [])
        from debias3d.eval.pipeline import write_outputs
        from debias3d.eval.report import write_eval_report

        eval_summary, eval_tables = summarize(main_runs, ev_cfg)
        eval_summary["adapter"] = str(adapters.get("both")) if "both" in adapters else None
        eval_summary["config"] = to_dict(ev_cfg)
        eval_summary = write_outputs(eval_dir, eval_summary, eval_tables)
        write_eval_report(eval_dir, eval_summary, eval_tables)

    neglected, rest = eval_summary["neglected_words"], eval_summary["rest_words"]
    abl = None
    if ablations:
        abl = ablation_table(base_run, runs, neglected, rest, counts if budget is None else dict.fromkeys(counts, budget),
                             cfg.finetune.train.max_train_steps)  # fmt: skip
        abl.to_csv(out / "ablations.csv", index=False)

    # 5. showcase: heatmaps and thumbnails before / after ----------------------------------
    showcase = _pick_showcase(out / "audit", neglected, cfg.heatmap_prompts)
    thumbs: dict[str, Any] = {}
    with stages("showcase"):
        if showcase and "both" in ft_gens:
            texts = [r["prompt"] for r in showcase]
            after_cfg = dataclasses.replace(cfg.audit, report=False, heatmaps=True)
            run_audit(texts, after_cfg, out / "audit_after", generator=ft_gens["both"], evaluator=evaluator)
            thumbs = _thumbnails({"base": base_gen, "finetuned": ft_gens["both"]}, texts, ev_cfg.seed,
                                 cfg.thumbnail_samples, cfg.thumbnail_size, out / "thumbs")  # fmt: skip

    stages.total()
    summary = {
        "quick": quick,
        "ablations": ablations,
        "budget": {
            "audit_prompts": len(prompt_set),
            "audit_samples": cfg.audit.samples,
            "augment_contexts": cfg.augment.contexts,
            "pairs": counts,
            "pair_budget": budget,
            "finetune_steps": cfg.finetune.train.max_train_steps,
            "replay_corpus": cfg.replay_corpus if corpus is not None else 0,
            "eval_prompts": len(eval_prompts),
            "eval_samples": ev_cfg.samples,
        },
        "audit": {
            "select": audit_summary.get("select"),
            "global_w_h": audit_summary.get("w_h"),
            "global_w_l": audit_summary.get("w_l"),
        },
        "eval": {
            k: eval_summary.get(k)
            for k in (
                "neglected_words",
                "fidelity",
                "delta_points",
                "targets",
                "evaluator_overall_categories",
                "diversity",
            )
        },  # fmt: skip
        "ablation": None
        if abl is None
        else {
            "table": abl.to_dict("records"),
            "ordering": ordering(abl),
            "full_beats_random_words": _beats(abl, "both", "random_words"),
        },  # fmt: skip
        "timings_s": {k: round(v, 1) for k, v in stages.t.items()},
    }
    from debias3d.eval.summary import write_summary_json

    summary = write_summary_json(out / "summary.json", summary)
    (out / "timings.json").write_text(json.dumps(summary["timings_s"], indent=2) + "\n")
    from debias3d.eval.report import write_demo_report

    write_demo_report(out, summary, eval_summary, eval_tables, abl, showcase, thumbs)
    logger.info("demo finished in %.1f s; report: %s", stages.t["total"], out / "report.html")
    return summary


def _beats(table: Any, a: str, b: str) -> bool | None:
    t = table.set_index("strategy")
    if a not in t.index or b not in t.index:
        return None
    return bool(t.loc[a, "neglected"] > t.loc[b, "neglected"])


def demo_command(
    out: str | os.PathLike = "demo",
    quick: bool = False,
    ablations: bool = False,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] | None = None,
    mitigations: bool = False,
) -> dict[str, Any]:
    """CLI body of ``debias3d demo [--quick] [--ablations] [--config C] --out O [key=value ...]``.

    Raises:
        debias3d.config.ConfigError: bad config file or override (one line).
        FileNotFoundError: shipped weights missing (the message names the folder).
    """
    if mitigations:
        # base / SFT / DPO / refocusing / SFT + refocusing from one audit (demo_mitigations.py)
        from debias3d.config import load_config
        from debias3d.demo_mitigations import run_mitigations

        path = config if config is not None else default_config_path(quick)
        return run_mitigations(out, load_config(DemoConfig, path, list(overrides or [])))
    return run_demo(out, quick=quick, ablations=ablations, config=config, overrides=overrides)
