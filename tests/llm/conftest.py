"""Fixtures of the LLM-layer tests: the local OpenAI-compatible server and client factories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from medhall.llm import LLMClient, OpenAICompatBackend

SENTINEL_KEY = "sk-sentinel-9f8e7d6c5b4a-DO-NOT-LEAK"


@pytest.fixture()
def sentinel_key() -> str:
    return SENTINEL_KEY


@pytest.fixture()
def make_backend(server: Any) -> Callable[..., OpenAICompatBackend]:
    """Backend factory for the test server (sentinel key, 5 s timeout unless overridden)."""
    def make(**kwargs: Any) -> OpenAICompatBackend:
        kwargs.setdefault("api_key", SENTINEL_KEY)
        kwargs.setdefault("timeout", 5.0)
        return OpenAICompatBackend(base_url=server.base_url, model="test-model", **kwargs)

    return make


@pytest.fixture()
def make_client(make_backend: Callable[..., OpenAICompatBackend], tmp_path: Path) -> Iterator[Callable[..., LLMClient]]:
    """LLMClient factory over the test server with fast backoff and a cache in tmp_path."""
    clients: list[LLMClient] = []

    def make(backend: Any = None, **kwargs: Any) -> LLMClient:
        kwargs.setdefault("backoff_initial_s", 0.01)
        kwargs.setdefault("backoff_max_s", 0.05)
        kwargs.setdefault("cache", tmp_path / "cache.sqlite")
        client = LLMClient(backend or make_backend(), **kwargs)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
