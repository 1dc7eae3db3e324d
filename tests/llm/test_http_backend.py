"""The real ``openai`` client path against the local OpenAI-compatible server, with injected faults."""

from __future__ import annotations

import importlib.util
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from medhall.llm import ChatRequest, ConfigError, ImagePart, LLMClient, Message, OpenAICompatBackend


class Verdict(BaseModel):
    verdict: str
    score: int


def ask(prompt: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest.simple(prompt, max_tokens=32, **kwargs)


def prompt_stats(server: Any, prompt: str) -> dict[str, int]:
    return server.stats()["by_prompt"].get(prompt, {"attempts": 0, "served": 0})


def test_completion_round_trip(server: Any, make_client: Callable[..., LLMClient]) -> None:
    (r,) = make_client().run([ask("hello there")], progress=False)
    assert (r.status, r.text, r.finish_reason, r.attempts) == ("ok", "echo: hello there", "stop", 1)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert prompt_stats(server, "hello there") == {"attempts": 1, "served": 1}
    body = server.stats()["last_body"]
    assert body["model"] == "test-model" and body["temperature"] == 0.0 and body["max_tokens"] == 32


def test_429_retry_after_is_honoured_and_pauses(server: Any, make_client: Callable[..., LLMClient]) -> None:
    server.configure(retry_after="0.4")
    t0 = time.perf_counter()
    (r,) = make_client().run([ask("[[fault:429]] busy")], progress=False)
    assert r.ok and r.attempts == 2
    assert time.perf_counter() - t0 >= 0.4
    assert prompt_stats(server, "[[fault:429]] busy") == {"attempts": 2, "served": 1}


TRANSPORTS = ["httpx", pytest.param("aiohttp", marks=pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is None, reason="aiohttp is not installed"))]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("faults", ["500", "503", "drop", "malformed", "500,drop,malformed"])
def test_transient_faults_are_retried(server: Any, make_client: Callable[..., LLMClient],
                                      make_backend: Callable[..., OpenAICompatBackend], faults: str,
                                      transport: str) -> None:
    prompt = f"[[fault:{faults}]] flaky {transport}"
    (r,) = make_client(make_backend(transport=transport)).run([ask(prompt)], progress=False)
    n = len(faults.split(","))
    assert (r.status, r.attempts) == ("ok", n + 1)
    assert prompt_stats(server, prompt) == {"attempts": n + 1, "served": 1}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hang_past_the_timeout_is_retried(server: Any, make_client: Callable[..., LLMClient],
                                          make_backend: Callable[..., OpenAICompatBackend], transport: str) -> None:
    server.configure(hang_s=3.0)
    t0 = time.perf_counter()
    backend = make_backend(timeout=0.3, transport=transport)
    (r,) = make_client(backend).run([ask(f"[[fault:hang]] slow {transport}")], progress=False)
    assert (r.status, r.attempts) == ("ok", 2)
    assert 0.3 <= time.perf_counter() - t0 < 2.5


def test_exhausted_retries_fail_with_the_reason(server: Any, make_client: Callable[..., LLMClient]) -> None:
    (r,) = make_client(max_attempts=2).run([ask("[[fault:500,500,500]] down")], progress=False)
    assert (r.status, r.error_kind, r.attempts) == ("failed", "server", 2)
    assert "(500)" in (r.error or "") and server.base_url in (r.error or "")


def test_truncated_output_fails_and_is_not_cached(server: Any, make_client: Callable[..., LLMClient]) -> None:
    prompt = "[[fault:length]] a long answer please"
    (r,) = make_client().run([ask(prompt)], progress=False)
    assert (r.status, r.error_kind, r.finish_reason) == ("failed", "truncated", "length")
    assert r.text  # the partial text is kept
    (again,) = make_client().run([ask(prompt)], progress=False)  # a re-run asks again
    assert again.status == "ok" and prompt_stats(server, prompt)["attempts"] == 2


def test_401_fails_at_once_with_a_clear_message_without_the_key(
        server: Any, make_client: Callable[..., LLMClient], sentinel_key: str) -> None:
    server.configure(api_key="the-right-key")
    (r,) = make_client().run([ask("who am i")], progress=False)
    assert (r.status, r.error_kind, r.attempts) == ("failed", "auth", 1)
    assert r.error == f"authentication failed at {server.base_url} (401): check MEDHALL_LLM_API_KEY (or OPENAI_API_KEY)"
    assert sentinel_key not in r.model_dump_json()
    assert prompt_stats(server, "who am i")["attempts"] == 1


@pytest.mark.parametrize(("fault", "kind", "words"), [("400", "bad_request", "bad request"),
                                                       ("404", "not_found", "'test-model'")])
def test_client_errors_are_not_retried(server: Any, make_client: Callable[..., LLMClient],
                                       fault: str, kind: str, words: str) -> None:
    prompt = f"[[fault:{fault}]] nope"
    (r,) = make_client().run([ask(prompt)], progress=False)
    assert (r.status, r.error_kind, r.attempts) == ("failed", kind, 1)
    assert words in (r.error or "")
    assert prompt_stats(server, prompt)["attempts"] == 1


def test_structured_output_uses_response_format(server: Any, make_client: Callable[..., LLMClient]) -> None:
    (r,) = make_client().run([ask('[[reply:{"verdict": "correct", "score": 9}]] judge')], Verdict, progress=False)
    assert r.ok and r.parsed == Verdict(verdict="correct", score=9)
    stats = server.stats()
    assert stats["response_formats"] == 1
    assert stats["last_body"]["response_format"]["json_schema"]["name"] == "Verdict"


def test_server_without_json_schema_support(server: Any, make_client: Callable[..., LLMClient],
                                            make_backend: Callable[..., OpenAICompatBackend]) -> None:
    server.configure(json_schema=False)
    prompt = '[[reply:{"verdict": "correct", "score": 9}]] judge'
    (r,) = make_client(make_backend(supports_json_schema=False)).run([ask(prompt)], Verdict, progress=False)
    assert r.ok and r.parsed.score == 9
    assert "response_format" not in server.stats()["last_body"]


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (2000, 1000), "gray").save(buf, format="PNG")
    return buf.getvalue()


def test_images_travel_as_data_urls_and_text_only_mode(server: Any, make_client: Callable[..., LLMClient],
                                                       make_backend: Callable[..., OpenAICompatBackend],
                                                       tmp_path: Path) -> None:
    image = ImagePart.from_image(_png(), max_side=512)
    request = ChatRequest(messages=[Message.user("describe", image)], max_tokens=16)
    (r,) = make_client().run([request], progress=False)
    assert r.ok and server.stats()["images"] == 1
    part = server.stats()["last_body"]["messages"][0]["content"][0]
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/jpeg;base64,")
    text_only = make_client(make_backend(text_only=True), cache=tmp_path / "text_only.sqlite")
    (refused, plain) = text_only.run([request, ChatRequest(messages=[Message(role="user", content=[
        {"type": "text", "text": "just text"}])])], progress=False)
    assert refused.error_kind == "unsupported" and refused.attempts == 1
    assert plain.ok and server.stats()["last_body"]["messages"][0]["content"] == "just text"


def test_rerun_makes_zero_network_calls_and_twins_are_paid_once(
        server: Any, make_client: Callable[..., LLMClient]) -> None:
    server.configure(latency=0.05)
    batch = [ask(f"item {i}") for i in range(20)] + [ask("twin")] * 5
    first = make_client(max_concurrency=8).run(batch, progress=False)
    assert all(r.ok for r in first)
    assert server.stats()["total"] == 21 and prompt_stats(server, "twin") == {"attempts": 1, "served": 1}
    second = make_client(max_concurrency=2).run(batch, progress=False)  # other concurrency, same keys
    assert [r.status for r in second] == ["cached"] * 25
    assert server.stats()["total"] == 21


def test_backend_from_settings_and_key_fallback(monkeypatch: pytest.MonkeyPatch, sentinel_key: str) -> None:
    from medhall.config import get_settings

    monkeypatch.setenv("MEDHALL_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MEDHALL_LLM_MODEL", "llama3")
    monkeypatch.delenv("MEDHALL_LLM_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", sentinel_key)
    try:
        backend = OpenAICompatBackend.from_settings(get_settings(fresh=True))
        assert (backend.base_url, backend.model) == ("http://127.0.0.1:9/v1", "llama3")
        assert backend._api_key.get_secret_value() == sentinel_key
        assert sentinel_key not in repr(backend)
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.delenv("MEDHALL_LLM_BASE_URL")
        with pytest.raises(ConfigError, match="MEDHALL_LLM_API_KEY or OPENAI_API_KEY"):
            OpenAICompatBackend.from_settings(get_settings(fresh=True))
    finally:
        get_settings(fresh=True)


def test_the_key_comes_from_medhall_llm_api_key(server, monkeypatch, tmp_path):
    """No key argument: MEDHALL_LLM_API_KEY is used (before OPENAI_API_KEY), and a wrong one fails."""
    from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend

    server.configure(api_key="sk-right")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("MEDHALL_LLM_API_KEY", "sk-right")
    client = LLMClient(OpenAICompatBackend(base_url=server.base_url, model="m"), cache=tmp_path / "c.sqlite", max_attempts=1)
    assert client.run([ChatRequest.simple("hello")], progress=False)[0].ok
    monkeypatch.delenv("MEDHALL_LLM_API_KEY")
    client = LLMClient(OpenAICompatBackend(base_url=server.base_url, model="m"), cache=tmp_path / "d.sqlite", max_attempts=1)
    r = client.run([ChatRequest.simple("hello again")], progress=False)[0]
    assert not r.ok and r.error_kind == "auth" and "sk-wrong" not in (r.error or "")
