"""Fixtures of the evaluation-flow tests: a built sample dataset, a tiny VLM, scripted judges,
the local OpenAI-compatible test server and a Prefect test server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SERVER_PATH = Path(__file__).resolve().parents[1] / "llm" / "server.py"


# --------------------------------------------------------------------------- data and models


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from medhall.infer.tiny import build_tiny

    return build_tiny("llava", tmp_path_factory.mktemp("tiny") / "tiny-llava")


@pytest.fixture(scope="session")
def wordnet_ok(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (with the fix) where WordNet, which METEOR needs, is absent."""
    from medhall.evaluate.wordnet import WordNetMissing, ensure_wordnet

    try:
        ensure_wordnet(tmp_path_factory.mktemp("wordnet"))
    except WordNetMissing as e:
        pytest.skip(str(e))


# --------------------------------------------------------------------------- LLM clients


@pytest.fixture
def fake_client(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """LLMClient factory over a FakeBackend (cache in tmp_path)."""
    from medhall.llm import FakeBackend, LLMClient

    clients: list[Any] = []

    def make(script: Any, model: str = "fake-judge", cache: str = "fake.sqlite") -> Any:
        client = LLMClient(FakeBackend(script, model=model), cache=tmp_path / cache, backoff_initial_s=0.01,
                           backoff_max_s=0.05)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


# The OpenAI-compatible test server: the session-wide ``llm_server`` / ``server`` of tests/conftest.py.


# --------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A temporary Prefect server (as tests/flows/conftest.py; fixtures there are not shared)."""
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_home(prefect_server: None, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(tmp_path / "results"))
    return home
