"""Progress and logs that read well in a file: periodic lines, real units, no carriage returns."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

from debias3d.progress import LineProgress, tqdm


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gives_log_lines_with_units(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger="debias3d.progress"):
        bar = tqdm(total=300, desc="finetune", unit="step", mininterval=3600)
        assert isinstance(bar, LineProgress)
        for _ in range(300):
            bar.update(1)
            bar.set_postfix(loss="0.1")  # redraws on every call on a terminal
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["finetune:   0% 0/300 [00:00<?, ?step/s]", lines[-1]]
    assert lines[-1].startswith("finetune: 100% 300/300 [") and "step/s, loss=0.1]" in lines[-1]
    assert sys.stderr.getvalue() == ""  # nothing drawn, no carriage returns


def test_a_terminal_keeps_the_bar():
    assert not isinstance(tqdm(range(2), file=_Tty()), LineProgress)


def test_piped_command_writes_no_carriage_returns_nor_weight_bars(tmp_path):
    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "-m",
        "debias3d",
        "generate",
        "a red vase",
        "--samples",
        "1",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "Loading weights" not in proc.stderr
    assert "wrote 1 mesh" in proc.stderr
