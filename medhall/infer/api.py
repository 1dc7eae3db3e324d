"""Answers from a model behind the LLM layer: GPT-4o, a vLLM / llama.cpp / Ollama server, or
the embedded local text model.

:class:`APIModel` implements the runner protocol of :mod:`medhall.infer.base`: each
:class:`~medhall.infer.base.Query` becomes one :class:`~medhall.llm.ChatRequest` (stage
``infer``, temperature 0: deterministic, so cached by the layer) with the image first and the
question after it, in one user turn. Retries, rate limits, the cache, the ledger and the
budget are the layer's (:class:`medhall.llm.LLMClient`); this module only builds requests and
turns results into answers.

Failures stay with their item and carry the reason: an image that cannot be read is
``missing_image: ...`` / ``corrupt_image: ...`` (the request is not sent); a request the layer
gave up on is ``<error_kind>: <error>`` (e.g. ``rate_limit: ...``, ``budget: ...``). A reply cut
at ``max_tokens`` is an answer with ``meta.truncated`` (as :class:`~medhall.infer.LocalVLM`
does), not a failure.

With ``text_only=True`` the image is never read or sent: the question alone is asked (a
language-prior baseline; required for text models such as the embedded SmolLM2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medhall.ids import canonical_json, sha256_hex
from medhall.infer.base import Answer, Query

if TYPE_CHECKING:
    from medhall.llm import ChatRequest, ChatResult, LLMClient

#: Image placeholders of LLaVA-Med-style questions; the image travels as a separate part.
_PLACEHOLDER = re.compile(r"\s*<image>\s*", re.IGNORECASE)


class APIModel:
    """A model under test reached through :class:`medhall.llm.LLMClient`.

    Args:
        client: the LLM client (its backend decides where requests go).
        name: model name for the ``predictions`` table (default: the backend's model).
        model: model name sent with each request (default: the backend's).
        max_tokens: generation limit; a reply that reaches it has ``meta.truncated``.
        system_prompt: an optional system turn before every question.
        text_only: ask without the image (the image is never read).
        image_max_side: images are resized to fit this many pixels before encoding.
        progress: show the layer's progress bar.
    """

    def __init__(
        self,
        client: LLMClient,
        *,
        name: str | None = None,
        model: str | None = None,
        max_tokens: int = 512,
        system_prompt: str | None = None,
        text_only: bool = False,
        image_max_side: int = 1024,
        progress: bool = False,
    ) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.client = client
        self.model = model
        self.name = name or model or str(client.backend.model)
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.text_only = text_only
        self.image_max_side = image_max_side
        self.progress = progress

    def __repr__(self) -> str:
        return f"APIModel(name={self.name!r}, backend={self.client.backend!r}, text_only={self.text_only})"

    def settings(self) -> dict[str, Any]:
        """What determines the answers (for run ids and shard keys)."""
        return {
            "runner": "api",
            "model": self.name,
            "backend": self.client.backend.name,
            "backend_model": self.model or self.client.backend.model,
            "max_tokens": self.max_tokens,
            "system_prompt": self.system_prompt,
            "text_only": self.text_only,
            "image_max_side": None if self.text_only else self.image_max_side,
            "decoding": "temperature 0",
        }

    def template_hash(self) -> str:
        """Hash of the prompt layout (system prompt, text-only, image size): in every cache key."""
        layout = {"system": self.system_prompt, "text_only": self.text_only, "image_max_side": self.image_max_side}
        return sha256_hex(canonical_json(layout))[:16]

    # -- answering ------------------------------------------------------------------------

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        """One answer per item, in order; never raises for one bad item."""
        prepared = [self._request(q) for q in items]
        to_send = [(i, r) for i, r in enumerate(prepared) if not isinstance(r, Answer)]
        results = self.client.run([r for _, r in to_send], progress=self.progress) if to_send else []
        out: list[Answer | None] = [r if isinstance(r, Answer) else None for r in prepared]
        for (i, _), result in zip(to_send, results, strict=True):
            out[i] = self._answer(items[i], result)
        return [a for a in out if a is not None]

    def _request(self, query: Query) -> ChatRequest | Answer:
        """The request for ``query``, or a failed answer when its image cannot be read."""
        from medhall.llm import ChatRequest, ImagePart, Message

        question = _PLACEHOLDER.sub(" ", query.question).strip()
        images: list[ImagePart] = []
        if query.image is not None and not self.text_only:
            try:
                images.append(ImagePart.from_image(_image_source(query.image), max_side=self.image_max_side))
            except Exception as exc:  # noqa: BLE001 - any unreadable image fails only its item
                return Answer.failure(query.qa_id, _image_error(query.image, exc))
        messages = ([Message.system(self.system_prompt)] if self.system_prompt else []) + [Message.user(question, *images)]
        return ChatRequest(messages=messages, model=self.model, temperature=0.0, max_tokens=self.max_tokens,
                           stage="infer", template_hash=self.template_hash())

    def _answer(self, query: Query, result: ChatResult) -> Answer:
        truncated = result.error_kind == "truncated"
        meta = {
            "call_id": result.call_id,
            "cached": result.cached,
            "finish_reason": result.finish_reason,
            "new_tokens": result.usage.completion_tokens,
            "truncated": truncated,
            "image": query.image is not None and not self.text_only,
        }
        if result.ok or (truncated and result.text):
            return Answer(query.qa_id, (result.text or "").strip(), latency_s=result.latency_s, meta=meta)
        reason = f"{result.error_kind or 'failed'}: {result.error or 'no reply'}"
        return Answer(query.qa_id, None, error=reason, latency_s=result.latency_s, meta=meta)


def _image_source(image: Any) -> Any:
    """A path as a :class:`~pathlib.Path` (a missing file is an error here, not a decode error)."""
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return path
    return image


def _image_error(image: Any, exc: BaseException) -> str:
    """``missing_image: ...`` or ``corrupt_image: ...``, the reasons :class:`LocalVLM` uses."""
    if isinstance(exc, FileNotFoundError):
        return f"missing_image: {exc}"
    where = f" {image}" if isinstance(image, str | Path) else ""
    return f"corrupt_image:{where}: {type(exc).__name__}: {exc}"[:500]


__all__ = ["APIModel"]
