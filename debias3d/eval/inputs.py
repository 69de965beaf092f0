"""Inputs of an evaluation: the prompts, the scorers (evaluator, ranker) and the generator (with its adapter)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debias3d.data.prompts import Prompt
from debias3d.eval.config import EvalConfig
from debias3d.runs import (
    read_json,
)


@dataclass(frozen=True)
class EvalPrompt(Prompt):
    """One evaluation prompt: a :class:`~debias3d.data.prompts.Prompt` (``text``, ``category``, ShapeWorld
    ``spec``, None when the text does not parse) with its ``index`` in the evaluation set."""

    index: int = 0


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
            out.append(EvalPrompt(p.text, p.category or NO_CATEGORY, spec=spec, index=i))
    else:
        from debias3d.data.shapeworld.grammar import evaluation_prompts

        for i, p in enumerate(evaluation_prompts(cfg.per_category, seed=cfg.prompt_seed)):
            out.append(EvalPrompt(p.text, p.category, spec=p.spec, index=i))
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

    When ``cfg.generator_weights`` is unset, :func:`~debias3d.models.generator.build_generator` loads
    the weights the adapter records, so an adapter is always measured on the model it was trained from.
    """
    from debias3d.models.generator import GeneratorSpec, build_generator

    spec = GeneratorSpec(cfg.generator, cfg.generator_weights, cfg.device)
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
