"""The backends of one augmentation run, built lazily from the config (tests inject stand-ins)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from debias3d.augment.config import AugmentConfig


class Components:
    """The backends of one run, built from the config on first use.

    Args:
        cfg: the run's config.
        writer / prompt_filter / generator / judge: stand-ins that replace the configured backends.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        writer: Any = None,
        prompt_filter: Any = None,
        generator: Any = None,
        judge: Any = None,
    ) -> None:
        self.cfg = cfg
        self._writer, self._filter, self._generator, self._judge = writer, prompt_filter, generator, judge

    @property
    def writer(self) -> Any:
        if self._writer is None:
            from debias3d.registry import find

            cls = find("llm", self.cfg.llm.backend)
            self._writer = cls.from_config(self.cfg.llm) if hasattr(cls, "from_config") else cls()
        return self._writer

    @property
    def filter(self) -> Any:
        if self._filter is None:
            from debias3d.augment.filters import PromptFilter

            self._filter = PromptFilter(self.cfg.filter, self.cfg.world)
        return self._filter

    @property
    def generator(self) -> Any:
        if self._generator is None:
            from debias3d.augment.visual import build_external_generator

            self._generator = build_external_generator(self.cfg.visual)
        return self._generator

    @property
    def judge(self) -> Any:
        if self._judge is None:
            from debias3d.augment.visual import build_judge

            self._judge = build_judge(self.cfg.visual)
        return self._judge

    def writer_settings(self) -> dict[str, Any]:
        w = self.writer
        return w.describe() if hasattr(w, "describe") else {"backend": getattr(w, "name", type(w).__name__)}


class _SingleProcess:
    """The subset of ``accelerate.PartialState`` the runner uses, for plain single-process runs."""

    process_index = 0
    num_processes = 1
    is_main_process = True

    @contextmanager
    def split_between_processes(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        yield items

    def wait_for_everyone(self) -> None:
        return None


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Any:
    from debias3d.progress import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)
