"""Gradient attribution of evaluator scores to prompt token embeddings (bias quantization).

The paper quantizes word-level bias by back-propagating the evaluator's predicted score ``q``
(local ``q_l`` or global ``q_g``) to the prompt token embeddings ``e_i``::

    e'_i = Σ_E |∂q / ∂e_i|                                    (Eq. 3 of the method summary)

:class:`GradientAttribution` is shaped like captum's attribution classes: it is built from a forward
function and its :meth:`~GradientAttribution.attribute` takes ``inputs``, ``baselines``,
``target``, ``additional_forward_args``, ``n_steps`` and ``internal_batch_size``. Three methods:

* ``grad`` — the paper's saliency, ``|∂q/∂e|`` element-wise (captum ``Saliency(abs=True)``);
* ``grad_x_input`` — ``e ⊙ ∂q/∂e`` (captum ``InputXGradient``);
* ``integrated_gradients`` — ``(e - e₀) ⊙ ∫₀¹ ∂q(e₀ + α(e - e₀))/∂e dα`` with Gauss–Legendre or
  trapezoid quadrature, the project's own code (completeness ``Σ attr = q(e) - q(e₀)`` is tested).

Everything is batched: ``grad`` costs one forward + backward for the whole batch; integrated
gradients run ``n_steps × B`` interpolated rows in chunks of ``internal_batch_size`` rows.

:class:`EvaluatorScore` turns a HyperScore-style evaluator into such a forward function
(``q_l`` = mean over a prompt's ``D`` samples), and :func:`attribute_prompts` runs the whole
thing for prompts and returns a :class:`TokenAttributionResult` that can draw token heatmaps and
write HTML (like captum's ``LLMAttributionResult.plot_token_attr``).

>>> import torch
>>> f = lambda x: (x ** 2).sum(dim=(1, 2))
>>> x = torch.ones(2, 3, 4)
>>> ig = GradientAttribution(f, method="integrated_gradients")
>>> attr, delta = ig.attribute(x, n_steps=8, return_convergence_delta=True)
>>> bool(torch.allclose(attr.sum(dim=(1, 2)), f(x), rtol=1e-4)), float(delta.abs().max()) < 1e-4
(True, True)
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "GradientAttribution",
    "EvaluatorScore",
    "TokenAttributionResult",
    "attribute_prompts",
    "make_baselines",
    "quadrature",
]

Method = Literal["grad", "grad_x_input", "integrated_gradients"]
METHODS: tuple[str, ...] = ("grad", "grad_x_input", "integrated_gradients")


def quadrature(n_steps: int, rule: str = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Points ``α_k`` in [0, 1] and weights ``w_k`` (Σ w_k = 1) for ``∫₀¹ f(α) dα ≈ Σ w_k f(α_k)``.

    Args:
        n_steps: number of points (>= 1; the trapezoid rule needs >= 2).
        rule: ``gausslegendre`` (exact for polynomials of degree 2n-1; captum's default) or
            ``riemann_trapezoid``.

    Returns:
        ``alphas`` (n_steps,), ``weights`` (n_steps,), float64.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n_steps)
        return torch.from_numpy((x + 1.0) / 2.0), torch.from_numpy(w / 2.0)
    if rule == "riemann_trapezoid":
        if n_steps < 2:
            raise ValueError("riemann_trapezoid needs n_steps >= 2")
        a = torch.linspace(0.0, 1.0, n_steps, dtype=torch.float64)
        w = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n_steps - 1)
        return a, w
    raise ValueError(f"unknown quadrature rule {rule!r}; expected gausslegendre or riemann_trapezoid")


def _select(out: Tensor, target: int | None) -> Tensor:
    """``(N,)`` or ``(N, K)`` forward output → ``(N,)`` scalar per row."""
    if out.dim() == 1:
        if target not in (None, 0):
            raise ValueError(f"forward returned (N,) scores but target={target}")
        return out
    if out.dim() == 2:
        if target is None:
            if out.shape[1] != 1:
                raise ValueError(f"forward returned (N, {out.shape[1]}) scores; pass target=<column>")
            return out[:, 0]
        return out[:, target]
    raise ValueError(f"forward must return (N,) or (N, K), got shape {tuple(out.shape)}")


def _index_args(args: tuple[Any, ...], idx: Tensor, n: int) -> tuple[Any, ...]:
    """Pick rows ``idx`` of every tensor argument whose first dim is the batch size ``n``."""
    return tuple(a[idx] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a for a in args)


class GradientAttribution:
    """Captum-shaped gradient attribution: built from a forward function, ``.attribute(...)``.

    Args:
        forward_func: ``f(inputs (B, T, E), *additional_forward_args) -> (B,)`` or ``(B, K)``
            scores; must be differentiable w.r.t. ``inputs``. Rows must be independent (the
            score of row ``b`` depends only on row ``b`` of every batched argument), which is what
            makes batching and chunking exact.
        method: ``grad`` (paper, Eq. 3), ``grad_x_input`` or ``integrated_gradients``.

    >>> import torch
    >>> w = torch.tensor([1.0, -2.0])
    >>> attr = GradientAttribution(lambda x: (x * w).sum(-1).sum(-1)).attribute(torch.ones(1, 3, 2))
    >>> attr[0, 0].tolist()   # |∂q/∂e| element-wise
    [1.0, 2.0]
    """

    def __init__(self, forward_func: Callable[..., Tensor], method: Method = "grad") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown attribution method {method!r}; expected one of {', '.join(METHODS)}")
        self.forward_func = forward_func
        self.method = method

    @property
    def multiplies_by_inputs(self) -> bool:
        """True for methods whose attributions scale with ``inputs - baselines`` (captum's term)."""
        return self.method != "grad"

    # ------------------------------------------------------------------------------- core
    def _grad_rows(
        self,
        inputs: Tensor,
        rows: Tensor,
        alphas: Tensor | None,
        baselines: Tensor | None,
        target: int | None,
        args: tuple[Any, ...],
        internal_batch_size: int | None,
        weights: Tensor | None = None,
    ) -> Tensor:
        """Σ over (step, row) pairs of ``w_step · ∂f/∂x`` evaluated at each pair's point.

        ``rows`` (R,) lists example indices; with ``alphas`` (S,) each example is evaluated at
        ``S`` interpolation points (step-major order), otherwise once at ``inputs`` itself.
        Returns ``(B, T, E)`` accumulated gradients (float64 accumulation for stable sums).
        """
        b = inputs.shape[0]
        s = 1 if alphas is None else int(alphas.shape[0])
        total = torch.zeros(inputs.shape, dtype=torch.float64, device=inputs.device)
        pairs = s * int(rows.shape[0])
        chunk = pairs if not internal_batch_size else max(1, int(internal_batch_size))
        for start in range(0, pairs, chunk):
            flat = torch.arange(start, min(start + chunk, pairs), device=inputs.device)
            step, ex = flat // rows.shape[0], rows[flat % rows.shape[0]]
            x = inputs[ex]
            if alphas is not None:
                assert baselines is not None
                a = alphas.to(inputs.device, inputs.dtype)[step].view(-1, *([1] * (inputs.dim() - 1)))
                x0 = baselines[ex]
                x = x0 + a * (x - x0)
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                out = _select(self.forward_func(x, *_index_args(args, ex, b)), target)
                (g,) = torch.autograd.grad(out.sum(), x)
            g = g.double()
            if weights is not None:
                g = g * weights.to(g.device)[step].view(-1, *([1] * (g.dim() - 1)))
            total.index_add_(0, ex, g)
        return total

    def attribute(
        self,
        inputs: Tensor,
        baselines: Tensor | float | None = None,
        target: int | None = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attributions of the (target) score to every element of ``inputs``.

        Args:
            inputs: ``(B, T, E)`` token embeddings (any shape with a leading batch dim works).
            baselines: reference ``e₀`` for ``integrated_gradients``: a tensor broadcastable to
                ``inputs`` or a scalar; default zeros (captum's default). Ignored by the others.
            target: column of a ``(B, K)`` forward output; ``None`` for ``(B,)`` outputs.
            additional_forward_args: extra positional arguments (a tuple, or one object); tensors
                whose first dim is ``B`` are indexed with the batch rows when chunking.
            n_steps: integration points for ``integrated_gradients`` (default 50).
            method: quadrature rule, ``gausslegendre`` (default) or ``riemann_trapezoid``.
            internal_batch_size: rows per forward pass (``n_steps × B`` rows are needed for
                integrated gradients); ``None`` = everything in one pass.
            return_convergence_delta: also return ``f(x) - f(e₀) - Σ attr`` per example
                (``(B,)``; zeros for ``grad``/``grad_x_input``, whose completeness is not defined).

        Returns:
            ``(B, T, E)`` attributions in ``inputs.dtype`` (``grad``: ``|∂q/∂e|``, non-negative;
            ``grad_x_input``: ``e ⊙ ∂q/∂e``; ``integrated_gradients``: ``(e-e₀) ⊙ avg grad``),
            and the ``(B,)`` delta when asked.
        """
        args = additional_forward_args
        if args is None:
            args = ()
        elif not isinstance(args, tuple):
            args = (args,)
        inputs = inputs.detach()
        b = inputs.shape[0]
        rows = torch.arange(b, device=inputs.device)
        if self.method == "integrated_gradients":
            if baselines is None:
                x0 = torch.zeros_like(inputs)
            elif isinstance(baselines, Tensor):
                x0 = baselines.detach().to(inputs.device, inputs.dtype).expand_as(inputs)
            else:
                x0 = torch.full_like(inputs, float(baselines))
            alphas, weights = quadrature(n_steps, method)
            avg = self._grad_rows(inputs, rows, alphas, x0, target, args, internal_batch_size, weights)
            attr = ((inputs - x0).double() * avg).to(inputs.dtype)
        else:
            x0 = None
            g = self._grad_rows(inputs, rows, None, None, target, args, internal_batch_size)
            attr = (g.abs() if self.method == "grad" else g * inputs.double()).to(inputs.dtype)
        if not return_convergence_delta:
            return attr
        if x0 is None:
            return attr, torch.zeros(b, dtype=inputs.dtype, device=inputs.device)
        with torch.no_grad():
            both = torch.cat([inputs, x0])
            both_args = tuple(
                torch.cat([a, a]) if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == b else a
                for a in args
            )
            out = _select(self.forward_func(both, *both_args), target).double()
        delta = (out[:b] - out[b:] - attr.double().flatten(1).sum(1)).to(inputs.dtype)
        return attr, delta


# ------------------------------------------------------------------------------------- evaluator
class EvaluatorScore:
    """Forward function ``(e, views, valid, mask) -> q`` over a HyperScore-style evaluator.

    Each prompt has ``D`` samples (meshes). The prompt's embeddings are shared by its samples, so
    ``q_l = (1/D) Σ_d q(x_n^d, e)`` (the paper's local score) is differentiable w.r.t. the single
    ``(T, E)`` embedding of the prompt.

    Args:
        evaluator: exposes ``score_from_embeddings(views, inputs_embeds, attention_mask) -> (N, K)``
            and ``dimensions``.
        dimension: which score column ``q`` is (``overall``, ``alignment``, ``geometry``, ``texture``).
        scale: multiplies ``q`` (``1 / N_prompts`` turns ``q_l`` into the prompt's share of ``q_g``).

    Call:
        ``inputs_embeds`` ``(B, T, E)``, ``views`` ``(B, D, V, 3, H, W)`` — or the evaluator's
        cached view features ``(B, D, N, C)`` (:func:`encode_sample_views`), which skip the image
        side —, ``valid`` ``(B, D)`` bool, ``attention_mask`` ``(B, T)`` → ``(B,)``. Samples with
        ``valid=False`` (unrenderable meshes) are left out of the mean; a prompt with no valid
        sample scores 0.
    """

    def __init__(self, evaluator: Any, dimension: str = "overall", scale: float = 1.0) -> None:
        dims = tuple(evaluator.dimensions)
        if dimension not in dims:
            raise ValueError(f"unknown dimension {dimension!r}; the evaluator has {', '.join(dims)}")
        self.evaluator = evaluator
        self.dimension = dimension
        self.column = dims.index(dimension)
        self.scale = float(scale)

    def all_dimensions(
        self, inputs_embeds: Tensor, views: Tensor, valid: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """``(B, K)`` local scores for every dimension (unscaled)."""
        s = self.per_sample(inputs_embeds, views, valid, attention_mask)
        w = valid.to(s.dtype)[..., None]
        return (s * w).sum(1) / w.sum(1).clamp_min(1.0)

    def per_sample(
        self, inputs_embeds: Tensor, views: Tensor, valid: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """``(B, D, K)`` scores of every sample on every dimension (unscaled; invalid samples too)."""
        from debias3d.models.evaluator.views import ViewBatch, ViewFeatures

        b, d = valid.shape
        mask = attention_mask.repeat_interleave(d, dim=0)
        if views.dim() == 4:  # cached features (B, D, N, C)
            vb: Any = ViewFeatures(views.flatten(0, 1), valid.flatten(), [])
        else:
            vb = ViewBatch(views.flatten(0, 1), valid.flatten(), [])
        ev = self.evaluator
        if hasattr(ev, "score_from_text"):
            # The text encoder runs once per prompt; its D samples share the features.
            text = ev.text_encoder.forward_embeds(inputs_embeds, attention_mask.to(inputs_embeds.device))
            s = ev.score_from_text(vb, text.repeat_interleave(d, dim=0), mask).view(b, d, -1)
        else:
            emb = inputs_embeds.repeat_interleave(d, dim=0)
            s = ev.score_from_embeddings(vb, emb, mask).view(b, d, -1)
        return s

    def __call__(self, inputs_embeds: Tensor, views: Tensor, valid: Tensor, attention_mask: Tensor) -> Tensor:
        return self.all_dimensions(inputs_embeds, views, valid, attention_mask)[:, self.column] * self.scale


def make_baselines(
    kind: str,
    input_ids: Tensor,
    inputs_embeds: Tensor,
    embed: Callable[[Tensor], Tensor],
    special: Tensor,
    pad_id: int,
) -> Tensor:
    """Integrated-gradients reference embeddings ``(B, T, E)``.

    Args:
        kind: ``zeros`` (captum's default) or ``pad``: every word token becomes the ``[PAD]``
            embedding while special tokens (``[CLS]``/``[SEP]``) keep theirs, so they get no
            attribution and the difference ``q(e) - q(e₀)`` is about the words only.
        input_ids: ``(B, T)``; inputs_embeds: ``(B, T, E)``; special: ``(B, T)`` bool.
        embed: the token embedding lookup; pad_id: the tokenizer's pad id.
    """
    if kind == "zeros":
        return torch.zeros_like(inputs_embeds)
    if kind == "pad":
        with torch.no_grad():
            pad = embed(torch.full_like(input_ids, int(pad_id))).to(inputs_embeds.dtype)
        return torch.where(special[..., None].to(inputs_embeds.device), inputs_embeds, pad).detach()
    raise ValueError(f"unknown baseline {kind!r}; expected zeros or pad")


# ------------------------------------------------------------------------------------- results
@dataclass
class TokenAttributionResult:
    """Token-level attributions of a batch of prompts, with plotting and HTML export.

    Attributes:
        prompts: ``B`` prompt texts.
        tokens: per prompt, its ``T_b`` real token strings (padding removed).
        token_attr: per prompt, ``(T_b,)`` float attributions, ``Σ_E`` of the element-wise
            attributions (for ``grad``: ``e'_i = Σ|∂q/∂e_i|``, Eq. 3).
        offsets: per prompt, ``(T_b, 2)`` character spans (``(0, 0)`` for special tokens).
        special: per prompt, ``(T_b,)`` bool, True for special tokens.
        method: attribution method.
        scores: ``(B,)`` the attributed score ``q`` of each prompt.
        delta: ``(B,)`` completeness error (integrated gradients), else zeros.
    """

    prompts: list[str]
    tokens: list[list[str]]
    token_attr: list[np.ndarray]
    offsets: list[np.ndarray]
    special: list[np.ndarray]
    method: str
    scores: np.ndarray
    delta: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.prompts)

    def words(self, index: int, aggregate: str = "sum", stop_words: Any = None) -> list[Any]:
        """Word-level attributions of prompt ``index`` (see :func:`debias3d.bias_audit.words.merge_tokens`)."""
        from debias3d.bias_audit.words import merge_tokens

        return merge_tokens(
            self.prompts[index],
            self.offsets[index],
            self.token_attr[index],
            self.special[index],
            aggregate,
            stop_words,
        )

    def plot_token_attr(self, index: int = 0, show: bool = False, words: bool = False, ax: Any = None) -> Any:
        """A token (or word) heatmap of prompt ``index`` with a colour bar (matplotlib ``Figure``).

        Mirrors captum's ``LLMAttributionResult.plot_token_attr``: one coloured cell per token.
        """
        from debias3d.bias_audit.report import heatmap_figure

        if words:
            ws = self.words(index)
            labels, values = [w.word for w in ws], [w.attr for w in ws]
        else:
            keep = ~self.special[index]
            labels = [t for t, k in zip(self.tokens[index], keep, strict=True) if k]
            values = list(self.token_attr[index][keep])
        fig = heatmap_figure(labels, values, title=f"{self.method}: {self.prompts[index]}", ax=ax)
        if show:
            import matplotlib.pyplot as plt

            plt.show()
        return fig

    def to_html(self, indices: Sequence[int] | None = None) -> str:
        """An HTML fragment: each prompt's tokens as spans shaded by attribution (escaped text)."""
        from debias3d.bias_audit.report import attr_colour

        rows = []
        for i in range(len(self)) if indices is None else indices:
            keep = ~self.special[i]
            vals = self.token_attr[i][keep]
            vmax = float(np.abs(vals).max()) if vals.size else 1.0
            spans = []
            for tok, v in zip([t for t, k in zip(self.tokens[i], keep, strict=True) if k], vals, strict=True):
                spans.append(
                    f'<span title="{float(v):.3g}" style="background:{attr_colour(float(v), vmax)};'
                    f'padding:1px 3px;margin:1px;border-radius:3px">{html.escape(tok)}</span>'
                )
            rows.append(f"<p><b>{html.escape(self.prompts[i])}</b><br>{''.join(spans)}</p>")
        return "\n".join(rows)


def _special_mask(tokenizer: Any, input_ids: Tensor, offsets: Tensor) -> Tensor:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for i in ids:
        special |= input_ids == i
    # Offsets (0, 0) mark special tokens in HF fast tokenizers too.
    return special | (offsets[..., 1] <= offsets[..., 0])


def encode_sample_views(evaluator: Any, views: Tensor, batch_size: int = 64) -> Tensor:
    """``(B, D, V, 3, H, W)`` views → the evaluator's cached view features ``(B, D, N, C)``.

    Evaluators without ``view_features`` (or already-encoded 4-d input) are returned unchanged, so
    :class:`EvaluatorScore` then runs the image side on every call.
    """
    if views.dim() != 6 or not hasattr(evaluator, "view_features"):
        return views
    b, d = views.shape[:2]
    vf = evaluator.view_features(views.flatten(0, 1), batch_size=batch_size)
    return vf.features.reshape(b, d, *vf.features.shape[1:])


def attribute_prompts(
    evaluator: Any,
    prompts: Sequence[str],
    views: Tensor,
    valid: Tensor,
    method: Method = "grad",
    dimension: str = "overall",
    scale: float = 1.0,
    n_steps: int = 32,
    baseline: str = "pad",
    internal_batch_size: int | None = None,
) -> TokenAttributionResult:
    """Attribute each prompt's local score ``q_l`` to its tokens, in one batched pass.

    Args:
        evaluator: HyperScore-style evaluator (``tokenize``, ``embed_tokens``,
            ``score_from_embeddings``, ``dimensions``).
        prompts: ``B`` prompts.
        views: ``(B, D, V, 3, H, W)`` views of each prompt's ``D`` samples, or their cached
            features ``(B, D, N, C)`` from :func:`encode_sample_views` (views are encoded here once
            per call otherwise).
        valid: ``(B, D)`` bool.
        method / dimension / n_steps / internal_batch_size: see :class:`GradientAttribution`.
        scale: ``1`` attributes ``q_l``; ``1/N`` attributes the prompt's share of ``q_g``.
        baseline: integrated-gradients reference, ``pad`` or ``zeros`` (:func:`make_baselines`).

    Returns:
        :class:`TokenAttributionResult`.
    """
    enc = evaluator.tokenize(list(prompts))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    offsets = enc["offset_mapping"]
    tokenizer = getattr(getattr(evaluator, "text_encoder", None), "tokenizer", None)
    special = _special_mask(tokenizer, ids, offsets)
    with torch.no_grad():
        emb = evaluator.embed_tokens(ids).detach()
    fwd = EvaluatorScore(evaluator, dimension, scale)
    attributor = GradientAttribution(fwd, method)
    feats = encode_sample_views(evaluator, views.to(emb.device))
    args = (feats, valid.to(emb.device), mask)
    baselines = None
    if method == "integrated_gradients":
        pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
        baselines = make_baselines(baseline, ids, emb, evaluator.embed_tokens, special, pad_id)
    attr, delta = attributor.attribute(
        emb,
        baselines=baselines,
        additional_forward_args=args,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        scores = fwd(emb, *args)
    per_token = attr.double().sum(-1)  # (B, T): Σ_E
    tokens_all = [
        tokenizer.convert_ids_to_tokens(row.tolist())
        if tokenizer is not None
        else [str(t) for t in row.tolist()]
        for row in ids
    ]
    out_tokens, out_attr, out_off, out_special = [], [], [], []
    for b in range(len(prompts)):
        keep = mask[b].bool().cpu()
        n = int(keep.sum())
        out_tokens.append(tokens_all[b][:n])
        out_attr.append(per_token[b].cpu().numpy()[:n])
        out_off.append(offsets[b].cpu().numpy()[:n])
        out_special.append(special[b].cpu().numpy()[:n])
    if not math.isfinite(float(per_token.sum())):
        logger.warning("attribution: non-finite attributions for some prompts")
    return TokenAttributionResult(
        list(prompts),
        out_tokens,
        out_attr,
        out_off,
        out_special,
        method,
        scores.detach().double().cpu().numpy(),
        delta.detach().double().cpu().numpy(),
    )
