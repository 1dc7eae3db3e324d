"""Endpoints as they are: servers that refuse structured output (llama.cpp's 500, others' 400),
a closed port, a long Retry-After, credentials in a URL, two servers behind one model name, and
replies that do not validate, each against the local OpenAI-compatible server."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from medhall.llm import ChatRequest, ConfigError, LLMClient, OpenAICompatBackend


class Verdict(BaseModel):
    verdict: str
    score: int


GOOD = '[[reply:{"verdict": "correct", "score": 9}]] judge this'


def ask(prompt: str) -> ChatRequest:
    return ChatRequest.simple(prompt, max_tokens=32)


@pytest.mark.parametrize(("accepted", "status", "mode"), [
    (["json_object"], 500, "json_object"),  # llama.cpp: json_schema conversion fails with a 500
    ([], 400, "prompt"),                     # a server with no response_format at all
])
def test_a_server_refusing_structured_output_gets_the_next_format_and_it_is_remembered(
        server: Any, make_client: Callable[..., LLMClient], tmp_path: Path, accepted, status, mode) -> None:
    server.configure(response_formats=accepted, format_status=status)
    (r,) = make_client().run([ask(GOOD)], Verdict, progress=False)
    assert r.ok and r.parsed == Verdict(verdict="correct", score=9)
    stats = server.stats()
    assert stats["format_types"].get("json_schema") == 1  # refused once, never retried
    body = stats["last_body"]
    assert body.get("response_format", {}).get("type") == (None if mode == "prompt" else "json_object")
    assert "JSON schema" in body["messages"][0]["content"] and '"score"' in body["messages"][0]["content"]
    remembered = json.loads((tmp_path / "endpoints.json").read_text())
    assert list(remembered.values()) == [mode]
    # a later run (a new client on the same cache folder) asks in the remembered format at once
    server.reset()
    (again,) = make_client().run([ask(GOOD.replace("this", "that"))], Verdict, progress=False)
    assert again.ok and server.stats()["format_types"].get("json_schema") is None


def test_a_closed_port_stops_the_run_with_cannot_reach(make_client: Callable[..., LLMClient]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAICompatBackend(base_url=f"http://127.0.0.1:{port}/v1", model="m", api_key="k", timeout=2)
    client = make_client(backend, max_concurrency=2, max_connection_failures=4)
    t0 = time.perf_counter()
    results = client.run([ask(f"q{i}") for i in range(30)], progress=False)
    assert time.perf_counter() - t0 < 20
    assert all(not r.ok for r in results)
    assert {r.error_kind for r in results} <= {"unreachable", "connection"}
    unreachable = [r for r in results if r.error_kind == "unreachable"]
    assert len(unreachable) >= 25 and f"cannot reach http://127.0.0.1:{port}/v1" in unreachable[-1].error
    assert sum(r.attempts for r in results) <= 4 + 2 * 4  # the circuit opened: no request retried to its end


def test_a_long_retry_after_is_capped_and_logged(server: Any, make_client: Callable[..., LLMClient],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    server.configure(retry_after="600")
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="medhall.llm.client"):
        (r,) = make_client(max_retry_after_s=0.2).run([ask("[[fault:429]] wait")], progress=False)
    assert r.ok and r.attempts == 2 and time.perf_counter() - t0 < 5
    assert "asked to wait 600 s" in caplog.text and "waiting 0 s" in caplog.text


def test_credentials_in_a_url_are_refused() -> None:
    from medhall.endpoints import LLMSettings

    for url in ("http://user:secret@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1?api_key=sk-123"):
        with pytest.raises(ConfigError, match="carries credentials"):
            OpenAICompatBackend(base_url=url, model="m", api_key="k")
        with pytest.raises(ValueError, match="carries credentials"):
            LLMSettings(base_url=url)
    assert LLMSettings(base_url="http://127.0.0.1:8000/v1").base_url == "http://127.0.0.1:8000/v1"


def test_another_server_or_another_model_under_the_same_name_is_asked_again(
        server: Any, make_client: Callable[..., LLMClient], make_backend: Callable[..., OpenAICompatBackend]) -> None:
    server.configure(model_info={"root": "/models/a.gguf", "meta": {"n_params": 7}})
    (first,) = make_client().run([ask("same question")], progress=False)
    (cached,) = make_client().run([ask("same question")], progress=False)
    assert first.status == "ok" and cached.status == "cached"
    # the same URL now serves another model under the same name: not the first one's answers
    server.configure(model_info={"root": "/models/b.gguf", "meta": {"n_params": 13}})
    (other,) = make_client().run([ask("same question")], progress=False)
    assert other.status == "ok" and not other.cached
    assert server.stats()["by_prompt"]["same question"]["served"] == 2
    # another URL (the same server behind a second address) is another endpoint too
    backend = OpenAICompatBackend(base_url=server.base_url.replace("127.0.0.1", "localhost"), model="test-model",
                                  api_key="k", timeout=5)
    (elsewhere,) = make_client(backend).run([ask("same question")], progress=False)
    assert elsewhere.status == "ok" and not elsewhere.cached


def test_an_invalid_reply_is_asked_again_on_a_rerun_not_replayed(server: Any,
                                                                  make_client: Callable[..., LLMClient]) -> None:
    bad = '[[reply:{"verdict": "correct"}]] judge'  # no score: invalid, and invalid again after the repair
    (r,) = make_client().run([ask(bad)], Verdict, progress=False)
    assert r.status == "failed" and r.error_kind == "invalid_output"
    before = server.stats()["total"]
    (again,) = make_client().run([ask(bad)], Verdict, progress=False)
    assert again.status == "failed" and not again.cached
    assert server.stats()["total"] > before  # asked again: a failure is never served from the cache


def test_a_truncated_reply_is_not_cached(server: Any, make_client: Callable[..., LLMClient]) -> None:
    (r,) = make_client().run([ask("[[fault:length]] long story")], progress=False)
    assert r.error_kind == "truncated"
    (again,) = make_client().run([ask("[[fault:length]] long story")], progress=False)
    assert again.ok and not again.cached  # the directive only cuts the first attempt: asked again


def test_a_budget_is_never_overrun_and_what_it_stopped_is_asked_by_the_next_run(
        server: Any, make_client: Callable[..., LLMClient]) -> None:
    prices = {"test-model": {"input": 2000.0, "output": 2000.0}}  # dollars per 1M tokens: cents a call
    requests = [ask(f"question number {i} about the image") for i in range(40)]
    capped = make_client(prices=prices, max_cost_usd=0.5, max_concurrency=16)
    first = capped.run(requests, progress=False)
    assert capped.spent_usd <= 0.5  # the cap holds with 16 calls in flight
    stopped = [r for r in first if r.status == "budget_exceeded"]
    assert stopped and all(r.attempts == 0 and "budget cap" in r.error for r in stopped)
    served = server.stats()["served"]
    assert served == sum(r.ok for r in first)
    more = make_client(prices=prices, max_cost_usd=10.0).run(requests, progress=False)
    assert all(r.ok for r in more)
    assert server.stats()["served"] - served == len(stopped)  # only what the budget stopped; the rest cached
