"""Transformer blocks of mini TRELLIS, with TRELLIS's module names.

The names matter: LoRA targets (``to_qkv``, ``to_q``, ``to_kv``, ``to_out``) are the same strings
for this model and for real TRELLIS (``trellis/modules/attention/modules.py``,
``trellis/modules/transformer/modulated.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TimestepEmbedder",
    "MultiHeadAttention",
    "FeedForwardNet",
    "ModulatedTransformerCrossBlock",
    "AbsolutePositionEmbedder",
]


class TimestepEmbedder(nn.Module):
    """Scalar timestep → vector: sinusoidal frequencies + MLP (DiT / TRELLIS).

    ``emb(t) = MLP([cos(t·f_k), sin(t·f_k)])``, ``f_k = exp(−ln(max_period)·k / (F/2))``.
    The flow models receive ``t`` scaled to ``[0, 1000]`` as TRELLIS does.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """``(B,)`` → ``(B, dim)`` sinusoidal embedding."""
        half = dim // 2
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: Tensor) -> Tensor:
        """``t (B,)`` in ``[0, 1000]`` → ``(B, hidden_size)``."""
        freq = self.timestep_embedding(t, self.frequency_embedding_size, self.max_period)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class AbsolutePositionEmbedder(nn.Module):
    """Fixed sinusoidal embedding of ``in_channels``-D coordinates (TRELLIS ``AbsolutePositionEmbedder``).

    Each coordinate axis gets ``channels // in_channels`` sin/cos features; the rest is zero-padded.
    """

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels = channels
        self.in_channels = in_channels
        self.freq_dim = channels // in_channels // 2
        freqs = 1.0 / (10000 ** (torch.arange(self.freq_dim, dtype=torch.float32) / max(self.freq_dim, 1)))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x (..., in_channels)`` float coordinates → ``(..., channels)``."""
        shape = x.shape[:-1]
        out = x.reshape(-1, 1).float() * self.freqs[None]
        out = torch.cat([out.sin(), out.cos()], dim=-1).reshape(*shape, -1)
        if out.shape[-1] < self.channels:
            out = F.pad(out, (0, self.channels - out.shape[-1]))
        return out


def _key_mask(mask: Tensor | None) -> Tensor | None:
    """``(B, Tk)`` bool (True = attend) → SDPA boolean mask ``(B, 1, 1, Tk)``."""
    return None if mask is None else mask[:, None, None, :].bool()


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with TRELLIS's parameter names.

    Self: ``to_qkv: (B, T, C) → (B, T, 3C)``; cross: ``to_q: C → C``, ``to_kv: C_ctx → 2C``;
    both end in ``to_out: C → C``. ``softmax(QKᵀ/√d_h)V`` per head, with an optional key padding
    mask ``(B, Tk)`` (True = real token). Masked keys get exactly zero weight, so padding never
    changes the output of real tokens.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        ctx_channels: int | None = None,
        type: str = "self",  # noqa: A002 — TRELLIS's argument name
        qkv_bias: bool = True,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        if type not in ("self", "cross"):
            raise ValueError(f"type must be 'self' or 'cross', got {type!r}")
        self.channels = channels
        self.num_heads = num_heads
        self.head_dim = channels // num_heads
        self._type = type
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        if type == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        self.qk_rms_norm = qk_rms_norm
        if qk_rms_norm:
            self.q_rms_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
            self.k_rms_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.to_out = nn.Linear(channels, channels)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Attention.

        Args:
            x: queries ``(B, T, C)``.
            context: keys/values ``(B, L, C_ctx)`` for cross-attention (ignored for self).
            mask: key padding mask ``(B, T)`` (self) or ``(B, L)`` (cross), True = attend.

        Returns:
            ``(B, T, C)``.
        """
        if self._type == "self":
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        else:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if self.qk_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(mask))
        h = h.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.channels)
        return self.to_out(h)


class FeedForwardNet(nn.Module):
    """``Linear(C, rC) → GELU(tanh) → Linear(rC, C)`` (named ``mlp`` as in TRELLIS)."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class ModulatedTransformerCrossBlock(nn.Module):
    """adaLN-modulated block: self-attention, cross-attention to text, MLP (TRELLIS / DiT).

    With ``(shift_a, scale_a, gate_a, shift_m, scale_m, gate_m) = adaLN_modulation(c)``::

        x = x + gate_a · SelfAttn(LN(x)·(1 + scale_a) + shift_a)
        x = x + CrossAttn(LN(x), text)
        x = x + gate_m · MLP(LN(x)·(1 + scale_m) + shift_m)

    ``adaLN_modulation``'s last layer starts at zero, so each block starts as the identity.
    """

    def __init__(
        self,
        channels: int,
        ctx_channels: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qk_rms_norm: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = MultiHeadAttention(channels, num_heads, type="self", qk_rms_norm=qk_rms_norm)
        self.cross_attn = MultiHeadAttention(channels, num_heads, ctx_channels=ctx_channels, type="cross")
        self.mlp = FeedForwardNet(channels, mlp_ratio)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(
        self,
        x: Tensor,
        mod: Tensor,
        context: Tensor,
        x_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """``x (B, T, C)``, ``mod (B, C)``, ``context (B, L, C_ctx)``, masks ``(B, T)`` / ``(B, L)`` → ``(B, T, C)``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(mod).chunk(
            6, dim=1
        )
        h = self.norm1(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa[:, None] * self.self_attn(h, mask=x_mask)
        x = x + self.cross_attn(self.norm2(x), context, mask=context_mask)
        h = self.norm3(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.mlp(h)
