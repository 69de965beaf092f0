"""Progress that reads well in a terminal and in a log file.

``tqdm`` here is ``tqdm.auto.tqdm`` when stderr is a terminal. When it is not (a piped or
redirected run, a job log), bars become periodic log lines instead of carriage-return redraws:
one ``INFO`` line at the start, one at most every :data:`LINE_INTERVAL` seconds, and one at the
end, each with the real units (``37/120 prompt [01:02<03:20, 1.6 s/prompt]``). So a 300-step
fine-tune log is a few dozen lines, not one 75 KB line.

>>> from debias3d.progress import tqdm
>>> for _ in tqdm(range(3), desc="demo", unit="item"):
...     pass
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm.auto import tqdm as _tqdm

__all__ = ["LINE_INTERVAL", "tqdm", "LineProgress"]

logger = logging.getLogger("debias3d.progress")

#: Seconds between two progress lines when stderr is not a terminal (env DEBIAS3D_PROGRESS_INTERVAL).
LINE_INTERVAL = float(os.environ.get("DEBIAS3D_PROGRESS_INTERVAL", "30"))


class _Discard:
    """Where the tqdm machinery writes its own carriage returns and newlines: nowhere."""

    def write(self, _: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LineProgress(_tqdm):
    """A tqdm that logs its meter as one line per interval instead of redrawing it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", LINE_INTERVAL)
        kwargs["maxinterval"] = max(kwargs.get("maxinterval", 0.0), kwargs["mininterval"])
        kwargs.pop("dynamic_ncols", None)
        kwargs["ncols"] = None
        kwargs["file"] = _Discard()
        self._last_logged: int | None = None
        self._last_time = -float("inf")
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the line on close
            return True
        self._log()
        return True

    def _log(self, force: bool = False) -> None:
        now = self._time()
        # set_postfix and refresh redraw on every call; a line per interval is enough
        if (
            self.disable
            or self._last_logged == self.n
            or (not force and now - self._last_time < self.mininterval)
        ):
            return
        self._last_logged, self._last_time = self.n, now
        d = self.format_dict
        d["ncols"] = 0  # no bar, no padding: the counts, times and rate only
        logger.info("%s", self.format_meter(**d).strip())

    def close(self) -> None:
        if not self.disable and not getattr(self, "_closed_logged", False):
            self._closed_logged = True
            self._log(force=True)
        super().close()


def tqdm(*args: Any, **kwargs: Any) -> _tqdm:
    """``tqdm.auto.tqdm`` on a terminal, :class:`LineProgress` otherwise (same arguments)."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return _tqdm(*args, **kwargs)
    return LineProgress(*args, **kwargs)
