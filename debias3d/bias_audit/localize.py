"""Bias localization: D samples per prompt, scored on every evaluator dimension.

For prompt ``t_n`` the generator makes ``x_n^D = {G(t_n)}`` (``D`` fixed seeds), the evaluator scores
each mesh on K dimensions, and

    q_l(t_n) = (1/D) Σ_d q(x_n^d, t_n)          q_g = (1/|X|) Σ_n q_l(t_n)        (method, Sec. 1)

(``q_g`` over prompts with at least one valid sample). The per-prompt spread (standard deviation
over the D samples) is kept too. Views are rendered once and returned so the attribution stage can
reuse them (the evaluator's view cache).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["LocalizedBatch", "generate_samples", "localize_batch", "global_scores", "category_means"]


@dataclass
class LocalizedBatch:
    """Samples of ``B`` prompts, their views and scores.

    Attributes:
        prompts: ``B`` prompt texts.
        assets: ``B`` lists of ``D`` assets (``None`` where generation failed).
        views: ``(B, D, V, 3, H, W)`` float views (blank where invalid).
        valid: ``(B, D)`` bool.
        scores: ``(B, D, K)`` per-sample scores (NaN where invalid).
        mesh_paths: ``B × D`` paths relative to the audit folder ("" when not written).
        issues: one-line messages.
        features: ``(B, D, N, C)`` the evaluator's cached view features
            (:func:`~debias3d.bias_audit.attribute.encode_sample_views`), or None for an evaluator
            without ``view_features``. Attribution and the deletion test take these instead of views.
    """

    prompts: list[str]
    assets: list[list[Any]]
    views: Tensor
    valid: Tensor
    scores: Tensor
    mesh_paths: list[list[str]]
    issues: list[str] = field(default_factory=list)
    features: Tensor | None = None

    @property
    def inputs(self) -> Tensor:
        """What the evaluator's forward should take: cached ``features`` if any, else ``views``."""
        return self.features if self.features is not None else self.views

    @property
    def q_l(self) -> Tensor:
        """``(B, K)`` mean over valid samples (NaN for a prompt without one)."""
        w = self.valid.to(self.scores.dtype)[..., None]
        s = torch.nan_to_num(self.scores) * w
        n = w.sum(1)
        return torch.where(n > 0, s.sum(1) / n.clamp_min(1), torch.full_like(n, float("nan")))

    @property
    def spread(self) -> Tensor:
        """``(B, K)`` standard deviation over valid samples (0 for one sample, NaN for none)."""
        out = torch.full(self.scores.shape[::2], float("nan"), dtype=self.scores.dtype)
        for b in range(self.scores.shape[0]):
            v = self.scores[b][self.valid[b]]
            if len(v):
                out[b] = v.std(0, unbiased=False)
        return out


def generate_samples(
    generator: Any,
    prompts: Sequence[str],
    samples: int,
    seed: int,
    steps: int | None = None,
    batch_size: int = 64,
) -> tuple[list[list[Any]], list[str]]:
    """``B × D`` assets; a batch that fails is retried prompt by prompt so one bad prompt costs only itself.

    Returns:
        ``(assets, issues)`` with ``None`` in place of assets that could not be generated.
    """
    kwargs: dict[str, Any] = {"batch_size": batch_size}
    if steps is not None:
        kwargs["steps"] = steps

    def run(ps: Sequence[str]) -> list[Any]:
        try:
            return generator.generate(list(ps), seeds=[seed] * len(ps), num_samples=samples, **kwargs)
        except TypeError:
            # generators without batch_size / steps keywords (external backends)
            return generator.generate(list(ps), seeds=[seed] * len(ps), num_samples=samples)

    issues: list[str] = []
    try:
        flat = run(prompts)
        return [flat[i * samples : (i + 1) * samples] for i in range(len(prompts))], issues
    except (ValueError, RuntimeError, IndexError, KeyError) as exc:
        logger.warning(
            "generator failed on a batch of %d prompts (%s); retrying one by one", len(prompts), exc
        )
    out: list[list[Any]] = []
    for p in prompts:
        try:
            out.append(run([p]))
        except (ValueError, RuntimeError, IndexError, KeyError) as exc:
            msg = f"generator: prompt {p!r}: {exc}"
            logger.warning("%s", msg)
            issues.append(msg)
            out.append([None] * samples)
    return out, issues


def _export(asset: Any, path: Path) -> str | None:
    """Write the asset's mesh as GLB; returns an error message or ``None``."""
    mesh = getattr(asset, "mesh", None)
    if mesh is None or len(getattr(mesh, "faces", [])) == 0:
        return "mesh has no faces"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        from debias3d.data.assets import save_mesh

        save_mesh(mesh, path, "glb")
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        return f"cannot write GLB: {exc}"
    return None


def localize_batch(
    generator: Any,
    evaluator: Any,
    prompts: Sequence[str],
    prompt_ids: Sequence[str],
    samples: int,
    seed: int,
    out_dir: Path | None,
    steps: int | None = None,
    generate_batch_size: int = 64,
) -> LocalizedBatch:
    """Generate, save and score ``D`` samples for each prompt of a batch.

    Args:
        generator: ``generate(prompts, seeds, num_samples) -> list[Asset]`` (prompt-major).
        evaluator: ``prepare_views``, ``tokenize``, ``embed_tokens``, ``score_from_embeddings``.
        prompts / prompt_ids: ``B`` texts and their stable ids (mesh file names).
        samples: ``D``.
        seed: base seed (sample ``d`` uses ``seed + d``).
        out_dir: audit folder; meshes go to ``out_dir/meshes/<id>_<d>.glb`` (None: not written).

    Returns:
        :class:`LocalizedBatch`.
    """
    from debias3d.models.evaluator.views import ViewBatch

    b, d = len(prompts), samples
    assets, issues = generate_samples(generator, prompts, d, seed, steps, generate_batch_size)
    mesh_paths = [["" for _ in range(d)] for _ in range(b)]
    flat: list[Any] = []
    for i in range(b):
        for j in range(d):
            a = assets[i][j] if j < len(assets[i]) else None
            if a is not None:
                meta = getattr(a, "metadata", None)
                if isinstance(meta, dict):
                    # A name for error messages only: the view cache keys meshes by content, so
                    # two generators (or a base model and its adapter) never share views.
                    meta.setdefault("name", f"{prompt_ids[i]}_{j}")
                if out_dir is not None:
                    rel = f"meshes/{prompt_ids[i]}_{j}.glb"
                    err = _export(a, out_dir / rel)
                    if err is None:
                        mesh_paths[i][j] = rel
                    else:
                        msg = f"mesh {prompt_ids[i]}_{j} ({prompts[i]!r}): {err}"
                        logger.warning("%s", msg)
                        issues.append(msg)
            flat.append(a)
    present = [k for k, a in enumerate(flat) if a is not None]
    vb_present = evaluator.prepare_views([flat[k] for k in present]) if present else None
    k_dims = len(evaluator.dimensions)
    if vb_present is not None:
        shape = tuple(vb_present.views.shape[1:])
    else:
        size = int(getattr(getattr(evaluator, "config", None), "image_size", 16))
        n_views = int(getattr(getattr(evaluator, "config", None), "n_views", 6))
        shape = (n_views, 3, size, size)
    views = torch.ones((b * d, *shape))
    valid = torch.zeros(b * d, dtype=torch.bool)
    if vb_present is not None:
        idx = torch.tensor(present, dtype=torch.long)
        views[idx] = vb_present.views
        valid[idx] = vb_present.valid
        for e in vb_present.errors:
            k = present[e.index]
            msg = f"evaluator: sample {prompt_ids[k // d]}_{k % d} ({prompts[k // d]!r}): {e.message}"
            issues.append(msg)
    scores = torch.full((b * d, k_dims), float("nan"))
    vf = evaluator.view_features(ViewBatch(views, valid, [])) if hasattr(evaluator, "view_features") else None
    if bool(valid.any()):
        enc = evaluator.tokenize([prompts[k // d] for k in range(b * d)])
        with torch.no_grad():
            emb = evaluator.embed_tokens(enc["input_ids"])
            s = (
                evaluator.score_from_embeddings(
                    vf if vf is not None else ViewBatch(views, valid, []), emb, enc["attention_mask"]
                )
                .float()
                .cpu()
            )
        scores = torch.where(valid[:, None], s, scores)
    for i in range(b):
        if not bool(valid[i * d : (i + 1) * d].any()):
            msg = f"prompt {prompts[i]!r}: no sample could be generated and scored; left out of the audit"
            logger.warning("%s", msg)
            issues.append(msg)
    return LocalizedBatch(
        list(prompts),
        assets,
        views.view(b, d, *shape),
        valid.view(b, d),
        scores.view(b, d, k_dims),
        mesh_paths,
        issues,
        None if vf is None else vf.features.reshape(b, d, *vf.features.shape[1:]),
    )


def global_scores(q_l: np.ndarray, dimensions: Sequence[str]) -> dict[str, float]:
    """``q_g`` per dimension: mean of ``q_l`` over prompts (NaN rows skipped). ``q_l`` is ``(N, K)``."""
    q = np.asarray(q_l, dtype=np.float64).reshape(-1, len(dimensions))
    return {
        dim: (float(np.nanmean(q[:, k])) if np.isfinite(q[:, k]).any() else float("nan"))
        for k, dim in enumerate(dimensions)
    }


def category_means(frame: Any, dimensions: Sequence[str]) -> dict[str, dict[str, float]]:
    """The MATE-3D-style table: per category, mean ``q_l`` per dimension (and the prompt count)."""
    out: dict[str, dict[str, float]] = {}
    if frame is None or len(frame) == 0:
        return out
    cats = frame["category"].fillna("uncategorised")
    for cat in sorted(cats.unique()):
        sub = frame[cats == cat]
        row = {dim: float(sub[f"q_l_{dim}"].mean()) for dim in dimensions}
        row["n_prompts"] = int(len(sub))
        out[str(cat)] = row
    return out
