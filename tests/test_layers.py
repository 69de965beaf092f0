"""Dependencies point down only: data -> render -> models -> audit / augment / finetune -> eval -> demo -> cli.

A module may import only from its own layer or a lower one; the three stages (audit, augment,
finetune) share a layer but do not import one another. The rule holds at module level and inside
functions (lazy imports) alike, except for the ``python -m debias3d.<stage>`` entry points, which
run the command line. ``if TYPE_CHECKING:`` blocks are not checked: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "debias3d"

#: Rank of each top-level part of the package; the infrastructure modules import nothing of it.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "config": 0,
    "registry": 0,
    "progress": 0,
    "runs": 0,
    "data": 1,
    "render": 2,
    "models": 3,
    "bias_audit": 4,
    "augment": 4,
    "finetune": 4,
    "eval": 5,
    "demo": 6,
    "demo_ablations": 6,
    "demo_mitigations": 6,
    "cli": 7,
    "__main__": 7,
}
STAGES = LAYERS["bias_audit"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str | None:
    """The top-level part of a ``debias3d.*`` module name (``None`` outside the package)."""
    parts = module.split(".")
    if parts[0] != "debias3d":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _module_level_imports(
    tree: ast.Module, module: str, is_package: bool, lazy: bool = False
) -> list[tuple[str, int]]:
    """``(imported module, line)`` for the imports that run when the module is imported (``lazy``:
    and those inside functions, classes and blocks, which run later)."""
    found: list[tuple[str, int]] = []
    blocks = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With, ast.For, ast.While)

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if lazy and isinstance(node, blocks):
                visit(node.body)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    name = ".".join([*base, node.module] if node.module else base)
                else:
                    name = node.module or ""
                found.append((name, node.lineno))

    visit(tree.body)
    return found


def _violations(lazy: bool = False) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        mine = _part(module)
        for imported, line in _module_level_imports(
            ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py", lazy
        ):
            theirs = _part(imported)
            if theirs is None or theirs == mine:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}"
            if LAYERS[theirs] > LAYERS[mine]:
                out.append(f"{where} (layer {LAYERS[theirs]} above {LAYERS[mine]})")
            elif LAYERS[theirs] == LAYERS[mine] == STAGES:
                out.append(f"{where} (a sibling stage)")
    return out


def test_every_part_of_the_package_has_a_layer():
    parts = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}
    assert parts - LAYERS.keys() == set()


def test_no_module_imports_a_higher_layer_at_module_level():
    assert _violations() == []


def test_imports_inside_functions_point_down_too():
    """Lazy imports follow the same rule; only the ``python -m debias3d.<stage>`` entry points
    (``<stage>/__main__.py``) reach up to the command line."""
    assert [v for v in _violations(lazy=True) if "/__main__.py:" not in v] == []


@pytest.mark.parametrize(
    "source, bad",
    [
        ("from debias3d.eval.fidelity import run_fidelity\n", True),
        ("import debias3d.augment.filters\n", True),
        ("if TYPE_CHECKING:\n    from debias3d.eval.config import EvalConfig\n", False),
        ("def f():\n    from debias3d.eval.config import EvalConfig\n", False),
        ("try:\n    from ...eval import stats\nexcept ImportError:\n    pass\n", True),
        ("from debias3d.data.text import words\n", False),
    ],
)
def test_the_check_sees_upward_imports(source, bad):
    """The scan itself, on a module placed in ``debias3d.models.llm``."""
    found = _module_level_imports(ast.parse(source), "debias3d.models.llm.fake", is_package=False)
    upward = [m for m, _ in found if LAYERS[_part(m)] > LAYERS["models"]]
    assert bool(upward) is bad
