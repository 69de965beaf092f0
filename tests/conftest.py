"""Shared test setup: offline hub, deterministic threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import logging  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def text_encoder():
    """One shipped MiniLM text encoder for the whole run (frozen; tests only read it)."""
    from debias3d.models.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder()


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Undo what a command-line test's ``logging.basicConfig(force=True)`` leaves on the root logger.

    The CLI installs a rich handler on stderr; left in place it writes later tests' warnings into
    their captured stderr (and makes a later ``basicConfig`` a no-op).
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
