"""Session-wide fixtures. The real model is loaded at most once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Model hubs are unreachable here; make every hub lookup fail fast instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def spec():  # type: ignore[no-untyped-def]
    from server.model import load_spec

    return load_spec()
