"""Fixtures of the augmentation tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import make_audit, register_standin  # noqa: E402


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small audit folder (6 ShapeWorld prompts, 2 samples each)."""
    return make_audit(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="session", autouse=True)
def _standin_ranker() -> None:
    register_standin()
