"""Which precision machinery the trainer turns on (finetune/precision.py), per accelerate setting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from torch import nn

DS, DDP, NO = DistributedType.DEEPSPEED, DistributedType.MULTI_GPU, DistributedType.NO


def _acc(dist, mp, scaler=None, device="cpu"):
    return SimpleNamespace(
        distributed_type=dist, mixed_precision=mp, scaler=scaler, device=torch.device(device)
    )


def _half_model():
    m = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    m[0].half()
    return m


@pytest.mark.parametrize(
    "dist,mp,autocast,scaler",
    [
        (DS, "bf16", torch.bfloat16, False),  # DeepSpeed casts, accelerate adds no autocast; no scaler
        (DS, "fp16", torch.float16, False),  # DeepSpeed scales the loss itself
        (DDP, "bf16", None, False),  # accelerate's autocast; bf16 needs no scaler
        (NO, "no", None, True),  # fp16 blocks, nothing scales the loss: our GradScaler
        (DDP, "no", None, True),
    ],
)
def test_autocast_and_scaler_per_setting(dist, mp, autocast, scaler):
    from debias3d.finetune.precision import autocast_dtype, grad_scaler_for

    acc = _acc(dist, mp)
    assert autocast_dtype(acc) == autocast
    assert (grad_scaler_for(acc, _half_model()) is not None) == scaler


def test_no_scaler_without_fp16_params_or_with_accelerates_own():
    from debias3d.finetune.precision import grad_scaler_for

    assert grad_scaler_for(_acc(NO, "no"), nn.Linear(2, 2)) is None
    assert grad_scaler_for(_acc(DDP, "fp16", scaler=object()), _half_model()) is None


def test_set_half_dtype_and_keep_norms_fp32():
    from debias3d.finetune.precision import keep_norms_fp32, set_half_dtype

    m = _half_model()
    m.dtype = torch.float16  # TRELLIS's flow models carry the activation dtype
    other = nn.Linear(2, 2)
    assert set_half_dtype({"stage1": m, "stage2": other}, torch.bfloat16) == ["stage1"]
    assert m[0].weight.dtype == torch.bfloat16 and m.dtype == torch.bfloat16
    assert other.weight.dtype == torch.float32
    m.to(torch.bfloat16)
    m[1].requires_grad_(False)
    assert keep_norms_fp32(m) == 1 and m[1].weight.dtype == torch.float32
    assert m[0].weight.dtype == torch.bfloat16
