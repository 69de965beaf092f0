"""Precision of LoRA training on flow models whose transformer blocks run in half precision.

TRELLIS builds its flow models with ``use_fp16=True``: ``convert_to_fp16`` turns the blocks
("torso") to fp16 and ``forward`` casts the activations with ``h.type(self.dtype)``; its own
trainers then train with loss scaling. LoRA weights here stay fp32 (the master copy of the trained
path), but their gradients flow back through fp16 activations, where small values underflow
without a loss scale. Three cases:

* ``mixed_precision: bf16`` (DDP or DeepSpeed): the fp16 torso is switched to bf16
  (:func:`set_half_dtype`: parameters, buffers and the model's ``dtype``); bf16 has fp32's range,
  so no scaler is needed. DeepSpeed casts the whole module to bf16 and, unlike DDP, accelerate does
  not wrap its forward in ``autocast``; the fp32 inputs of the loss (latents, timesteps, CLIP
  features) would then meet bf16 weights (``mat1 and mat2 must have the same dtype``), so the
  objective runs under ``torch.autocast`` (:func:`autocast_dtype`), and the affine parameters of
  the normalisation layers go back to fp32 (:func:`keep_norms_fp32`): TRELLIS's ``LayerNorm32``
  normalises ``x.float()``, which a bf16 weight does not accept outside CUDA's autocast list.
* ``mixed_precision: fp16`` on CUDA without DeepSpeed: accelerate's ``GradScaler`` (DeepSpeed
  scales the loss itself).
* ``mixed_precision: no`` with fp16 blocks: :func:`grad_scaler_for` gives a ``torch.amp.GradScaler``
  that the trainer hands to accelerate (scale in ``backward``, skip steps with inf / NaN,
  unscale before clipping).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["half_param_names", "set_half_dtype", "autocast_dtype", "grad_scaler_for", "keep_norms_fp32"]


def half_param_names(module: nn.Module) -> list[str]:
    """Names of the fp16 parameters under ``module`` (TRELLIS's ``use_fp16`` blocks)."""
    return [n for n, p in module.named_parameters() if p.dtype == torch.float16]


def set_half_dtype(flow_models: dict[str, nn.Module], dtype: torch.dtype) -> list[str]:
    """Move every fp16 parameter / buffer of ``flow_models`` to ``dtype`` and set the ``dtype``
    attribute that TRELLIS's flow models cast their activations to. Returns the stages changed.

    >>> m = nn.Linear(2, 2).half(); m.dtype = torch.float16
    >>> set_half_dtype({"stage1": m}, torch.bfloat16), m.weight.dtype, m.dtype
    (['stage1'], torch.bfloat16, torch.bfloat16)
    """
    changed = []
    for stage, model in flow_models.items():
        tensors = [*model.parameters(), *model.buffers()]
        half = [t for t in tensors if t.dtype == torch.float16]
        if not half and getattr(model, "dtype", None) != torch.float16:
            continue
        for t in half:
            t.data = t.data.to(dtype)
        if getattr(model, "dtype", None) == torch.float16:
            model.dtype = dtype
        changed.append(stage)
    if changed:
        logger.info("half-precision blocks of %s now run in %s", ", ".join(changed), dtype)
    return changed


def autocast_dtype(accelerator: Any) -> torch.dtype | None:
    """The dtype the objective must autocast to: DeepSpeed with bf16 / fp16 (accelerate applies no
    autocast there while DeepSpeed casts the model), else ``None``."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)


def grad_scaler_for(accelerator: Any, model: nn.Module) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` when fp16 parameters sit in the trained path and nothing scales the loss
    yet (no accelerate scaler, no DeepSpeed, not bf16); else ``None``."""
    from accelerate.utils import DistributedType

    if accelerator.scaler is not None or accelerator.mixed_precision == "bf16":
        return None
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return None
    half = half_param_names(model)
    if not half:
        return None
    logger.info("%d fp16 parameters in the flow models: training with a GradScaler", len(half))
    return torch.amp.GradScaler(accelerator.device.type)


def keep_norms_fp32(module: nn.Module) -> int:
    """Cast the (frozen) affine parameters of every ``LayerNorm`` / ``GroupNorm`` under ``module``
    back to fp32, as TRELLIS's ``LayerNorm32`` / ``GroupNorm32`` compute in fp32. Returns how many
    layers changed. Trainable norm parameters are left alone (the optimizer owns their dtype).
    """
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            params = [p for p in m.parameters(recurse=False) if p.dtype != torch.float32]
            if params and not any(p.requires_grad for p in params):
                for p in params:
                    p.data = p.data.float()
                n += 1
    return n
