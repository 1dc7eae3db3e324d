"""The offline generator's template and premise tables, and how a template is rendered.

``data/templates.json`` holds, per category and task, question templates per language style
and answer templates; ``data/premises.json`` the curated false premises. A template names its
slots (``{absent}``, ``{modality_noun}``, ...); :func:`pick` chooses, at random, one of the
templates whose slots are all known, so a task degrades gracefully when, say, the image's
modality is unknown.

:data:`TEMPLATE_HASH` fingerprints every table the generator reads (lexicon, attributes,
premises, templates) plus its version: each generated row carries it, so a row says exactly
which tables made it.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from functools import cache
from typing import Any

from medhall.generate.lexicon import DATA_DIR, Lexicon, default_lexicon, load_table
from medhall.ids import canonical_json, sha256_hex

GENERATOR = "offline-v1"
TABLE_FILES = ("lexicon.json", "attributes.json", "premises.json", "templates.json")
STYLES = ("direct", "casual", "clinician", "patient", "leading")


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    slots: frozenset[str]

    def render(self, values: dict[str, str]) -> str:
        out = self.text.format_map(values)
        return out[:1].upper() + out[1:]


@dataclass(frozen=True, slots=True)
class Task:
    """Question templates per style and answer templates (optionally per style) of one task."""

    questions: dict[str, tuple[Template, ...]]
    answers: dict[str, tuple[Template, ...]]

    def question_templates(self, style: str) -> tuple[Template, ...]:
        return self.questions.get(style) or self.questions["direct"]

    def answer_templates(self, style: str) -> tuple[Template, ...]:
        return self.answers.get(style) or self.answers["default"]


@dataclass(frozen=True, slots=True)
class Premise:
    id: str
    claim: str
    fact: str
    triggers: frozenset[str]
    modalities: frozenset[str]


def template(text: str) -> Template:
    return Template(text, frozenset(f for _, f, _, _ in string.Formatter().parse(text) if f))


def pick(rng: random.Random, templates: tuple[Template, ...], values: dict[str, str]) -> str | None:
    """A random template of ``templates`` whose slots are all in ``values``, rendered; else None."""
    usable = [t for t in templates if t.slots <= values.keys()]
    return rng.choice(usable).render(values) if usable else None


class Tables:
    """The loaded template, phrase and premise tables."""

    def __init__(
        self, templates: dict[str, Any], premises: dict[str, Any], lexicon: Lexicon
    ) -> None:
        self.modalities: dict[str, dict[str, str]] = templates["modalities"]
        self.body_parts: dict[str, str] = templates["body_parts"]
        self.phrases = {
            k: tuple(template(t) for t in templates[k])
            for k in ("shows", "shows_no_entities", "grounds", "grounds_modality")
        }
        self.tasks: dict[tuple[str, str], Task] = {
            (category, name): _task(spec)
            for category, tasks in templates["categories"].items()
            for name, spec in tasks.items()
        }
        self.premises = tuple(_premise(p, lexicon) for p in premises["premises"])
        self.premises_by_entity: dict[str, list[int]] = {}
        self.premises_by_modality: dict[str | None, list[int]] = {}
        for i, p in enumerate(self.premises):
            for e in p.triggers:
                self.premises_by_entity.setdefault(e, []).append(i)
            for m in p.modalities:
                self.premises_by_modality.setdefault(m, []).append(i)

    def task(self, category: str, name: str) -> Task:
        return self.tasks[(category, name)]


def _task(spec: dict[str, Any]) -> Task:
    answers = {"default": tuple(template(t) for t in spec["answers"])}
    answers |= {
        k.removeprefix("answers_"): tuple(template(t) for t in v)
        for k, v in spec.items()
        if k.startswith("answers_")
    }
    questions = {style: tuple(template(t) for t in ts) for style, ts in spec["questions"].items()}
    unknown = set(questions) - set(STYLES)
    if unknown or "direct" not in questions:
        raise ValueError(f"templates: styles {sorted(unknown)} unknown or 'direct' missing")
    return Task(questions, answers)


def _premise(p: dict[str, Any], lexicon: Lexicon) -> Premise:
    triggers = frozenset(p.get("triggers", ()))
    unknown = triggers - lexicon.entities.keys()
    if unknown:
        raise ValueError(f"premise {p['id']}: unknown trigger entities {sorted(unknown)}")
    if not triggers and not p.get("modalities"):
        raise ValueError(f"premise {p['id']}: needs triggers or modalities")
    return Premise(p["id"], p["claim"], p["fact"], triggers, frozenset(p.get("modalities", ())))


@cache
def default_tables() -> Tables:
    """The packaged tables (loaded once per process)."""
    return Tables(load_table("templates.json"), load_table("premises.json"), default_lexicon())


@cache
def template_hash() -> str:
    """16 hex of the SHA-256 of the generator version and every table file's text."""
    parts = [GENERATOR] + [(DATA_DIR / f).read_text(encoding="utf-8") for f in TABLE_FILES]
    return sha256_hex(canonical_json(parts))[:16]
