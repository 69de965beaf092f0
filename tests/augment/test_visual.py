"""Algorithm 1 winner logic (stand-in judge) and the command external generator."""

from __future__ import annotations

import sys

import pytest
from _helpers import DictJudge

from debias3d.augment.config import VisualConfig
from debias3d.augment.visual import (
    CommandExternalGenerator,
    ExternalGenerationError,
    algorithm1,
    duel,
    make_pairs,
)

T_N = "a red vase with a long neck"


@pytest.mark.parametrize(
    ("new", "orig", "margin", "wins"),
    [
        (2.0, 1.0, 0.0, True),
        (1.0, 1.0, 0.0, False),
        (0.5, 1.0, 0.0, False),
        (1.2, 1.0, 0.5, False),
        (float("nan"), 1.0, 0.0, False),
    ],
)
def test_duel(new, orig, margin, wins):
    assert duel(new, orig, margin).winner is wins


@pytest.mark.parametrize(
    ("pair_new", "pair_src", "keep_losers", "win", "expected"),
    [
        (True, True, False, True, ["new_prompt", "source_prompt"]),
        (True, False, False, True, ["new_prompt"]),
        (False, True, False, True, ["source_prompt"]),
        (True, True, False, False, []),
        (True, True, True, False, ["new_prompt", "source_prompt"]),
    ],
)
def test_make_pairs_switches(pair_new, pair_src, keep_losers, win, expected):
    cfg = VisualConfig(pair_new_prompt=pair_new, pair_source_prompt=pair_src, keep_losers=keep_losers)
    rows = make_pairs("t_nc", T_N, duel(2.0 if win else 0.0, 1.0), cfg)
    assert [r["pair_type"] for r in rows] == expected
    assert all(r["winner"] is win for r in rows)
    assert [r["prompt"] for r in rows] == [{"new_prompt": "t_nc", "source_prompt": T_N}[t] for t in expected]


def test_algorithm1_scores_under_t_n_and_keeps_only_winners():
    judge = DictJudge({("x_n", T_N): 5.0, ("x_a", T_N): 7.0, ("x_b", T_N): 3.0, ("x_c", T_N): 5.0})
    cands = [("t_a", "x_a"), ("t_b", "x_b"), ("t_c", "x_c")]
    rows = algorithm1(judge, "x_n", T_N, cands, VisualConfig())
    assert all(p == T_N for _m, p in judge.calls)  # every mesh is scored under the source prompt t_n
    assert judge.calls.count(("x_n", T_N)) == 1  # x_n once per source
    assert [(r["mesh"], r["prompt"], r["pair_type"]) for r in rows] == [
        ("x_a", "t_a", "new_prompt"),
        ("x_a", T_N, "source_prompt"),
    ]
    assert rows[0]["score_new"] == 7.0 and rows[0]["score_orig"] == 5.0


WRITE_MESH = (
    "import sys, trimesh; m = trimesh.creation.box(extents=(1, 1, 1)); "
    "assert sys.argv[1] == \"a 'red' vase; rm -rf / && echo $HOME\"; m.export(sys.argv[2])"
)


def _cmd(code: str, *args: str) -> str:
    import shlex

    return " ".join([shlex.quote(sys.executable), "-c", shlex.quote(code), *args])


def test_command_backend_writes_mesh_and_prompt_is_one_argument():
    gen = CommandExternalGenerator(_cmd(WRITE_MESH, "{prompt}", "{out}", "{seed}"), timeout_s=30)
    asset = gen.generate_one("a 'red' vase; rm -rf / && echo $HOME", seed=7)
    assert asset.seed == 7 and len(asset.mesh.faces) == 12
    assert asset.voxels.resolution == 16 and asset.voxels.occupancy.sum() > 0


@pytest.mark.parametrize(
    ("code", "timeout", "message"),
    [
        (
            "import sys; sys.stderr.write('boom: no GPU\\n'); sys.exit(3)",
            30,
            "exited with code 3: boom: no GPU",
        ),
        ("import time; time.sleep(30)", 0.5, "timed out after 0.5 s"),
        ("pass", 30, "wrote no mesh"),
        ("import sys; open(sys.argv[1], 'w').write('not a mesh')", 30, "unreadable mesh"),
    ],
    ids=["fails", "times-out", "no-file", "garbage"],
)
def test_command_backend_failures(code, timeout, message):
    gen = CommandExternalGenerator(_cmd(code, "{out}"), timeout_s=timeout)
    with pytest.raises(ExternalGenerationError, match=message) as info:
        gen.generate_one("a red vase", seed=0)
    assert "\n" not in str(info.value)


def test_command_template_needs_out():
    with pytest.raises(ValueError, match="out"):
        CommandExternalGenerator("echo {prompt}")
    with pytest.raises(ValueError, match="visual.command"):
        VisualConfig(backend="command", command="echo {prompt}")


def test_generator_backend_wraps_any_registered_generator():
    from debias3d.augment.visual import GeneratorExternalGenerator, build_external_generator
    from debias3d.data.shapeworld.builder import ShapeWorldExternalGenerator
    from debias3d.registry import _REGISTRY, register

    class ToyGenerator:
        calls: list = []

        @classmethod
        def from_pretrained(cls, path=None):
            cls.path = path
            return cls()

        def generate(self, prompts, seeds, num_samples=1, steps=None):
            ToyGenerator.calls.append((list(prompts), list(seeds), num_samples, steps))
            return ShapeWorldExternalGenerator(mesh_resolution=None).generate(prompts, seeds)

    if "toy-test" not in _REGISTRY["generator"]:
        register("generator", "toy-test")(ToyGenerator)
    cfg = VisualConfig(backend="generator", generator="toy-test", generator_weights="/w", generator_steps=5)
    gen = build_external_generator(cfg)
    assert isinstance(gen, GeneratorExternalGenerator)
    (asset,) = gen.generate(["a red cup"], [11])
    assert asset.seed == 11 and ToyGenerator.path == "/w"
    assert ToyGenerator.calls[-1] == (["a red cup"], [11], 1, 5)
