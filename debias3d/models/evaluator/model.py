"""The HyperScore-style quality evaluator: ``q̂_i = ψ(F(x, t) | π(f_c^i))`` (MATE-3D Eq. 4).

Two backends share :class:`HyperScoreBase` (scoring API, view cache, bad-input handling):

* :class:`ShapeWorldHyperScore` (registry name ``shapeworld-hyperscore``, the embedded default):
  a small CNN over the 6 MATE-3D views (rendered at 48 px, fixed colour / silhouette statistics read
  there, CNN at ``image_size``), trained from scratch on ShapeWorld ratings, with
  the frozen all-MiniLM-L6-v2 text encoder. Weights ship in ``debias3d/assets/evaluator/``.
* :class:`debias3d.models.evaluator.clip.CLIPHyperScore` (``hyperscore-clip``): the same head on
  CLIP ViT-B/16, loading a converted HyperScore checkpoint.

The audit back-propagates scores to the prompt's token embeddings (Eq. 3, ``e'_i = Σ|∂q/∂e_i|``),
so :meth:`HyperScoreBase.score_from_embeddings` takes ``inputs_embeds`` as a leaf tensor:

>>> from debias3d.data.shapeworld import build, parse
>>> assets = [build(parse(p), rng=0, prompt=p) for p in ("a red vase", "two blue boxes")]
>>> ev = ShapeWorldHyperScore.from_pretrained()
>>> views = ev.prepare_views(assets)                      # rendered once, cached
>>> enc = ev.tokenize([a.prompt for a in assets])
>>> emb = ev.embed_tokens(enc["input_ids"]).detach().requires_grad_()
>>> q = ev.score_from_embeddings(views, emb, enc["attention_mask"])
>>> _ = q[:, 3].sum().backward()
>>> saliency = emb.grad.abs().sum(-1)                     # e'_i per token
>>> tuple(q.shape), tuple(saliency.shape) == tuple(enc["input_ids"].shape)
((2, 4), True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debias3d.models.evaluator.config import EvaluatorModelConfig
from debias3d.models.evaluator.layers import (
    ConvViewEncoder,
    HyperHead,
    PromptLearner,
    condition_weighted_fusion,
    masked_mean,
    target_mlp,
)
from debias3d.models.evaluator.views import ItemError, ViewBatch, ViewCache, ViewFeatures, evaluator_rig
from debias3d.models.persistence import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    SavesWithoutTextEncoder,
    load_safetensors,
    read_json,
)

__all__ = [
    "SHIPPED_VARIANTS",
    "EvaluationResult",
    "HyperScoreBase",
    "ShapeWorldHyperScore",
    "crop_to_silhouette",
    "default_weights_dir",
]

logger = logging.getLogger(__name__)


#: Shipped weight variants, by name: ``from_pretrained("scene")`` / ``evaluator_weights: scene``.
SHIPPED_VARIANTS: dict[str, str] = {"default": "evaluator", "scene": "evaluator_scene"}


def default_weights_dir(variant: str = "default") -> Path:
    """Where shipped embedded weights live: ``debias3d/assets/evaluator/`` (the default) or the
    ``"scene"`` variant's ``debias3d/assets/evaluator_scene/`` (scene-framed views, see
    :func:`~debias3d.models.evaluator.views.evaluator_rig`)."""
    if variant not in SHIPPED_VARIANTS:
        raise ValueError(f"no shipped evaluator variant {variant!r}; available: {sorted(SHIPPED_VARIANTS)}")
    return Path(__file__).resolve().parents[2] / "assets" / SHIPPED_VARIANTS[variant]


@dataclass
class EvaluationResult:
    """Scores of a batch plus what went wrong.

    Attributes:
        scores: ``(B, K)`` float32, never NaN (invalid items hold the fallback score).
        valid: ``(B,)`` bool.
        errors: one :class:`ItemError` per invalid item, naming it.
        dimensions: column names of ``scores``.
    """

    scores: Tensor
    valid: Tensor
    errors: list[ItemError] = field(default_factory=list)
    dimensions: tuple[str, ...] = ()

    def as_dicts(self) -> list[dict[str, float]]:
        """One ``{dimension: score}`` per item."""
        return [dict(zip(self.dimensions, map(float, row), strict=True)) for row in self.scores]


class HyperScoreBase(SavesWithoutTextEncoder, nn.Module):
    """Shared scoring API. Subclasses provide the view encoder and the text side.

    Subclass contract:
        * ``self.config`` with ``dimensions``, ``image_size``, ``n_views``, ``fallback_score``;
        * ``self.text_encoder`` with ``tokenize``, ``embed_tokens`` and ``forward_embeds``;
        * :meth:`encode_views` ``(views (B, V, 3, H, W)) -> (B, N, C)``: the text-independent image
          side; :meth:`forward_features` ``(features, text_features (B, T, Dt), mask (B, T)) -> (B, K)``
          the rest, so that ``forward(views, ...) == forward_features(encode_views(views), ...)``.
    """

    config: Any
    text_encoder: Any
    #: ``(low, high)``: the range the evaluator's scores are documented to lie on (its training
    #: targets). Each subclass declares it; the network itself is unbounded, so reports clamp
    #: per-sample scores to this range and count the samples clamped.
    score_range: tuple[float, float]

    def __init__(self) -> None:
        super().__init__()
        self.last_errors: list[ItemError] = []
        self._view_cache: ViewCache | None = None
        self._cond_cache: Tensor | None = None

    # ---------------------------------------------------------------- views
    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self.config.dimensions)

    @property
    def view_cache(self) -> ViewCache:
        """The model's render cache (MATE-3D rig at ``config.render_size``; resized in ``forward``)."""
        if self._view_cache is None:
            size = getattr(self.config, "render_size", self.config.image_size)
            rig = None
            if hasattr(self.config, "view_frame"):
                rig = evaluator_rig(self.config.view_frame, self.config.scene_radius)
            self._view_cache = ViewCache(rig=rig, image_size=size)
        return self._view_cache

    @view_cache.setter
    def view_cache(self, cache: ViewCache) -> None:
        self._view_cache = cache

    def prepare_views(self, assets: Sequence[Any]) -> ViewBatch:
        """Render (or fetch from the cache) the views of ``assets`` / meshes / mesh paths.

        Returns:
            :class:`ViewBatch` — ``views`` ``(B, V, 3, H, W)``, ``valid`` ``(B,)``, ``errors``.
        """
        return self.view_cache.get(list(assets))

    def _as_view_batch(self, views_or_assets: Any) -> ViewBatch:
        if isinstance(views_or_assets, ViewBatch):
            return views_or_assets
        if isinstance(views_or_assets, Tensor):
            return ViewBatch.from_tensor(views_or_assets)
        return self.prepare_views(views_or_assets)

    def _fit_views(self, views: Tensor) -> Tensor:
        size = self.config.image_size
        if views.shape[-1] != size or views.shape[-2] != size:
            b, v = views.shape[:2]
            flat = F.interpolate(
                views.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            views = flat.view(b, v, 3, size, size)
        return views

    def encode_views(self, views: Tensor) -> Tensor:
        """``(B, V, 3, H, W)`` in [0, 1] → text-independent view features ``(B, N, C)``."""
        raise NotImplementedError

    def forward_features(self, features: Tensor, text_features: Tensor, mask: Tensor) -> Tensor:
        """:meth:`encode_views` output, text features ``(B, T, Dt)``, mask ``(B, T)`` → ``(B, K)``."""
        raise NotImplementedError

    @torch.no_grad()
    def view_features(self, views_or_assets: Any, batch_size: int = 64) -> ViewFeatures:
        """Encode the views of many meshes once (no gradient), in batches of ``batch_size``.

        Pass the result to :meth:`score_from_embeddings` instead of views or assets: repeated
        calls (attribution, integrated-gradients steps, deletion tests) then skip the image side.
        """
        vb = self._as_view_batch(views_or_assets)
        device = next(self.parameters()).device
        chunks = [
            self.encode_views(vb.views[s : s + batch_size].to(device)) for s in range(0, len(vb), batch_size)
        ]
        feats = torch.cat(chunks) if chunks else torch.zeros(0)
        return ViewFeatures(feats, vb.valid, list(vb.errors))

    # ---------------------------------------------------------------- text passthrough
    def tokenize(self, prompts: Sequence[str]) -> Any:
        """The text encoder's tokenizer: ``input_ids``, ``attention_mask`` (B, T), ``offset_mapping``."""
        return self.text_encoder.tokenize(list(prompts))

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """``(B, T)`` ids → ``(B, T, E)`` input embeddings of the frozen text encoder."""
        return self.text_encoder.embed_tokens(input_ids)

    # ---------------------------------------------------------------- scoring
    def score_from_embeddings(
        self, views_or_assets: Any, inputs_embeds: Tensor, attention_mask: Tensor
    ) -> Tensor:
        """Scores from prompt token embeddings; differentiable w.r.t. ``inputs_embeds``.

        Args:
            views_or_assets: :class:`ViewFeatures` from :meth:`view_features` (fastest for
                repeated calls), a :class:`ViewBatch` from :meth:`prepare_views`, a
                ``(B, V, 3, H, W)`` tensor in ``[0, 1]``, or assets / meshes (rendered through the cache).
            inputs_embeds: ``(B, T, E)``, usually a leaf with ``requires_grad=True``.
            attention_mask: ``(B, T)`` (1 for real tokens).

        Returns:
            ``(B, K)`` scores in column order ``self.dimensions``; items whose mesh could not be
            rendered hold ``config.fallback_score`` (zero gradient), errors in ``self.last_errors``.
        """
        mask = attention_mask.to(inputs_embeds.device)
        return self.score_from_text(
            views_or_assets, self.text_encoder.forward_embeds(inputs_embeds, mask), mask
        )

    def score_from_text(self, views_or_assets: Any, text_features: Tensor, attention_mask: Tensor) -> Tensor:
        """Like :meth:`score_from_embeddings`, from the text encoder's output ``(B, T, Dt)``.

        Lets a caller run the (frozen, costly) text encoder once per prompt and share its features
        between the prompt's ``D`` samples (:class:`~debias3d.bias_audit.attribute.EvaluatorScore`).
        """
        vb = (
            views_or_assets
            if isinstance(views_or_assets, ViewFeatures)
            else self._as_view_batch(views_or_assets)
        )
        if len(vb) != text_features.shape[0]:
            raise ValueError(f"{len(vb)} view sets but {text_features.shape[0]} prompts")
        self.last_errors = list(vb.errors)
        device = text_features.device
        mask = attention_mask.to(device).bool()
        if isinstance(vb, ViewFeatures):
            scores = self.forward_features(vb.features.to(device), text_features, mask)
        else:
            scores = self(vb.views.to(device), text_features, mask)
        keep = vb.valid.to(device)[:, None] & torch.isfinite(scores)
        return torch.where(keep, scores, torch.full_like(scores, float(self.config.fallback_score)))

    @torch.no_grad()
    def score(self, assets_or_views: Any, prompts: Sequence[str]) -> Tensor:
        """Scores ``(B, K)`` of assets (or views) against their prompts, no gradient.

        Per-item problems are logged and kept in ``self.last_errors``; see :meth:`evaluate`.
        """
        enc = self.tokenize(prompts)
        emb = self.embed_tokens(enc["input_ids"])
        return self.score_from_embeddings(assets_or_views, emb, enc["attention_mask"]).detach()

    @torch.no_grad()
    def evaluate(
        self, assets: Sequence[Any], prompts: Sequence[str] | None = None, batch_size: int = 32
    ) -> EvaluationResult:
        """Score many assets in batches; returns scores, a validity mask and per-item errors.

        Args:
            assets: ``N`` assets (their ``.prompt`` is used when ``prompts`` is None) or meshes.
            prompts: ``N`` prompts.
            batch_size: items per forward pass.
        """
        assets = list(assets)
        if prompts is None:
            prompts = [a.prompt for a in assets]
        if len(prompts) != len(assets):
            raise ValueError(f"{len(assets)} assets but {len(prompts)} prompts")
        scores, valid, errors = [], [], []
        for s in range(0, len(assets), batch_size):
            vb = self.prepare_views(assets[s : s + batch_size])
            scores.append(self.score(vb, prompts[s : s + batch_size]))
            valid.append(vb.valid)
            errors += [ItemError(e.index + s, e.name, e.message) for e in vb.errors]
        k = len(self.dimensions)
        return EvaluationResult(
            torch.cat(scores) if scores else torch.zeros(0, k),
            torch.cat(valid) if valid else torch.zeros(0, dtype=torch.bool),
            errors,
            self.dimensions,
        )

    # ---------------------------------------------------------------- persistence

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load ``model.safetensors`` written by :meth:`save_pretrained` (strict except the encoder)."""

        state = load_safetensors(path)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("text_encoder.")]
        if missing or unexpected:
            raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        self._clear_condition_cache()

    def _clear_condition_cache(self) -> None:
        self._cond_cache = None

    def condition_features(self) -> Tensor:
        """``f_c`` ``(K, D)``: the per-dimension condition features (:meth:`_condition_features`).

        Constant at inference, so it is cached in eval mode (cleared by ``train()`` / loading).
        """
        if not self.training and self._cond_cache is not None:
            return self._cond_cache
        cond = self._condition_features()
        if not self.training:
            self._cond_cache = cond.detach()
        return cond

    def _condition_features(self) -> Tensor:
        """``f_c`` ``(K, D)`` computed afresh (the subclass's text side)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> HyperScoreBase:
        super().train(mode)
        self._clear_condition_cache()
        return self


def crop_to_silhouette(views: Tensor, size: int, margin: float = 0.1) -> Tensor:
    """Each view's square crop around its non-white silhouette, resampled to ``size`` px.

    ``(B, V, 3, H, W)`` → ``(B, V, 3, size, size)``. Under the ``"scene"`` frame the object may fill
    a small part of the frame; its placement and size are read from the full view's statistics and
    the CNN gets the detail. An empty view is passed whole.
    """
    b, v, c, h, w = views.shape
    x = views.detach().flatten(0, 1)
    fg = x.amin(1) < 0.985  # (M, H, W)
    rows, cols = fg.any(2), fg.any(1)  # (M, H), (M, W)
    ar_h = torch.arange(h, device=x.device, dtype=x.dtype)
    ar_w = torch.arange(w, device=x.device, dtype=x.dtype)
    big = torch.tensor(float(max(h, w)), device=x.device, dtype=x.dtype)
    r0 = torch.where(rows, ar_h, big).amin(1)
    r1 = torch.where(rows, ar_h, -big).amax(1) + 1
    c0 = torch.where(cols, ar_w, big).amin(1)
    c1 = torch.where(cols, ar_w, -big).amax(1) + 1
    empty = ~rows.any(1)
    half = torch.maximum(r1 - r0, c1 - c0) * (0.5 + margin)  # pixels
    half = torch.where(empty, torch.full_like(half, max(h, w) / 2), half.clamp_min(2.0))
    cy = torch.where(empty, torch.full_like(half, h / 2), (r0 + r1) / 2)
    cx = torch.where(empty, torch.full_like(half, w / 2), (c0 + c1) / 2)
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = 2 * half / w
    theta[:, 1, 1] = 2 * half / h
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, [len(x), c, size, size], align_corners=False)
    out = F.grid_sample(
        views.flatten(0, 1), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.view(b, v, c, size, size)


class ShapeWorldHyperScore(HyperScoreBase):
    """Embedded HyperScore-style evaluator (registry: ``evaluator`` / ``shapeworld-hyperscore``).

    Pipeline (shapes for ``B`` meshes, ``V = 6`` views, ``T`` prompt tokens, ``K = 4`` dimensions):

    1. views ``(B, V, 3, 48, 48)`` → fixed view statistics at 48 px (colour histogram over the named
       colours, silhouette components, extents; :meth:`ConvViewEncoder.view_stats`), then resized to
       ``image_size`` (shipped: 32) → :class:`ConvViewEncoder` → tokens ``(B, N = V·17, D)``.
       The default shipped model uses MATE-3D's unit sphere. The ``"scene"`` variant
       (``view_frame="scene"``) frames meshes in the ShapeWorld scene instead, so the statistics see
       absolute size and height above the ground, and the CNN reads a crop around each view's
       silhouette (:func:`crop_to_silhouette`);
    2. frozen MiniLM token features ``(B, T, 384)`` → ``text_proj`` → tokens ``(B, T, D)``;
    3. condition features ``f_c`` ``(K, 384)`` from :class:`PromptLearner` + frozen MiniLM;
    4. ``F``: HyperScore's condition-weighted patch pooling ``(B, K, D)``
       (:func:`condition_weighted_fusion`) times the pooled prompt ``t̄``, plus word-level grounding
       (:meth:`word_grounding`), colour / silhouette agreement (:meth:`colour_agreement`) and the mean view
       token → ``fc_quality`` ``(B, K, Q)``;
    5. ``π(f_c^i)`` generates head ``ψ_i``; ``q̂_i = ψ_i(F_i)`` → ``(B, K)``.

    Args:
        config: architecture; defaults to :class:`EvaluatorModelConfig`.
        text_encoder: a frozen :class:`debias3d.models.text_encoder.TextEncoder`; default MiniLM.

    Scores lie on ``score_range = (0, 1)``, the range of its training ratings
    (:mod:`debias3d.models.evaluator.data`); the regression head itself is unbounded.
    """

    score_range: tuple[float, float] = (0.0, 1.0)

    def __init__(self, config: EvaluatorModelConfig | None = None, text_encoder: Any = None) -> None:
        super().__init__()
        self.config = config = config or EvaluatorModelConfig()
        if text_encoder is None:
            from debias3d.registry import build

            text_encoder = build("text_encoder", config.text_encoder)
        self.text_encoder = text_encoder
        dt = int(text_encoder.dim)
        self.view_encoder = ConvViewEncoder(config.dim, config.n_views, config.image_size, config.cnn_widths)
        self.text_proj = nn.Sequential(
            nn.LayerNorm(dt), nn.Linear(dt, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim)
        )
        enc = text_encoder.tokenize(list(config.dimension_prompts))
        with torch.no_grad():
            name_embeds = text_encoder.embed_tokens(enc["input_ids"]).float().cpu()
        self.prompt_learner = PromptLearner(name_embeds, enc["attention_mask"].cpu(), config.n_ctx)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        d = config.dim
        self.word_q, self.word_k, self.word_v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.word_match = nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, d))
        self.word_gate = nn.Linear(d, len(config.dimensions))
        self.colour_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 3))
        n_col, n_stats = ConvViewEncoder.N_COLOURS, ConvViewEncoder.N_STATS
        self.palette_head = nn.Linear(d, n_col)
        n_feat = 13 + 2 * n_col + 3 * n_stats + d
        self.colour_feat = nn.Sequential(
            nn.LayerNorm(n_feat), nn.Linear(n_feat, d), nn.GELU(), nn.Linear(d, d)
        )
        self.fc_quality = nn.Sequential(nn.Linear(5 * d, config.quality_dim), nn.GELU())
        self.hyper = HyperHead(dt, config.quality_dim, config.head_hidden, config.hyper_trunk)

    # -------------------------------------------------------------- pieces
    def _condition_features(self) -> Tensor:
        """``f_c`` ``(K, Dt)``: CoOp context + dimension name through the frozen encoder, pooled."""
        emb, mask = self.prompt_learner()
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            return masked_mean(self.text_encoder.forward_embeds(emb, mask.long()), mask)

    def word_grounding(self, patches: Tensor, tokens: Tensor, mask: Tensor, cond: Tensor) -> Tensor:
        """Per-word evidence pooled per dimension, ``(B, K, D)``.

        Each prompt token attends over the view tokens (``seen_t``), a small MLP compares the word
        with what it saw (``m_t = MLP([tok_t ⊙ seen_t, tok_t, seen_t])``), and each dimension pools
        the words with its own softmax gate over real tokens (a learned per-token logit plus the
        token's similarity to the condition feature ``f_c^i``). Alignment is a share of words
        shown, so this is the inductive bias that lets it generalise to unseen prompts — and it
        keeps the gradient to each word's embedding direct, which the audit reads.
        """
        d = tokens.shape[-1]
        att = torch.einsum("btd,bnd->btn", self.word_q(tokens), self.word_k(patches)) / d**0.5
        seen = torch.einsum("btn,bnd->btd", att.softmax(-1), self.word_v(patches))
        match = self.word_match(torch.cat([tokens * seen, tokens, seen], dim=-1))  # (B, T, D)
        sim = torch.einsum("btd,kd->bkt", F.normalize(tokens, dim=-1), F.normalize(cond, dim=-1))
        logits = self.word_gate(tokens).transpose(1, 2) + sim * self.logit_scale.exp()
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.einsum("bkt,btd->bkd", logits.softmax(-1), match)

    def colour_agreement(self, stats: Tensor, t_bar: Tensor) -> Tensor:
        """Colour and shape evidence ``(B, 1, D)`` from the fixed view statistics and the prompt.

        ``ĉ = sigmoid(MLP(t̄))`` is the colour the prompt asks for and ``p = sigmoid(Linear(t̄))``
        its palette over the named colours (a colour word, or the noun's usual colour); each view's
        foreground mean colour is compared with ``ĉ`` (distance mean / min / max over views) and its
        colour histogram with ``p`` (agreement mean / min / max), next to the colour spread and the
        distance to the nearest named colour (noise). The silhouette statistics (components,
        extent, bands; mean / min / max over views) and ``t̄`` (how many parts the prompt expects)
        join them. Texture is colour agreement and geometry is connectedness, and this path lets a
        small model learn both from a few thousand shapes.

        Args:
            stats: ``(B, V, N_STATS)`` from :meth:`ConvViewEncoder.view_stats`.
            t_bar: ``(B, D)`` pooled prompt features.
        """
        enc = self.view_encoder
        expected = torch.sigmoid(self.colour_head(t_bar))  # (B, 3)
        palette = torch.sigmoid(self.palette_head(t_bar))  # (B, C)
        dist = (stats[..., 1:4] - expected[:, None]).norm(dim=-1)  # (B, V)
        hist = stats[..., enc.HIST]  # (B, V, C)
        agree = (hist * palette[:, None]).sum(-1)  # (B, V)
        spread = stats[..., 4:7].mean(1)  # (B, 3)
        resid = stats[..., enc.RESID].mean(1, keepdim=True)  # (B, 1)
        feats = torch.cat(
            [
                dist.mean(1, keepdim=True),
                dist.amin(1, keepdim=True),
                dist.amax(1, keepdim=True),
                agree.mean(1, keepdim=True),
                agree.amin(1, keepdim=True),
                agree.amax(1, keepdim=True),
                spread,
                resid,
                expected,
                palette,
                hist.mean(1),
                stats.mean(1),
                stats.amin(1),
                stats.amax(1),
                t_bar,
            ],
            1,
        )
        return self.colour_feat(feats)[:, None]

    def encode_views(self, views: Tensor, stats: Tensor | None = None) -> Tensor:
        """The image side: ``(B, V, 3, H, W)`` → ``(B, N + V, C)``, ``C = max(dim, N_STATS)``.

        Rows ``[:N]`` are the view tokens (first ``dim`` channels), rows ``[N:]`` each view's fixed
        statistics (first ``N_STATS`` channels), zero-padded to one tensor so that it batches and
        indexes like views. ``stats``: see :meth:`forward`.
        """
        b, v = views.shape[:2]
        if stats is None:
            stats = self.view_encoder.view_stats(views.flatten(0, 1))  # at render size, (B·V, S)
        stats = stats.reshape(b * v, -1).to(views.dtype)
        if self.config.view_frame == "scene":
            views = crop_to_silhouette(views, self.config.image_size)
        patches = self.view_encoder(self._fit_views(views), stats)  # (B, N, D)
        width = max(patches.shape[-1], stats.shape[-1])
        return torch.cat(
            [
                F.pad(patches, (0, width - patches.shape[-1])),
                F.pad(stats.view(b, v, -1), (0, width - stats.shape[-1])),
            ],
            dim=1,
        )

    def forward(
        self, views: Tensor, text_features: Tensor, mask: Tensor, stats: Tensor | None = None
    ) -> Tensor:
        """``views`` ``(B, V, 3, H, W)`` in [0, 1], ``text_features`` ``(B, T, Dt)``, ``mask`` ``(B, T)``
        bool → scores ``(B, K)``.

        ``stats`` ``(B, V, N_STATS)``: the fixed :meth:`ConvViewEncoder.view_stats` of the views at
        render size, when the caller has them precomputed (training); else computed here, before
        the views are resized for the CNN.
        """
        return self.forward_features(self.encode_views(views, stats), text_features, mask)

    def forward_features(self, features: Tensor, text_features: Tensor, mask: Tensor) -> Tensor:
        """:meth:`encode_views` output ``(B, N + V, C)`` + the prompt → scores ``(B, K)``."""
        mask = mask.bool()
        v = int(self.config.n_views)
        patches = features[:, :-v, : self.config.dim]  # (B, N, D)
        stats = features[:, -v:, : ConvViewEncoder.N_STATS]  # (B, V, S)
        tokens = self.text_proj(text_features)  # (B, T, D)
        cond_raw = self.condition_features()  # (K, Dt)
        cond = self.text_proj(cond_raw)  # (K, D)
        fused = condition_weighted_fusion(patches, tokens, mask, cond, self.logit_scale)  # (B, K, D)
        t_bar = masked_mean(tokens, mask)[:, None]  # (B, 1, D)
        words = self.word_grounding(patches, tokens, mask, cond)  # (B, K, D)
        g = patches.mean(1, keepdim=True).expand_as(fused)  # uniform pooling, (B, K, D)
        colour = self.colour_agreement(stats, t_bar[:, 0]).expand_as(fused)  # (B, K, D)
        q = self.fc_quality(torch.cat([fused * t_bar, fused, words, g, colour], dim=-1))  # (B, K, Q)
        return target_mlp(q, self.hyper(cond_raw))

    # -------------------------------------------------------------- persistence
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike | None = None, text_encoder: Any = None, device: str = "cpu"
    ) -> ShapeWorldHyperScore:
        """Load weights written by :meth:`save_pretrained` (default: the shipped ones).

        Args:
            path: a folder with ``config.json`` + ``model.safetensors``, the safetensors file, or
                the name of a shipped variant (``"default"``, ``"scene"``; used when no such path
                exists).
            text_encoder: reuse an already-loaded text encoder.
            device: torch device.
        """
        from debias3d.config import from_dict

        if path is None:
            p = default_weights_dir()
        elif str(path) in SHIPPED_VARIANTS and not Path(path).exists():
            p = default_weights_dir(str(path))
        else:
            p = Path(path)
        folder = p if p.is_dir() else p.parent
        weights = folder / WEIGHTS_NAME if p.is_dir() else p
        if not weights.is_file():
            raise FileNotFoundError(
                f"evaluator weights {weights} not found; train them with "
                "`debias3d world train-evaluator --out DIR` and pass DIR"
            )
        cfg_file = folder / CONFIG_NAME
        cfg = EvaluatorModelConfig()
        if cfg_file.is_file():
            cfg = from_dict(EvaluatorModelConfig, read_json(cfg_file)["config"], source=str(cfg_file))
        model = cls(cfg, text_encoder=text_encoder)
        model.load_weights(weights)
        return model.to(device).eval()
