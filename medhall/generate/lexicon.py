"""The medical entity lexicon and attribute table, and what they find in a caption.

The tables live in ``data/lexicon.json`` and ``data/attributes.json`` (see
docs/offline_generator.md). Every entity synonym, derived plural and attribute form is compiled
once into a single regular expression shaped like a trie, so one left-to-right scan of a caption
finds all terms: matching is case-insensitive and on whole words, a hyphen matches a space,
and at one position the longest term wins ("pleural effusion" over "effusion",
"non-enhancing" over "enhancing", "left ventricle" over "left").

:func:`extract_entities` returns the entity mentions of a caption; :meth:`Lexicon.analyse`
returns them with the caption's sentences and every attribute value it contains. A mention
knows whether it is negated ("no pleural effusion") or hedged ("likely a cholesteatoma"), and
which attributes lie next to it in the same sentence ("large ... consolidation in the left
midlung").
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
ENTITY_TYPES = ("anatomy", "finding", "device", "disease")

# Attribute-to-entity attachment windows (characters, within one sentence): an attribute
# before its noun ("large, lobulated mass") or after it ("mass in the left kidney").
BEFORE_WINDOW = 32
AFTER_WINDOW = 40
CUE_WINDOW = 60

_SPACE_OR_HYPHEN = re.compile(r"[\s\-\u2010-\u2013]+")
_SENTENCE_END = re.compile(r"[.;!?](?=\s|$)")
_HARD_BREAK = re.compile(r"[.;:()\[\]]")
_SOFT_BREAK = re.compile(r"[,.;:()\[\]]")
_NEGATION_AFTER = re.compile(
    r"\s*(?:(?:is|are|was|were|has been|have been)\s+)?(?:not\s+(?:seen|present|visible|identified|"
    r"observed|detected|evident|shown|demonstrated)|absent|ruled out|excluded|resolved)\b"
)


def norm(text: str) -> str:
    """Lookup key of a term: lower case, curly apostrophes straightened, hyphens as spaces."""
    return _SPACE_OR_HYPHEN.sub(" ", text.lower().replace("\u2019", "'")).strip()


def entity_id(name: str) -> str:
    """An entity's id: its canonical name in lower case, non-alphanumerics as ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def pluralise(phrase: str) -> str:
    """English plural of a noun phrase's last word (regular forms only)."""
    head, _, last = phrase.rpartition(" ")
    if re.search(r"(?:s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


@dataclass(frozen=True, slots=True)
class Entity:
    """One lexicon entry."""

    id: str
    name: str
    type: str
    modalities: frozenset[str]
    body_parts: frozenset[str]
    families: frozenset[str]
    uncountable: bool
    generic: bool
    stems: tuple[str, ...]

    def plausible(self, modality: str | None, body_part: str | None) -> bool:
        """Whether the entity could appear on an image of this modality and body part (None: any)."""
        return (not modality or not self.modalities or modality in self.modalities) and (
            not body_part or not self.body_parts or body_part in self.body_parts
        )


@dataclass(frozen=True, slots=True)
class AttributeValue:
    """One value of an attribute group (e.g. laterality=left) and how to say it."""

    group: str
    value: str
    forms: tuple[str, ...]
    pred: str
    adj: str
    count: str | None
    swaps: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Term:
    """A surface form: an entity (key: its id), an attribute value (key: (group, value)) or a
    context cue (key: neg, hedge or scope)."""

    kind: str
    key: Any
    display: str
    singular: str = ""
    plural_form: str = ""
    is_plural: bool = False
    uncountable: bool = False


@dataclass(frozen=True, slots=True)
class AttributeMention:
    group: str
    value: str
    text: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Mention:
    """An entity found in a caption, with its context."""

    entity: str
    display: str
    singular: str
    plural_form: str
    is_plural: bool
    uncountable: bool
    start: int
    end: int
    sentence: int
    negated: bool
    hedged: bool
    attributes: tuple[AttributeMention, ...]

    @property
    def certain(self) -> bool:
        """Stated as present, neither negated nor hedged."""
        return not self.negated and not self.hedged


@dataclass(frozen=True, slots=True)
class CaptionFacts:
    """What the lexicon finds in one caption."""

    text: str
    lower: str
    sentence_ends: tuple[int, ...]
    mentions: tuple[Mention, ...]
    attribute_values: frozenset[tuple[str, str]]


def _trie_regex(keys: list[str]) -> str:
    """A regex alternation of ``keys`` shaped as a trie (longest key first at every branch)."""
    root: dict[str, Any] = {}
    for key in keys:
        node = root
        for ch in key:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict[str, Any]) -> str:
        alts = [
            (r"[\s\-\u2010-\u2013]+" if ch == " " else re.escape(ch)) + emit(child)
            for ch, child in sorted(node.items())
            if ch
        ]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if "" in node:
            return f"(?:{body})?"
        return body

    return emit(root)


# Context cues, scanned once per caption (lower case). The scope of a cue is the clause before
# a mention, up to CUE_WINDOW characters and never across [.;:]; a "but", "however", ... between
# a negation and the mention ends the negation's scope.
CUE_WORDS = {
    "neg": (
        "no", "not", "without", "absence of", "absent", "negative for", "free of", "ruled out",
        "rules out", "resolved", "resolution of", "neither", "nor", "lack of", "exclude", "excluded",
        "never",
    ),
    "hedge": (
        "possible", "possibly", "probable", "probably", "likely", "unlikely", "suspected",
        "suspicious", "suspicion", "may", "might", "could", "questionable", "differential",
        "versus", "vs", "concerning for", "suggest", "suggests", "suggested", "suggesting",
        "suggestive", "rule out", "presumed", "presumably", "cannot be excluded", "hypothesis",
        "hypothesised", "hypothesized", "risk of",
    ),
    "scope": ("but", "however", "although", "though", "except", "whereas", "while", "yet"),
}  # fmt: skip


def load_table(name: str) -> dict[str, Any]:
    """One packaged JSON table of ``data/``."""
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


class Lexicon:
    """Entities, attribute values and one compiled matcher for all their surface forms."""

    def __init__(self, lexicon: dict[str, Any], attributes: dict[str, Any]) -> None:
        self.entities: dict[str, Entity] = {}
        self.attributes: dict[tuple[str, str], AttributeValue] = {}
        self._terms: dict[str, Term] = {}
        self._derived: dict[str, Term] = {}
        sets = lexicon.get("modality_sets", {})
        for group in lexicon["groups"]:
            mods = group.get("modalities", [])
            modalities = frozenset(sets[mods] if isinstance(mods, str) else mods)
            for entry in group["entries"]:
                self._add_entity(
                    entry, group["type"], modalities, frozenset(group.get("body_parts", []))
                )
        for group, spec in attributes["groups"].items():
            for value, v in spec["values"].items():
                self._add_attribute(AttributeValue(
                    group, value, tuple(v["forms"]), v["pred"], v["adj"], v.get("count"),
                    tuple(spec["swaps"].get(value, ())),
                ))  # fmt: skip
        for kind, words in CUE_WORDS.items():
            for word in words:
                self._add_term(word, Term("cue", kind, word))
        for key, term in self._derived.items():
            self._terms.setdefault(key, term)
        trie = _trie_regex(sorted(self._terms))
        self._pattern = re.compile(r"(?<![\w'])(?:" + trie + r")(?![\w]|'\w)|(?P<stop>[.;:])")
        self._absent_pool: dict[tuple[str | None, str | None], tuple[Entity, ...]] = {}

    def _add_term(self, form: str, term: Term) -> None:
        key = norm(form)
        other = self._terms.get(key)
        if other is not None and other.key != term.key:
            raise ValueError(f"lexicon: term {form!r} is both {other.key!r} and {term.key!r}")
        self._terms.setdefault(key, term)

    def _add_entity(
        self,
        entry: dict[str, Any],
        type_: str,
        modalities: frozenset[str],
        body_parts: frozenset[str],
    ) -> None:
        if type_ not in ENTITY_TYPES:
            raise ValueError(f"lexicon: unknown type {type_!r}")
        name = entry["name"]
        eid = entity_id(name)
        if eid in self.entities:
            raise ValueError(f"lexicon: duplicate entity {name!r}")
        uncountable = bool(entry.get("uncountable", False))
        explicit_plurals = list(entry.get("plural", []))
        plural = (
            explicit_plurals[0] if explicit_plurals else (name if uncountable else pluralise(name))
        )
        forms = [name, *entry.get("synonyms", [])]
        self.entities[eid] = Entity(
            id=eid, name=name, type=type_, modalities=modalities, body_parts=body_parts,
            families=frozenset(entry.get("families", [])), uncountable=uncountable,
            generic=bool(entry.get("generic", False)),
            stems=tuple(sorted({_stem(f) for f in forms + explicit_plurals + entry.get("uncountable_synonyms", [])})),
        )  # fmt: skip
        for form in forms:
            form_plural = plural if form == name else pluralise(form)
            self._add_term(form, Term("entity", eid, form, form, form_plural, False, uncountable))
            if not uncountable:
                self._derived.setdefault(
                    norm(pluralise(form)),
                    Term("entity", eid, pluralise(form), form, pluralise(form), True),
                )
        for form in explicit_plurals:
            self._add_term(form, Term("entity", eid, form, name, form, True))
        for form in entry.get("uncountable_synonyms", []):
            self._add_term(form, Term("entity", eid, form, form, form, False, True))

    def _add_attribute(self, value: AttributeValue) -> None:
        self.attributes[(value.group, value.value)] = value
        for form in value.forms:
            self._add_term(form, Term("attribute", (value.group, value.value), form))

    def analyse(self, caption: str | None) -> CaptionFacts:
        """Entity mentions, sentences and attribute values of ``caption``."""
        text = caption or ""
        lower = _lower_same_length(text)
        ends = tuple(m.end() for m in _SENTENCE_END.finditer(text))
        found: dict[str, list[tuple[int, int, Any]]] = {"entity": [], "attribute": [], "cue": []}
        terms = self._terms
        for m in self._pattern.finditer(lower):
            if m.lastgroup == "stop":
                found["cue"].append((m.start(), m.end(), "stop"))
                continue
            word = m.group()
            term = terms.get(word) or terms[norm(word)]
            found[term.kind].append((m.start(), m.end(), term.key if term.kind == "cue" else term))
        entities, attrs = found["entity"], found["attribute"]
        attached = _attach(text, entities, attrs)
        cues = _Cues(lower, found["cue"])
        mentions = []
        for i, (start, end, term) in enumerate(entities):
            negated, hedged = cues.context(start, end)
            mentions.append(Mention(
                entity=term.key, display=term.display, singular=term.singular,
                plural_form=term.plural_form, is_plural=term.is_plural, uncountable=term.uncountable,
                start=start, end=end,
                sentence=bisect_left(ends, end), negated=negated, hedged=hedged,
                attributes=tuple(attached[i]),
            ))  # fmt: skip
        return CaptionFacts(
            text, lower, ends, tuple(mentions), frozenset(t.key for _, _, t in attrs)
        )

    def absent_pool(self, modality: str | None, body_part: str | None) -> tuple[Entity, ...]:
        """Entities that may be asked about as absent on such an image (never anatomy)."""
        key = (modality, body_part)
        pool = self._absent_pool.get(key)
        if pool is None:
            pool = tuple(
                e for e in self.entities.values()
                if e.type != "anatomy" and not e.generic and e.plausible(modality, body_part)
            )  # fmt: skip
            self._absent_pool[key] = pool
        return pool


def _stem(form: str) -> str:
    """A conservative stem of a form's head word, to test that a caption never names it."""
    head = norm(form).rsplit(" ", 1)[-1]
    return head[: max(4, len(head) - 2)]


def _attach(
    text: str, entities: list[tuple[int, int, Term]], attrs: list[tuple[int, int, Term]]
) -> list[list[AttributeMention]]:
    """Give each attribute to the nearest entity in its sentence, preferring the noun after it."""
    attached: list[list[AttributeMention]] = [[] for _ in entities]
    starts = [s for s, _, _ in entities]
    for a_start, a_end, term in attrs:
        group, value = term.key
        mention = AttributeMention(group, value, text[a_start:a_end], a_start, a_end)
        i = bisect_right(starts, a_start)
        if i < len(entities):
            gap = text[a_end : entities[i][0]]
            if len(gap) <= BEFORE_WINDOW and not _HARD_BREAK.search(gap):
                attached[i].append(mention)
                continue
        if i > 0:
            gap = text[entities[i - 1][1] : a_start]
            if len(gap) <= AFTER_WINDOW and not _SOFT_BREAK.search(gap):
                attached[i - 1].append(mention)
    return attached


def _lower_same_length(text: str) -> str:
    """``text.lower()``, keeping offsets: characters whose lower case is longer stay as they are."""
    lower = text.lower()
    if len(lower) == len(text):
        return lower
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class _Cues:
    """The negation, hedge, scope-break and clause-stop cues of one (lower-case) caption."""

    def __init__(self, lower: str, cues: list[tuple[int, int, str]]) -> None:
        self.lower = lower
        self.starts = [s for s, _, _ in cues]
        self.cues = cues

    def context(self, start: int, end: int) -> tuple[bool, bool]:
        """(negated, hedged) of the mention at ``start:end``."""
        negated = bool(_NEGATION_AFTER.match(self.lower, end))
        hedged = broken = False
        i = bisect_left(self.starts, start) - 1
        while i >= 0:
            c_start, c_end, kind = self.cues[i]
            if c_end > start:
                i -= 1
                continue
            if kind == "stop" or c_start < start - CUE_WINDOW:
                break
            if kind == "scope":
                broken = True
            elif kind == "hedge":
                hedged = True
            elif kind == "neg" and not broken:
                negated = True
            i -= 1
        return negated, hedged


@cache
def default_lexicon() -> Lexicon:
    """The lexicon built from the packaged tables (built once per process)."""
    return Lexicon(load_table("lexicon.json"), load_table("attributes.json"))


def extract_entities(caption: str | None) -> list[Mention]:
    """The entity mentions of ``caption``, in order, with the default lexicon."""
    return list(default_lexicon().analyse(caption).mentions)
