"""``accelerate launch -m debias3d.finetune`` — the fine-tuning entry point (one process per device).

Usage::

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m debias3d.finetune \\
        --config configs/shapeworld/finetune.yaml --out runs/ft  train.max_train_steps=200
    python -m debias3d.finetune --config ... --out runs/ft --resume-from latest
    python -m debias3d.finetune merge --adapter runs/ft --out runs/ft/merged

Positional ``key.sub=value`` arguments override the YAML (``debias3d.config`` syntax). Errors in
the config or the data end the run with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["make_parser", "main"]


def make_parser() -> argparse.ArgumentParser:
    """Arguments of the train entry point (``merge`` has its own, see :func:`make_merge_parser`)."""
    p = argparse.ArgumentParser(
        prog="python -m debias3d.finetune",
        description="LoRA fine-tuning of the generator's flow models on augmented pairs (run it with "
        "`accelerate launch`). `merge` as the first argument writes merged weights instead.",
    )
    p.add_argument("--config", "-c", default=None, help="FinetuneConfig YAML file")
    p.add_argument("--out", "-o", default="runs/finetune", help="run folder (adapter, checkpoints, log)")
    p.add_argument("--resume-from", default=None, help="'latest' or a checkpoint-N folder")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return p


def make_merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m debias3d.finetune merge", description="merge a LoRA adapter")
    p.add_argument("--adapter", required=True, help="adapter folder written by the fine-tuning run")
    p.add_argument("--out", "-o", required=True, help="output folder for merged safetensors")
    p.add_argument("--base", default=None, help="base weights (default: recorded in the adapter folder)")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in ("datasets", "accelerate", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        args = make_merge_parser().parse_args(argv[1:])
        _setup_logging(False)
        from . import merge_command

        try:
            merge_command(args.adapter, args.out, base=args.base, device=args.device)
        except (FileNotFoundError, ValueError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)  # noqa: T201 — CLI error line
            return 2
        return 0

    args = make_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from debias3d.config import ConfigError, load_config

    from .config import FinetuneConfig
    from .data import DataError
    from .trainer import finetune

    overrides = list(args.overrides)
    if args.resume_from is not None:
        overrides.append(f"train.resume_from_checkpoint={args.resume_from}")
    try:
        cfg = load_config(FinetuneConfig, args.config, overrides)
        finetune(cfg, args.out)
    except (ConfigError, DataError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)  # noqa: T201 — CLI error line
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
