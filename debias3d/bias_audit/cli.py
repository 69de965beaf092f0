"""Entry points the ``debias3d`` typer app wires in (thin; heavy imports inside).

* ``debias3d audit --prompts P --config C --out O [--resume] [--view-contradictions] [key=value ...]``
  → :func:`audit_command`
* ``debias3d report heatmap --audit DIR --format png|svg|html|json`` → :func:`heatmap_command`
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["audit_command", "heatmap_command", "load_audit_config"]


def load_audit_config(config: str | os.PathLike | None, overrides: Sequence[str] | None = None) -> Any:
    """``AuditConfig`` from YAML + ``key.sub=value`` overrides (raises ``ConfigError`` on bad keys)."""
    from debias3d.bias_audit.config import AuditConfig
    from debias3d.config import load_config

    return load_config(AuditConfig, config, list(overrides or []))


def audit_command(
    prompts: str | os.PathLike,
    config: str | os.PathLike | None = None,
    overrides: Sequence[str] | None = None,
    out: str | os.PathLike = "audit",
    resume: bool = False,
    view_contradictions: bool = False,
) -> dict[str, Any]:
    """Run the bias audit (``debias3d audit``). Returns the summary (empty on non-main processes).

    Args:
        prompts: prompt file or benchmark folder (txt/csv/tsv/json/jsonl, MATE-3D, T3Bench).
        config: YAML file for :class:`~debias3d.bias_audit.config.AuditConfig`.
        overrides: ``key.sub=value`` strings applied after the file.
        out: output folder.
        resume: skip prompts already finished in ``out``.
        view_contradictions: also run the D-SDS view-contradiction (PMI) audit.

    Raises:
        debias3d.config.ConfigError, debias3d.data.prompts.PromptFileError, FileNotFoundError:
            one-line messages for the CLI to print.
    """
    from debias3d.bias_audit.pipeline import run_audit

    cfg = load_audit_config(config, overrides)
    if view_contradictions:
        cfg.view_contradictions.enabled = True
    return run_audit(prompts, cfg, Path(out), resume=resume)


def heatmap_command(
    audit_dir: str | os.PathLike, fmt: str = "png", out: str | os.PathLike | None = None
) -> list[Path]:
    """Re-export word heatmaps from a finished audit folder without re-running it.

    Args:
        audit_dir: the audit's ``OUT`` folder.
        fmt: ``png``, ``svg``, ``html`` or ``json``.
        out: target folder (default ``audit_dir/heatmaps``).

    Raises:
        FileNotFoundError: the folder has no ``prompts.parquet`` / ``words.parquet``.
        ValueError: unknown format.
    """
    from debias3d.bias_audit.report import FORMATS, write_heatmaps

    audit_dir = Path(audit_dir)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    for name in ("prompts.parquet", "words.parquet"):
        if not (audit_dir / name).is_file():
            raise FileNotFoundError(f"{audit_dir}: no {name}; is this an audit output folder?")
    return write_heatmaps(audit_dir, (fmt,), out)
