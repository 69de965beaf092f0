"""Fixtures for the audit tests: tiny random evaluators (on the session's MiniLM encoder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def evaluator(text_encoder):
    from audit_helpers import tiny_evaluator

    return tiny_evaluator(text_encoder)
