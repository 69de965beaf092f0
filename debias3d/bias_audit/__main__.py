"""``accelerate launch -m debias3d.bias_audit --prompts P --out O [--config C] [key=value ...]``.

Prompts are split between the processes (``PartialState.split_between_processes``); each writes
its own shard and the main process merges them. Also runs as plain ``python -m debias3d.bias_audit``.
"""

from __future__ import annotations

import argparse
import logging
import sys


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m debias3d.bias_audit", description=__doc__)
    p.add_argument("--prompts", required=True, help="prompt file or benchmark folder")
    p.add_argument("--config", "-c", default=None, help="AuditConfig YAML")
    p.add_argument("--out", "-o", default="audit", help="output folder")
    p.add_argument("--resume", action="store_true", help="skip prompts already done in --out")
    p.add_argument("--view-contradictions", action="store_true", help="run the D-SDS PMI audit too")
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from debias3d.bias_audit.cli import audit_command
    from debias3d.config import ConfigError
    from debias3d.data.prompts import PromptFileError

    try:
        audit_command(
            args.prompts, args.config, args.overrides, args.out, args.resume, args.view_contradictions
        )
    except (
        ConfigError,
        PromptFileError,
        FileNotFoundError,
        ImportError,
    ) as e:  # ImportError: a backend's install hint
        sys.stderr.write(f"error: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
