"""Backend registry: config strings → classes (threestudio ``@register`` / ``find`` style).

>>> from debias3d.registry import register, find
>>> @register("generator", "toy")
... class Toy: ...
>>> find("generator", "toy") is Toy
True

Backends live in modules that import torch and friends, so ``find`` imports the module that
defines a built-in backend only when it is asked for (``_BUILTINS``), keeping the CLI fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

KINDS = ("generator", "evaluator", "ranker", "llm", "external_generator", "text_encoder", "mlm", "proposer")

_REGISTRY: dict[str, dict[str, type]] = {k: {} for k in KINDS}

# kind -> name -> "module:attr" for built-in backends, imported on first use.
_BUILTINS: dict[str, dict[str, str]] = {k: {} for k in KINDS}


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator that registers ``cls`` as backend ``name`` of ``kind``."""
    if kind not in _REGISTRY:
        raise KeyError(f"unknown backend kind {kind!r}; expected one of {', '.join(KINDS)}")

    def deco(cls: type) -> type:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{kind} backend {name!r} is already registered to {existing.__qualname__}")
        _REGISTRY[kind][name] = cls
        return cls

    return deco


def register_lazy(kind: str, name: str, target: str) -> None:
    """Declare a built-in backend by import path ``"package.module:Class"`` without importing it."""
    if kind not in _BUILTINS:
        raise KeyError(f"unknown backend kind {kind!r}; expected one of {', '.join(KINDS)}")
    _BUILTINS[kind][name] = target


def available(kind: str) -> list[str]:
    """Names registered (or declared) for ``kind``."""
    return sorted(set(_REGISTRY[kind]) | set(_BUILTINS[kind]))


def find(kind: str, name: str) -> type:
    """Return the class registered as ``name`` for ``kind``; a clear KeyError lists the choices."""
    if kind not in _REGISTRY:
        raise KeyError(f"unknown backend kind {kind!r}; expected one of {', '.join(KINDS)}")
    if name not in _REGISTRY[kind] and name in _BUILTINS[kind]:
        module, _, attr = _BUILTINS[kind][name].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        _REGISTRY[kind].setdefault(name, cls)
    if name not in _REGISTRY[kind]:
        choices = ", ".join(available(kind)) or "(none)"
        raise KeyError(f"no {kind} backend named {name!r}; available: {choices}")
    return _REGISTRY[kind][name]


def build(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """``find(kind, name)(*args, **kwargs)``."""
    return find(kind, name)(*args, **kwargs)


# Built-in backends. Each line names where the class lives; nothing is imported here.
for _kind, _name, _target in [
    ("generator", "mini-trellis", "debias3d.models.backbone.generator:MiniTrellisGenerator"),
    ("generator", "trellis", "debias3d.models.trellis:TrellisGenerator"),
    ("text_encoder", "minilm", "debias3d.models.text_encoder:MiniLMTextEncoder"),
    ("text_encoder", "clip", "debias3d.models.text_encoder:CLIPTextEncoder"),
    ("external_generator", "shapeworld", "debias3d.data.shapeworld.builder:ShapeWorldExternalGenerator"),
    ("evaluator", "shapeworld-hyperscore", "debias3d.models.evaluator.model:ShapeWorldHyperScore"),
    ("evaluator", "hyperscore-clip", "debias3d.models.evaluator.clip:CLIPHyperScore"),
    ("ranker", "shapeworld", "debias3d.models.ranker.model:ShapeWorldRanker"),
    ("ranker", "hpsv2", "debias3d.models.ranker.hpsv2:HPSv2Ranker"),
    ("ranker", "imagereward", "debias3d.models.ranker.imagereward:ImageRewardRanker"),
    ("llm", "template", "debias3d.models.llm.template:TemplateContextWriter"),
    ("llm", "openai", "debias3d.models.llm.openai_llm:OpenAIContextWriter"),
    ("external_generator", "generator", "debias3d.augment.visual:GeneratorExternalGenerator"),
    ("external_generator", "command", "debias3d.augment.visual:CommandExternalGenerator"),
    ("proposer", "shapeworld", "debias3d.bias_audit.substitutes:ShapeWorldProposer"),
    ("proposer", "wordlist", "debias3d.bias_audit.substitutes:WordListProposer"),
    ("proposer", "mlm", "debias3d.bias_audit.substitutes:MLMProposer"),
    ("proposer", "llm", "debias3d.bias_audit.substitutes:LLMProposer"),
]:
    register_lazy(_kind, _name, _target)
