"""Fine-tuning objectives, picked by ``finetune.objective``: ``sft`` (the paper) and ``dpo``.

Each objective supplies the two things the trainer needs from it, through :func:`get_objective`:
its training rows (``training_set(data, resolution)``) and its loss
(``stage_loss(train_set, generator, cfg, model)``, the ``(stage, flow_model, rows, generator,
device) -> scalar`` callable that :class:`~debias3d.finetune.trainer.FlowMatchingObjective` runs per
adapted stage). The accelerate / peft recipe, resume and adapter outputs are the same for all.

* ``sft``: supervised rectified-flow loss on the winning pairs (+ replay), exactly the pre-training
  loss (:func:`debias3d.models.backbone.train.stage_loss`).
* ``dpo``: Diffusion-DPO (Wallace et al. 2024) on the flow-matching loss, over the augmentation
  job's preference triples (prompt t_n, preferred mesh, rejected mesh), where the pair is Algorithm
  1's duel between the new mesh x_nc and the original x_n, ordered by the ranker. With per-sample
  flow-matching errors ``e(θ, x) = ‖v_θ(x_t, t, c) − v(x, ε)‖²`` at the *same* t and noise ε for
  winner w and loser l, and the reference ``ref`` = the base model with the adapter disabled
  (peft's ``disable_adapter()``)::

      L = −log σ(−β/2 · [(e(θ, w) − e(ref, w)) − (e(θ, l) − e(ref, l))])

  LoRA starts at zero, so the policy equals the reference and L = log 2 at step 0.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["OBJECTIVES", "Objective", "PreferenceSet", "build_preference_set", "get_objective", "dpo_loss"]


@dataclass(frozen=True)
class Objective:
    """What an objective supplies to the trainer (see the module doc)."""

    name: str
    training_set: Callable[[Any, int | None], Any]
    stage_loss: Callable[[Any, Any, Any, nn.Module], Callable[..., Tensor]]


# ------------------------------------------------------------------------------------ SFT
def _sft_set(data: Any, resolution: int | None) -> Any:
    from .data import build_training_set

    return build_training_set(data, resolution=resolution)


def _sft_loss(train_set: Any, generator: Any, cfg: Any, model: nn.Module) -> Callable[..., Tensor]:
    from .trainer import _mini_stage_loss

    return _mini_stage_loss(train_set, generator, cfg)


# ------------------------------------------------------------------------------------ DPO
@dataclass
class PreferenceSet(torch.utils.data.Dataset):
    """Preference triples in memory: ``prompts`` (M), winner / loser occupancy ``(M, R, R, R)``
    uint8 and colours ``(M, R, R, R, 3)`` uint8. Items are row indices (like ``TrainingSet``)."""

    prompts: list[str]
    win_occupancy: np.ndarray
    win_colors: np.ndarray
    lose_occupancy: np.ndarray
    lose_colors: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> int:
        return i


def build_preference_set(data: Any, resolution: int | None = None) -> PreferenceSet:
    """(prompt, winner, loser) triples from an augmentation ``pairs`` dataset.

    Each row is one side of a duel: ``occupancy`` / ``colors`` are x_nc, ``orig_occupancy`` /
    ``orig_colors`` are x_n, and ``winner`` says whether x_nc won. Rows whose voxels are malformed
    (either side) are skipped and counted; ``data.max_pairs`` draws a seeded random subset.

    Raises:
        DataError: the dataset is missing / empty, has no loser columns (``orig_occupancy``) or no
            row with a usable loser; the message names the dataset.
    """
    from .data import DataError, _load_dataset, _voxels, log_skipped

    ds = _load_dataset(data.pairs, "pairs")
    missing = [c for c in ("orig_occupancy", "orig_colors") if c not in ds.column_names]
    if missing:
        raise DataError(
            f"pairs dataset {data.pairs} has no losers for finetune.objective dpo (no {missing[0]!r} column; "
            "it was written before augment kept the duel's original mesh: run augment again)"
        )
    order = range(len(ds))
    if data.max_pairs is not None:
        order = np.random.default_rng(data.seed).permutation(len(ds)).tolist()
    rows = ds.with_format("numpy")
    skipped: Counter = Counter()
    prompts, wo, wc, lo, lc = [], [], [], [], []
    for i in order:
        row = rows[int(i)]
        new = _voxels(row, resolution)
        orig = _voxels({"occupancy": row["orig_occupancy"], "colors": row["orig_colors"]}, resolution)
        if new is None:
            skipped["bad_voxels"] += 1
            continue
        if orig is None:
            skipped["no_loser"] += 1
            continue
        win, lose = (new, orig) if bool(row["winner"]) else (orig, new)
        prompts.append(str(row["prompt"]))
        wo.append(win[0])
        wc.append(win[1])
        lo.append(lose[0])
        lc.append(lose[1])
        if data.max_pairs is not None and len(prompts) >= data.max_pairs:
            break
    n_total = log_skipped("preference pairs", len(prompts), skipped)
    if not prompts:
        raise DataError(
            f"pairs dataset {data.pairs} has no losers for finetune.objective dpo "
            f"(no row with usable orig_occupancy; skipped: {dict(skipped)})"
        )
    if data.replay_share > 0:
        logger.info("finetune.objective dpo trains on preference pairs only; data.replay_share is not used")
    stats = {
        "pairs_total": n_total,
        "pairs_used": len(prompts),
        "replay": 0,
        "skipped": dict(sorted(skipped.items())),
    }
    return PreferenceSet(prompts, np.stack(wo), np.stack(wc), np.stack(lo), np.stack(lc), stats)


def dpo_loss(policy_w: Tensor, policy_l: Tensor, ref_w: Tensor, ref_l: Tensor, beta: float) -> Tensor:
    """Diffusion-DPO loss from per-sample errors ``(B,)``: ``−log σ(−β/2·[(p_w − r_w) − (p_l − r_l)])``, mean.

    >>> z = torch.zeros(3)
    >>> round(float(dpo_loss(z, z, z, z, beta=100.0)), 6) == round(float(np.log(2)), 6)
    True
    """
    inside = -0.5 * beta * ((policy_w - ref_w) - (policy_l - ref_l))
    return -F.logsigmoid(inside).mean()


def _pad_cat(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate ``(B, N_a, ...)`` and ``(B, N_b, ...)`` on the batch after zero-padding N."""
    n = max(a.shape[1], b.shape[1])

    def pad(x: Tensor) -> Tensor:
        if x.shape[1] == n:
            return x
        extra = x.new_zeros((x.shape[0], n - x.shape[1], *x.shape[2:]))
        return torch.cat([x, extra], 1)

    return torch.cat([pad(a), pad(b)], 0)


def _dpo_loss_fn(
    train_set: PreferenceSet, generator: Any, cfg: Any, model: nn.Module
) -> Callable[..., Tensor]:
    from debias3d.models.backbone.sampler import add_noise, sample_logit_normal_t, velocity_target
    from debias3d.models.backbone.train import TextFeatureTable, _stage2_batch

    if not hasattr(model, "disable_adapter"):
        raise ValueError("finetune.objective dpo needs a LoRA adapter (train.full_finetune must be false)")
    tc = cfg.train
    beta = float(cfg.dpo.beta)
    sigma_min = float(generator.config.sigma_min)
    text = TextFeatureTable(generator.text_encoder, train_set.prompts)
    win_occ = torch.from_numpy(train_set.win_occupancy).bool()
    win_col = torch.from_numpy(train_set.win_colors)
    lose_occ = torch.from_numpy(train_set.lose_occupancy).bool()
    lose_col = torch.from_numpy(train_set.lose_colors)

    def errors(stage: str, flow: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
        """Per-sample flow-matching error ``(2B,)`` (stage 2: mean over active voxels)."""
        if stage == "stage1":
            pred = flow(inputs["x_t"], inputs["t"] * 1000, inputs["cond"], inputs["cond_mask"])
            return ((pred.float() - inputs["target"]) ** 2).flatten(1).mean(1)
        pred = flow(
            inputs["x_t"],
            inputs["t"] * 1000,
            inputs["cond"],
            inputs["cond_mask"],
            coords=inputs["coords"],
            mask=inputs["mask"],
        )
        m = inputs["mask"][..., None].float()
        return ((pred.float() - inputs["target"]) ** 2 * m).sum((1, 2)) / (
            m.sum((1, 2)) * pred.shape[-1]
        ).clamp_min(1.0)

    def fn(stage: str, flow: nn.Module, rows: Tensor, g: torch.Generator, device: torch.device) -> Tensor:
        b = rows.shape[0]
        cond, cond_mask = text.batch(rows)
        t = sample_logit_normal_t(b, tc.logit_normal_mean, tc.logit_normal_std, generator=g)
        if stage == "stage1":
            xw = win_occ[rows].float()[:, None] * 2 - 1
            xl = lose_occ[rows].float()[:, None] * 2 - 1
            eps = torch.randn(xw.shape, generator=g)  # the same noise for winner and loser
            x0 = torch.cat([xw, xl])
            e2 = torch.cat([eps, eps])
            inputs = {"x_t": add_noise(x0, torch.cat([t, t]), e2, sigma_min)}
            inputs["target"] = velocity_target(x0, e2, sigma_min)
        else:
            x0w, cw, mw = _stage2_batch(win_occ[rows], win_col[rows], tc.stage2_max_voxels, g)
            x0l, cl, ml = _stage2_batch(lose_occ[rows], lose_col[rows], tc.stage2_max_voxels, g)
            # Noise on the full grid, read at each side's voxels: the same ε where both are occupied.
            r = win_occ.shape[1]
            grid = torch.randn((b, r, r, r, 3), generator=g)
            bi = torch.arange(b)[:, None]
            ew = grid[bi, cw[..., 0], cw[..., 1], cw[..., 2]] * mw[..., None]
            el = grid[bi, cl[..., 0], cl[..., 1], cl[..., 2]] * ml[..., None]
            x0, e2 = _pad_cat(x0w, x0l), _pad_cat(ew, el)
            inputs = {
                "x_t": add_noise(x0, torch.cat([t, t]), e2, sigma_min),
                "target": velocity_target(x0, e2, sigma_min),
                "coords": _pad_cat(cw, cl),
                "mask": _pad_cat(mw, ml),
            }
        inputs.update(
            {"t": torch.cat([t, t]), "cond": torch.cat([cond, cond]), "cond_mask": torch.cat([cond_mask] * 2)}
        )
        inputs = {k: v.to(device) for k, v in inputs.items()}
        policy = errors(stage, flow, inputs)
        with torch.no_grad(), model.disable_adapter():
            ref = errors(stage, flow, inputs)
        pw, pl = policy.chunk(2)
        rw, rl = ref.chunk(2)
        return dpo_loss(pw, pl, rw, rl, beta)

    return fn


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("sft", _sft_set, _sft_loss),
    "dpo": Objective("dpo", build_preference_set, _dpo_loss_fn),
}


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; a KeyError lists the choices."""
    if name not in OBJECTIVES:
        raise KeyError(f"no finetune objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
