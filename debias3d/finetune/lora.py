"""peft LoRA on a generator's flow transformers: add a fresh adapter for training.

Reloading and merging are the generator's own (:meth:`~debias3d.models.generator.GeneratorBase.load_adapter`,
``merge_adapter``); they read the same adapter folder.

Both stages live in ONE container, ``nn.ModuleDict(generator.flow_models)``
(``{"stage1": SparseStructureFlowModel, "stage2": SLatFlowModel}`` for mini TRELLIS; the TRELLIS
adapter exposes the same dict). One standard peft adapter directory
(``adapter_config.json`` + ``adapter_model.safetensors``) then covers both stages, and::

    container = flow_container(generator)
    PeftModel.from_pretrained(container, "runs/ft")

reloads it. peft injects the LoRA layers *inside* the stage modules, so the generator that owns
them samples with the adapter without any other change.

Targets are matched by the regex ``(stage1|stage2)(\\..*)?\\.(to_qkv|to_q|to_kv|to_out)`` built from
the config (peft ``target_modules`` as a string is a full match on the module name), so
``lora.stages`` can restrict the adapter to one stage. A target is a module-name suffix: a leaf
(``to_q``) or a dotted tail (``mlp.mlp.0``, TRELLIS's first MLP linear in every block, which does
not match the time embedder's ``t_embedder.mlp.0``).

Real TRELLIS note: its stage-2 ``SparseLinear`` layers (``mlp.mlp.0``, ``mlp.mlp.2``) subclass
``nn.Linear`` but take a ``SparseTensor``; stock peft wraps them and then fails at forward time.
They get :class:`~debias3d.models.sparse_lora.SparseLoraLinear` through peft's custom-module
hook, registered here when an adapter is added and by ``load_adapter`` when one is reloaded.
:func:`resolve_targets` refuses any other ``nn.Linear`` subclass with its own forward, at set-up,
with the names.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from debias3d.models.generator import ADAPTER_INFO_NAME, flow_container, read_adapter_info, write_adapter_info

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_INFO_NAME",
    "flow_container",
    "linear_names",
    "target_regex",
    "resolve_targets",
    "make_lora_config",
    "add_lora",
    "lora_parameters",
    "read_adapter_info",
    "write_adapter_info",
]


def _is_plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose forward is ``nn.Linear.forward`` (what peft's LoRA ``Linear`` wraps)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _is_lora_linear(module: nn.Module) -> bool:
    """A layer this project can put LoRA on: a plain ``nn.Linear`` or TRELLIS's ``SparseLinear``."""
    from debias3d.models.sparse_lora import is_sparse_linear

    return _is_plain_linear(module) or is_sparse_linear(module)


def linear_names(module: nn.Module, prefix: str = "") -> Counter:
    """Leaf names of the LoRA-able linear layers under ``module`` (name → count), e.g.
    ``{"to_qkv": 4, "to_out": 8, "mlp.0": 8, ...}``; a numeric leaf (a ``Sequential`` index) is shown
    with its parent (``mlp.0``). Used in error messages and docs."""
    out: Counter = Counter()
    for name, m in module.named_modules():
        if name.startswith(prefix) and _is_lora_linear(m):
            parts = name.split(".")
            leaf = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
            out[leaf] += 1
    return out


def target_regex(stages: Sequence[str], targets: Sequence[str]) -> str:
    """peft ``target_modules`` regex: any ``targets`` leaf under any of ``stages``.

    >>> import re
    >>> bool(re.fullmatch(target_regex(["stage1"], ["to_q"]), "stage1.blocks.0.cross_attn.to_q"))
    True
    >>> bool(re.fullmatch(target_regex(["stage1"], ["to_q"]), "stage1.blocks.0.cross_attn.to_qkv"))
    False
    >>> bool(re.fullmatch(target_regex(["stage2"], ["mlp.mlp.0"]), "stage2.t_embedder.mlp.0"))
    False
    """
    s = "|".join(re.escape(x) for x in stages)
    t = "|".join(re.escape(x) for x in targets)
    return rf"(?:{s})(?:\..*)?\.(?:{t})"


def resolve_targets(container: nn.ModuleDict, stages: Sequence[str], targets: Sequence[str]) -> list[str]:
    """Full names of the modules that will get LoRA; a clear ``ValueError`` when that is none.

    Raises:
        ValueError: an unknown stage; targets that match no module (the message lists the
            available Linear names per stage); or a target that is an ``nn.Linear`` subclass with
            its own forward other than TRELLIS's ``SparseLinear`` (which gets a sparse LoRA layer).
    """
    missing = [s for s in stages if s not in container]
    if missing:
        raise ValueError(f"lora.stages {missing} not in the generator's flow models {list(container)}")
    pattern = re.compile(target_regex(stages, targets))
    matched = [n for n, _ in container.named_modules() if n and pattern.fullmatch(n)]
    if not matched:
        avail = "; ".join(f"{s}: " + ", ".join(sorted(linear_names(container[s]))) for s in stages)
        raise ValueError(
            f"lora.target_modules {list(targets)} match no module in stages {list(stages)}. "
            f"Available nn.Linear names — {avail}"
        )
    modules = dict(container.named_modules())
    bad = [n for n in matched if not _is_lora_linear(modules[n])]
    if bad:
        kinds = sorted({type(modules[n]).__name__ for n in bad})
        raise ValueError(
            f"lora.target_modules match layers LoRA cannot wrap ({', '.join(kinds)}; e.g. {bad[0]}): "
            "only nn.Linear and TRELLIS's SparseLinear are supported"
        )
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in matched)]
    if unmatched:
        logger.info("lora.target_modules %s match nothing in stages %s (others do)", unmatched, list(stages))
    return matched


def make_lora_config(settings: Any, container: nn.ModuleDict):
    """peft ``LoraConfig`` from :class:`~debias3d.finetune.config.LoraSettings` (targets checked)."""
    from peft import LoraConfig

    from debias3d.models.sparse_lora import register_sparse_lora

    resolve_targets(container, settings.stages, settings.target_modules)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        init_lora_weights=settings.init_lora_weights if settings.init_lora_weights == "gaussian" else True,
        target_modules=target_regex(settings.stages, settings.target_modules),
    )
    return register_sparse_lora(config, container)


def add_lora(generator: Any, settings: Any):
    """Freeze ``generator``'s flow models and add a fresh LoRA adapter to them.

    Args:
        generator: anything with ``flow_models`` (mini TRELLIS, the TRELLIS adapter).
        settings: :class:`~debias3d.finetune.config.LoraSettings`.

    Returns:
        ``peft.PeftModel`` around :func:`flow_container` (LoRA params trainable, in fp32).
    """
    from peft import get_peft_model

    container = flow_container(generator)
    container.requires_grad_(False)
    config = make_lora_config(settings, container)
    model = get_peft_model(container, config)
    # diffusers' cast_training_params: trainable params stay fp32 whatever the base dtype is.
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def lora_parameters(model: nn.Module) -> dict[str, torch.nn.Parameter]:
    """Name → parameter for every LoRA weight (``lora_A`` / ``lora_B``) of a peft model."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}
