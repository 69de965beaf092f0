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
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from debias3d.eval.config import EvalConfig
from debias3d.eval.inputs import (
    EvalPrompt,
    build_scorers,
    check_adapter,
    load_eval_prompts,
    load_generator,
)
from debias3d.eval.model_run import (
    ModelRun,
    evaluate_model,
)
from debias3d.eval.summary import TARGETS, _jsonable, decide_targets, summarize, write_outputs  # noqa: F401  (importable from here)
from debias3d.runs import (
    RunFingerprint,
    RunLock,
    Timer,
    atomic_write_json,
    fingerprint,
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
    timer = Timer()
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
