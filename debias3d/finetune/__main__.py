"""``python -m debias3d.finetune ...`` is ``debias3d finetune ...`` (the same typer app and error handling)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``debias3d finetune`` on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    from debias3d.cli import run

    return run(["finetune", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
