"""The runner protocol: questions (with an image) in, answers out, one failure never stops a batch.

A :class:`Runner` answers :class:`Query` items in order and returns one :class:`Answer` per
item. A runner never raises for one bad item: a missing or undecodable image, or a generation
error confined to one item, becomes that item's ``error`` and the other items are answered.
:func:`predictions_table` turns queries and answers into rows of the ``predictions`` table
(:data:`medhall.schema.PREDICTIONS`).

Local VLMs (:mod:`medhall.infer.local_vlm`) implement this protocol; an API-model runner
over :mod:`medhall.llm` fits the same shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from medhall.ids import content_id

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL import Image

ORIGINS = ("local", "api", "import")


@dataclass(frozen=True)
class Query:
    """One question to answer.

    ``image`` is a file path (PNG, JPEG, DICOM, ... decoded by :func:`medhall.images.load_rgb`),
    an already decoded PIL image, or ``None`` for a question asked without an image.
    """

    qa_id: str
    question: str
    image: str | Path | Image.Image | None = None


@dataclass(frozen=True)
class Answer:
    """A runner's answer to one :class:`Query`: exactly one of ``text`` and ``error`` is set.

    ``latency_s`` is the item's share of the wall time of the call that produced it (a batch's
    time divided by its size). ``meta`` holds runner-specific facts (tokens generated, whether
    the answer hit the token limit, the batch size).
    """

    qa_id: str
    text: str | None
    error: str | None = None
    latency_s: float = 0.0
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    @classmethod
    def failure(cls, qa_id: str, error: BaseException | str, latency_s: float = 0.0) -> Answer:
        """An answer that records why ``qa_id`` could not be answered."""
        return cls(qa_id=qa_id, text=None, error=describe_error(error), latency_s=latency_s)


@runtime_checkable
class Runner(Protocol):
    """Anything that answers queries: ``name`` is the model name written to predictions."""

    name: str

    def answer(self, items: Sequence[Query]) -> list[Answer]:
        """One answer per item, in order; never raises for one bad item."""
        ...


def describe_error(error: BaseException | str) -> str:
    """``Type: message`` for an exception (the message alone when it already names a reason)."""
    if isinstance(error, str):
        return error
    message = str(error)
    reason = getattr(error, "reason", None)
    if reason and message.startswith(f"{reason}:"):
        return message  # medhall.images.ImageProblem: "missing_image: ..." already says what
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def prediction_row(
    model_name: str, query: Query, answer: Answer, *, origin: str, run_id: str | None
) -> dict[str, Any]:
    """One ``predictions`` row for ``answer`` to ``query``."""
    if answer.qa_id != query.qa_id:
        raise ValueError(f"answer for {answer.qa_id!r} paired with query {query.qa_id!r}")
    return {
        "pred_id": content_id("pred", model_name, query.qa_id),
        "qa_id": query.qa_id,
        "model": model_name,
        "question": query.question,
        "answer": answer.text if answer.ok else None,
        "status": "ok" if answer.ok else "failed",
        "error": None if answer.ok else (answer.error or "no answer"),
        "origin": origin,
        "latency_s": float(answer.latency_s),
        "meta": json.dumps(dict(answer.meta), sort_keys=True, default=str) if answer.meta else None,
        "run_id": run_id,
    }


def predictions_table(
    model_name: str,
    queries: Sequence[Query],
    answers: Sequence[Answer],
    origin: str = "local",
    run_id: str | None = None,
) -> pa.Table:
    """The ``predictions`` table for ``answers`` (paired with ``queries`` by position)."""
    from medhall.schema import from_rows

    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
    if len(queries) != len(answers):
        raise ValueError(f"{len(queries)} queries but {len(answers)} answers")
    rows = [
        prediction_row(model_name, q, a, origin=origin, run_id=run_id)
        for q, a in zip(queries, answers, strict=True)
    ]
    return from_rows("predictions", rows)


__all__ = [
    "ORIGINS",
    "Answer",
    "Query",
    "Runner",
    "describe_error",
    "prediction_row",
    "predictions_table",
]
