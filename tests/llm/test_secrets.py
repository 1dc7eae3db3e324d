"""The API key never appears in results, ledger, cache bytes, exceptions, reprs or logs."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medhall.llm import BackendError, ChatRequest, LLMClient, OpenAICompatBackend
from medhall.llm.errors import scrub


def test_key_is_in_no_artifact(server: Any, make_client: Callable[..., LLMClient],
                               make_backend: Callable[..., OpenAICompatBackend], sentinel_key: str,
                               tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK's and the transport's debug logs included
    server.configure(retry_after="0.01")
    client = make_client(run_id="secret-test")
    prompts = ["fine", "[[fault:429]] busy", "[[fault:500,drop]] flaky", "[[fault:malformed]] junk",
               "[[fault:404]] missing", "[[fault:length]] cut"]
    results = client.run([ChatRequest.simple(p) for p in prompts], progress=False)
    assert sum(r.ok for r in results) == 4  # the key did work: these calls were authenticated
    server.configure(api_key="another-key")  # now every call is refused; the server echoes the key sent
    denied = client.run([ChatRequest.simple("denied")], progress=False)
    assert denied[0].error_kind == "auth"

    backend = make_backend()

    async def raw_call() -> None:
        try:
            await backend.complete(ChatRequest.simple("raw call", model="test-model"))
        finally:
            await backend.aclose()

    with pytest.raises(BackendError) as raised:
        asyncio.run(raw_call())
    assert "401" in str(raised.value)

    client.close()
    cache_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("cache.sqlite*"))
    produced = {
        "results": "".join(r.model_dump_json() for r in results + denied),
        "ledger": str(client.ledger_table().to_pylist()),
        "exception": "".join(traceback.format_exception(raised.value)) + repr(raised.value),
        "reprs": repr(client) + repr(backend) + repr(client.backend),
        "logs": caplog.text,
    }
    assert produced["logs"]  # there were logs to search
    for name, text in produced.items():
        assert sentinel_key not in text, f"API key leaked into {name}"
    assert sentinel_key.encode() not in cache_bytes
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # no SDK error chained


def test_scrub_removes_keys_and_bearer_tokens() -> None:
    text = "Incorrect API key provided: sk-abcdef123456. Authorization: Bearer sk-abcdef123456 my-secret"
    out = scrub(text, "my-secret")
    assert "abcdef" not in out and "my-secret" not in out
    assert "Bearer ***" in out
