"""Source prompts for augmentation: the audit's rows read back, with their meshes checked."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from debias3d.augment.config import AugmentConfig
from debias3d.augment.semantic import is_missing, select_keep_words
from debias3d.runs import inside

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One audited prompt t_n with its chosen original sample x_n."""

    prompt_id: str
    prompt: str
    category: str
    w_h: str | None
    w_l: str | None
    keep_words: tuple[str, ...]
    mesh: str  # path relative to the audit folder
    sample: int
    seed: int
    mesh_sha: str


def _file_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:24]


def _clean(word: Any) -> str | None:
    return None if is_missing(word) else str(word).strip().lower()


def _load_mesh(path: Path) -> Any:
    from debias3d.data.assets import load_mesh

    return load_mesh(path)


def check_mesh_file(path: Path) -> str | None:
    """Why a mesh file cannot serve as x_n / x_nc (``None`` when it loads with faces).

    Empty, truncated or malformed GLB files make trimesh raise a variety of errors (IndexError,
    KeyError, UnboundLocalError, ...); all of them are a reason here, never a traceback.
    """
    if not path.is_file():
        return "mesh file is missing"
    if path.stat().st_size == 0:
        return "mesh file is empty (0 bytes)"
    try:
        mesh = _load_mesh(path)
    except Exception as err:  # noqa: BLE001 — any parser error of a foreign file is this item's failure
        return f"mesh file is unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]})"
    if len(getattr(mesh, "faces", ())) == 0:
        return "mesh has no faces (empty scene)"
    return None


def load_sources(
    audit_dir: str | Path, cfg: AugmentConfig, skipped: list[dict[str, Any]] | None = None
) -> list[Source]:
    """The source prompts of an audit with their x_n (``cfg.original``: ``first`` or ``best``).

    A source whose x_n cannot be used (no sample, a mesh path that leaves the audit folder, a
    missing, empty or unreadable mesh) is skipped before any LLM call; when ``skipped`` is given,
    one ``{"stage": "source", "reason", "detail", ...}`` row per skipped source is appended to it.

    Raises:
        FileNotFoundError: a missing ``prompts.parquet`` / ``samples.parquet``.
        ValueError: missing columns.
    """
    import pandas as pd

    audit = Path(audit_dir)
    for name in ("prompts.parquet", "samples.parquet"):
        if not (audit / name).is_file():
            raise FileNotFoundError(f"{audit / name} not found: is {audit} an audit output folder?")
    prompts = pd.read_parquet(audit / "prompts.parquet")
    samples = pd.read_parquet(audit / "samples.parquet")
    need_p = {"prompt_id", "prompt", "w_h", "w_l"}
    need_s = {"prompt_id", "sample", "seed", "mesh"}
    if need_p - set(prompts.columns):
        raise ValueError(f"prompts.parquet lacks columns {sorted(need_p - set(prompts.columns))}")
    if need_s - set(samples.columns):
        raise ValueError(f"samples.parquet lacks columns {sorted(need_s - set(samples.columns))}")
    score_col = f"score_{cfg.original_score}"
    if cfg.original == "best" and score_col not in samples.columns:
        raise ValueError(f"original=best needs column {score_col!r} in samples.parquet")
    samples = samples.assign(_pid=samples["prompt_id"].astype(str))
    by_prompt = {pid: g.sort_values("sample") for pid, g in samples.groupby("_pid", sort=False)}
    if cfg.max_prompts:
        prompts = prompts.iloc[: cfg.max_prompts]
    out = []

    def skip(row: Any, reason: str, detail: str) -> None:
        logger.warning("augment: prompt %s skipped: %s", row.prompt_id, detail)
        if skipped is not None:
            skipped.append(
                {"stage": "source", "source_prompt_id": str(row.prompt_id), "source_prompt": str(row.prompt),
                 "prompt": None, "reason": reason, "detail": detail}
            )  # fmt: skip

    for row in prompts.itertuples(index=False):
        pid = str(row.prompt_id)
        g = by_prompt.get(pid)
        if g is None or g.empty:
            skip(row, "no_sample", "no audit sample")
            continue
        if cfg.original == "best":
            pick = g.iloc[int(np.argmax(g[score_col].to_numpy()))]  # first maximum = lowest sample
        else:
            pick = g.iloc[0]
        w_h, w_l = _clean(row.w_h), _clean(row.w_l)
        keep = select_keep_words(row.prompt, w_h, w_l, cfg.strategy, cfg.seed, k=cfg.random_words, key=pid)
        try:
            mesh_path = inside(audit, str(pick["mesh"]), "mesh path")
        except ValueError as err:
            skip(row, "original_unusable", str(err))
            continue
        why = check_mesh_file(mesh_path)
        if why is not None:
            skip(row, "original_unusable", f"x_n {pick['mesh']}: {why}")
            continue
        out.append(
            Source(
                prompt_id=pid,
                prompt=str(row.prompt),
                category=str(getattr(row, "category", "") or ""),
                w_h=w_h,
                w_l=w_l,
                keep_words=keep,
                mesh=str(pick["mesh"]),
                sample=int(pick["sample"]),
                seed=int(pick["seed"]),
                mesh_sha=_file_sha(mesh_path),
            )
        )
    return out
