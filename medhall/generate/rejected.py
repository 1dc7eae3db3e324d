"""Hallucinated answers: what a model that accepts a question's false premise would say.

Preference tuning needs, beside each negative question's correct answer, a *rejected* one: the
answer that accepts the false premise. :func:`rejected_answer` makes it from what the row says
about its own falsehood:

- ``generator``: an LLM-generated row carries the generator's ``hallucinated_answer`` (asked in
  the same request as the question, so it costs nothing more) in ``meta.rejected``;
- ``template``: an offline-generator row records in ``meta`` what its question falsified (the
  absent object, the swapped attribute or count, the unsupported relation, the false premise),
  and a template states exactly that as fact;
- ``generic``: any other negative row (imported pairs, older LLM rows) gets a premise-accepting
  answer of its category ("Yes, it is clearly visible in this image."): the sycophantic "yes"
  that POPE-style hallucination is made of, with no detail of its own.

The choice among a task's templates is seeded by the pair's ``qa_id``, so the same row always
gets the same rejected answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from medhall.generate.compose import with_article

#: Premise-accepting templates per offline task (the ``task`` in an offline row's meta).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "absent": (
        "Yes, {absent_a} is visible in this image.",
        "Yes. The image shows {absent_a}, as you describe.",
        "Yes, there is {absent_a} here; it is clearly seen in this image.",
    ),
    "attribute": (
        "Yes, the {entity} is {to_phrase}.",
        "That is right: the {entity} in this image is {to_phrase}.",
    ),
    "number": (
        "Yes, the image shows {to_phrase}.",
        "That is right: this image shows {to_phrase}.",
    ),
    "relation": (
        "Yes, the {a} is {rel} the {b}.",
        "That is correct: the image shows the {a} {rel} the {b}.",
    ),
    "premise": (
        "Yes. Since {claim}, that is what this image means.",
        "That is right: {claim}, and this image is consistent with it.",
    ),
}

#: Premise-accepting answers of a category, for rows that do not say what they falsified.
GENERIC: dict[str | None, tuple[str, ...]] = {
    "nonexistent_object": ("Yes, it is clearly visible in this image.", "Yes, the image shows it, as you describe."),
    "object_manipulation": ("Yes, that is correct; the image shows it exactly as you describe.",),
    "knowledge_distortion": ("Yes, that is right, and this image is consistent with it.",),
    None: ("Yes, that is correct.",),
}


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("meta")
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw) if raw else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _name(entity_id: str | None) -> str | None:
    from medhall.generate.lexicon import default_lexicon

    entity = default_lexicon().entities.get(entity_id) if entity_id else None
    return entity.name if entity else None


def _values(task: str, meta: Mapping[str, Any]) -> dict[str, str] | None:
    """The template values of an offline row's meta; None when a value is missing."""
    if task == "absent" and meta.get("absent_name"):
        name = meta["absent_name"]
        return {"absent": name, "absent_a": with_article(name)}
    swapped = meta.get("swapped") or {}
    if task in ("attribute", "number") and swapped.get("to_phrase"):
        entity = _name(meta.get("entity"))
        return {"entity": entity, "to_phrase": swapped["to_phrase"]} if entity or task == "number" else None
    relation = meta.get("relation") or {}
    if task == "relation" and relation.get("rel"):
        a, b = _name(relation.get("a")), _name(relation.get("b"))
        return {"a": a, "b": b, "rel": relation["rel"]} if a and b else None
    if task == "premise" and meta.get("premise_id"):
        from medhall.generate.tables import default_tables

        premise = next((p for p in default_tables().premises if p.id == meta["premise_id"]), None)
        return {"claim": premise.claim} if premise else None
    return None


def rejected_answer(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(rejected answer, where it came from: generator | template | generic) for a negative
    row (``kind``, ``category``, ``meta``, ``qa_id``); None for a positive row."""
    if row.get("kind") != "negative":
        return None
    meta = _meta(row)
    given = meta.get("rejected")
    if isinstance(given, str) and given.strip():
        return given.strip(), "generator"
    rng = random.Random(str(row.get("qa_id") or row.get("question") or ""))
    task = meta.get("task")
    values = _values(task, meta) if task in TEMPLATES else None
    if values is not None:
        text = rng.choice(TEMPLATES[task]).format(**values)
        return text[0].upper() + text[1:], "template"
    return rng.choice(GENERIC.get(row.get("category"), GENERIC[None])), "generic"


__all__ = ["GENERIC", "TEMPLATES", "rejected_answer"]
