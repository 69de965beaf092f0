"""The CLI: fast --help without torch, every subcommand present, unfinished ones exit 2."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from debias3d.cli import app

runner = CliRunner()


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, time; t=time.perf_counter();"
        "from debias3d.cli import app;"
        "from typer.testing import CliRunner;"
        "r=CliRunner().invoke(app, ['--help']);"
        "assert r.exit_code == 0, r.output;"
        "print(time.perf_counter()-t, 'torch' in sys.modules)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - t0
    elapsed, torch_loaded = out.split()
    assert torch_loaded == "False"
    assert float(elapsed) < 1.0
    assert wall < 5.0  # interpreter start included; generous for a loaded 2-core CI box


@pytest.mark.parametrize(
    "command", ["world", "generate", "audit", "augment", "finetune", "eval", "demo", "report"]
)
def test_subcommands_listed(command):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert command in result.output


@pytest.mark.parametrize("argv", [["world", "--help"], ["generate", "--help"], ["world", "corpus", "--help"]])
def test_sub_help(argv):
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
