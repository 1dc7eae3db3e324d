"""A scripted, deterministic backend for tests and benchmarks.

Without a script it answers ``fake:<12 hex>`` from a hash of the request. A script says what
to do per request: one plan for every request, a callable ``(request) -> plan``, or a mapping
whose keys are substrings of the last user message (first match wins). An outcome is a text, a
:class:`FakeReply` (text, finish_reason, token counts, delay) or an exception to raise; a list of
outcomes is played one per attempt (the last one repeats), e.g. ``[fault("500"), "fine"]``
fails once and then succeeds.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from medhall.llm.errors import BackendError
from medhall.llm.types import BackendResponse, ChatRequest


@dataclass(frozen=True)
class FakeReply:
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float | None = None


Outcome = str | FakeReply | BaseException
Plan = Outcome | Sequence[Outcome]
Script = Callable[[ChatRequest], Plan] | Mapping[str, Plan] | Plan

_FAULTS = {
    "429": ("rate_limit", 429), "500": ("server", 500), "503": ("server", 503),
    "timeout": ("timeout", None), "connection": ("connection", None), "malformed": ("malformed", None),
    "400": ("bad_request", 400), "401": ("auth", 401), "403": ("permission", 403), "404": ("not_found", 404),
}


def fault(kind: str, *, retry_after: float | None = None) -> BackendError:
    """An injected failure: 429, 500, 503, timeout, connection, malformed, 400, 401, 403 or 404."""
    error_kind, status = _FAULTS[kind]
    return BackendError(f"injected {kind}", kind=error_kind, status=status, retry_after=retry_after)


def _fingerprint(request: ChatRequest) -> str:
    return hashlib.sha256(request.model_dump_json(exclude={"stage", "cache"}).encode()).hexdigest()


class FakeBackend:
    """Deterministic answers, per-request scripts, latency and fault injection; counts its calls."""

    name = "fake"

    def __init__(self, script: Script | None = None, *, model: str = "fake-model", latency: float = 0.0,
                 supports_json_schema: bool = False, keep_requests: bool = True) -> None:
        self.script = script
        self.model = model
        self.latency = latency
        self.supports_json_schema = supports_json_schema
        self.calls: Counter[str] = Counter()  # attempts per request fingerprint
        self.prompts: Counter[str] = Counter()  # attempts per last user message, unless keep_requests=False
        self.requests: list[ChatRequest] = []  # every request seen, unless keep_requests=False
        self.keep_requests = keep_requests

    def __repr__(self) -> str:
        return f"FakeBackend(model={self.model!r}, latency={self.latency})"

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def _outcome(self, request: ChatRequest, prompt: str, attempt: int) -> Outcome:
        planned: Plan | None = self.script
        if isinstance(self.script, Mapping):
            planned = next((v for k, v in self.script.items() if k in prompt), None)
        elif callable(self.script):
            planned = self.script(request)
        if planned is None:
            return f"fake:{_fingerprint(request)[:12]}"
        if isinstance(planned, str | FakeReply | BaseException):
            return planned
        return planned[min(attempt, len(planned)) - 1]  # one outcome per attempt, the last repeats

    async def complete(self, request: ChatRequest) -> BackendResponse:
        key = _fingerprint(request)
        prompt = request.messages[-1].text() if request.messages else ""
        self.calls[key] += 1
        if self.keep_requests:
            self.prompts[prompt] += 1
            self.requests.append(request)
        outcome = self._outcome(request, prompt, self.calls[key])
        reply = outcome if isinstance(outcome, FakeReply) else None
        delay = reply.delay if reply and reply.delay is not None else self.latency
        if delay:
            await asyncio.sleep(delay)
        if isinstance(outcome, BaseException):
            raise outcome
        reply = reply or FakeReply(str(outcome))
        prompt_chars = sum(len(m.text()) for m in request.messages)
        return BackendResponse(
            reply.text, reply.finish_reason,
            reply.prompt_tokens if reply.prompt_tokens is not None else prompt_chars // 4 + 1,
            reply.completion_tokens if reply.completion_tokens is not None else len(reply.text) // 4 + 1,
        )

    async def aclose(self) -> None:
        return None
