"""The option matrix of the command line: the same option means the same thing on every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from debias3d.cli import app

runner = CliRunner()

# command path -> the shared options it must take ("overrides" = trailing key=value arguments)
MATRIX = {
    ("world", "sample"): {"--out", "--seed"},
    ("world", "corpus"): {"--config", "--out", "--seed", "overrides"},
    ("world", "train-backbone"): {"--config", "--out", "--seed", "overrides"},
    ("world", "fidelity"): {"--config", "--out", "--samples", "--seed", "overrides"},
    ("world", "train-evaluator"): {"--config", "--out", "--seed", "overrides"},
    ("generate",): {"--out", "--samples", "--seed"},
    ("audit",): {"--config", "--out", "--samples", "--seed", "overrides"},
    ("augment", "run"): {"--config", "--out", "--seed", "overrides"},
    ("augment", "status"): set(),
    ("finetune", "run"): {"--config", "--out", "--seed", "overrides"},
    ("finetune", "merge"): {"--out"},
    ("eval", "run"): {"--config", "--out", "--samples", "--seed", "overrides"},
    ("eval", "compare"): {"--out"},
    ("demo",): {"--config", "--out", "overrides"},
    ("report", "heatmap"): {"--out"},
    ("convert-hyperscore",): {"--out"},
}


def _commands(group, prefix=()):  # noqa: ANN001, ANN202
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def _options(cmd) -> set[str]:  # noqa: ANN001
    names = set()
    for p in cmd.params:
        names.update(o for o in p.opts if o.startswith("--"))
        if p.name == "overrides":
            names.add("overrides")
    return names


def test_every_command_is_in_the_matrix_and_takes_the_shared_options():
    commands = dict(_commands(typer.main.get_command(app)))
    assert set(commands) == set(MATRIX), "a command was added or removed: extend MATRIX"
    for path, cmd in commands.items():
        opts = _options(cmd)
        missing = (MATRIX[path] | {"--quiet", "--verbose"}) - opts
        assert not missing, f"{' '.join(path)} lacks {sorted(missing)}"
        assert not cmd.hidden, f"{' '.join(path)} is hidden from --help"


def test_seed_help_says_what_it_seeds():
    commands = dict(_commands(typer.main.get_command(app)))
    with_seed = [path for path in MATRIX if "--seed" in MATRIX[path]]
    assert len(with_seed) == 10
    for path in with_seed:
        (seed,) = [p for p in commands[path].params if "--seed" in p.opts]
        assert "seed" in seed.help.lower() and len(seed.help) > len("Random seed."), path


@pytest.mark.parametrize(
    "argv, target, expect",
    [
        (["audit", "--prompts", "p.txt"], "debias3d.bias_audit.cli.audit_command", "overrides"),
        (["eval"], "debias3d.eval.pipeline.eval_command", 1),
        (["augment", "--audit", "a"], "debias3d.augment.pipeline.augment_command", 2),
        (["finetune"], "debias3d.finetune.finetune_command", 1),
    ],
)
def test_samples_seed_and_overrides_reach_the_config(argv, target, expect, monkeypatch, tmp_path):
    """Trailing overrides first, then the explicit options (an option wins over an override)."""
    seen = {}

    def capture(*args, **kwargs):
        seen["overrides"] = kwargs["overrides"] if expect == "overrides" else args[expect]
        return {"pairs": {"rows": 1}, "outcome": {"line": "ok", "audited": 1}}

    module, _, name = target.rpartition(".")
    monkeypatch.setattr(f"{module}.{name}", capture)
    takes_samples = argv[0] in ("audit", "eval")
    extra = ["--samples", "3"] if takes_samples else []
    result = runner.invoke(app, [*argv, "--out", str(tmp_path), "--seed", "5", *extra, "a.b=1", "seed=2"])
    assert result.exit_code == 0, result.output
    seed_key = "train.seed" if argv[0] == "finetune" else "seed"
    want = ["a.b=1", "seed=2", *(["samples=3"] if takes_samples else []), f"{seed_key}=5"]
    assert seen["overrides"] == want


def test_options_and_overrides_load_into_the_audit_config():
    from debias3d.bias_audit.config import AuditConfig
    from debias3d.cli import _overrides
    from debias3d.config import load_config

    cfg = load_config(AuditConfig, None, _overrides(["samples=2", "seed=9"], samples=3, seed=None))
    assert (cfg.samples, cfg.seed) == (3, 9)


def test_world_fidelity_takes_config_overrides_and_options(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("debias3d.eval.fidelity.fidelity_command", lambda cfg, out: seen.update(cfg=cfg))
    conf = tmp_path / "f.yaml"
    conf.write_text("samples: 2\nper_category: 3\n")
    result = runner.invoke(
        app, ["world", "fidelity", "--config", str(conf), "--seed", "4", "--weights", "w", "per_category=5"]
    )
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.samples, cfg.per_category, cfg.seed, cfg.generator_weights) == (2, 5, 4, "w")
    bad = runner.invoke(app, ["world", "fidelity", "sample=2"])
    assert bad.exit_code == 1 and "did you mean 'samples'" in bad.output


def test_unknown_option_names_the_close_one():
    result = runner.invoke(app, ["audit", "--prompts", "p.txt", "--sampels", "3"])
    assert result.exit_code == 2
    assert "--sampels" in result.output and "--samples" in result.output


def test_group_help_lists_its_subcommands():
    for group, subs in (
        ("augment", ("run", "status")),
        ("finetune", ("run", "merge")),
        ("eval", ("run", "compare")),
    ):
        result = runner.invoke(app, [group, "--help"])
        assert result.exit_code == 0, result.output
        assert f"Usage: debias3d {group} [OPTIONS] COMMAND" in " ".join(result.output.split())
        for sub in subs:
            assert sub in result.output


def test_quiet_hides_info_logs_and_verbose_shows_debug(tmp_path):
    """The flags work after the command name, under `python -m debias3d`."""
    root = Path(__file__).resolve().parents[1]
    base = [sys.executable, "-m", "debias3d", "world", "sample", "--n", "1", "--out"]
    quiet = subprocess.run([*base, str(tmp_path / "q"), "--quiet"], capture_output=True, text=True, cwd=root)
    loud = subprocess.run([*base, str(tmp_path / "v"), "--verbose"], capture_output=True, text=True, cwd=root)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert " INFO " not in quiet.stderr and "wrote 1 meshes" in quiet.stdout
    assert " INFO " in loud.stderr and " DEBUG " in loud.stderr
    # one log format: time, level, logger, message; one line per record
    assert all(len(line.split(" ", 3)) == 4 for line in loud.stderr.splitlines() if line.strip())


@pytest.mark.parametrize(
    "module, command", [("bias_audit", "audit"), ("augment", "augment"), ("finetune", "finetune")]
)
def test_stage_modules_run_the_same_app(module, command, capsys):
    import importlib

    main = importlib.import_module(f"debias3d.{module}.__main__").main
    assert main(["--help"]) == 0
    assert f"debias3d {command}" in " ".join(capsys.readouterr().out.split())
