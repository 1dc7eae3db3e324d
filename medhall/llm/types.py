"""Request and result models of the LLM layer.

A :class:`ChatRequest` holds everything that defines an answer (model, messages, generation
parameters, prompt-template hash); its cache key is computed from exactly that, see
:func:`medhall.llm.cache.request_key`. A :class:`ChatResult` is what every call returns,
whether it succeeded, failed or was served from the cache: failures are values, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]
Status = Literal["ok", "cached", "failed", "budget_exceeded"]


class TextPart(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image as a base64 data URL plus the hash that stands for it in cache keys."""

    model_config = ConfigDict(frozen=True)
    type: Literal["image"] = "image"
    sha256: str = Field(description="SHA-256 of the source image bytes.")
    encoding: str = Field(description="How it was encoded, e.g. 'JPEG:1024:q90'.")
    data_url: str = Field(repr=False)
    detail: Literal["auto", "low", "high"] | None = None

    @classmethod
    def from_image(cls, source: bytes | str | Path | Any, *, max_side: int = 1024,
                   fmt: str = "JPEG", detail: Literal["auto", "low", "high"] | None = None) -> ImagePart:
        """Encode bytes, a path (PNG, JPEG, DICOM, ...) or a PIL image; memoised by content."""
        from medhall.llm.images import encode_image

        enc = encode_image(source, max_side=max_side, fmt=fmt)
        return cls(sha256=enc.sha256, encoding=enc.encoding, data_url=enc.data_url, detail=detail)


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    role: Role
    content: str | list[Part]

    @classmethod
    def system(cls, text: str) -> Message:
        return cls(role="system", content=text)

    @classmethod
    def user(cls, text: str, *images: ImagePart) -> Message:
        """A user turn; with images, the images come first, then the text."""
        if not images:
            return cls(role="user", content=text)
        return cls(role="user", content=[*images, TextPart(text=text)])

    @classmethod
    def assistant(cls, text: str) -> Message:
        return cls(role="assistant", content=text)

    def text(self) -> str:
        """The text parts joined by newlines."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    def images(self) -> list[ImagePart]:
        return [] if isinstance(self.content, str) else [p for p in self.content if isinstance(p, ImagePart)]


class ChatRequest(BaseModel):
    """One chat completion to make. ``model=None`` means the backend's default model."""

    model_config = ConfigDict(frozen=True)
    messages: list[Message]
    model: str | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    seed: int | None = None
    stop: list[str] | None = None
    response_format: dict[str, Any] | None = Field(
        default=None, description="Sent as is; set by the client from a schema when the backend supports it.")
    template_hash: str | None = Field(default=None, description="Hash of the prompt template that made it.")
    stage: str | None = Field(default=None, description="Caller (generate, qc, judge, infer); goes to the ledger.")
    cache: bool | None = Field(default=None, description="Force caching on or off; None: cache if deterministic.")

    @property
    def deterministic(self) -> bool:
        """Temperature 0 or a fixed seed: the same request gives the same answer."""
        return self.temperature == 0 or self.seed is not None

    @classmethod
    def simple(cls, prompt: str, *, system: str | None = None, **kwargs: Any) -> ChatRequest:
        """A request with one user message (and an optional system message)."""
        msgs = ([Message.system(system)] if system else []) + [Message.user(prompt)]
        return cls(messages=msgs, **kwargs)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BackendResponse:
    """What a backend returns for one successful attempt."""

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatResult(BaseModel):
    """The outcome of one request: a text (and a validated ``parsed`` value) or a recorded failure.

    On a failure ``text`` keeps the raw output when there was one (e.g. a reply that did not
    validate), ``parsed`` stays None, and ``error`` says why.
    """

    call_id: str
    status: Status
    text: str | None = None
    parsed: Any = None
    error: str | None = None
    error_kind: str | None = Field(default=None, description=(
        "rate_limit, server, timeout, connection, malformed, auth, permission, not_found, bad_request, "
        "unsupported, refused, backend, truncated, invalid_output, budget or internal."))
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    attempts: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        """True when the result holds a usable answer."""
        return self.status in ("ok", "cached")
