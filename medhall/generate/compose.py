"""Composing one image's question-answer pairs: one builder per category.

A builder takes the image's :class:`ImageContext` (the caption's analysed facts, the image's
modality and body part, its random generator, what was already asked) and a language style,
and returns a :class:`Draft` or None when the image offers nothing (more) for that category.
Every answer is built from the caption's own entities, attributes and sentences; negative
answers always correct the false premise.

One module on purpose (about 570 lines): :class:`Composer` is one class whose builders share
the image context, the style and the used-question bookkeeping; split across files they would
pass that state around instead of reading it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import Any

from medhall.generate.lexicon import Entity, Lexicon, Mention
from medhall.generate.stats import CorpusStats
from medhall.generate.tables import Premise, Tables, pick
from medhall.generate.text import CaptionText
from medhall.sources.infer import infer_modality

STRATEGIES = ("random", "popular", "adversarial")
POPULAR_K = 10
ADVERSARIAL_K = 5
RANDOM_TRIES = 25
RELATION_SHARE = 0.25
# Words that may state a relation between two findings: with any of them in the caption, no
# "unsupported relation" question is asked (the caption might support it).
RELATION_WORDS = (
    "caus", "due to", "secondary", "result", "lead", "compress", "invad", "invasion", "infiltrat",
    "aris", "origin", "extend", "extension", "associat", "because", "from", "relat", "induc",
    "complicat", "after", "following", "involv", "into", "toward", "abut", "encas", "adjacent",
)  # fmt: skip
RELATIONS = {
    "anatomy": ("invading", "compressing", "arising from"),
    "other": ("causing", "caused by"),
}
_A_NOT_AN = ("uni", "use", "usu", "ur", "ut", "eu", "one")
_ADJACENT = re.compile(r"[\s,\-]*(?:and\s+)?")  # what may separate stacked adjectives


def with_article(phrase: str) -> str:
    """``a``/``an`` + phrase, by the sound of its first word (acronyms by their first letter)."""
    word = phrase.split(" ", 1)[0]
    if len(word) > 1 and word.isupper():
        an = word[0] in "AEFHILMNORSX"
    else:
        w = word.lower()
        an = w[:1] in ("a", "e", "i", "o", "u") and not w.startswith(_A_NOT_AN)
    return ("an " if an else "a ") + phrase


def join_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(slots=True)
class Draft:
    category: str
    style: str
    question: str
    answer: str
    meta: dict[str, Any]


@dataclass(slots=True)
class ImageContext:
    """One image's facts and generation state."""

    caption: str
    modality: str | None
    body: str | None
    facts: Any
    rng: random.Random
    slots: dict[str, str]
    present: list[Mention]
    used: set[Any] = field(default_factory=set)
    questions: set[str] = field(default_factory=set)
    cache: dict[str, Any] = field(default_factory=dict)

    def first(self, key: Any) -> bool:
        """True the first time ``key`` is seen for this image (and marks it used)."""
        if key in self.used:
            return False
        self.used.add(key)
        return True


class Composer:
    """The category builders, sharing the lexicon, the tables and the corpus statistics."""

    def __init__(
        self, lexicon: Lexicon, tables: Tables, stats: CorpusStats, strategies: dict[str, float]
    ) -> None:
        self.lex = lexicon
        self.tables = tables
        self.stats = stats
        self.strategies = [s for s in STRATEGIES if strategies.get(s, 0) > 0]
        self.strategy_weights = list(accumulate(strategies[s] for s in self.strategies))
        self._popular: dict[tuple[str | None, str | None], list[Entity]] = {}
        self.builders = {
            "nonexistent_object": self.nonexistent_object,
            "object_manipulation": self.object_manipulation,
            "knowledge_distortion": self.knowledge_distortion,
            "captioning": self.captioning,
            "finding_recognition": self.finding_recognition,
            "disease_recognition": self.disease_recognition,
            "modality_anatomy": self.modality_anatomy,
            "clinical_reasoning": self.clinical_reasoning,
            "other": self.other,
        }

    # -- context ------------------------------------------------------------------------
    def context(
        self, caption: str, modality: str | None, body_part: str | None, rng: random.Random
    ) -> ImageContext:
        facts = self.lex.analyse(caption)
        modality = modality if modality in self.tables.modalities else None
        body = body_part if body_part in self.tables.body_parts else None
        slots = {"modality_noun": "image", "of_body": ""}
        if modality:
            slots |= {
                "modality_noun": self.tables.modalities[modality]["noun"],
                "modality_a": self.tables.modalities[modality]["a"],
            }
        if body:
            slots |= {
                "body": self.tables.body_parts[body],
                "of_body": f" of the {self.tables.body_parts[body]}",
            }
        present, seen = [], set()
        for m in facts.mentions:
            if not m.negated and m.entity not in seen:
                seen.add(m.entity)
                present.append(m)
        return ImageContext(caption, modality, body, facts, rng, slots, present)

    def _type(self, m: Mention) -> str:
        return self.lex.entities[m.entity].type

    def _np(self, ctx: ImageContext, m: Mention, article: bool = True) -> str:
        """The mention as a noun phrase: the attributes written right before it, then its name."""
        words, edge = [], m.start
        for a in sorted((a for a in m.attributes if a.end <= m.start), key=lambda a: -a.start):
            if not _ADJACENT.fullmatch(ctx.caption, a.end, edge):
                break
            words.insert(0, a.text if a.text.isupper() else a.text.lower())
            edge = a.start
        phrase = " ".join([*words, m.display])
        if not article or m.is_plural or m.uncountable:
            return phrase
        return "the " + phrase if self._type(m) == "anatomy" else with_article(phrase)

    def _text(self, ctx: ImageContext) -> CaptionText:
        text = ctx.cache.get("text")
        if text is None:
            text = ctx.cache["text"] = CaptionText(
                ctx.caption, ctx.facts.lower, ctx.facts.sentence_ends
            )
        return text

    def _sentence(self, ctx: ImageContext, m: Mention) -> str | None:
        return self._text(ctx).sentence(m.sentence)

    def _render(
        self, ctx: ImageContext, category: str, task: str, style: str, values: dict[str, str]
    ) -> tuple[str, str] | None:
        spec = self.tables.task(category, task)
        question = pick(ctx.rng, spec.question_templates(style), values)
        answer = pick(ctx.rng, spec.answer_templates(style), values)
        return (question, answer) if question and answer else None

    def _draft(
        self,
        ctx: ImageContext,
        category: str,
        task: str,
        style: str,
        values: dict[str, str],
        meta: dict[str, Any],
    ) -> Draft | None:
        rendered = self._render(ctx, category, task, style, ctx.slots | values)
        return (
            Draft(category, style, rendered[0], rendered[1], {"task": task} | meta)
            if rendered
            else None
        )

    def _shows(self, ctx: ImageContext) -> str:
        """A sentence saying what the image does show (for answers that deny something)."""
        visible = [m for m in ctx.present if self._type(m) != "anatomy"] or ctx.present
        if visible:
            return (
                pick(
                    ctx.rng,
                    self.tables.phrases["shows"],
                    {"np_list": join_list([self._np(ctx, m) for m in visible[:3]])},
                )
                or ""
            )
        return pick(ctx.rng, self.tables.phrases["shows_no_entities"], ctx.slots) or ""

    # -- negatives ----------------------------------------------------------------------
    def _absent_ok(self, ctx: ImageContext, e: Entity) -> bool:
        """Never mentioned, no family shared with a mention, no stem of it in the caption."""
        blocked = ctx.cache.get("blocked")
        if blocked is None:
            mentioned = {m.entity for m in ctx.facts.mentions}
            families = frozenset().union(*(self.lex.entities[i].families for i in mentioned))
            blocked = ctx.cache["blocked"] = (mentioned, families)
        mentioned, families = blocked
        return (
            e.id not in mentioned
            and not (e.families & families)
            and not any(s in ctx.facts.lower for s in e.stems)
        )

    def _ranked_absent(self, ctx: ImageContext, strategy: str) -> list[Entity]:
        """The top valid absent entities of the image by ``strategy`` (computed once per image)."""
        key = "absent:" + strategy
        if key not in ctx.cache:
            pool = self.lex.absent_pool(ctx.modality, ctx.body)
            if strategy == "adversarial":
                by_id = {e.id: e for e in pool}
                ranked: Iterable[Entity] = (
                    by_id[i]
                    for i in self.stats.adversarial(
                        (m.entity for m in ctx.present), by_id, 10 * ADVERSARIAL_K
                    )
                )
                k = ADVERSARIAL_K
            else:
                pool_key = (ctx.modality, ctx.body)
                if pool_key not in self._popular:
                    by_id = {e.id: e for e in pool}
                    self._popular[pool_key] = [
                        by_id[i] for i in self.stats.popular(by_id, len(by_id))
                    ]
                ranked, k = self._popular[pool_key], POPULAR_K
            ctx.cache[key] = list(islice((e for e in ranked if self._absent_ok(ctx, e)), k))
        return ctx.cache[key]

    def _pick_absent(self, ctx: ImageContext, strategy: str) -> tuple[Entity, str] | None:
        """An absent entity by ``strategy``, falling back adversarial -> popular -> random."""
        rng = ctx.rng
        order = {"adversarial": ("adversarial", "popular"), "popular": ("popular",), "random": ()}[
            strategy
        ]
        for name in order:
            top = [e for e in self._ranked_absent(ctx, name) if ("absent", e.id) not in ctx.used]
            if top:
                return rng.choice(top), name
        pool = self.lex.absent_pool(ctx.modality, ctx.body)
        for _ in range(RANDOM_TRIES if pool else 0):
            e = rng.choice(pool)
            if ("absent", e.id) not in ctx.used and self._absent_ok(ctx, e):
                return e, "random"
        return None

    def nonexistent_object(self, ctx: ImageContext, style: str) -> Draft | None:
        requested = ctx.rng.choices(self.strategies, cum_weights=self.strategy_weights)[0]
        picked = self._pick_absent(ctx, requested)
        if picked is None:
            return None
        entity, strategy = picked
        ctx.used.add(("absent", entity.id))
        name = entity.name
        values = {
            "absent": name,
            "absent_a": name if entity.uncountable else with_article(name),
            "shows": self._shows(ctx),
        }
        anchors = [m for m in ctx.present if self._type(m) != "anatomy"]
        if anchors:
            values["present"] = ctx.rng.choice(anchors).display
        meta = {
            "strategy": strategy,
            "strategy_requested": requested,
            "absent_entity": entity.id,
            "absent_name": name,
        }
        if not ctx.present:
            meta["fallback"] = "no_entities"
        return self._draft(ctx, "nonexistent_object", "absent", style, values, meta)

    def _swap_options(self, ctx: ImageContext) -> list[tuple[Mention, str, str, str]]:
        """(mention, group, from, to) for attributes of present findings whose opposite the caption never states."""
        options = []
        for m in ctx.present:
            if self._type(m) == "anatomy":
                continue
            groups: dict[str, set[str]] = {}
            for a in m.attributes:
                groups.setdefault(a.group, set()).add(a.value)
            for group, values in groups.items():
                if len(values) != 1:
                    continue
                (value,) = values
                for to in self.lex.attributes[(group, value)].swaps:
                    if (group, to) not in ctx.facts.attribute_values:
                        options.append((m, group, value, to))
        return options

    def _relation_options(self, ctx: ImageContext) -> list[tuple[Mention, Mention, str]]:
        """Pairs of present entities never named in one sentence, in a caption without relation words."""
        if any(w in ctx.facts.lower for w in RELATION_WORDS):
            return []
        options = []
        for a in ctx.present:
            if self._type(a) == "anatomy":
                continue
            fams = self.lex.entities[a.entity].families
            for b in ctx.present:
                if (
                    b.entity == a.entity
                    or b.sentence == a.sentence
                    or fams & self.lex.entities[b.entity].families
                ):
                    continue
                kind = "anatomy" if self._type(b) == "anatomy" else "other"
                options += [(a, b, rel) for rel in RELATIONS[kind]]
        return options

    def object_manipulation(self, ctx: ImageContext, style: str) -> Draft | None:
        swaps = [
            o
            for o in ctx.cache.setdefault("swaps", self._swap_options(ctx))
            if ("swap", o[0].entity, o[1]) not in ctx.used
        ]
        relations = [
            o
            for o in ctx.cache.setdefault("relations", self._relation_options(ctx))
            if ("relation", o[0].entity, o[1].entity) not in ctx.used
        ]
        if swaps and (not relations or ctx.rng.random() >= RELATION_SHARE):
            return self._swap(ctx, style, ctx.rng.choice(swaps))
        if relations:
            return self._relation(ctx, style, ctx.rng.choice(relations))
        return None

    def _swap(
        self, ctx: ImageContext, style: str, option: tuple[Mention, str, str, str]
    ) -> Draft | None:
        m, group, value, to = option
        ctx.used.add(("swap", m.entity, group))
        src, dst = self.lex.attributes[(group, value)], self.lex.attributes[(group, to)]
        be = "are" if m.is_plural else "is"
        values = {
            "entity": m.display,
            "be": be,
            "Be": be.capitalize(),
            "it": "they" if m.is_plural else "it",
        }
        if group == "number":
            task = "number"
            values |= {
                "from_count": src.count.format(sg=m.singular, pl=m.plural_form),  # type: ignore[union-attr]
                "to_count": dst.count.format(sg=m.singular, pl=m.plural_form),  # type: ignore[union-attr]
                "from_be": "is" if value == "single" else "are",
                "to_be": "is" if to == "single" else "are",
            }
            to_phrase = dst.count.format(sg=m.singular, pl=m.plural_form)  # type: ignore[union-attr]
        else:
            task = "attribute"
            values |= {
                "from_pred": src.pred,
                "to_pred": dst.pred,
                "to_adj": dst.adj,
                "to_adj_a": with_article(dst.adj),
            }
            to_phrase = dst.pred
        meta = {
            "entity": m.entity,
            "swapped": {"group": group, "from": value, "to": to, "to_phrase": to_phrase},
        }
        return self._draft(ctx, "object_manipulation", task, style, values, meta)

    def _relation(
        self, ctx: ImageContext, style: str, option: tuple[Mention, Mention, str]
    ) -> Draft | None:
        a, b, rel = option
        ctx.used.add(("relation", a.entity, b.entity))
        be = "are" if a.is_plural else "is"
        values = {
            "a": a.display,
            "b": b.display,
            "rel": rel,
            "be_a": be,
            "Be_a": be.capitalize(),
            "a_np": self._np(ctx, a),
            "b_np": self._np(ctx, b),
        }
        meta = {"relation": {"a": a.entity, "b": b.entity, "rel": rel}}
        return self._draft(ctx, "object_manipulation", "relation", style, values, meta)

    def _premises(self, ctx: ImageContext) -> list[tuple[Premise, Mention | None]]:
        """Premises whose trigger entity is present (with that mention) or whose modality matches."""
        cached = ctx.cache.get("premises")
        if cached is None:
            found: dict[int, Mention | None] = dict.fromkeys(
                self.tables.premises_by_modality.get(ctx.modality, ())
            )
            for m in ctx.present:
                for i in self.tables.premises_by_entity.get(m.entity, ()):
                    if found.get(i) is None:
                        found[i] = m
            cached = ctx.cache["premises"] = [
                (self.tables.premises[i], found[i]) for i in sorted(found)
            ]
        return cached

    def _ground(self, ctx: ImageContext, trigger: Mention | None) -> str | None:
        if trigger is not None:
            return pick(
                ctx.rng, self.tables.phrases["grounds"], ctx.slots | {"np": self._np(ctx, trigger)}
            )
        return pick(ctx.rng, self.tables.phrases["grounds_modality"], ctx.slots)

    def knowledge_distortion(self, ctx: ImageContext, style: str) -> Draft | None:
        options = [o for o in self._premises(ctx) if ("premise", o[0].id) not in ctx.used]
        if not options:
            return None
        premise, trigger = ctx.rng.choice(options)
        ctx.used.add(("premise", premise.id))
        ground = self._ground(ctx, trigger)
        if ground is None:
            return None
        values = {"claim": premise.claim, "fact": premise.fact, "ground": ground}
        meta = {"premise_id": premise.id, "trigger": trigger.entity if trigger else ctx.modality}
        return self._draft(ctx, "knowledge_distortion", "premise", style, values, meta)

    # -- positives ----------------------------------------------------------------------
    def captioning(self, ctx: ImageContext, style: str) -> Draft | None:
        if not ctx.first("describe"):
            return None
        lead = None
        if ctx.modality and infer_modality(ctx.caption.split(".", 1)[0]) is None:
            lead = f"This is {ctx.slots['modality_a']}{ctx.slots['of_body']}."
        description = self._text(ctx).describe(lead)
        if description is None:
            return None
        return self._draft(ctx, "captioning", "describe", style, {"description": description}, {})

    def _unused(self, ctx: ImageContext, task: str, mentions: list[Mention]) -> Mention | None:
        options = [m for m in mentions if (task, m.entity) not in ctx.used]
        if not options:
            return None
        m = ctx.rng.choice(options)
        ctx.used.add((task, m.entity))
        return m

    def finding_recognition(self, ctx: ImageContext, style: str) -> Draft | None:
        m = self._unused(
            ctx,
            "finding",
            [m for m in ctx.present if m.certain and self._type(m) in ("finding", "device")],
        )
        if m is None:
            return None
        singular = m.singular
        values = {
            "entity": m.display,
            "entity_a": singular if m.uncountable else with_article(singular),
            "np": self._np(ctx, m),
        }
        sentence = self._sentence(ctx, m)
        if sentence:
            values["sentence"] = sentence
        return self._draft(
            ctx, "finding_recognition", "present", style, values, {"entity": m.entity}
        )

    def disease_recognition(self, ctx: ImageContext, style: str) -> Draft | None:
        diseases = [
            m
            for m in ctx.present
            if self._type(m) == "disease" and not self.lex.entities[m.entity].generic
        ]
        task = "which" if len(diseases) == 1 and "which" not in ctx.used else "confirm"
        m = self._unused(
            ctx, task, diseases if task == "which" else [d for d in diseases if d.certain]
        )
        if m is None:
            return None
        ctx.used.add("which")
        values = {"disease": m.display}
        sentence = self._sentence(ctx, m)
        if sentence:
            values["sentence"] = sentence
        return self._draft(ctx, "disease_recognition", task, style, values, {"entity": m.entity})

    def modality_anatomy(self, ctx: ImageContext, style: str) -> Draft | None:
        tasks = [
            t
            for t, known in (("modality", ctx.modality), ("anatomy", ctx.body))
            if known and t not in ctx.used
        ]
        if not tasks:
            return None
        task = ctx.rng.choice(tasks)
        ctx.used.add(task)
        meta = {"modality": ctx.modality} if task == "modality" else {"body_part": ctx.body}
        return self._draft(ctx, "modality_anatomy", task, style, {}, meta)

    def clinical_reasoning(self, ctx: ImageContext, style: str) -> Draft | None:
        options = [o for o in self._premises(ctx) if ("reasoning", o[0].id) not in ctx.used]
        if not options:
            return None
        premise, trigger = ctx.rng.choice(options)
        ctx.used.add(("reasoning", premise.id))
        meta = {"premise_id": premise.id}
        if trigger is None:
            return self._draft(
                ctx, "clinical_reasoning", "modality_knowledge", style, {"fact": premise.fact}, meta
            )
        values = {"entity": trigger.display, "np": self._np(ctx, trigger), "fact": premise.fact}
        return self._draft(
            ctx,
            "clinical_reasoning",
            "significance",
            style,
            values,
            meta | {"entity": trigger.entity},
        )

    def other(self, ctx: ImageContext, style: str) -> Draft | None:
        """Counting, laterality and appearance questions from a present finding's attributes."""
        options = []
        for m in ctx.present:
            if not m.certain or self._type(m) == "anatomy":
                continue
            groups: dict[str, set[str]] = {}
            for a in m.attributes:
                groups.setdefault(a.group, set()).add(a.value)
            if len(groups.get("number", ())) == 1 and not m.uncountable:
                options.append(("count", m, groups))
            if len(groups.get("laterality", ())) == 1:
                options.append(("location", m, groups))
            if any(g not in ("number", "laterality") and len(v) == 1 for g, v in groups.items()):
                options.append(("appearance", m, groups))
        options = [o for o in options if (o[0], o[1].entity) not in ctx.used]
        if not options:
            return None
        task, m, groups = ctx.rng.choice(options)
        ctx.used.add((task, m.entity))
        be = "are" if m.is_plural else "is"
        values = {"entity": m.display, "be": be, "pl": m.plural_form}
        sentence = self._sentence(ctx, m)
        if sentence:
            values["sentence"] = sentence
        attr = self.lex.attributes
        if task == "count":
            (value,) = groups["number"]
            values |= {
                "count": attr[("number", value)].count.format(sg=m.singular, pl=m.plural_form),
                "be_count": "is" if value == "single" else "are",
            }  # type: ignore[union-attr]
        elif task == "location":
            (value,) = groups["laterality"]
            values["pred"] = attr[("laterality", value)].pred
        else:
            preds = [
                attr[(g, next(iter(v)))].pred
                for g, v in groups.items()
                if g not in ("number", "laterality") and len(v) == 1
            ]
            values["features"] = join_list(preds)
        return self._draft(ctx, "other", task, style, values, {"entity": m.entity})
