"""Token refocusing at sampling time: strengthen the cross-attention to chosen prompt words.

A training-free repair in the spirit of Grounded-Dreamer's attention refocusing: while a generator
samples, every cross-attention of the chosen stages multiplies the attention weight of the chosen
text tokens by a factor ``f`` and renormalises, for the sampling times ``t`` inside an interval::

    a'_j = f_j·a_j / Σ_k f_k·a_k      ⇔      softmax(q·k_j/√d + log f_j)

It works on any generator whose flow transformers use TRELLIS's attention layout (``to_q``,
``to_kv``, ``to_out`` in a ``MultiHeadAttention`` of type ``"cross"``): mini TRELLIS, real
TRELLIS's dense stage 1 and its sparse stage 2 (``SparseMultiHeadAttention``, whose attention
kernel takes no bias: the bias rides on an extra head channel, see
:func:`_refocused_sparse_attention`). Nothing in the model code changes: a forward pre-hook on
each flow model reads the step's ``t`` and decides which batch rows are the prompts to refocus, and each
cross-attention module's ``forward`` is wrapped (attention-processor style) only while the context
manager is open.

Batch rows are matched to prompts by the content of their text condition (a fixed random
projection of the features), so the hook needs no cooperation from the sampler: CFG batches that
stack ``[cond; uncond]`` (mini TRELLIS) and separate unconditional passes (TRELLIS) both work, and
the unconditional rows are never refocused.

Usage::

    gen = MiniTrellisGenerator.from_pretrained()
    with Refocuser(gen, {"a narrow red vase": {"narrow": 2.0}}) as rf:
        assets = gen.generate(["a narrow red vase"], num_samples=4)
    rf.report.rows[0]["status"]  # 'ok'
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "RefocusConfig",
    "RefocusError",
    "RefocusReport",
    "Refocuser",
    "RefocusedGenerator",
    "parse_refocus",
    "word_token_positions",
    "register_text_side",
    "targets_from_audit",
]

#: Relative tolerance when matching a batch row's text condition to a prompt's.
_MATCH_RTOL = 1e-4


class RefocusError(ValueError):
    """Bad refocus input (a word not in its prompt, a factor <= 0, an unknown stage)."""


@dataclass
class RefocusConfig:
    """Where and how strongly refocusing acts.

    Args:
        t_interval: sampling times ``(t_lo, t_hi)`` (t = 1 is noise, as in ``cfg_interval``) whose
            steps are refocused; default all steps.
        stages: which flow models (keys of ``generator.flow_models``) are refocused.
        max_factor: cap on a factor; larger factors are clamped with a warning, so that the chosen
            tokens cannot take all the attention (the softmax renormalises the rest).
    """

    t_interval: tuple[float, float] = (0.0, 1.0)
    stages: tuple[str, ...] = ("stage1", "stage2")
    max_factor: float = 8.0

    def __post_init__(self) -> None:
        lo, hi = (float(x) for x in self.t_interval)
        if not (0.0 <= lo <= hi <= 1.0):
            raise RefocusError(f"refocus t_interval: must satisfy 0 <= lo <= hi <= 1, got {self.t_interval}")
        self.t_interval = (lo, hi)
        self.stages = tuple(self.stages)
        if not self.stages:
            raise RefocusError("refocus stages: name at least one stage")
        if not self.max_factor >= 1.0:
            raise RefocusError(f"refocus max_factor: must be >= 1, got {self.max_factor}")


@dataclass
class RefocusReport:
    """One row per (prompt, word): ``prompt``, ``word``, ``factor``, ``tokens`` (positions in the
    generator's text encoding) and ``status`` (``ok`` / ``no-token`` / ``no-word``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    #: forward passes in which at least one row was refocused, per stage
    active_calls: dict[str, int] = field(default_factory=dict)

    def missing(self) -> list[dict[str, Any]]:
        """Rows whose word has no token to refocus."""
        return [r for r in self.rows if r["status"] != "ok"]


# --------------------------------------------------------------------------------- parsing
def _check_factor(item: str, factor: float) -> float:
    if not (isinstance(factor, int | float) and math.isfinite(factor)) or factor <= 0:
        raise RefocusError(f"refocus {item}: factor must be a number > 0, got {factor!r}")
    return float(factor)


def parse_refocus(items: Sequence[str]) -> dict[str, float]:
    """``["narrow=2.0", "red=1.5"]`` → ``{"narrow": 2.0, "red": 1.5}``.

    Raises:
        RefocusError: an item without ``=``, with an empty word, or with a factor that is not a
            number > 0; the message names the item.
    """
    out: dict[str, float] = {}
    for item in items:
        word, sep, value = item.rpartition("=")
        word = word.strip()
        if not sep or not word:
            raise RefocusError(f"refocus {item!r}: expected WORD=FACTOR, e.g. narrow=2.0")
        try:
            factor = float(value)
        except ValueError:
            raise RefocusError(f"refocus {item!r}: factor {value!r} is not a number") from None
        out[word] = _check_factor(repr(item), factor)
    return out


def _word_spans(prompt: str, word: str) -> list[tuple[int, int]]:
    pattern = r"(?<![\w])" + re.escape(word.strip()) + r"(?![\w])"
    return [m.span() for m in re.finditer(pattern, prompt, flags=re.IGNORECASE)]


def word_token_positions(prompt: str, word: str, offsets: Sequence[Sequence[int]]) -> list[int] | None:
    """Positions of the tokens that cover ``word`` in ``prompt``.

    Args:
        prompt: the prompt text.
        word: a word or phrase, matched case-insensitively on word boundaries.
        offsets: ``(T, 2)`` character spans of the generator's tokens (a tokenizer's
            ``offset_mapping``; special and padding tokens have empty spans).

    Returns:
        Token positions (possibly empty when the word lies beyond the encoder's token limit), or
        None when the word does not occur in the prompt.
    """
    spans = _word_spans(prompt, word)
    if not spans:
        return None
    pos = []
    for i, (s, e) in enumerate(offsets):
        s, e = int(s), int(e)
        if e > s and any(s < we and e > ws for ws, we in spans):
            pos.append(i)
    return pos


# ------------------------------------------------------------------- generator text sides
#: generator name → function(generator, prompt) → (features (T, D), offsets (T, 2)) of exactly the
#: condition the generator passes to its flow models for that prompt.
_TEXT_SIDES: dict[str, Callable[[Any, str], tuple[Tensor, list[tuple[int, int]]]]] = {}


def register_text_side(name: str):
    """Register how generator ``name`` encodes a prompt (features + token character spans)."""

    def deco(fn):
        _TEXT_SIDES[name] = fn
        return fn

    return deco


def _encoder_text_side(gen: Any, prompt: str) -> tuple[Tensor, list[tuple[int, int]]]:
    """Generators that hold a debias3d :class:`~debias3d.models.text_encoder.TextEncoder`."""
    enc = gen.text_encoder
    tok = enc.tokenize([prompt])
    keep = enc.condition_mask(tok["attention_mask"])[0].cpu()
    offsets = [tuple(o) for o, k in zip(tok["offset_mapping"][0].tolist(), keep.tolist(), strict=True) if k]
    feats = enc.encode_one_by_one([prompt])[0]
    return feats, offsets


@register_text_side("trellis")
def _trellis_text_side(gen: Any, prompt: str) -> tuple[Tensor, list[tuple[int, int]]]:
    """TRELLIS-text: ``pipeline.encode_text`` (CLIP, padded to 77, every position attended)."""
    pipe = gen.pipeline
    tok = pipe.text_cond_model["tokenizer"](
        [prompt], max_length=77, padding="max_length", truncation=True, return_offsets_mapping=True
    )
    feats = pipe.encode_text([prompt])[0]
    return feats, [tuple(o) for o in tok["offset_mapping"][0]]


def _text_side(gen: Any, prompt: str) -> tuple[Tensor, list[tuple[int, int]]]:
    fn = _TEXT_SIDES.get(getattr(gen, "name", ""))
    if fn is not None:
        return fn(gen, prompt)
    if hasattr(gen, "text_encoder"):
        return _encoder_text_side(gen, prompt)
    raise RefocusError(f"generator {getattr(gen, 'name', type(gen).__name__)!r} has no known text encoder")


# ------------------------------------------------------------------------------ the hooks
def _is_cross_attention(m: nn.Module) -> bool:
    return getattr(m, "_type", None) == "cross" and all(hasattr(m, n) for n in ("to_q", "to_kv", "to_out"))


def _refocused_attention(
    module: nn.Module, x: Tensor, context: Tensor, bias: Tensor, mask: Tensor | None
) -> Tensor:
    """TRELLIS-layout cross-attention with a per-key logit bias.

    ``x (B, T, C)``, ``context (B, L, C_ctx)``, ``bias (B, L)`` (``log f`` at refocused tokens),
    ``mask (B, L)`` True = attend → ``(B, T, C)``. Uses the module's own projections and, when it
    has them, its q/k RMS norms (applied over ``(…, H, d)`` as both codebases do).
    """
    b, t, c = x.shape
    n_heads = module.num_heads
    lk = context.shape[1]
    q = module.to_q(x).reshape(b, t, n_heads, -1)
    kv = module.to_kv(context).reshape(b, lk, 2, n_heads, -1)
    k, v = kv.unbind(dim=2)
    if getattr(module, "qk_rms_norm", False):
        q, k = module.q_rms_norm(q), module.k_rms_norm(k)
    add = bias[:, :lk].to(q.dtype)
    if mask is not None:
        add = add.masked_fill(~mask.bool(), float("-inf"))
    h = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=add[:, None, None, :]
    )
    return module.to_out(h.transpose(1, 2).reshape(b, t, c))


def _is_sparse(x: Any) -> bool:
    """A TRELLIS ``SparseTensor`` (duck-typed: the package is optional)."""
    return not isinstance(x, Tensor) and all(hasattr(x, n) for n in ("feats", "replace", "layout"))


def _sparse_kernel(module: nn.Module) -> Callable:
    """The ``sparse_scaled_dot_product_attention`` that ``module``'s own forward calls."""
    for cls in type(module).__mro__:
        fn = getattr(sys.modules.get(cls.__module__), "sparse_scaled_dot_product_attention", None)
        if fn is not None:
            return fn
    raise RuntimeError(
        f"refocus: {type(module).__name__} has no sparse_scaled_dot_product_attention in its module"
    )


def _refocused_sparse_attention(module: nn.Module, x: Any, context: Tensor, bias: Tensor) -> Any:
    """TRELLIS ``SparseMultiHeadAttention`` (type ``"cross"``) with a per-key logit bias.

    ``x`` a ``SparseTensor`` of ``B`` sequences, ``context (B, L, C_ctx)`` dense, ``bias (B, L)``
    (``log f``) → ``SparseTensor`` like the module's own forward. The attention is computed by the
    module's own kernel (``sparse_scaled_dot_product_attention``: flash-attn varlen or xformers),
    which takes no bias; the bias is carried exactly by extra head channels. With ``d`` the head
    width and ``d'`` the padded one (a multiple of 8, as the kernels want)::

        q' = [q·√(d'/d), 1, 0…],  k' = [k, √d'·log f_j, 0…],  v' = [v, 0…]
        q'·k'_j / √d' = q·k_j / √d + log f_j

    so the kernel's default scale ``1/√d'`` gives the refocused softmax, and the output is sliced
    back to ``d`` channels.
    """
    kernel = _sparse_kernel(module)
    n_heads = module.num_heads
    b, lk = context.shape[:2]
    q = module._reshape_chs(module._linear(module.to_q, x), (n_heads, -1))  # feats (T, H, d)
    kv = module.to_kv(context).reshape(b, lk, 2, n_heads, -1)  # (B, L, 2, H, d)
    k, v = kv.unbind(dim=2)
    if getattr(module, "qk_rms_norm", False):
        q = module.q_rms_norm(q)
        k = module.k_rms_norm(k)
    qf = q.feats
    d = qf.shape[-1]
    dp = (d + 1 + 7) // 8 * 8
    pad = dp - d
    dtype = qf.dtype
    q_extra = qf.new_zeros(*qf.shape[:-1], pad)
    q_extra[..., 0] = 1.0
    qp = torch.cat([qf * math.sqrt(dp / d), q_extra], dim=-1)
    k_extra = k.new_zeros(*k.shape[:-1], pad)
    k_extra[..., 0] = (math.sqrt(dp) * bias[:, :lk].float()).to(k.dtype)[:, :, None]
    kp = torch.cat([k, k_extra], dim=-1)
    vp = torch.cat([v, v.new_zeros(*v.shape[:-1], pad)], dim=-1)
    h = kernel(q.replace(qp.to(dtype)), torch.stack([kp, vp], dim=2).to(dtype))
    h = h.replace(h.feats[..., :d].contiguous())
    h = module._reshape_chs(h, (-1,))
    return module._linear(module.to_out, h)


@dataclass
class _Target:
    prompt: str
    feats: Tensor  # (T, D)
    bias: Tensor  # (T,) log-factors
    norm: float


class Refocuser:
    """Context manager that refocuses the cross-attention of a generator while it samples.

    Args:
        generator: a generator with ``flow_models`` and a text encoder (``mini-trellis``,
            ``trellis``).
        targets: prompt → {word: factor}. Factors must be > 0; a factor above
            ``config.max_factor`` is clamped.
        config: :class:`RefocusConfig`.
        strict: a word that does not occur in its prompt raises :class:`RefocusError` (True) or is
            reported with status ``no-word`` (False, the audit-driven mode).

    A word that occurs in the prompt but has no token (cut by the encoder's token limit) is
    reported with status ``no-token`` and a warning; its prompt samples unchanged.
    """

    def __init__(
        self,
        generator: Any,
        targets: Mapping[str, Mapping[str, float]],
        config: RefocusConfig | None = None,
        strict: bool = True,
    ):
        self.generator = generator
        self.config = config or RefocusConfig()
        self.report = RefocusReport()
        flows = generator.flow_models
        unknown = [s for s in self.config.stages if s not in flows]
        if unknown:
            raise RefocusError(f"refocus stages {unknown}: the generator's stages are {sorted(flows)}")
        self._targets: list[_Target] = []
        for prompt, words in targets.items():
            self._add_target(prompt, words, strict)
        self._handles: list[Any] = []
        self._wrapped: list[nn.Module] = []
        self._state: dict[str, Tensor | None] = {}
        self._proj: dict[tuple, tuple] = {}

    # -- planning ----------------------------------------------------------------------------
    def _add_target(self, prompt: str, words: Mapping[str, float], strict: bool) -> None:
        feats, offsets = _text_side(self.generator, prompt)
        feats = feats.detach().float().cpu()
        bias = torch.zeros(feats.shape[0])
        for word, factor in words.items():
            factor = _check_factor(f"word {word!r} of prompt {prompt!r}", factor)
            if factor > self.config.max_factor:
                logger.warning(
                    "refocus word %r of prompt %r: factor %.3g capped at %.3g",
                    word,
                    prompt,
                    factor,
                    self.config.max_factor,
                )
                factor = self.config.max_factor
            pos = word_token_positions(prompt, word, offsets)
            row = {"prompt": prompt, "word": word, "factor": factor, "tokens": pos or []}
            if pos is None:
                if strict:
                    raise RefocusError(f"refocus word {word!r} is not in the prompt {prompt!r}")
                row["status"] = "no-word"
            elif not pos:
                logger.warning(
                    "refocus word %r of prompt %r has no token in the generator's text encoding "
                    "(cut at its token limit); the prompt samples unchanged",
                    word,
                    prompt,
                )
                row["status"] = "no-token"
            else:
                row["status"] = "ok"
                bias[pos] = math.log(factor)
            self.report.rows.append(row)
        if bool((bias != 0).any()):
            self._targets.append(_Target(prompt, feats, bias, float(feats.norm())))

    # -- row matching -----------------------------------------------------------------------
    def _row_bias(self, cond: Tensor) -> Tensor | None:
        """``cond (B, L, D)`` → ``(B, L)`` log-factors for rows that are target prompts, or None."""
        b, length, dim = cond.shape
        fit = [tg for tg in self._targets if tg.feats.shape[0] <= length]
        if not fit:
            return None
        key = (length, dim, str(cond.device))
        if key not in self._proj:
            g = torch.Generator().manual_seed(1234)
            p = torch.randn((2, length, dim), generator=g)
            # Zero padding adds nothing to a projection, so a target's signature is the same
            # whatever length the batch is padded to.
            tsig = torch.stack([torch.einsum("ld,sld->s", tg.feats, p[:, : tg.feats.shape[0]]) for tg in fit])
            tol = torch.tensor([_MATCH_RTOL * (tg.norm + 1.0) for tg in fit])
            self._proj[key] = (p.to(cond.device), tsig, tol, fit)
        p, tsig, tol, fit = self._proj[key]
        sig = torch.einsum("bld,sld->bs", cond.float(), p).cpu()  # (B, 2)
        hit = ((sig[:, None, :] - tsig[None]).abs() <= tol[None, :, None]).all(dim=2)  # (B, N_t)
        if not bool(hit.any()):
            return None
        out = torch.zeros((b, length))
        for r, j in hit.nonzero().tolist():
            n = fit[j].feats.shape[0]
            out[r, :n] = fit[j].bias
        return out.to(cond.device)

    # -- install / remove -------------------------------------------------------------------
    def _pre_hook(self, stage: str):
        lo, hi = self.config.t_interval

        def hook(module: nn.Module, args: tuple, kwargs: dict):
            t = args[1] if len(args) > 1 else kwargs.get("t")
            cond = args[2] if len(args) > 2 else kwargs.get("cond")
            self._state[stage] = None
            if t is None or cond is None or not isinstance(cond, Tensor) or cond.dim() != 3:
                return None
            tt = float(t.reshape(-1)[0]) / 1000.0 if isinstance(t, Tensor) else float(t) / 1000.0
            if not (lo <= tt <= hi):
                return None
            bias = self._row_bias(cond)
            if bias is not None:
                self._state[stage] = bias
                self.report.active_calls[stage] = self.report.active_calls.get(stage, 0) + 1
            return None

        return hook

    def _wrap(self, stage: str, module: nn.Module) -> None:
        original = module.forward

        def forward(x, context=None, *args, **kwargs):
            bias = self._state.get(stage)
            sparse = _is_sparse(x)
            if bias is None or not isinstance(context, Tensor) or not (sparse or isinstance(x, Tensor)):
                return original(x, context, *args, **kwargs)
            if bias.shape[0] != x.shape[0] or context.shape[0] != x.shape[0]:
                raise RuntimeError(
                    f"refocus: a cross-attention got {x.shape[0]} rows but its flow model {bias.shape[0]}"
                )
            if sparse:
                return _refocused_sparse_attention(module, x, context, bias)
            return _refocused_attention(module, x, context, bias, kwargs.get("mask"))

        module.forward = forward
        self._wrapped.append(module)

    def __enter__(self) -> Refocuser:
        if not self._targets:
            logger.warning("refocus: no prompt has a token to refocus; sampling is unchanged")
        flows = self.generator.flow_models
        for stage in self.config.stages:
            model = flows[stage]
            crosses = [m for m in model.modules() if _is_cross_attention(m)]
            if not crosses:
                logger.warning(
                    "refocus: stage %s has no TRELLIS-layout cross-attention; it is not refocused", stage
                )
                continue
            self._handles.append(model.register_forward_pre_hook(self._pre_hook(stage), with_kwargs=True))
            for m in crosses:
                self._wrap(stage, m)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for m in self._wrapped:
            del m.forward  # back to the class's forward
        self._handles.clear()
        self._wrapped.clear()
        self._state.clear()


# ------------------------------------------------------------------------------ audit mode
def targets_from_audit(audit_dir: Any, factor: float, prompts: Sequence[str] | None = None) -> dict:
    """prompt → {w_l: factor} from an audit's ``prompts.parquet`` (the audit's selected w_l).

    Prompts without a w_l are left out (the caller reports them). ``prompts`` restricts the set.
    """
    from pathlib import Path

    import pandas as pd

    path = Path(audit_dir) / "prompts.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no prompts.parquet (is this an audit folder?)")
    _check_factor(f"factor of audit {str(audit_dir)!r}", factor)
    df = pd.read_parquet(path)
    for col in ("prompt", "w_l"):
        if col not in df.columns:
            raise RefocusError(f"{path}: has no column {col!r}")
    wanted = None if prompts is None else set(prompts)
    out: dict[str, dict[str, float]] = {}
    for prompt, wl in zip(df["prompt"], df["w_l"], strict=True):
        if wanted is not None and prompt not in wanted:
            continue
        if isinstance(wl, str) and wl.strip():
            out.setdefault(str(prompt), {})[wl.strip()] = float(factor)
    return out


class RefocusedGenerator:
    """A generator that refocuses ``words`` wherever they occur in the prompts it is asked for.

    Every other attribute is the wrapped generator's, so it drops into anything that calls
    ``generate(prompts, seeds, num_samples, ...)`` (the evaluation, the demo). Prompts that contain
    none of the words sample unchanged. ``reports`` keeps each call's :class:`RefocusReport`.

    Args:
        generator: the generator to wrap.
        words: words to refocus (e.g. the audit's neglected words).
        factor: attention factor (> 0; capped by ``config.max_factor``).
        config: :class:`RefocusConfig`.
    """

    def __init__(
        self, generator: Any, words: Sequence[str], factor: float, config: RefocusConfig | None = None
    ):
        self.generator = generator
        self.words = sorted({w.strip() for w in words if w and w.strip()})
        self.factor = _check_factor("factor", factor)
        self.config = config or RefocusConfig()
        self.reports: list[RefocusReport] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def targets(self, prompts: Sequence[str]) -> dict[str, dict[str, float]]:
        """prompt → {word: factor} for the words that occur in it."""
        out: dict[str, dict[str, float]] = {}
        for p in dict.fromkeys(prompts):
            hit = {w: self.factor for w in self.words if _word_spans(p, w)}
            if hit:
                out[p] = hit
        return out

    def generate(self, prompts: Sequence[str], *args: Any, **kwargs: Any) -> list:
        targets = self.targets(prompts)
        if not targets:
            return self.generator.generate(prompts, *args, **kwargs)
        with Refocuser(self.generator, targets, self.config, strict=False) as rf:
            out = self.generator.generate(prompts, *args, **kwargs)
        self.reports.append(rf.report)
        return out
