"""Rectified flow: the training objective and TRELLIS's Euler sampler with CFG interval.

Forward process (TRELLIS ``FlowEulerSampler`` / ``FlowMatchingTrainer``), t ∈ [0, 1], t = 1 is noise::

    x_t = (1 − t)·x0 + (σ_min + (1 − σ_min)·t)·ε,      σ_min = 1e-5
    v   = dx_t/dt = (1 − σ_min)·ε − x0                 (velocity target)

Training draws t from a logit-normal, ``t = sigmoid(n)``, ``n ~ N(mean, std)``, and drops the text
condition (replaces it by the encoding of ``""``) with probability ``p_uncond = 0.1``.

Sampling (``FlowEulerGuidanceIntervalSampler``): ``steps`` Euler steps on the rescaled grid

    t_i = s·u_i / (1 + (s − 1)·u_i),   u_i = linspace(1, 0, steps + 1),  s = rescale_t
    x_{t_{i+1}} = x_{t_i} − (t_i − t_{i+1})·v̂(x_{t_i}, t_i)

with classifier-free guidance ``v̂ = (1 + w)·v(c) − w·v(∅)`` applied only when
``cfg_interval[0] ≤ t_i ≤ cfg_interval[1]`` (else ``v̂ = v(c)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SIGMA_MIN",
    "add_noise",
    "velocity_target",
    "sample_logit_normal_t",
    "timestep_schedule",
    "FlowEulerGuidanceIntervalSampler",
    "SamplerOutput",
    "pad_condition",
    "drop_condition",
]

SIGMA_MIN = 1e-5


def add_noise(x0: Tensor, t: Tensor, eps: Tensor, sigma_min: float = SIGMA_MIN) -> Tensor:
    """``x_t = (1 − t)·x0 + (σ_min + (1 − σ_min)·t)·ε``; ``t (B,)`` broadcasts over ``x0 (B, ...)``."""
    t = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * eps


def velocity_target(x0: Tensor, eps: Tensor, sigma_min: float = SIGMA_MIN) -> Tensor:
    """``v = (1 − σ_min)·ε − x0`` (the time derivative of :func:`add_noise`)."""
    return (1 - sigma_min) * eps - x0


def sample_logit_normal_t(
    n: int, mean: float = 1.0, std: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """``t = sigmoid(N(mean, std))``, shape ``(n,)`` (TRELLIS ``logitNormal`` t schedule)."""
    return torch.sigmoid(torch.randn(n, generator=generator) * std + mean)


def timestep_schedule(steps: int, rescale_t: float = 1.0) -> np.ndarray:
    """``steps + 1`` times from 1 to 0: ``s·u / (1 + (s − 1)·u)``, ``u = linspace(1, 0, steps + 1)``."""
    u = np.linspace(1.0, 0.0, steps + 1)
    return rescale_t * u / (1 + (rescale_t - 1) * u)


def pad_condition(cond: Tensor, mask: Tensor | None, length: int) -> tuple[Tensor, Tensor]:
    """Zero-pad ``cond (B, L, D)`` / ``mask (B, L)`` to ``length`` tokens (padding masked out)."""
    b, n, d = cond.shape
    if mask is None:
        mask = torch.ones((b, n), dtype=torch.bool, device=cond.device)
    if n >= length:
        return cond, mask.bool()
    pad = cond.new_zeros((b, length - n, d))
    return torch.cat([cond, pad], 1), torch.cat([mask.bool(), mask.new_zeros((b, length - n)).bool()], 1)


def drop_condition(
    cond: Tensor, mask: Tensor, null_cond: Tensor, null_mask: Tensor, drop: Tensor
) -> tuple[Tensor, Tensor]:
    """Replace rows ``drop (B,) bool`` of ``cond (B, L, D)`` by the null condition ``(1, L0, D)``."""
    length = max(cond.shape[1], null_cond.shape[1])
    cond, mask = pad_condition(cond, mask, length)
    null_cond, null_mask = pad_condition(null_cond, null_mask, length)
    d = drop.to(cond.device)
    cond = torch.where(d[:, None, None], null_cond.to(cond.dtype).expand_as(cond), cond)
    mask = torch.where(d[:, None], null_mask.expand_as(mask), mask)
    return cond, mask


@dataclass
class SamplerOutput:
    """``samples``: x at t = 0; ``pred_x_0``: the x0 predictions of every step when recorded."""

    samples: Tensor
    pred_x_0: list[Tensor] = field(default_factory=list)


def _expand(x: Tensor, b: int) -> Tensor:
    return x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x


class FlowEulerGuidanceIntervalSampler:
    """Euler sampler for rectified flow with CFG inside an interval (TRELLIS's sampler of that name).

    Args:
        sigma_min: σ_min of the forward process.

    ``model(x_t, 1000·t, cond, cond_mask, **kwargs) → v``. Tensor kwargs with batch dimension B
    (e.g. stage 2's ``coords`` and ``mask``) are duplicated for the guided batch.
    """

    def __init__(self, sigma_min: float = SIGMA_MIN):
        self.sigma_min = sigma_min

    def _v_to_xstart(self, x_t: Tensor, t: float, v: Tensor) -> Tensor:
        # x0 = (1 − σ_min)·x_t − (σ_min + (1 − σ_min)·t)·v
        return (1 - self.sigma_min) * x_t - (self.sigma_min + (1 - self.sigma_min) * t) * v

    @staticmethod
    def _inference_model(
        model: Callable[..., Tensor], x_t: Tensor, t: float, cond: Tensor, cond_mask: Tensor | None, **kwargs
    ) -> Tensor:
        b = x_t.shape[0]
        tt = torch.full((b,), 1000.0 * t, device=x_t.device, dtype=torch.float32)
        cond = _expand(cond, b)
        cond_mask = None if cond_mask is None else _expand(cond_mask, b)
        return model(x_t, tt, cond, cond_mask, **kwargs)

    def guided_velocity(
        self,
        model: Callable[..., Tensor],
        x_t: Tensor,
        t: float,
        cond: Tensor,
        cond_mask: Tensor | None,
        neg_cond: Tensor,
        neg_cond_mask: Tensor | None,
        cfg_strength: float,
        cfg_interval: Sequence[float],
        **kwargs,
    ) -> Tensor:
        """``(1 + w)·v(c) − w·v(∅)`` inside ``cfg_interval``, else ``v(c)``; one batched forward of 2B."""
        if cfg_strength == 0 or not (cfg_interval[0] <= t <= cfg_interval[1]):
            return self._inference_model(model, x_t, t, cond, cond_mask, **kwargs)
        b = x_t.shape[0]
        cond, neg_cond = _expand(cond, b), _expand(neg_cond, b)
        cond_mask = None if cond_mask is None else _expand(cond_mask, b)
        neg_cond_mask = None if neg_cond_mask is None else _expand(neg_cond_mask, b)
        length = max(cond.shape[1], neg_cond.shape[1])
        c, cm = pad_condition(cond, cond_mask, length)
        n, nm = pad_condition(neg_cond.to(cond.dtype), neg_cond_mask, length)
        kw2 = {
            k: torch.cat([v, v]) if isinstance(v, Tensor) and v.shape[:1] == (b,) else v
            for k, v in kwargs.items()
        }
        out = self._inference_model(
            model, torch.cat([x_t, x_t]), t, torch.cat([c, n]), torch.cat([cm, nm]), **kw2
        )
        pred, neg_pred = out.chunk(2)
        return (1 + cfg_strength) * pred - cfg_strength * neg_pred

    @torch.no_grad()
    def sample(
        self,
        model: Callable[..., Tensor],
        noise: Tensor,
        cond: Tensor,
        neg_cond: Tensor,
        steps: int = 25,
        rescale_t: float = 1.0,
        cfg_strength: float = 3.0,
        cfg_interval: Sequence[float] = (0.0, 1.0),
        cond_mask: Tensor | None = None,
        neg_cond_mask: Tensor | None = None,
        record: bool = False,
        **kwargs,
    ) -> SamplerOutput:
        """Integrate from ``noise`` (t = 1) to t = 0.

        Args:
            model: the flow model.
            noise: ``x_1 (B, ...)``.
            cond / neg_cond: text condition ``(B or 1, L, D)`` and the null condition ``(1, L0, D)``.
            steps: Euler steps.
            rescale_t: time-grid warp s (> 1 spends more steps near t = 1).
            cfg_strength: w.
            cfg_interval: ``(t_lo, t_hi)`` where CFG is applied.
            cond_mask / neg_cond_mask: ``(B, L)`` key masks of the conditions.
            record: keep every step's x0 prediction.
            **kwargs: extra model inputs (stage 2: ``coords``, ``mask``).
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        x = noise
        ts = timestep_schedule(steps, rescale_t)
        out = SamplerOutput(samples=noise)
        for t, t_prev in zip(ts[:-1], ts[1:], strict=True):
            v = self.guided_velocity(
                model,
                x,
                float(t),
                cond,
                cond_mask,
                neg_cond,
                neg_cond_mask,
                cfg_strength,
                cfg_interval,
                **kwargs,
            )
            if record:
                out.pred_x_0.append(self._v_to_xstart(x, float(t), v))
            x = x - float(t - t_prev) * v
        out.samples = x
        return out
