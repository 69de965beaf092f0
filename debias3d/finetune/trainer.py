"""LoRA fine-tuning of both flow stages with accelerate — diffusers' ``train_text_to_image_lora.py``
recipe, applied to a two-stage rectified-flow text-to-3D generator.

Recipe, step by step (as in the diffusers script):

1. ``Accelerator(gradient_accumulation_steps, mixed_precision, project_config)``; ``set_seed``.
2. Freeze the base, add the peft adapter (:func:`~debias3d.finetune.lora.add_lora`), keep the
   trainable (LoRA) params in fp32; on CUDA the frozen base runs in the mixed-precision dtype.
   Half-precision blocks (TRELLIS's ``use_fp16``) get a loss scale or run in bf16, and DeepSpeed
   runs under autocast (:mod:`~debias3d.finetune.precision`).
3. AdamW over the trainable params, ``get_scheduler`` with warm-up (steps × num_processes, because
   a prepared scheduler steps once per process), ``accelerator.prepare``.
4. Save / load hooks (``register_save_state_pre_hook``) so ``save_state`` writes the adapter only
   (``adapter_config.json`` + ``adapter_model.safetensors``) plus optimizer / scheduler / RNG state.
5. ``--resume-from latest``: ``load_state`` of the newest ``checkpoint-N``, skip the batches of
   the interrupted epoch (``skip_first_batches``).
6. Train with ``accumulate`` / ``sync_gradients`` + ``clip_grad_norm_``; log (main process only)
   to ``train_log.jsonl`` and a tqdm bar; ``save_state`` every ``checkpointing_steps`` with rotation
   to ``checkpoints_total_limit``. Each checkpoint also holds the log up to its step, so a resume
   rebuilds rows the live log lost (a torn line anywhere) and the final log has every step once.
7. Save the final adapter in ``out/`` (the folder ``PeftModel.from_pretrained`` and
   ``debias3d generate --adapter`` read).

Objective (``finetune.objective``, :mod:`debias3d.finetune.objectives`): ``sft`` is exactly the
pre-training loss below; ``dpo`` is Diffusion-DPO on Algorithm 1's winner / loser pairs. ``sft``:
:func:`debias3d.models.backbone.train.stage_loss` (logit-normal t, condition dropout
``p_uncond``, velocity MSE; stage 2 masked over active voxels), summed over the adapted stages with
``stage_weights``. Noise, t and dropout come from a generator seeded by
``(seed, optimizer step, micro-batch, process)``, so a resumed run reproduces the loss curve of an
uninterrupted one. With ``generator: trellis`` the rows are TRELLIS latents (``data.latents``) and
the loss is :class:`~debias3d.finetune.trellis_latents.TrellisLatentLoss` (the same rectified-flow
maths on TRELLIS's dense stage-1 / sparse stage-2 tensors, CLIP text from the pipeline).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from debias3d.runs import (
    FingerprintError,
    RunFingerprint,
    RunLock,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    fingerprint,
    fsync_dir,
    read_json,
    read_jsonl,
)

from .config import FinetuneConfig

logger = logging.getLogger(__name__)

__all__ = [
    "FinetuneResult",
    "FlowMatchingObjective",
    "finetune",
    "latest_checkpoint",
    "step_seed",
    "LOG_NAME",
]

LOG_NAME = "train_log.jsonl"
CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "checkpoint.json"


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns (on every process; files are written by the main one).

    Attributes:
        out_dir: the run folder (adapter, checkpoints, ``train_log.jsonl``).
        global_step: optimizer steps done (including resumed ones).
        losses: ``(step, loss)`` of the steps run by this call, averaged over processes.
        stats: data counts (pairs used, replay rows, skipped pairs by reason).
        model: the trained peft model (unwrapped), for in-process callers and tests.
    """

    out_dir: Path
    global_step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    model: Any = None


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of the noise / t / dropout generator of one micro-batch on one process."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class FlowMatchingObjective(nn.Module):
    """The training module handed to ``accelerator.prepare`` (so DDP sees one forward per step).

    Wraps the peft model of the flow container; ``forward(rows, seed)`` runs the pre-training loss
    of every adapted stage on corpus rows ``rows (B,)`` and returns
    ``{"loss": Σ_s w_s·L_s, "<stage>": L_s}`` (scalars).

    Args:
        model: ``PeftModel`` (or the bare container for full fine-tuning) over
            ``ModuleDict({"stage1", "stage2"})``.
        stage_loss: ``(stage, flow_model, rows, generator, device) -> scalar`` loss.
        weights: stage → loss weight (stages with weight 0 are not run).
    """

    def __init__(
        self,
        model: nn.Module,
        stage_loss: Any,
        weights: dict[str, float],
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.model = model
        self._stage_loss = stage_loss
        self.weights = {s: w for s, w in weights.items() if w > 0}
        #: set under DeepSpeed bf16 / fp16, which casts the model but applies no autocast (precision.py)
        self.autocast_dtype = autocast_dtype

    @property
    def flows(self) -> nn.ModuleDict:
        """The flow container (with LoRA layers injected when ``model`` is a ``PeftModel``)."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    def forward(self, rows: Tensor, seed: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(int(seed))
        device = next(self.model.parameters()).device
        rows = rows.detach().cpu().long()
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = {s: self._stage_loss(s, self.flows[s], rows, g, device).float() for s in self.weights}
        out["loss"] = sum(self.weights[s] * out[s] for s in self.weights)
        return out


# Settings that do not change the trained weights (when and where to write, speed).
_NOT_IN_WEIGHTS = ("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint", "logging_steps",
                   "dataloader_num_workers", "num_threads")  # fmt: skip


def finetune_fingerprint(cfg: FinetuneConfig, num_processes: int = 1) -> RunFingerprint:
    """The settings and inputs that decide a run's weights; every checkpoint records it.

    ``--resume-from latest`` only takes checkpoints with this fingerprint, and rotation only
    deletes them, so a leftover checkpoint of an earlier run in the same folder is never resumed.
    The pairs dataset enters by its file names and sizes (cheap, and changed by any re-write).
    """
    from debias3d.config import to_dict

    settings = to_dict(cfg)
    for key in _NOT_IN_WEIGHTS:
        settings["train"].pop(key, None)
    settings["num_processes"] = int(num_processes)
    inputs = {}
    for name in ("pairs", "corpus", "latents"):
        folder = getattr(cfg.data, name, None)
        if folder and Path(folder).is_dir():
            files = sorted(
                (p.relative_to(folder).as_posix(), p.stat().st_size)
                for p in Path(folder).rglob("*")
                if p.is_file()
            )
            inputs[f"data.{name}"] = fingerprint(files)
    return RunFingerprint("finetune", settings, inputs)


def _step_of(p: Path) -> int:
    return int(p.name[len(CHECKPOINT_PREFIX) :])


def _checkpoint_dirs(out_dir: Path) -> list[Path]:
    """``checkpoint-N`` folders, oldest first."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted((p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()), key=_step_of)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint (``None`` when every file has its recorded size).

    A save writes the folder aside and moves it into place with its ``checkpoint.json`` (the file
    list with sizes), so a folder without it was interrupted (or made by an older version), and a
    file shorter than recorded was truncated afterwards.
    """
    manifest = path / MANIFEST_NAME
    if not manifest.is_file():
        return f"incomplete: no {MANIFEST_NAME} (an interrupted save, or made by an older version)"
    try:
        m = read_json(manifest)
        files = dict(m["files"])
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST_NAME} is unreadable ({' '.join(str(e).split())[:120]})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} is truncated or changed ({f.stat().st_size} of {size} bytes)"
    return None


def latest_checkpoint(out_dir: str | os.PathLike, fp: RunFingerprint | None = None) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``out_dir`` (of the run ``fp`` when given), else None.

    Incomplete or corrupt checkpoints are skipped with a warning (the previous intact one is used).

    Raises:
        FingerprintError: ``fp`` given and every intact checkpoint belongs to another run (one line
            saying how to start fresh or how to resume as that run was made).
    """
    return next(iter(_usable_checkpoints(Path(out_dir), fp)), None)


def _usable_checkpoints(out: Path, fp: RunFingerprint | None) -> list[Path]:
    """Complete checkpoints of this run, newest first (see :func:`latest_checkpoint`)."""
    usable, foreign = [], []
    for p in reversed(_checkpoint_dirs(out)):
        why = checkpoint_problem(p)
        if why is not None:
            logger.warning("skipping %s: %s", p, why)
            continue
        if fp is not None:
            stored = read_json(p / MANIFEST_NAME)
            if stored.get("fingerprint") != fp.digest:
                foreign.append((p, stored))
                continue
        usable.append(p)
    if not usable and foreign:
        p, stored = foreign[0]
        msg = fp.mismatch(stored, f"{p} belongs to a run made", "run without --resume-from")  # type: ignore[union-attr]
        raise FingerprintError(msg or f"{p} belongs to another run; run without --resume-from to start fresh")
    return usable


def _tidy_checkpoints(out: Path) -> None:
    """After a kill mid-save: restore a checkpoint moved aside for replacement, drop unfinished saves."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.name.startswith(".old-" + CHECKPOINT_PREFIX):
            final = out / p.name[len(".old-") :]
            if final.exists():
                shutil.rmtree(p)
            else:
                p.rename(final)
        elif p.name.startswith(".tmp-" + CHECKPOINT_PREFIX):
            shutil.rmtree(p)


def _publish_checkpoint(tmp: Path, final: Path, fp: RunFingerprint, step: int) -> None:
    """Seal ``tmp`` (fsync files, write ``checkpoint.json`` last) and move it to ``final`` atomically."""
    files = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            files[f.relative_to(tmp).as_posix()] = f.stat().st_size
    atomic_write_json(tmp / MANIFEST_NAME, {**fp.to_dict(), "step": step, "files": files})
    old = final.with_name(".old-" + final.name)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def _rotate_checkpoints(out_dir: Path, limit: int | None, fp: RunFingerprint | None = None) -> None:
    """Delete this run's oldest checkpoints beyond ``limit`` (diffusers' rotation, after the new save).

    Only checkpoints with this run's fingerprint count and are deleted; other runs' are left alone.
    """
    if limit is None:
        return
    own = []
    for p in _checkpoint_dirs(out_dir):
        if fp is not None and checkpoint_problem(p) is None:
            if read_json(p / MANIFEST_NAME).get("fingerprint") != fp.digest:
                continue
        elif fp is not None:
            continue
        own.append(p)
    for p in own[: max(0, len(own) - limit)]:
        logger.info("removing checkpoint %s (checkpoints_total_limit=%d)", p.name, limit)
        shutil.rmtree(p)


def _mini_stage_loss(train_set: Any, generator: Any, cfg: FinetuneConfig) -> Any:
    """The pre-training loss of mini TRELLIS, bound to the fine-tuning rows."""
    from debias3d.models.backbone.train import BackboneTrainConfig, TextFeatureTable, stage_loss

    loss_cfg = BackboneTrainConfig(
        p_uncond=cfg.train.p_uncond,
        t_mean=cfg.train.logit_normal_mean,
        t_std=cfg.train.logit_normal_std,
        sigma_min=float(generator.config.sigma_min),
        stage2_max_voxels=cfg.train.stage2_max_voxels,
    )
    data = train_set.as_corpus()
    text = TextFeatureTable(generator.text_encoder, data["prompts"])

    def fn(stage: str, model: nn.Module, rows: Tensor, g: torch.Generator, device: torch.device) -> Tensor:
        return stage_loss(stage, model, rows, data, text, loss_cfg, g, device)

    return fn


def _collate_rows(rows: list[int]) -> Tensor:
    """Row indices → ``(B,)`` long (module-level so DataLoader workers can pickle it)."""
    return torch.tensor(rows, dtype=torch.long)


def _log_row(path: Path, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Append ``row`` to the log file (a torn tail is cut first) and to ``rows``, the run's log in memory."""
    rows.append(row)
    append_jsonl(path, [row], fsync=False)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the log file with ``rows`` (one per step, in step order), atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _restore_log(path: Path, checkpoint: Path, keep_until: int, expected: set[int]) -> list[dict[str, Any]]:
    """The log rows of steps ``<= keep_until`` for a run resumed from ``checkpoint``, one per step.

    Every checkpoint holds its run's log up to its step (``train_log.jsonl``, sealed with the
    checkpoint), so rows the live log lost (a torn line anywhere in it) are taken from there; the
    live log only fills steps the checkpoint's copy lacks (a checkpoint made by an older version).
    Steps in ``expected`` that neither has are named in a warning. The rows after ``keep_until``
    are dropped: the resumed run logs those steps again.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for src in (path, checkpoint / LOG_NAME):  # the checkpoint's sealed copy wins
        if src.is_file():
            for r in read_jsonl(src):
                if isinstance(r, dict) and isinstance(r.get("step"), int) and 0 < r["step"] <= keep_until:
                    by_step[r["step"]] = r
    missing = sorted(expected - set(by_step))
    if missing:
        logger.warning(
            "%s: the log rows of steps %s were lost and %s holds no copy of them",
            path, ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else ""), checkpoint.name,
        )  # fmt: skip
    return [by_step[k] for k in sorted(by_step)]


def finetune(cfg: FinetuneConfig, out_dir: str | os.PathLike, generator: Any | None = None) -> FinetuneResult:
    """Fine-tune ``cfg.generator``'s flow models with LoRA on the augmented pairs (+ replay).

    Runs on every process of an ``accelerate launch`` (or alone, in-process). See the module doc for
    the recipe.

    Args:
        cfg: the fine-tuning config.
        out_dir: run folder: ``adapter_config.json``, ``adapter_model.safetensors``,
            ``checkpoint-N/``, ``train_log.jsonl``, ``finetune_config.yaml``.
        generator: an already-built generator (tests, benchmarks); else loaded from
            ``cfg.generator`` / ``cfg.generator_weights``.

    Returns:
        :class:`FinetuneResult`.

    Raises:
        debias3d.finetune.data.DataError: missing / empty pairs, or no usable pair.
        ValueError: LoRA targets that match no module (the message lists the Linear names).
        debias3d.runs.RunLockedError: another run is writing ``out_dir``.
        debias3d.runs.FingerprintError: ``--resume-from`` names checkpoints of a run made with
            other settings.
    """
    # one run per folder: a second one on the same out_dir is refused (the lock dies with its
    # process); accelerate launch sets RANK on every process, the main one (0) holds the lock
    lock = RunLock(out_dir).acquire() if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        return _finetune(cfg, out_dir, generator)
    finally:
        if lock is not None:
            lock.release()


def _finetune(
    cfg: FinetuneConfig, out_dir: str | os.PathLike, generator: Any | None = None
) -> FinetuneResult:
    """:func:`finetune` without the lock."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from transformers import get_scheduler

    from debias3d.config import dump_config
    from debias3d.models.generator import GeneratorSpec, build_generator
    from debias3d.progress import tqdm

    from .data import DataError, check_dataset
    from .lora import add_lora, flow_container, write_adapter_info

    tc = cfg.train
    out = Path(out_dir)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)

    mixed = tc.mixed_precision
    if mixed == "fp16" and not torch.cuda.is_available():
        logger.warning("mixed_precision=fp16 needs CUDA; training in fp32")
        mixed = "no"
    accelerator = Accelerator(
        # Without CUDA, a multi-process launch must use gloo (MULTI_CPU) rather than fall back to
        # one process; cpu=True is what makes accelerate pick it.
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        mixed_precision=mixed,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=tc.seed),
    )
    main = accelerator.is_main_process
    if not main:
        logging.getLogger("debias3d").setLevel(logging.ERROR)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    set_seed(tc.seed)

    # ---------------------------------------------------------------- data (fails fast, one line)
    trellis = cfg.generator == "trellis"
    if trellis:
        from .trellis_latents import TrellisLatentLoss, build_trellis_latent_set

        if cfg.data.latents is None or not Path(cfg.data.latents).is_dir():
            raise DataError(f"TRELLIS latents folder {cfg.data.latents} not found (see docs/finetune.md)")
    else:
        check_dataset(cfg.data.pairs, "pairs")  # before the (slow) generator load
    if generator is None:
        generator = build_generator(
            GeneratorSpec(cfg.generator, cfg.generator_weights, str(accelerator.device))
        )
    flows = generator.flow_models
    if trellis:
        # ss_latents/ + latents/ .npz files joined with the metadata captions (trellis_latents.py)
        train_set = build_trellis_latent_set(cfg.data, cfg.lora.stages, flows)
    else:
        from .objectives import get_objective

        # objective: sft → winning pairs (+ replay); dpo → (prompt, winner, loser) triples
        resolution = getattr(flows.get("stage1"), "resolution", None)
        train_set = get_objective(cfg.objective).training_set(cfg.data, resolution)
    if main:
        logger.info(
            "training rows: %d pairs + %d replay (%s skipped)",
            train_set.stats["pairs_used"],
            train_set.stats["replay"],
            sum(train_set.stats["skipped"].values()),
        )

    # ---------------------------------------------------------------- model: frozen base + LoRA
    # Seed again once the generator exists: building it above (``build_generator``) draws from the
    # global RNG, a generator passed in does not, and LoRA's initial weights (and its dropout) come
    # from that RNG. Without this, ``debias3d finetune`` and the demo (which passes its generator)
    # train different adapters from the same config and seed.
    set_seed(tc.seed)
    if trellis:
        # TRELLIS's own objective on its latents: dense (B, 8, 16³) stage 1, SparseTensor stage 2,
        # CLIP text features from the pipeline's encoder.
        stage_loss = TrellisLatentLoss(train_set, generator, tc)
    if tc.full_finetune:
        model: nn.Module = flow_container(generator)
        model.requires_grad_(False)
        for s in cfg.lora.stages:
            model[s].requires_grad_(True)
    else:
        model = add_lora(generator, cfg.lora)
    if not trellis:
        # after add_lora: dpo's reference is this model with its adapter disabled
        stage_loss = get_objective(cfg.objective).stage_loss(train_set, generator, cfg, model)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )
    if weight_dtype != torch.float32 and accelerator.device.type == "cuda" and not tc.full_finetune:
        # diffusers: frozen weights in half precision, trainable (LoRA) weights stay fp32.
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(weight_dtype)
    from .precision import autocast_dtype, grad_scaler_for, keep_norms_fp32, set_half_dtype

    if accelerator.mixed_precision == "bf16":
        set_half_dtype(flows, torch.bfloat16)  # fp16 torso (TRELLIS use_fp16) → bf16: no loss scale needed
    weights = {s: tc.stage_weights.get(s, 1.0) for s in cfg.lora.stages}
    objective_autocast = autocast_dtype(accelerator)
    objective = FlowMatchingObjective(model, stage_loss, weights, objective_autocast)
    objective.to(accelerator.device)
    if weight_dtype != torch.float32:
        keep_norms_fp32(objective)  # TRELLIS's LayerNorm32 / GroupNorm32 normalise in fp32
    # fp16 blocks without a loss scale: accelerate uses this scaler in backward and optimizer.step
    own_scaler = grad_scaler_for(accelerator, objective)
    if own_scaler is not None:
        accelerator.scaler = own_scaler
    params = [p for p in objective.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in objective.parameters())
    if main:
        logger.info(
            "trainable params: %d of %d (%.3f%%)", n_train, n_total, 100.0 * n_train / max(n_total, 1)
        )

    lr = tc.learning_rate
    if tc.scale_lr:
        lr *= tc.gradient_accumulation_steps * tc.train_batch_size * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        params,
        lr=lr,
        betas=(tc.adam_beta1, tc.adam_beta2),
        weight_decay=tc.adam_weight_decay,
        eps=tc.adam_epsilon,
    )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=tc.train_batch_size,
        shuffle=True,
        num_workers=tc.dataloader_num_workers,
        collate_fn=_collate_rows,
    )
    lr_scheduler = get_scheduler(
        tc.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=tc.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=tc.max_train_steps * accelerator.num_processes,
    )

    # ---------------------------------------------------------------- adapter-only save hooks
    def save_model_hook(models: list[nn.Module], weights_: list[dict], output_dir: str) -> None:
        for i, m in enumerate(models):
            unwrapped = accelerator.unwrap_model(m)
            if isinstance(unwrapped, FlowMatchingObjective) and not tc.full_finetune:
                if accelerator.is_main_process:
                    unwrapped.model.save_pretrained(output_dir)
                if i < len(weights_):
                    weights_.pop(i)  # the frozen base is not saved

    def load_model_hook(models: list[nn.Module], input_dir: str) -> None:
        from peft.utils import load_peft_weights, set_peft_model_state_dict

        for m in list(models):
            unwrapped = accelerator.unwrap_model(m)
            if isinstance(unwrapped, FlowMatchingObjective) and not tc.full_finetune:
                result = set_peft_model_state_dict(
                    unwrapped.model, load_peft_weights(input_dir, device="cpu")
                )
                if getattr(result, "unexpected_keys", None):
                    raise ValueError(f"{input_dir}: unexpected adapter keys {result.unexpected_keys[:3]}")
                models.remove(m)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    objective, optimizer, loader, lr_scheduler = accelerator.prepare(
        objective, optimizer, loader, lr_scheduler
    )
    if objective_autocast is not None:
        keep_norms_fp32(objective)  # again after DeepSpeed's cast of the whole module (precision.py)

    updates_per_epoch = math.ceil(len(loader) / tc.gradient_accumulation_steps)
    num_epochs = math.ceil(tc.max_train_steps / updates_per_epoch)
    total_batch = tc.train_batch_size * accelerator.num_processes * tc.gradient_accumulation_steps

    # ---------------------------------------------------------------- resume
    global_step = 0
    first_epoch = 0
    resume_batches = 0
    resumed_from: Path | None = None
    fp = finetune_fingerprint(cfg, accelerator.num_processes)
    if main:
        _tidy_checkpoints(out)
    accelerator.wait_for_everyone()
    if tc.resume_from_checkpoint:
        if tc.resume_from_checkpoint == "latest":
            candidates = _usable_checkpoints(out, fp)
            if not candidates:
                logger.info("no checkpoint in %s; starting a new training run", out)
        else:
            path = Path(tc.resume_from_checkpoint)
            if not path.is_dir():
                raise FileNotFoundError(f"checkpoint {path} not found")
            why = checkpoint_problem(path)
            if why is not None:
                raise ValueError(f"checkpoint {path}: {why}")
            msg = fp.mismatch(
                read_json(path / MANIFEST_NAME), f"{path} belongs to a run made", "run without --resume-from"
            )
            if msg:
                raise FingerprintError(msg)
            candidates = [path]
        failures = []
        for path in candidates:
            try:
                accelerator.load_state(str(path))
            except Exception as exc:  # noqa: BLE001 — any unreadable state file: fall back to an older one
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
                failures.append(f"{path.name}: {why}")
                logger.warning("skipping %s: cannot be loaded (%s)", path, why)
                continue
            global_step = _step_of(path)
            resumed_from = path
            first_epoch = global_step // updates_per_epoch
            resume_batches = (global_step % updates_per_epoch) * tc.gradient_accumulation_steps
            if main:
                logger.info("resumed from %s (step %d)", path, global_step)
            break
        else:
            if failures:
                raise ValueError(
                    f"no checkpoint in {out} could be loaded ({'; '.join(failures[:3])}); "
                    "run without --resume-from to start fresh"
                )
    log_path = out / LOG_NAME
    log_rows: list[dict[str, Any]] = []
    if main:
        if global_step and resumed_from is not None:
            logged = {
                s for s in range(1, global_step + 1) if s % tc.logging_steps == 0 or s == tc.max_train_steps
            }
            log_rows = _restore_log(log_path, resumed_from, global_step, logged)
            _write_log(log_path, log_rows)
        elif log_path.exists():
            log_path.unlink()
        dump_config(cfg, out / "finetune_config.yaml")
        logger.info(
            "fine-tuning %s: %d steps, %d rows, total batch %d (%d procs × %d × accum %d), %d epochs",
            cfg.generator,
            tc.max_train_steps,
            len(train_set),
            total_batch,
            accelerator.num_processes,
            tc.train_batch_size,
            tc.gradient_accumulation_steps,
            num_epochs,
        )

    # ---------------------------------------------------------------- train
    bar = tqdm(
        range(tc.max_train_steps),
        initial=global_step,
        desc="finetune",
        disable=not accelerator.is_local_main_process,
    )
    losses: list[tuple[int, float]] = []
    acc_loss = {k: 0.0 for k in ("loss", *weights)}
    micro = 0
    t0 = time.time()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= tc.max_train_steps:
            break
        objective.train()
        loader.set_epoch(epoch)
        active = loader
        if epoch == first_epoch and resume_batches:
            active = accelerator.skip_first_batches(loader, resume_batches)
            active.set_epoch(epoch)
        for rows in active:
            seed = step_seed(tc.seed, global_step, micro, accelerator.process_index)
            with accelerator.accumulate(objective):
                parts = objective(rows, seed)
                loss = parts["loss"]
                # Mean over processes of this micro-batch's losses, for logging (diffusers).
                keys = list(acc_loss)
                vals = torch.stack([parts[k].detach().float() for k in keys])
                vals = accelerator.gather(vals[None]).mean(0)
                for k, v in zip(keys, vals.tolist(), strict=True):
                    acc_loss[k] += v / tc.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.max_grad_norm > 0:
                    if own_scaler is not None:  # accelerate unscales only its own fp16 scaler
                        own_scaler.unscale_(optimizer.optimizer)
                    accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            micro = 0
            bar.update(1)
            losses.append((global_step, acc_loss["loss"]))
            bar.set_postfix(loss=f"{acc_loss['loss']:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
            if main and (global_step % tc.logging_steps == 0 or global_step == tc.max_train_steps):
                row = {"step": global_step, "epoch": epoch, "lr": lr_scheduler.get_last_lr()[0]}
                row.update({k if k == "loss" else f"loss_{k}": v for k, v in acc_loss.items()})
                if accelerator.scaler is not None:
                    row["loss_scale"] = float(accelerator.scaler.get_scale())
                row["elapsed_s"] = round(time.time() - t0, 3)
                _log_row(log_path, log_rows, row)
            acc_loss = dict.fromkeys(acc_loss, 0.0)
            if global_step % tc.checkpointing_steps == 0:
                from accelerate.utils import DistributedType

                deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
                if main or deepspeed:
                    # written aside, sealed with checkpoint.json, then renamed: a kill mid-save
                    # leaves the previous checkpoints as they were
                    save_path = out / f"{CHECKPOINT_PREFIX}{global_step}"
                    tmp_path = out / f".tmp-{save_path.name}"
                    if main and tmp_path.exists():
                        shutil.rmtree(tmp_path)
                    if deepspeed:
                        accelerator.wait_for_everyone()
                    accelerator.save_state(str(tmp_path))
                    if deepspeed:
                        accelerator.wait_for_everyone()
                    if main:
                        _write_log(tmp_path / LOG_NAME, log_rows)  # sealed with the checkpoint
                        _publish_checkpoint(tmp_path, save_path, fp, global_step)
                        _rotate_checkpoints(out, tc.checkpoints_total_limit, fp)
                        logger.info("saved state to %s", save_path)
            if global_step >= tc.max_train_steps:
                break
    bar.close()

    # ---------------------------------------------------------------- final adapter
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(objective)
    if main:
        _write_log(log_path, log_rows)  # every logged step once, whatever happened to the file
        if tc.full_finetune:
            if hasattr(generator, "save_pretrained"):
                generator.save_pretrained(out / "full")
        else:
            unwrapped.model.save_pretrained(str(out))
            write_adapter_info(
                out,
                {
                    "generator": cfg.generator,
                    "generator_weights": cfg.generator_weights,
                    "stages": list(cfg.lora.stages),
                    "target_modules": list(cfg.lora.target_modules),
                    "global_step": global_step,
                    "data": train_set.stats,
                },
            )
        (out / "finetune_summary.json").write_text(
            json.dumps(
                {
                    "global_step": global_step,
                    "trainable_params": n_train,
                    "total_params": n_total,
                    "num_processes": accelerator.num_processes,
                    "mixed_precision": accelerator.mixed_precision,
                    "grad_scaler": accelerator.scaler is not None,
                    "data": train_set.stats,
                    "seconds": round(time.time() - t0, 2),
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        logger.info("wrote adapter to %s (step %d)", out, global_step)
    accelerator.end_training()
    return FinetuneResult(out, global_step, losses, train_set.stats, unwrapped.model)
