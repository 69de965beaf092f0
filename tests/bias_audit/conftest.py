"""Fixtures for the audit tests: one MiniLM encoder per session, tiny random evaluators."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def text_encoder():
    from debias3d.models.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder()


@pytest.fixture(scope="session")
def evaluator(text_encoder):
    from audit_helpers import tiny_evaluator

    return tiny_evaluator(text_encoder)
