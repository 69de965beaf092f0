"""LoRA fine-tuning of a generator's flow transformers (peft + accelerate).

Entry points (thin; heavy imports happen inside them so ``debias3d --help`` stays fast):

* ``accelerate launch -m debias3d finetune --config configs/shapeworld/finetune.yaml --out runs/ft``
  (any ``configs/accelerate/*.yaml`` through ``--config_file``);
* :func:`finetune_command` — what ``debias3d finetune`` calls: in-process for one process, or a
  re-launch through ``accelerate launch`` when an accelerate config is given;
* :func:`merge_command` — ``debias3d finetune merge``: merged safetensors from an adapter.

Modules: :mod:`.config` (``FinetuneConfig``), :mod:`.data` (pairs + replay), :mod:`.lora` (peft
adapter add / apply / merge), :mod:`.trainer` (the diffusers LoRA recipe).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["finetune_command", "merge_command", "launch_command"]


def launch_command(
    config: str | os.PathLike | None,
    overrides: Sequence[str],
    out: str | os.PathLike,
    accelerate_config: str | os.PathLike,
    resume_from: str | None = None,
) -> list[str]:
    """The ``accelerate launch ... -m debias3d finetune ...`` argv for a run."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    cmd += ["-m", "debias3d", "finetune", "--out", str(out)]
    if config is not None:
        cmd += ["--config", str(config)]
    if resume_from is not None:
        cmd += ["--resume-from", resume_from]
    return cmd + list(overrides)


def finetune_command(
    config: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    out: str | os.PathLike = "runs/finetune",
    accelerate_config: str | os.PathLike | None = None,
    resume_from: str | None = None,
) -> Path:
    """``debias3d finetune``: load the config and train.

    Args:
        config: a ``FinetuneConfig`` YAML (``configs/shapeworld/finetune.yaml``) or None.
        overrides: ``key.sub=value`` strings applied after the file.
        out: run folder.
        accelerate_config: a ``configs/accelerate/*.yaml``; when given, the run is re-launched
            through ``accelerate launch`` (several processes / GPUs); else it runs in this process.
        resume_from: ``"latest"`` or a ``checkpoint-N`` folder (sets ``train.resume_from_checkpoint``).

    Returns:
        ``out`` (the adapter folder).

    Raises:
        debias3d.config.ConfigError / debias3d.finetune.data.DataError / ValueError: one-line errors.
        ValueError: the launched run failed (its own error line is printed above).
    """
    from debias3d.config import load_config

    from .config import FinetuneConfig

    overrides = list(overrides)
    if resume_from is not None:
        overrides.append(f"train.resume_from_checkpoint={resume_from}")
    cfg = load_config(FinetuneConfig, config, overrides)  # validate before launching anything
    if accelerate_config is not None:
        if not Path(accelerate_config).is_file():
            raise FileNotFoundError(f"accelerate config {accelerate_config} not found")
        if cfg.generator != "trellis":
            from .data import check_dataset

            check_dataset(cfg.data.pairs, "pairs")  # cheap and certain: before starting processes
        cmd = launch_command(config, overrides, out, accelerate_config)
        logger.info("launching: %s", " ".join(cmd))
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            # the launched processes printed their own error line above
            raise ValueError(f"the launched fine-tuning run failed (exit status {code}); see its error above")
        return Path(out)
    from .trainer import finetune

    finetune(cfg, out)
    return Path(out)


def merge_command(
    adapter: str | os.PathLike, out: str | os.PathLike, base: str | None = None, device: str = "cpu"
) -> Path:
    """``debias3d finetune merge``: fold an adapter into its base generator and write safetensors.

    Args:
        adapter: a folder written by ``debias3d finetune``.
        out: output folder (mini TRELLIS: ``config.json`` + ``model.safetensors``).
        base: base weights folder / TRELLIS id; default: the one recorded in the adapter folder.
        device: torch device for the merge.
    """
    from debias3d.models.generator import GeneratorSpec, build_generator, read_adapter_info

    spec = GeneratorSpec(read_adapter_info(adapter).get("generator", "mini-trellis"), base, device)
    return build_generator(spec, adapter=adapter).merge_adapter(out)
