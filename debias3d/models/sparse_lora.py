"""peft LoRA for TRELLIS's ``SparseLinear`` (the stage-2 MLPs ``mlp.mlp.0`` / ``mlp.mlp.2``).

TRELLIS's ``trellis.modules.sparse.SparseLinear`` subclasses ``nn.Linear`` and takes a
``SparseTensor`` (``x.replace(F.linear(x.feats, W, b))``). Stock peft wraps it as a plain
``nn.Linear`` and then calls ``lora_A(x)`` on the ``SparseTensor``, which fails. peft's custom-module
hook (``LoraConfig._register_custom_module({SparseLinear: SparseLoraLinear})``, the route peft
documents for layer types it does not know) swaps in :class:`SparseLoraLinear` instead: the same
``lora_A`` / ``lora_B`` parameters, state-dict keys, merge and unmerge as peft's ``Linear`` (the
weight is an ordinary ``(out, in)`` matrix), with the low-rank update applied to ``x.feats``.

The mapping is not stored in ``adapter_config.json``, so every place that builds or reloads an
adapter registers it (:func:`register_sparse_lora`): :mod:`debias3d.finetune.lora` when it adds one,
:meth:`debias3d.models.generator.GeneratorBase.load_adapter` when it reloads one.
"""

from __future__ import annotations

from typing import Any

from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

__all__ = ["SparseLoraLinear", "is_sparse_linear", "register_sparse_lora", "sparse_linear_classes"]


def is_sparse_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` subclass named ``SparseLinear`` with its own forward (TRELLIS's sparse layer)."""
    return (
        isinstance(module, nn.Linear)
        and type(module).__name__ == "SparseLinear"
        and type(module).forward is not nn.Linear.forward
    )


def sparse_linear_classes(module: nn.Module) -> list[type]:
    """The distinct ``SparseLinear`` classes under ``module`` (usually one: TRELLIS's)."""
    return sorted({type(m) for m in module.modules() if is_sparse_linear(m)}, key=lambda c: c.__qualname__)


class SparseLoraLinear(LoraLinear):
    """peft LoRA ``Linear`` whose input and output are ``SparseTensor`` s (anything with ``.feats``
    ``(N, C)`` and ``.replace(feats)``).

    ``y.feats = W·x.feats + b + (alpha / r)·B·A·x.feats``; the LoRA product runs in the LoRA weights'
    dtype (fp32 while training) and is cast back to the base output's dtype (fp16 in TRELLIS's
    fp16 blocks), as peft's ``Linear`` does.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, **kwargs: Any):
        if getattr(config, "use_dora", False):
            raise ValueError("LoRA on TRELLIS SparseLinear layers does not support DoRA (use_dora)")
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        if not hasattr(x, "feats") or not hasattr(x, "replace"):
            return super().forward(x, *args, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        if self.merged:
            return self.base_layer(x)
        out = self.base_layer(x)
        feats = out.feats
        dtype = feats.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = x.feats.to(lora_a.weight.dtype)
            feats = feats + lora_b(lora_a(self.lora_dropout[name](h))) * self.scaling[name]
        return out.replace(feats.to(dtype))

    def __repr__(self) -> str:
        return "sparse_lora." + super().__repr__()


def register_sparse_lora(config: Any, container: nn.Module) -> Any:
    """Map every ``SparseLinear`` class found in ``container`` to :class:`SparseLoraLinear` on the
    peft ``LoraConfig`` ``config`` (in place; returns it)."""
    classes = sparse_linear_classes(container)
    if classes:
        config._register_custom_module(dict.fromkeys(classes, SparseLoraLinear))
    return config
