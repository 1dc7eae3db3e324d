"""Shared fixtures: an isolated store per test, the offline environment, ../shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()
MEDHALLTUNE = SHARED / "data" / "medhalltune"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh MEDHALL_HOME for the test; settings re-read."""
    from medhall.config import get_settings

    root = tmp_path / "home"
    monkeypatch.setenv("MEDHALL_HOME", str(root))
    get_settings(fresh=True)
    yield root
    get_settings(fresh=True)


@pytest.fixture
def store(home: Path):
    from medhall.store import ArtifactStore

    return ArtifactStore(home)


@pytest.fixture
def medhalltune_dir() -> Path:
    """The real MedHallTune validation files in ../shared; skipped where absent."""
    if not MEDHALLTUNE.is_dir():
        pytest.skip(
            f"{MEDHALLTUNE} not present (a user's own clone without ../shared): "
            "the real-release tests need the MedHallTune files there"
        )
    return MEDHALLTUNE
