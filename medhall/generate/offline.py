"""The deterministic offline generator (``offline-v1``): instructions without an LLM.

For each image, ``questions_per_image`` pairs: a ``negative_share`` of negative (hallucination)
pairs spread over the negative categories by ``negative_mix``, the rest positive pairs spread
by ``positive_mix`` (largest-remainder counts, so the corpus-level mix follows the weights; a
category that an image cannot serve hands its quota to the others of the same kind). Each
question gets a language style drawn by ``styles``; nonexistent-object questions a POPE
sampling strategy drawn by ``strategies``.

Everything random comes from one generator per image, seeded with ``sha256(seed, image_id)``:
an image's pairs depend only on the seed, the image (caption, modality, body part), the
config and the corpus statistics, never on the other images of its shard. See
docs/offline_generator.md.

Usage::

    from medhall.generate import OfflineConfig, OfflineGenerator, corpus_statistics

    stats = corpus_statistics(images.column("caption").to_pylist())   # whole corpus, once
    table = OfflineGenerator(OfflineConfig(seed=0)).generate(images, corpus_stats=stats)
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from itertools import accumulate
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medhall.generate.compose import STRATEGIES, Composer, Draft, ImageContext
from medhall.generate.lexicon import default_lexicon
from medhall.generate.stats import CorpusStats, corpus_statistics
from medhall.generate.tables import GENERATOR, STYLES, default_tables, template_hash
from medhall.ids import qa_id, run_id, sha256_hex
from medhall.qc.rules import question_key
from medhall.schema import INSTRUCTIONS, NEGATIVE_CATEGORIES, POSITIVE_CATEGORIES
from medhall.sources.infer import infer_body_part, infer_modality

SOURCE = "offline"
ATTEMPTS = 3


def _weights(value: dict[str, float], allowed: tuple[str, ...], what: str) -> dict[str, float]:
    unknown = set(value) - set(allowed)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    if any(w < 0 for w in value.values()) or not any(w > 0 for w in value.values()):
        raise ValueError(f"{what}: weights must be >= 0 with at least one > 0")
    return value


class OfflineConfig(BaseModel):
    """Settings of the offline generator (all part of the run id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(
        0, description="Seed; with the image id it seeds each image's random generator."
    )
    questions_per_image: int = Field(
        10,
        ge=1,
        le=100,
        description="Pairs per image (fewer only when an image offers too little).",
    )
    negative_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of negative (hallucination) pairs per image."
    )
    negative_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "nonexistent_object": 0.4,
            "object_manipulation": 0.3,
            "knowledge_distortion": 0.3,
        },
        description="Weights of the negative categories.",
    )
    positive_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "captioning": 0.15,
            "finding_recognition": 0.25,
            "disease_recognition": 0.1,
            "modality_anatomy": 0.15,
            "clinical_reasoning": 0.15,
            "other": 0.2,
        },  # fmt: skip
        description="Weights of the positive categories (tasks).",
    )
    strategies: dict[str, float] = Field(
        default_factory=lambda: {"random": 1.0, "popular": 1.0, "adversarial": 1.0},
        description="Weights of the POPE sampling strategies for nonexistent objects.",
    )
    styles: dict[str, float] = Field(
        default_factory=lambda: {
            "direct": 0.3,
            "casual": 0.15,
            "clinician": 0.2,
            "patient": 0.15,
            "leading": 0.2,
        },
        description="Weights of the language styles.",
    )

    @field_validator("negative_mix")
    @classmethod
    def _negative(cls, v: dict[str, float]) -> dict[str, float]:
        return _weights(v, NEGATIVE_CATEGORIES, "negative_mix")

    @field_validator("positive_mix")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        return _weights(v, POSITIVE_CATEGORIES, "positive_mix")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: dict[str, float]) -> dict[str, float]:
        return _weights(v, STRATEGIES, "strategies")

    @field_validator("styles")
    @classmethod
    def _styles(cls, v: dict[str, float]) -> dict[str, float]:
        return _weights(v, STYLES, "styles")


def allocate(n: int, weights: Mapping[str, float], rng: random.Random) -> dict[str, int]:
    """``n`` split by ``weights`` (largest remainder; ties broken at random)."""
    total = sum(weights.values())
    quota = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(q) for k, q in quota.items()}
    order = sorted(weights, key=lambda k: (-(quota[k] - counts[k]), rng.random()))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _image_rows(images: pa.Table | Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    if isinstance(images, pa.Table):
        cols = [
            c
            for c in ("image_id", "dataset", "caption", "modality", "body_part")
            if c in images.column_names
        ]
        data = images.select(cols).to_pydict()
        return ({c: data[c][i] for c in cols} for i in range(images.num_rows))
    return images


class OfflineGenerator:
    """Generates ``instructions`` rows from images (``image_id``, ``caption``, ``modality``,
    ``body_part``, ``dataset``); a missing modality or body part is inferred from the caption."""

    def __init__(self, config: OfflineConfig | None = None) -> None:
        self.config = config or OfflineConfig()
        self.template_hash = template_hash()
        styles = self.config.styles
        self._styles = [s for s in STYLES if styles.get(s, 0) > 0]
        self._style_weights = list(accumulate(styles[s] for s in self._styles))

    def run_id(self) -> str:
        return run_id(
            "generate:" + GENERATOR,
            {"config": self.config.model_dump(), "template_hash": self.template_hash},
        )

    def generate(
        self,
        images: pa.Table | Iterable[Mapping[str, Any]],
        corpus_stats: CorpusStats | None = None,
        *,
        run_id: str | None = None,
    ) -> pa.Table:
        """Instruction pairs for ``images`` as an ``instructions`` table.

        ``corpus_stats`` should be the whole corpus's (:func:`corpus_statistics`); without it,
        the statistics of ``images`` alone are used, and popular/adversarial choices then depend
        on which images are passed together.
        """
        rows = list(_image_rows(images))
        if corpus_stats is None:
            corpus_stats = corpus_statistics(r.get("caption") for r in rows)
        composer = Composer(
            default_lexicon(), default_tables(), corpus_stats, self.config.strategies
        )
        columns: dict[str, list[Any]] = {
            k: []
            for k in (
                "qa_id",
                "image_id",
                "dataset",
                "question",
                "answer",
                "kind",
                "category",
                "style",
                "meta",
            )
        }
        for image in rows:
            for draft in self.image_drafts(composer, image):
                self._append(columns, image, draft)
        return self._table(columns, run_id or self.run_id())

    def image_drafts(self, composer: Composer, image: Mapping[str, Any]) -> list[Draft]:
        """The drafts of one image, negatives first."""
        caption = image.get("caption") or ""
        modality = image.get("modality") or infer_modality(caption)
        body = image.get("body_part") or infer_body_part(caption)
        rng = random.Random(int(sha256_hex(f"{self.config.seed}:{image['image_id']}")[:16], 16))
        ctx = composer.context(caption, modality, body, rng)
        n = self.config.questions_per_image
        n_negative = int(n * self.config.negative_share + 0.5)
        return self._fill(composer, ctx, n_negative, self.config.negative_mix) + self._fill(
            composer, ctx, n - n_negative, self.config.positive_mix
        )

    def _fill(
        self, composer: Composer, ctx: ImageContext, n: int, mix: dict[str, float]
    ) -> list[Draft]:
        """``n`` drafts spread over ``mix``; a category that runs dry hands its quota on."""
        drafts: list[Draft] = []
        open_ = {c: w for c, w in mix.items() if w > 0}
        for category, k in allocate(n, open_, ctx.rng).items():
            for _ in range(k):
                draft = self._try(composer, ctx, category)
                if draft is None:
                    open_.pop(category, None)
                    break
                drafts.append(draft)
        while len(drafts) < n and open_:
            category = ctx.rng.choices(list(open_), list(open_.values()))[0]
            draft = self._try(composer, ctx, category)
            if draft is None:
                open_.pop(category)
            else:
                drafts.append(draft)
        return drafts

    def _try(self, composer: Composer, ctx: ImageContext, category: str) -> Draft | None:
        """A draft of ``category`` whose question was not yet asked about this image."""
        for _ in range(ATTEMPTS):
            style = ctx.rng.choices(self._styles, cum_weights=self._style_weights)[0]
            draft = composer.builders[category](ctx, style)
            if draft is None:
                return None
            key = question_key(draft.question)
            if key not in ctx.questions:
                ctx.questions.add(key)
                return draft
        return None

    def _append(self, columns: dict[str, list[Any]], image: Mapping[str, Any], d: Draft) -> None:
        image_id = image["image_id"]
        columns["qa_id"].append(qa_id(image_id, d.question, d.answer))
        columns["image_id"].append(image_id)
        columns["dataset"].append(image.get("dataset") or "default")
        columns["question"].append(d.question)
        columns["answer"].append(d.answer)
        columns["kind"].append("negative" if d.category in NEGATIVE_CATEGORIES else "positive")
        columns["category"].append(d.category)
        columns["style"].append(d.style)
        columns["meta"].append(json.dumps(d.meta, sort_keys=True, separators=(",", ":")))

    def _table(self, columns: dict[str, list[Any]], run: str) -> pa.Table:
        n = len(columns["qa_id"])
        constant = {
            "generator": GENERATOR,
            "template_hash": self.template_hash,
            "source": SOURCE,
            "source_qa_id": None,
            "run_id": run,
        }
        arrays = [
            pa.array(columns[f.name] if f.name in columns else [constant[f.name]] * n, f.type)
            for f in INSTRUCTIONS
        ]
        return pa.Table.from_arrays(arrays, schema=INSTRUCTIONS)
