"""``python -m debias3d.augment`` / ``accelerate launch -m debias3d.augment``: the augmentation entry point.

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m debias3d.augment \\
        --audit audit/ --config configs/shapeworld/augment.yaml --out aug/ [key.sub=value ...]

Items are split between processes with ``accelerate.PartialState().split_between_processes``; each
process appends to its own record shard and the main process writes the dataset.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m debias3d.augment", description=__doc__.splitlines()[0])
    p.add_argument("--audit", required=False, help="audit output folder")
    p.add_argument("--config", default=None, help="YAML config (AugmentConfig)")
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument("--retry-failed", action="store_true", help="run items recorded as failed again")
    p.add_argument("--status", action="store_true", help="print the progress of --out and exit")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from debias3d.augment.pipeline import run_augment, status_command

    if args.status:
        sys.stdout.write(status_command(args.out) + "\n")
        return 0
    if not args.audit:
        sys.stderr.write("error: --audit is required\n")
        return 2
    from accelerate import PartialState

    from debias3d.augment.config import AugmentConfig
    from debias3d.config import ConfigError, load_config

    try:
        cfg = load_config(AugmentConfig, args.config, args.overrides)
    except ConfigError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    import torch

    # Without CUDA, cpu=True makes torchrun-launched ranks join a gloo group (configs/accelerate/cpu_2proc.yaml).
    state = PartialState(cpu=not torch.cuda.is_available())
    summary = run_augment(args.audit, cfg, args.out, state=state, retry_failed=args.retry_failed)
    if state.is_main_process:
        sys.stdout.write(
            json.dumps({k: summary[k] for k in ("sources", "filter", "visual", "pairs")}, default=str) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
