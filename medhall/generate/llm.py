"""Instruction generation with an LLM (GPT-4o or any OpenAI-compatible server, or a local model).

Per image, two structured requests through the LLM layer: one for hallucination (negative)
pairs in the three categories, one for non-hallucination (positive) pairs across tasks. The
model sees the image and its caption (or the caption alone with ``text_only``, as LLaVA-Med
did); the prompts are versioned files (``medhall/prompts/generate/<version>``) whose hash is
in every row and every cache key. Replies are validated against a pydantic schema; a reply
that fails validation after the layer's repair retry, or a failed request, puts the image in
the quarantine with the raw text and the reason, and the image is retried by the next run
(the layer's cache means completed requests are never paid for twice).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medhall import ids, schema
from medhall.endpoints import LLMSettings, make_client
from medhall.prompts import Templates, load

Style = Literal["direct", "casual", "clinician", "patient", "leading"]
NegativeCategory = Literal["nonexistent_object", "object_manipulation", "knowledge_distortion"]
PositiveCategory = Literal[
    "captioning", "finding_recognition", "disease_recognition", "modality_anatomy", "clinical_reasoning", "other"
]


class _Pair(BaseModel):
    model_config = ConfigDict(extra="ignore")
    question: str = Field(min_length=3)
    answer: str = Field(min_length=1)
    style: Style = "direct"

    @field_validator("question", "answer")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.replace("<image>", "").strip()

    @field_validator("style", mode="before")
    @classmethod
    def _style(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


class NegativePair(_Pair):
    category: NegativeCategory
    # What a hallucinating model would answer (accepts the false premise): the rejected side of
    # a preference pair. Optional, so replies without it (and cached older replies) still parse.
    hallucinated_answer: str | None = None


class PositivePair(_Pair):
    category: PositiveCategory


class NegativeSet(BaseModel):
    """The reply schema of the negative request."""

    pairs: list[NegativePair] = Field(min_length=1)


class PositiveSet(BaseModel):
    """The reply schema of the positive request."""

    pairs: list[PositivePair] = Field(min_length=1)


@dataclass
class GenerationResult:
    pairs: pa.Table
    problems: list[dict[str, Any]] = field(default_factory=list)  # quarantine rows
    failed_images: set[str] = field(default_factory=set)


class LLMGenerator:
    """Negative and positive pairs from an LLM, through :class:`medhall.llm.LLMClient`."""

    def __init__(self, client: Any, settings: LLMSettings, *, questions_per_image: int = 10,
                 negative_share: float = 0.5, templates: Templates | None = None, max_tokens: int = 1500) -> None:
        self.client = client
        self.settings = settings
        self.templates = templates or load("generate")
        self.n_negative = round(questions_per_image * negative_share)
        self.n_positive = questions_per_image - self.n_negative
        self.max_tokens = max_tokens
        self.name = f"{settings.backend}:{settings.resolved_model()}"

    @staticmethod
    def key_parts(cfg: Any) -> dict[str, Any]:
        """What decides the output, for the build's shard keys."""
        settings = cfg.llm or LLMSettings()
        return {"endpoint": settings.identity(), "templates": load("generate").hash}

    @classmethod
    def from_build(cls, cfg: Any, store: Any, client: Any = None) -> LLMGenerator:
        settings = cfg.llm or LLMSettings()
        return cls(client or make_client(settings, home=store.root), settings, questions_per_image=cfg.questions_per_image)

    # -- requests ---------------------------------------------------------------------------

    def _image_part(self, image: Mapping[str, Any]):
        from medhall.llm import ImagePart

        path = image.get("image_path")
        if self.settings.text_only or not path or not Path(path).exists():
            return None
        return ImagePart.from_image(path)

    def requests(self, image: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """(kind, ChatRequest) for one image: negatives first, then positives."""
        from medhall.llm import ChatRequest, Message

        part = self._image_part(image)
        system = Message.system(self.templates.render("system"))
        out = []
        for kind, n in (("negative", self.n_negative), ("positive", self.n_positive)):
            if n <= 0:
                continue
            text = self.templates.render(kind, n=n, caption=(image.get("caption") or "").strip())
            user = Message.user(text, part) if part is not None else Message.user(text)
            out.append((kind, ChatRequest(
                messages=[system, user], model=self.settings.resolved_model(), temperature=0.0,
                max_tokens=self.max_tokens, template_hash=self.templates.hash, stage="generate",
            )))
        return out

    # -- generation -------------------------------------------------------------------------

    def generate(self, images: pa.Table | Iterable[Mapping[str, Any]], corpus_stats: Any = None, *,
                 run_id: str | None = None) -> pa.Table:
        return self.generate_with_problems(images, corpus_stats, run_id=run_id).pairs

    def generate_with_problems(self, images: pa.Table | Iterable[Mapping[str, Any]], corpus_stats: Any = None,
                               *, run_id: str | None = None) -> GenerationResult:
        """All images' pairs in one batch through the layer; failures become quarantine rows."""
        if run_id is not None:
            self.client.run_id = run_id  # the ledger rows carry the build's run id
        rows = images.to_pylist() if isinstance(images, pa.Table) else list(images)
        planned: list[tuple[Mapping[str, Any], str, Any]] = []
        problems: list[dict[str, Any]] = []
        for image in rows:
            try:
                planned += [(image, kind, req) for kind, req in self.requests(image)]
            except Exception as e:  # an unreadable image file: the image waits for the next run
                problems.append(_problem(image, "image_unreadable", f"{type(e).__name__}: {e}", None, run_id))
        schemas = {"negative": NegativeSet, "positive": PositiveSet}
        results = self._run([req for _, _, req in planned], [schemas[k] for _, k, _ in planned])
        out: list[dict[str, Any]] = []
        failed = {p["record_id"] for p in problems}
        for (image, kind, _), result in zip(planned, results, strict=True):
            if not result.ok or result.parsed is None:
                failed.add(image["image_id"])
                problems.append(_problem(image, f"llm_{result.error_kind or 'failed'}", result.error or "no answer", result.text, run_id, kind))
                continue
            out += self._rows(image, kind, result, run_id)
        pairs = [r for r in out if r["image_id"] not in failed]  # an image is generated whole or not at all
        return GenerationResult(schema.from_rows("instructions", pairs), problems, failed)

    def _run(self, requests: Sequence[Any], schemas: Sequence[type[BaseModel]]) -> list[Any]:
        """Requests grouped by schema (the layer takes one schema per batch), results in order."""
        results: list[Any] = [None] * len(requests)
        for sch in dict.fromkeys(schemas):
            idx = [i for i, s in enumerate(schemas) if s is sch]
            for i, r in zip(idx, self.client.run([requests[i] for i in idx], sch, progress=True), strict=True):
                results[i] = r
        return results

    def _rows(self, image: Mapping[str, Any], kind: str, result: Any, run_id: str | None) -> list[dict[str, Any]]:
        limit = self.n_negative if kind == "negative" else self.n_positive
        rows = []
        for pair in result.parsed.pairs[:limit]:
            rows.append({
                "qa_id": ids.qa_id(image["image_id"], pair.question, pair.answer),
                "image_id": image["image_id"],
                "dataset": image.get("dataset") or "",
                "question": pair.question,
                "answer": pair.answer,
                "kind": kind,
                "category": pair.category,
                "style": pair.style,
                "generator": self.name,
                "template_hash": self.templates.hash,
                "source": "llm",
                "meta": json.dumps({"call_id": result.call_id, "text_only": self._image_part_missing(image),
                                    **({"rejected": r} if (r := getattr(pair, "hallucinated_answer", None)) else {})}),
                "run_id": run_id,
            })
        return rows

    def _image_part_missing(self, image: Mapping[str, Any]) -> bool:
        path = image.get("image_path")
        return bool(self.settings.text_only or not path or not Path(path).exists())


def _problem(image: Mapping[str, Any], reason: str, detail: str, raw: str | None, run_id: str | None,
             request: str = "image") -> dict[str, Any]:
    from medhall.sources.base import clip_raw

    ref = f"{image['image_id']}#{request}"  # one row per failed request (negative / positive)
    return {
        "quarantine_id": ids.content_id("qrn", "generate", "llm", ref, reason),
        "stage": "generate",
        "dataset": image.get("dataset"),
        "source": "llm",
        "record_ref": ref,
        "record_id": image["image_id"],
        "reason": reason,
        "detail": detail,
        "raw": clip_raw(raw),
        "run_id": run_id,
    }
