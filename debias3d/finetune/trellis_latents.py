"""Real-TRELLIS fine-tuning data and objective: latents made by TRELLIS's dataset toolkits.

Layout of ``data.latents`` (what ``dataset_toolkits/encode_ss_latent.py`` / ``encode_latent.py``
write, see docs/finetune.md)::

    metadata.csv                         sha256, captions (JSON list of strings), ...
    ss_latents/<ss_enc>/<sha256>.npz     key "mean": (8, 16, 16, 16)    — stage 1 (sparse structure)
    latents/<slat_enc>/<sha256>.npz      keys "feats": (N, 8), "coords": (N, 3) in [0, 64) — stage 2

As in TRELLIS's ``trellis/datasets/sparse_structure_latent.py`` / ``structured_latent.py``: the
stage-1 latent is the SS-VAE posterior ``mean`` used as is (the text SS flow models are trained
without normalisation), the stage-2 ``feats`` are normalised with the pipeline's
``slat_normalization`` (``(feats − mean) / std``; the sampler undoes it), the caption is one random
entry of ``captions``. A row whose latent file is missing or unreadable / malformed is skipped and
counted; an empty result raises :class:`~debias3d.finetune.data.DataError` with one line.

Objective (TRELLIS's ``FlowMatchingTrainer`` / ``SparseFlowMatchingTrainer`` with the CFG and
text-conditioned mixins), with the maths shared with mini-TRELLIS pre-training
(:mod:`debias3d.models.backbone.sampler`)::

    x_t = (1 − t)·x0 + (σ_min + (1 − σ_min)·t)·ε,   v = (1 − σ_min)·ε − x0,   t ~ sigmoid(N(1, 1))
    stage 1: pred = flow(x_t (B, 8, 16, 16, 16), 1000·t, cond)
    stage 2: pred = flow(SparseTensor(feats=x_t (ΣN, 8), coords=[b, x, y, z]), 1000·t, cond).feats
    L = MSE(pred, v)

with ``cond`` the pipeline's CLIP text features (``encode_text``: ``last_hidden_state``, 77 tokens)
replaced by the null condition (the features of ``""``) with probability ``p_uncond``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DataError, log_skipped

logger = logging.getLogger(__name__)

__all__ = [
    "SS_DIR",
    "SLAT_DIR",
    "TrellisLatentSet",
    "TrellisLatentLoss",
    "TrellisTextConditioner",
    "build_trellis_latent_set",
    "load_ss_latent",
    "load_slat",
]

SS_DIR = "ss_latents"
SLAT_DIR = "latents"
STAGE_DIRS = {"stage1": SS_DIR, "stage2": SLAT_DIR}


@dataclass
class TrellisLatentSet(torch.utils.data.Dataset):
    """Usable TRELLIS latent rows (paths only; the files are read per batch).

    Attributes:
        sha256: ``M`` instance ids.
        captions: ``M`` non-empty caption lists.
        paths: stage → ``M`` ``.npz`` paths (only the trained stages).
        stats: ``pairs_total``, ``pairs_used``, ``replay`` (0), ``skipped`` (reason → n), encoders.
    """

    sha256: list[str]
    captions: list[list[str]]
    paths: dict[str, list[Path]]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sha256)

    def __getitem__(self, i: int) -> int:
        return i  # row indices, as the mini-TRELLIS TrainingSet: the loss reads the files


def load_ss_latent(path: str | os.PathLike, shape: Sequence[int] | None = None) -> np.ndarray:
    """The ``mean`` array of a stage-1 ``.npz`` as float32; ``ValueError`` when malformed."""
    with np.load(path) as f:
        if "mean" not in f.files:
            raise ValueError(f"{path}: no 'mean' key (keys: {f.files})")
        z = np.asarray(f["mean"], dtype=np.float32)
    if z.ndim != 4 or (shape is not None and tuple(z.shape) != tuple(shape)):
        raise ValueError(f"{path}: 'mean' has shape {z.shape}, expected {tuple(shape or ())}")
    if not np.isfinite(z).all():
        raise ValueError(f"{path}: non-finite values")
    return z


def load_slat(
    path: str | os.PathLike, channels: int | None = None, resolution: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``feats (N, C)`` float32 and ``coords (N, 3)`` int32 of a stage-2 ``.npz``; ``ValueError``
    when malformed (no voxels, shape mismatch, coords outside ``[0, resolution)``, non-finite)."""
    with np.load(path) as f:
        if "feats" not in f.files or "coords" not in f.files:
            raise ValueError(f"{path}: expected keys 'feats' and 'coords' (keys: {f.files})")
        feats = np.asarray(f["feats"], dtype=np.float32)
        coords = np.asarray(f["coords"])
    if feats.ndim != 2 or feats.shape[0] < 1 or (channels is not None and feats.shape[1] != channels):
        raise ValueError(f"{path}: 'feats' has shape {feats.shape}, expected (N>=1, {channels})")
    if coords.shape != (feats.shape[0], 3) or not np.issubdtype(coords.dtype, np.integer):
        raise ValueError(
            f"{path}: 'coords' has shape {coords.shape} / dtype {coords.dtype}, expected (N, 3) int"
        )
    if coords.min() < 0 or (resolution is not None and coords.max() >= resolution):
        raise ValueError(f"{path}: coords outside [0, {resolution})")
    if not np.isfinite(feats).all():
        raise ValueError(f"{path}: non-finite values")
    return feats, coords.astype(np.int32)


def _pick_encoder(root: Path, sub: str, name: str | None) -> str:
    """The ``<enc>`` folder under ``root/sub``: ``name``, or the only one there."""
    base = root / sub
    if name is not None:
        if not (base / name).is_dir():
            raise DataError(f"TRELLIS latents folder {base / name} not found")
        return name
    found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not found:
        raise DataError(f"no {sub}/<encoder>/ folder in {root} (see docs/finetune.md)")
    if len(found) > 1:
        raise DataError(f"several encoders under {base} ({', '.join(found)}): set data.{sub}_model")
    return found[0]


def _read_metadata(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"TRELLIS metadata table {path} not found (columns sha256, captions)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        if "sha256" not in cols or "captions" not in cols:
            raise DataError(f"{path} must have columns sha256 and captions, has {cols}")
        return list(reader)


def _captions(raw: str | None) -> list[str]:
    try:
        caps = json.loads(raw or "")
    except (TypeError, ValueError):
        return []
    if isinstance(caps, str):
        caps = [caps]
    if not isinstance(caps, list):
        return []
    return [c for c in caps if isinstance(c, str) and c.strip()]


def build_trellis_latent_set(
    data: Any,
    stages: Sequence[str],
    flow_models: dict[str, nn.Module] | None = None,
) -> TrellisLatentSet:
    """``data.latents`` + its metadata table → :class:`TrellisLatentSet` (every file checked once).

    Args:
        data: :class:`~debias3d.finetune.config.DataSettings` (``latents``, ``metadata``,
            ``ss_latents_model``, ``latents_model``, ``max_num_voxels``, ``max_pairs``).
        stages: the trained stages (only their latents are required).
        flow_models: the generator's flow models; their ``in_channels`` / ``resolution`` (when set)
            are the expected latent shapes.

    Raises:
        DataError: no latents folder / metadata table / encoder folder, or no usable row.
    """
    if data.latents is None:
        raise DataError("data.latents must name the TRELLIS latents folder (see docs/finetune.md)")
    root = Path(data.latents)
    if not root.is_dir():
        raise DataError(f"TRELLIS latents folder {root} not found")
    rows = _read_metadata(Path(data.metadata) if data.metadata else root / "metadata.csv")
    if not rows:
        raise DataError(f"TRELLIS metadata table of {root} is empty")
    stages = [s for s in ("stage1", "stage2") if s in stages]
    names = {"stage1": data.ss_latents_model, "stage2": data.latents_model}
    enc = {s: _pick_encoder(root, STAGE_DIRS[s], names[s]) for s in stages}
    fm = flow_models or {}

    def _attr(stage: str, name: str) -> int | None:
        v = getattr(fm.get(stage), name, None)
        return int(v) if isinstance(v, int) else None

    c1, r1 = _attr("stage1", "in_channels"), _attr("stage1", "resolution")
    ss_shape = (c1 or 8, r1 or 16, r1 or 16, r1 or 16)
    c2, r2 = _attr("stage2", "in_channels"), _attr("stage2", "resolution")

    skipped: Counter = Counter()
    sha, caps_l = [], []
    paths: dict[str, list[Path]] = {s: [] for s in stages}
    seen: set[str] = set()
    for row in rows:
        h = (row.get("sha256") or "").strip()
        if not h or h in seen:
            skipped["bad_row" if not h else "duplicate"] += 1
            continue
        seen.add(h)
        caps = _captions(row.get("captions"))
        if not caps:
            skipped["no_captions"] += 1
            continue
        found: dict[str, Path] = {}
        reason = None
        for s in stages:
            p = root / STAGE_DIRS[s] / enc[s] / f"{h}.npz"
            tag = "ss_latent" if s == "stage1" else "slat"
            if not p.is_file():
                reason = f"missing_{tag}"
                break
            try:
                if s == "stage1":
                    load_ss_latent(p, ss_shape)
                else:
                    feats, _ = load_slat(p, c2, r2)
                    if feats.shape[0] > data.max_num_voxels:
                        reason = "too_many_voxels"
                        break
            except Exception as e:  # noqa: BLE001 — any unreadable file is skipped and counted
                logger.debug("skipping %s: %s", p, e)
                reason = f"broken_{tag}"
                break
            found[s] = p
        if reason is not None:
            skipped[reason] += 1
            continue
        sha.append(h)
        caps_l.append(caps)
        for s in stages:
            paths[s].append(found[s])
        if data.max_pairs is not None and len(sha) >= data.max_pairs:
            break
    n_total = log_skipped("TRELLIS latent rows", len(sha), skipped)
    if not sha:
        raise DataError(f"no usable TRELLIS latents in {root} (skipped: {dict(sorted(skipped.items()))})")
    stats = {
        "pairs_total": n_total,
        "pairs_used": len(sha),
        "replay": 0,
        "skipped": dict(sorted(skipped.items())),
        "latents": str(root),
        "encoders": enc,
    }
    return TrellisLatentSet(sha, caps_l, paths, stats)


class TrellisTextConditioner:
    """Frozen CLIP text features through the TRELLIS pipeline (``encode_text``), cached per prompt.

    ``pipeline.encode_text(list[str]) → (B, 77, D)`` (``last_hidden_state``); the null condition is
    ``pipeline.text_cond_model["null_cond"]`` (the features of ``""``) when the pipeline has it.
    """

    def __init__(self, pipeline: Any):
        if not hasattr(pipeline, "encode_text"):
            raise TypeError(f"{type(pipeline).__name__} has no encode_text: not a TRELLIS text pipeline")
        self.pipeline = pipeline
        self._cache: dict[str, Tensor] = {}
        tcm = getattr(pipeline, "text_cond_model", None)
        null = tcm.get("null_cond") if isinstance(tcm, dict) else None
        self.null = (null if null is not None else self._encode([""])).detach().float().cpu()

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> Tensor:
        return self.pipeline.encode_text(prompts)

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """``(B, L, D)`` float32 on CPU."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            feats = self._encode(todo).detach().float().cpu()
            self._cache.update(zip(todo, feats, strict=True))
        return torch.stack([self._cache[p] for p in prompts])


def _sparse_tensor_cls():
    from importlib import import_module

    return import_module("trellis.modules.sparse").SparseTensor


class TrellisLatentLoss:
    """``(stage, flow_model, rows, generator, device) → scalar`` loss over a :class:`TrellisLatentSet`
    (the ``stage_loss`` callable of :class:`~debias3d.finetune.trainer.FlowMatchingObjective`)."""

    def __init__(self, latents: TrellisLatentSet, generator: Any, train: Any, sigma_min: float | None = None):
        from debias3d.models.backbone.sampler import SIGMA_MIN

        self.latents = latents
        self.train = train
        self.sigma_min = SIGMA_MIN if sigma_min is None else float(sigma_min)  # TRELLIS: 1e-5
        pipeline = generator.pipeline
        self.text = TrellisTextConditioner(pipeline)
        norm = getattr(pipeline, "slat_normalization", None)
        self.slat_mean = self.slat_std = None
        if norm is not None:
            self.slat_mean = torch.tensor(norm["mean"], dtype=torch.float32)[None]
            self.slat_std = torch.tensor(norm["std"], dtype=torch.float32)[None]

    def _condition(self, rows: Tensor, g: torch.Generator) -> Tensor:
        from debias3d.models.backbone.sampler import drop_condition

        prompts = []
        for r in rows.tolist():
            caps = self.latents.captions[r]
            prompts.append(caps[int(torch.randint(len(caps), (1,), generator=g))])
        cond = self.text(prompts)
        drop = torch.rand(len(prompts), generator=g) < self.train.p_uncond
        ones = torch.ones(cond.shape[:2], dtype=torch.bool)
        null_ones = torch.ones(self.null.shape[:2], dtype=torch.bool)
        cond, _ = drop_condition(cond, ones, self.null, null_ones, drop)
        return cond

    @property
    def null(self) -> Tensor:
        return self.text.null

    def __call__(self, stage: str, model: nn.Module, rows: Tensor, g: torch.Generator, device: Any) -> Tensor:
        from debias3d.models.backbone.sampler import add_noise, sample_logit_normal_t, velocity_target

        tc = self.train
        b = rows.shape[0]
        cond = self._condition(rows, g)
        t = sample_logit_normal_t(b, tc.logit_normal_mean, tc.logit_normal_std, generator=g)
        paths = self.latents.paths[stage]
        if stage == "stage1":
            x0 = torch.from_numpy(np.stack([load_ss_latent(paths[r]) for r in rows.tolist()]))
            eps = torch.randn(x0.shape, generator=g)
            x_t = add_noise(x0, t, eps, self.sigma_min)
            target = velocity_target(x0, eps, self.sigma_min)
            pred = model(x_t.to(device), (t * 1000).to(device), cond.to(device))
            return F.mse_loss(pred.float(), target.to(device))
        feats_l, coords_l = [], []
        for i, r in enumerate(rows.tolist()):
            feats, coords = load_slat(paths[r])
            feats_l.append(torch.from_numpy(feats))
            batch = torch.full((coords.shape[0], 1), i, dtype=torch.int32)
            coords_l.append(torch.cat([batch, torch.from_numpy(coords)], 1))
        x0 = torch.cat(feats_l)
        if self.slat_mean is not None:
            x0 = (x0 - self.slat_mean) / self.slat_std
        coords = torch.cat(coords_l)
        eps = torch.randn(x0.shape, generator=g)
        x_t = add_noise(x0, t[coords[:, 0].long()], eps, self.sigma_min)  # t of each voxel's instance
        target = velocity_target(x0, eps, self.sigma_min)
        x = _sparse_tensor_cls()(feats=x_t.to(device), coords=coords.to(device))
        pred = model(x, (t * 1000).to(device), cond.to(device))
        pred = getattr(pred, "feats", pred)
        return F.mse_loss(pred.float(), target.to(device))
