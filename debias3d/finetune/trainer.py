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
   to ``checkpoints_total_limit``.
7. Save the final adapter in ``out/`` (the folder ``PeftModel.from_pretrained`` and
   ``debias3d generate --adapter`` read).

Objective: exactly the pre-training loss, imported from
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

from debias3d.models.persistence import read_jsonl

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


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-N`` folder with the largest N in ``out_dir`` (None when there is none)."""
    d = Path(out_dir)
    if not d.is_dir():
        return None
    found = [p for p in d.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [p for p in found if p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :])) if found else None


def _rotate_checkpoints(out_dir: Path, limit: int | None) -> None:
    """Delete the oldest ``checkpoint-N`` folders so that one more fits under ``limit`` (diffusers)."""
    if limit is None:
        return
    found = sorted(
        (p for p in out_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)),
        key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
    )
    if len(found) >= limit:
        for p in found[: len(found) - limit + 1]:
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


def _log_row(path: Path, row: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def _trim_log(path: Path, keep_until: int) -> None:
    """Keep rows with ``step <= keep_until`` (a resumed run rewrites the steps after its checkpoint).

    A line that does not parse (the last row, torn when the run was killed mid-write) is dropped
    with a warning: the resumed run writes that step again.
    """
    if not path.is_file():
        return
    kept = [r for r in read_jsonl(path) if isinstance(r, dict) and r.get("step", 0) <= keep_until]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def finetune(cfg: FinetuneConfig, out_dir: str | os.PathLike, generator: Any | None = None) -> FinetuneResult:
    """Fine-tune ``cfg.generator``'s flow models with LoRA on the augmented pairs (+ replay).

    Runs on every process of an ``accelerate launch`` (or alone, in-process). See the module doc for
    the recipe.

    Args:
        cfg: the fine-tuning config.
        out_dir: run folder: ``adapter_config.json``, ``adapter_model.safetensors``,
            ``checkpoint-N/``, ``train_log.jsonl``, ``finetune_config.yaml``.
        generator: an already-built generator (tests, benchmarks); else loaded from
            ``cfg.generator`` / ``cfg.generator_path``.

    Returns:
        :class:`FinetuneResult`.

    Raises:
        debias3d.finetune.data.DataError: missing / empty pairs, or no usable pair.
        ValueError: LoRA targets that match no module (the message lists the Linear names).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from debias3d.config import dump_config

    from .data import DataError, build_training_set, check_dataset
    from .lora import add_lora, flow_container, load_generator, write_adapter_info

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
        generator = load_generator(cfg.generator, cfg.generator_path, device=str(accelerator.device))
    flows = generator.flow_models
    if trellis:
        # ss_latents/ + latents/ .npz files joined with the metadata captions (trellis_latents.py)
        train_set = build_trellis_latent_set(cfg.data, cfg.lora.stages, flows)
    else:
        resolution = getattr(flows.get("stage1"), "resolution", None)
        train_set = build_training_set(cfg.data, resolution=resolution)
    if main:
        logger.info(
            "training rows: %d pairs + %d replay (%s skipped)",
            train_set.stats["pairs_used"],
            train_set.stats["replay"],
            sum(train_set.stats["skipped"].values()),
        )

    # ---------------------------------------------------------------- model: frozen base + LoRA
    if trellis:
        # TRELLIS's own objective on its latents: dense (B, 8, 16³) stage 1, SparseTensor stage 2,
        # CLIP text features from the pipeline's encoder.
        stage_loss = TrellisLatentLoss(train_set, generator, tc)
    else:
        stage_loss = _mini_stage_loss(train_set, generator, cfg)
    if tc.full_finetune:
        model: nn.Module = flow_container(generator)
        model.requires_grad_(False)
        for s in cfg.lora.stages:
            model[s].requires_grad_(True)
    else:
        model = add_lora(generator, cfg.lora)
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
    if objective_autocast is not None or weight_dtype != torch.float32:
        keep_norms_fp32(objective)  # after DeepSpeed's cast of the whole module (precision.py)

    updates_per_epoch = math.ceil(len(loader) / tc.gradient_accumulation_steps)
    num_epochs = math.ceil(tc.max_train_steps / updates_per_epoch)
    total_batch = tc.train_batch_size * accelerator.num_processes * tc.gradient_accumulation_steps

    # ---------------------------------------------------------------- resume
    global_step = 0
    first_epoch = 0
    resume_batches = 0
    if tc.resume_from_checkpoint:
        if tc.resume_from_checkpoint == "latest":
            path = latest_checkpoint(out)
            if path is None:
                logger.info("no checkpoint in %s; starting a new training run", out)
        else:
            path = Path(tc.resume_from_checkpoint)
            if not path.is_dir():
                raise FileNotFoundError(f"checkpoint {path} not found")
        if path is not None:
            accelerator.load_state(str(path))
            global_step = int(path.name.rsplit("-", 1)[-1])
            first_epoch = global_step // updates_per_epoch
            resume_batches = (global_step % updates_per_epoch) * tc.gradient_accumulation_steps
            if main:
                logger.info("resumed from %s (step %d)", path, global_step)
    log_path = out / LOG_NAME
    if main:
        if global_step:
            _trim_log(log_path, global_step)
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
                _log_row(log_path, row)
            acc_loss = dict.fromkeys(acc_loss, 0.0)
            if global_step % tc.checkpointing_steps == 0:
                from accelerate.utils import DistributedType

                if main or accelerator.distributed_type == DistributedType.DEEPSPEED:
                    if main:
                        _rotate_checkpoints(out, tc.checkpoints_total_limit)
                    save_path = out / f"{CHECKPOINT_PREFIX}{global_step}"
                    accelerator.save_state(str(save_path))
                    logger.info("saved state to %s", save_path)
            if global_step >= tc.max_train_steps:
                break
    bar.close()

    # ---------------------------------------------------------------- final adapter
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(objective)
    if main:
        if tc.full_finetune:
            if hasattr(generator, "save_pretrained"):
                generator.save_pretrained(out / "full")
        else:
            unwrapped.model.save_pretrained(str(out))
            write_adapter_info(
                out,
                {
                    "generator": cfg.generator,
                    "generator_path": cfg.generator_path,
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
