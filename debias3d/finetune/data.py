"""Fine-tuning data: augmented pairs + a replay share of the original corpus, as flow-model batches.

Sources (both HF datasets written with ``save_to_disk``):

* ``aug/pairs/`` (written by ``debias3d augment``): ``prompt``, ``occupancy`` uint8 ``(R, R, R)``, ``colors`` uint8
  ``(R, R, R, 3)``, ``mesh`` (GLB path, relative to the ``aug/`` folder or absolute), ``winner``, ...
* the ShapeWorld corpus (``debias3d world corpus``): ``prompt``, ``occupancy``, ``colors``, ...

A pair whose mesh file is missing or unreadable, or whose voxels are missing or malformed, is
skipped and counted in :attr:`TrainingSet.stats`; the run goes on. An empty or missing pairs
dataset raises :class:`DataError` with one line.

Replay (the paper's "without damaging the model's existing general knowledge"): with share ``ρ``
and ``P`` usable pairs, ``round(P·ρ / (1 − ρ))`` corpus rows join the mix, so that they make up
``ρ`` of it.

Items are row indices; a batch of rows becomes the two stages' inputs exactly as in pre-training
(:func:`debias3d.models.backbone.train.stage_loss`, with the frozen text features of every unique
prompt precomputed once by :class:`~debias3d.models.backbone.train.TextFeatureTable`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from debias3d.data.assets import load_mesh

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "TrainingSet",
    "load_rows",
    "check_dataset",
    "build_training_set",
    "resolve_mesh_path",
    "check_mesh_file",
]


class DataError(ValueError):
    """An unusable training dataset (missing, empty, or nothing left after skipping). One line."""


def log_skipped(what: str, n_kept: int, skipped: Mapping[str, int]) -> int:
    """Warn once about the rows skipped per reason; return the total rows seen (kept + skipped)."""
    n_total = n_kept + sum(skipped.values())
    if skipped:
        logger.warning(
            "skipped %d of %d %s (%s)",
            sum(skipped.values()),
            n_total,
            what,
            ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
        )
    return n_total


@dataclass
class TrainingSet(torch.utils.data.Dataset):
    """In-memory training rows (small: 16 KB per row at R = 16).

    Attributes:
        prompts: ``M`` prompts.
        occupancy: ``(M, R, R, R)`` uint8 in {0, 1}.
        colors: ``(M, R, R, R, 3)`` uint8.
        sources: ``M`` of ``"pair"`` / ``"replay"``.
        stats: counts — ``pairs_total``, ``pairs_used``, ``replay``, ``skipped`` (reason → n).
    """

    prompts: list[str]
    occupancy: np.ndarray
    colors: np.ndarray
    sources: list[str]
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> int:
        # Items are row indices: the loss (``backbone.train.stage_loss``) gathers rows itself.
        return i

    def as_corpus(self) -> dict[str, Any]:
        """The ``{"prompts", "occupancy" (M,R,R,R) bool, "colors" (M,R,R,R,3) uint8}`` dict that
        :func:`debias3d.models.backbone.train.stage_loss` reads (the pre-training batch format)."""
        return {
            "prompts": list(self.prompts),
            "occupancy": torch.from_numpy(self.occupancy).bool(),
            "colors": torch.from_numpy(self.colors),
        }

    @property
    def resolution(self) -> int:
        return int(self.occupancy.shape[1])


def _load_dataset(path: str | os.PathLike, what: str):
    from datasets import Dataset, DatasetDict, load_from_disk

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} dataset not found: {p}")
    try:
        ds = load_from_disk(str(p))
    except IndexError as e:
        # datasets cannot concatenate zero arrow tables: that is what an empty save_to_disk holds.
        raise DataError(f"{what} dataset {p} is empty") from e
    except (FileNotFoundError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{what} dataset {p} could not be read ({first})") from e
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{what} dataset {p} is a DatasetDict without a 'train' split")
        ds = ds["train"]
    if not isinstance(ds, Dataset):
        raise DataError(f"{what} dataset {p} is not a HF Dataset")
    if len(ds) == 0:
        raise DataError(f"{what} dataset {p} is empty")
    for col in ("prompt", "occupancy", "colors"):
        if col not in ds.column_names:
            raise DataError(f"{what} dataset {p} has no '{col}' column (has: {', '.join(ds.column_names)})")
    return ds


def check_dataset(path: str | os.PathLike, what: str = "pairs") -> int:
    """Row count of a ``save_to_disk`` dataset; :class:`DataError` (one line) when missing or empty."""
    return len(_load_dataset(path, what))


def resolve_mesh_path(mesh: str | None, dataset_dir: Path) -> Path | None:
    """A pair's ``mesh`` entry as a path inside the ``aug/`` folder (the dataset folder's parent).

    Relative entries are tried against the ``aug/`` folder, then the dataset folder; an absolute
    entry is accepted only when it lies inside the ``aug/`` folder. Anything else (``/etc/passwd``,
    ``../../x.glb``) raises ValueError: a dataset row never makes training read outside its folder.
    """
    if not mesh:
        return None
    from debias3d.runs import inside

    root = dataset_dir.parent
    first = inside(root, mesh, "mesh path")  # absolute paths and ../ are checked here
    if first.exists() or Path(mesh).is_absolute():
        return first
    second = dataset_dir / mesh
    return second if second.exists() and inside(root, second, "mesh path") else first


def check_mesh_file(path: Path | None) -> str | None:
    """``None`` when the mesh file looks usable, else the skip reason ``missing_mesh`` /
    ``broken_mesh``. GLB files are checked by their 12-byte header (magic ``glTF``, version 2, and
    the declared length equals the file size); other formats are parsed with trimesh."""
    if path is None or not path.is_file():
        return "missing_mesh"
    size = path.stat().st_size
    if size == 0:
        return "broken_mesh"
    if path.suffix.lower() == ".glb":
        with open(path, "rb") as f:
            head = f.read(12)
        if len(head) < 12 or head[:4] != b"glTF":
            return "broken_mesh"
        version = int.from_bytes(head[4:8], "little")
        length = int.from_bytes(head[8:12], "little")
        return None if version == 2 and length == size else "broken_mesh"

    try:
        mesh = load_mesh(path)
    except Exception as e:  # noqa: BLE001 — any parser error of a foreign file makes this row a skip
        logger.debug("mesh %s unreadable: %s", path, e)
        return "broken_mesh"
    return None if len(getattr(mesh, "vertices", ())) else "broken_mesh"


def _voxels(row: Mapping[str, Any], resolution: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(occupancy (R,R,R) uint8, colors (R,R,R,3) uint8)`` of a row, or None when malformed/empty."""
    occ, col = row.get("occupancy"), row.get("colors")
    if occ is None or col is None:
        return None
    try:
        occ = np.asarray(occ)
        col = np.asarray(col)
    except (ValueError, TypeError):
        return None
    if occ.ndim == 1 and occ.size > 0:
        # The corpus and aug/pairs store grids flattened (R^3 and R^3*3 values, C order).
        r_flat = round(occ.size ** (1 / 3))
        if r_flat**3 == occ.size and col.size == 3 * occ.size:
            occ = occ.reshape(r_flat, r_flat, r_flat)
            col = col.reshape(r_flat, r_flat, r_flat, 3)
    r = occ.shape[0] if occ.ndim == 3 else -1
    if occ.shape != (r, r, r) or col.shape != (r, r, r, 3) or (resolution is not None and r != resolution):
        return None
    if occ.dtype == object or col.dtype == object:
        return None
    occ = (occ > 0).astype(np.uint8)
    if not occ.any():
        return None
    if col.dtype != np.uint8:
        col = np.clip(
            np.round(col.astype(np.float32) * (255.0 if col.max(initial=0) <= 1.0 else 1.0)), 0, 255
        )
        col = col.astype(np.uint8)
    return occ, col


def load_rows(
    path: str | os.PathLike,
    *,
    what: str = "pairs",
    resolution: int | None = None,
    winners_only: bool = False,
    check_meshes: bool = False,
    limit: int | None = None,
    indices: Sequence[int] | None = None,
    shuffle_seed: int | None = None,
) -> tuple[list[str], list[np.ndarray], list[np.ndarray], Counter]:
    """Read usable rows of a pairs / corpus dataset.

    Rows are read in ``indices`` order, else in a permutation seeded by ``shuffle_seed``, else in
    file order; ``limit`` stops after that many usable rows.

    Returns:
        prompts, occupancies ``[(R,R,R) uint8]``, colours ``[(R,R,R,3) uint8]``, and the skip
        counter (reason → n): ``not_winner``, ``missing_mesh``, ``broken_mesh``, ``mesh_outside_folder``,
        ``bad_voxels``.
    """
    ds = _load_dataset(path, what)
    base = Path(path)
    skipped: Counter = Counter()
    prompts: list[str] = []
    occs: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    has_winner = "winner" in ds.column_names
    has_mesh = "mesh" in ds.column_names
    if winners_only and not has_winner:
        logger.info("%s dataset %s has no 'winner' column; using every row", what, base)
    rows = ds.with_format("numpy")
    if indices is not None:
        order: Sequence[int] = indices
    elif shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(ds)).tolist()
    else:
        order = range(len(ds))
    for i in order:
        row = rows[int(i)]
        if winners_only and has_winner and not bool(row["winner"]):
            skipped["not_winner"] += 1
            continue
        if check_meshes:
            mesh = row.get("mesh") if has_mesh else None
            try:
                reason = check_mesh_file(resolve_mesh_path(None if mesh is None else str(mesh), base))
            except ValueError:
                reason = "mesh_outside_folder"
            if reason is not None:
                skipped[reason] += 1
                continue
        vox = _voxels(row, resolution)
        if vox is None:
            skipped["bad_voxels"] += 1
            continue
        prompts.append(str(row["prompt"]))
        occs.append(vox[0])
        cols.append(vox[1])
        if limit is not None and len(prompts) >= limit:
            break
    return prompts, occs, cols, skipped


def build_training_set(data: Any, resolution: int | None = None) -> TrainingSet:
    """Pairs (+ replay) → :class:`TrainingSet`.

    Args:
        data: :class:`~debias3d.finetune.config.DataSettings`.
        resolution: the generator's grid size R; rows of another size are skipped as ``bad_voxels``.

    Raises:
        DataError: the pairs dataset is missing or empty, or no pair is usable.
    """
    # With max_pairs, a seeded random subset rather than the first rows: pairs are written source
    # prompt by source prompt, so a head would cover only the first few audited prompts.
    prompts, occs, cols, skipped = load_rows(
        data.pairs,
        what="pairs",
        resolution=resolution,
        winners_only=data.winners_only,
        check_meshes=data.check_meshes,
        limit=data.max_pairs,
        shuffle_seed=data.seed if data.max_pairs is not None else None,
    )
    n_total = log_skipped("pairs", len(prompts), skipped)
    if not prompts:
        raise DataError(f"no usable pairs in {data.pairs} (skipped: {dict(skipped)})")
    sources = ["pair"] * len(prompts)
    n_pairs = len(prompts)

    n_replay = 0
    if data.replay_share > 0 and data.corpus is None:
        logger.warning(
            "data.replay_share=%.2f but data.corpus is null: training without replay", data.replay_share
        )
    elif data.replay_share > 0:
        want = round(n_pairs * data.replay_share / (1.0 - data.replay_share))
        corpus = _load_dataset(data.corpus, "corpus")
        rng = np.random.default_rng(data.seed)
        n_corpus = len(corpus)
        idx = rng.choice(n_corpus, size=want, replace=want > n_corpus) if want else np.zeros(0, int)
        r_prompts, r_occs, r_cols, r_skipped = load_rows(
            data.corpus, what="corpus", resolution=resolution, indices=idx.tolist()
        )
        if r_skipped:
            logger.warning("skipped %d corpus rows (%s)", sum(r_skipped.values()), dict(r_skipped))
        prompts += r_prompts
        occs += r_occs
        cols += r_cols
        sources += ["replay"] * len(r_prompts)
        n_replay = len(r_prompts)

    stats = {
        "pairs_total": n_total,
        "pairs_used": n_pairs,
        "replay": n_replay,
        "skipped": dict(sorted(skipped.items())),
    }
    return TrainingSet(prompts, np.stack(occs), np.stack(cols), sources, stats)
