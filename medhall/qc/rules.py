"""Rule checks: the quality-control checks that always run, without an LLM.

:func:`rule_checks` writes one ``qc_verdicts`` row per (pair, rule); a verdict is ``correct``
(the pair passes) or ``incorrect`` (it fails), always with a reason in words. Rejected pairs
are kept; :func:`filter_passed` is "the filtered dataset" view and :func:`qc_summary` reports
the filtered share per rule and overall. The rules (docs/qc.md):

- ``rule:leakage``: the question or answer contains a phrase that leaks the generation setup
  (:data:`LEAKAGE_PHRASES`: "caption", "as mentioned", "I cannot see", "as an AI", ...),
  matched case-insensitively on whole words.
- ``rule:short_answer``: the answer is empty or has fewer than ``min_words`` words.
- ``rule:affirms_premise`` (negative pairs only): the answer starts by agreeing ("Yes", "Correct",
  ...), or, where the row's meta names the false premise (``absent_name`` of a nonexistent
  object, ``swapped.to`` / ``swapped.to_phrase`` of a manipulated attribute), the answer states
  it in a sentence without any negation.
- ``rule:duplicate_question``: the same normalised question (lower case, punctuation removed)
  was already asked about the same image; the first occurrence passes, later ones fail.
- ``rule:injection``: the question or answer holds text that addresses a model rather than
  describing an image (:data:`INJECTION_PATTERNS`: "ignore previous instructions", "disregard
  the above", "you are now", "system prompt", chat-template tokens such as ``<|im_start|>`` or
  ``[INST]``, "### Instruction:", a line opening with "System:" / "Assistant:", "answer YES
  regardless"), case-insensitively, after NFKC normalisation and with invisible format
  characters (zero-width spaces, soft hyphens, bidi marks) removed. Ingest screens captions and
  source QA pairs with the same patterns (:func:`find_injection`).

A pair id (``qa_id``) appearing more than once is checked once (first row).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medhall.schema import QC_VERDICTS

RULES = (
    "rule:leakage",
    "rule:short_answer",
    "rule:affirms_premise",
    "rule:duplicate_question",
    "rule:injection",
)
MIN_WORDS = 3

LEAKAGE_PHRASES = (
    "caption", "captions", "captioned", "as mentioned", "as described", "as stated",
    "the text says", "the text states", "the text mentions", "the description says",
    "the description states", "based on the description", "according to the description",
    "provided description", "figure legend", "described in the legend", "according to the legend",
    "i cannot see", "i can't see", "i am unable to see", "i'm unable to see", "i cannot view",
    "i don't have access to the image", "as an ai", "as a language model", "ground truth annotation",
)  # fmt: skip
AFFIRMATIONS = (
    "yes", "yeah", "yep", "correct", "indeed", "absolutely", "certainly", "sure", "that's right",
    "that is right", "that is correct", "you are right", "you're right",
)  # fmt: skip
NEGATION_CUES = (
    "no", "not", "none", "never", "neither", "nor", "without", "cannot", "can't", "isn't", "aren't",
    "doesn't", "don't", "wasn't", "weren't", "absent", "rather than", "instead of", "nothing",
    "lacks", "free of", "ruled out",
)  # fmt: skip


def _alternation(phrases: Iterable[str]) -> str:
    """Whole-word alternation; a space matches any whitespace, an apostrophe either kind."""
    parts = sorted(
        (re.escape(p).replace(r"\ ", r"\s+").replace("'", "['\u2019]") for p in phrases),
        key=len,
        reverse=True,
    )
    return r"\b(?:" + "|".join(parts) + r")\b"


_Q = "[\"'\u201c\u201d\u2018\u2019]?"  # an optional quote of either kind
_ROLES = r"(?:instructions?|system|response|input|human|assistant|user)"
INJECTION_PATTERNS: tuple[tuple[str, str], ...] = (
    # "ignore all previous instructions", "disregard prior prompts", "forget your system rules"
    (
        "ignore previous instructions",
        r"\b(?:ignore|disregard|forget|override|bypass)\s+"
        r"(?:(?:all|any|every|each|the|your|my|our|these|those|of|everything|anything)\s+)*"
        r"(?:previous|prior|preceding|above|earlier|foregoing|former|original|initial|system|existing)\s+"
        r"(?:instructions?|prompts?|directions?|directives?|rules|messages?|context|commands?|guidelines)\b",
    ),
    # "disregard the above.", "ignore everything above and ..." (not "ignore the above symptoms")
    (
        "disregard the above",
        r"\b(?:ignore|disregard|forget)\s+(?:(?:all|everything|anything|of|the|that|this)\s+)*"
        r"(?:above|foregoing|preceding)(?:\s*(?:[.,;:!]|$)|\s+and\b)",
    ),
    ("you are now", r"\byou\s+are\s+now\b"),
    ("system prompt", r"\bsystem\s+prompts?\b"),
    # chat-template tokens: <|im_start|>, <|system|>, <|eot_id|>, [INST], <<SYS>>, <start_of_turn>
    (
        "chat-template token",
        r"<\|\s*[a-z_]{2,24}\s*\|>|\[/?inst\]|<<\s*/?sys\s*>>|<(?:start|end)_of_turn>",
    ),
    ("instruction header", r"#{2,}[ \t]*" + _ROLES + r"[ \t]*:"),
    ("role prefix", r"^[ \t>*_]*(?:system|assistant|user|human)[ \t]*:"),
    # "answer YES regardless", "always answer yes", "regardless of the image, answer no"
    # (not "answer yes or no")
    (
        "answer yes/no regardless",
        r"\b(?:answer|respond|reply|say|output)(?:\s+with)?\s+" + _Q + r"(?:yes|no)\b" + _Q
        + r"[\s,;:-]+(?:regardless|no\s+matter|whatever|irrespective|in\s+all\s+cases|every\s+time)\b"
        r"|\balways\s+(?:answer|respond|reply|say)(?:\s+with)?\s+" + _Q + r"(?:yes|no)\b"
        r"|\bregardless\s+of\s+(?:the\s+|what\s+)?(?:image|question|input|picture|evidence|findings|"
        r"instructions?|you\s+see|is\s+shown)\W+(?:\w+\W+){0,4}?(?:answer|respond|reply|say)"
        r"(?:\s+with)?\s+" + _Q + r"(?:yes|no)\b",
    ),
)  # fmt: skip
# one RE2 / Python pattern: case-insensitive, ^ and $ at line ends
INJECTION_RE = "(?im)" + "|".join(f"(?:{p})" for _, p in INJECTION_PATTERNS)
# invisible format characters removed before matching ("ign\u200bore previous instructions")
FORMAT_CHARS = "[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]"
# a pattern can match only a text holding one of its words (lower case): the others are skipped
_GATES = {
    "ignore previous instructions": ("ignore", "disregard", "forget", "override", "bypass"),
    "disregard the above": ("above", "foregoing", "preceding"),
    "you are now": ("now",),
    "system prompt": ("prompt",),
    "chat-template token": ("<|", "inst]", "<<", "_of_turn>"),
    "instruction header": ("##",),
    "role prefix": ("system", "assistant", "user", "human"),
    "answer yes/no regardless": ("regardless", "matter", "whatever", "irrespective", "cases",
                                 "time", "always"),
}  # fmt: skip
# Python: on lower-case text (much faster than IGNORECASE), ^ and $ at line ends
_INJECTION = tuple((label, _GATES[label], re.compile(p, re.M)) for label, p in INJECTION_PATTERNS)
_FORMAT = re.compile(FORMAT_CHARS)


def normalise_for_injection(text: str) -> str:
    """NFKC (full-width and other compatibility letters as ASCII), format characters removed."""
    return _FORMAT.sub("", unicodedata.normalize("NFKC", text))


@lru_cache(maxsize=8192)  # a caption repeats on every QA line of its image
def find_injection(text: str | None) -> tuple[str, str] | None:
    """``(label, matched text)`` of the first :data:`INJECTION_PATTERNS` hit in ``text``
    (after :func:`normalise_for_injection`, case-insensitive), or None. Ingest and
    ``rule:injection`` use it."""
    if not text:
        return None
    norm = text if text.isascii() else normalise_for_injection(text)
    lower = norm.lower()
    hits = [
        (m.start(), label, m.span())
        for label, gate, rx in _INJECTION
        if any(w in lower for w in gate) and (m := rx.search(lower))
    ]
    if not hits:
        return None
    _, label, span = min(hits)
    matched = (norm if len(norm) == len(lower) else lower)[slice(*span)]
    return label, " ".join(matched.split())


LEAKAGE_RE = _alternation(LEAKAGE_PHRASES)
AFFIRM_RE = r"^\W*" + _alternation(AFFIRMATIONS)
_LEAKAGE = re.compile(LEAKAGE_RE)  # run on lower-case text (much faster than IGNORECASE)
_NEGATION = re.compile(_alternation(NEGATION_CUES))  # on lower-case text
_SENTENCE = re.compile(r"[^.!?;]+")


def leakage_spans(lower: str) -> list[tuple[int, int]]:
    """(start, end) of every leakage phrase in ``lower`` (a lower-case text)."""
    return [m.span() for m in _LEAKAGE.finditer(lower)]


def find_leakage(text: str | None) -> str | None:
    """The first leakage phrase in ``text``, or None."""
    spans = leakage_spans((text or "").lower())
    return (text or "").lower()[slice(*spans[0])] if spans else None


@lru_cache(maxsize=4096)
def _term_pattern(term: str) -> re.Pattern[str]:
    return re.compile(r"\b" + re.escape(term.lower()).replace(r"\ ", r"[\s-]+") + r"(?:s|es)?\b")


def states_unnegated(answer: str, term: str) -> bool:
    """Whether ``answer`` names ``term`` (whole words, optional plural) in a sentence with no negation."""
    lower = answer.lower()
    if term.lower().split(" ", 1)[0] not in lower:
        return False
    pattern = _term_pattern(term)
    return any(pattern.search(s) and not _NEGATION.search(s) for s in _SENTENCE.findall(lower))


def premise_terms(meta: dict) -> list[str]:
    """The false-premise terms a negative row's meta names (absent object, swapped-to attribute)."""
    terms = [meta.get("absent_name")]
    swapped = meta.get("swapped") or {}
    terms += [swapped.get("to_phrase"), (swapped.get("to") or "").replace("_", " ")]
    return [t for t in terms if t]


def _first_rows(table: pa.Table, keys: list[str]) -> pa.Array:
    """Boolean mask: the row is the first with its values of ``keys``."""
    idx = pa.array(range(table.num_rows), pa.int64())
    grouped = (
        table.select(keys)
        .append_column("_i", idx)
        .group_by(keys, use_threads=False)
        .aggregate([("_i", "min")])
    )
    return pc.is_in(idx, value_set=grouped.column("_i_min"))


def _verdicts(
    qa_ids: pa.Array,
    check: str,
    failed: pa.Array,
    pass_reason: str,
    fail_reasons: list[str],
    run_id: str | None,
) -> pa.Table:
    """qc_verdicts rows of one rule; ``fail_reasons`` in the order of the failing rows."""
    n = len(qa_ids)
    failed = pc.fill_null(failed, False)
    reason = pa.array([pass_reason] * n, pa.string())
    if fail_reasons:
        reason = pc.replace_with_mask(reason, failed, pa.array(fail_reasons, pa.string()))
    return pa.Table.from_arrays(
        [
            qa_ids,
            pa.array([check] * n, pa.string()),
            pc.if_else(failed, "incorrect", "correct"),
            pc.invert(failed),
            reason,
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.string()),
            pa.array([run_id] * n, pa.string()),
        ],
        schema=QC_VERDICTS,
    )


def _c(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _where(mask: pa.Array) -> list[int]:
    return pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()


def _leakage(t: pa.Table, run_id: str | None) -> pa.Table:
    q = pc.fill_null(_c(t, "question"), "")
    a = pc.fill_null(_c(t, "answer"), "")
    pattern = "(?i)" + LEAKAGE_RE
    failed = pc.or_(pc.match_substring_regex(q, pattern), pc.match_substring_regex(a, pattern))
    reasons = []
    for i in _where(failed):
        answer_hit = find_leakage(a[i].as_py())
        field, hit = (
            ("answer", answer_hit) if answer_hit else ("question", find_leakage(q[i].as_py()))
        )
        reasons.append(f"leakage phrase {hit!r} in the {field}")
    return _verdicts(_c(t, "qa_id"), "rule:leakage", failed, "no leakage phrase", reasons, run_id)


def _short_answer(t: pa.Table, min_words: int, run_id: str | None) -> pa.Table:
    words = pc.fill_null(pc.list_value_length(pc.utf8_split_whitespace(_c(t, "answer"))), 0)
    failed = pc.less(words, min_words)
    counts = pc.filter(words, failed).to_pylist()
    reasons = [
        "empty answer" if c == 0 else f"answer has {c} word(s), fewer than {min_words}"
        for c in counts
    ]
    return _verdicts(
        _c(t, "qa_id"),
        "rule:short_answer",
        failed,
        f"answer has at least {min_words} words",
        reasons,
        run_id,
    )


def _affirms_premise(t: pa.Table, run_id: str | None) -> pa.Table:
    negative = pc.equal(pc.fill_null(_c(t, "kind"), ""), "negative")
    answer = pc.fill_null(_c(t, "answer"), "")
    meta = pc.fill_null(_c(t, "meta"), "")
    starts_yes = pc.and_(negative, pc.match_substring_regex(answer, "(?i)" + AFFIRM_RE))
    to_check = pc.and_(
        pc.and_(negative, pc.invert(starts_yes)),
        pc.match_substring_regex(meta, '"(?:absent_name|swapped)"'),
    )
    reasons: dict[int, str] = dict.fromkeys(
        _where(starts_yes), "the answer opens by agreeing with the false premise"
    )
    rows = _where(to_check)
    for i, text, m in zip(
        rows,
        pc.filter(answer, to_check).to_pylist(),
        pc.filter(meta, to_check).to_pylist(),
        strict=True,
    ):
        term = next(
            (term for term in premise_terms(json.loads(m)) if states_unnegated(text, term)), None
        )
        if term is not None:
            reasons[i] = f"the answer states the false premise {term!r} without negating it"
    failed = (
        pa.array([i in reasons for i in range(len(t))], pa.bool_())
        if reasons
        else pa.array([False] * len(t))
    )
    return _verdicts(
        _c(t, "qa_id"), "rule:affirms_premise", failed,
        "the answer does not affirm a false premise (checked on negative pairs)",
        [reasons[i] for i in sorted(reasons)], run_id,
    )  # fmt: skip


def normalise_question(questions: pa.Array) -> pa.Array:
    """Lower case, runs of non-alphanumerics as one space, trimmed."""
    lowered = pc.utf8_lower(pc.fill_null(questions, ""))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(lowered, r"[^a-z0-9]+", " "))


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def question_key(question: str) -> str:
    """:func:`normalise_question` of one question, in Python."""
    return _NON_ALNUM.sub(" ", question.lower()).strip()


def _duplicate_question(t: pa.Table, run_id: str | None) -> pa.Table:
    keyed = pa.table({"image_id": _c(t, "image_id"), "q": normalise_question(_c(t, "question"))})
    failed = pc.invert(_first_rows(keyed, ["image_id", "q"]))
    reasons = ["the same question was already asked about this image"] * len(_where(failed))
    return _verdicts(
        _c(t, "qa_id"),
        "rule:duplicate_question",
        failed,
        "first time this question is asked about this image",
        reasons,
        run_id,
    )


def _injection_mask(values: pa.Array) -> pa.Array:
    """Which texts :func:`find_injection` flags, in Arrow. ASCII text is matched as it is (NFKC
    leaves it unchanged and it has no format characters); only the rest is normalised."""
    values = pc.fill_null(values, "")
    hit = pc.match_substring_regex(values, INJECTION_RE)
    rest = pc.indices_nonzero(pc.invert(pc.string_is_ascii(values)))
    if len(rest) == 0:
        return hit
    norm = pc.replace_substring_regex(
        pc.utf8_normalize(pc.take(values, rest), "NFKC"), FORMAT_CHARS, ""
    )
    mask = np.array(hit.to_numpy(zero_copy_only=False), dtype=bool)
    mask[pc.filter(rest, pc.match_substring_regex(norm, INJECTION_RE)).to_numpy()] = True
    return pa.array(mask, pa.bool_())


def _injection(t: pa.Table, run_id: str | None) -> pa.Table:
    q, a = _c(t, "question"), _c(t, "answer")
    failed = pc.or_(_injection_mask(q), _injection_mask(a))
    reasons = []
    for i in _where(failed):
        hit, field = find_injection(q[i].as_py()), "question"
        if hit is None:
            hit, field = find_injection(a[i].as_py()), "answer"
        label, text = hit or ("text addressing the model", "")
        reasons.append(f"prompt injection in the {field}: {text!r} ({label})")
    return _verdicts(
        _c(t, "qa_id"), "rule:injection", failed,
        "no text addressing the model (prompt injection)", reasons, run_id,
    )  # fmt: skip


def rule_checks(
    instructions: pa.Table, *, min_words: int = MIN_WORDS, run_id: str | None = None
) -> pa.Table:
    """Every rule on every pair of ``instructions``: a ``qc_verdicts`` table, rule by rule."""
    if instructions.num_rows == 0:
        return QC_VERDICTS.empty_table()
    t = instructions.combine_chunks()
    t = t.filter(_first_rows(t, ["qa_id"])).combine_chunks()
    return pa.concat_tables(
        [
            _leakage(t, run_id),
            _short_answer(t, min_words, run_id),
            _affirms_premise(t, run_id),
            _duplicate_question(t, run_id),
            _injection(t, run_id),
        ]
    )


def failed_ids(verdicts: pa.Table) -> pa.Array:
    """The distinct qa_ids with at least one ``incorrect`` verdict."""
    bad = verdicts.filter(pc.equal(verdicts.column("verdict"), "incorrect"))
    return pc.unique(bad.column("qa_id"))


def filter_passed(instructions: pa.Table, verdicts: pa.Table) -> pa.Table:
    """The filtered dataset: the pairs no check found incorrect."""
    return instructions.filter(
        pc.invert(pc.is_in(instructions.column("qa_id"), value_set=failed_ids(verdicts)))
    )


def qc_summary(verdicts: pa.Table, n_pairs: int, checks: Iterable[str] | None = None) -> pa.Table:
    """Filtered pairs and share per check, then ``any`` (a pair fails if any check says incorrect).

    Columns: check, filtered (distinct pairs judged incorrect), errors (distinct pairs the check
    could not decide), n_pairs, share (filtered / n_pairs). ``checks``: the checks to list when
    ``verdicts`` holds only the non-passing rows (a large table need not be read whole).
    """
    checks = sorted(set(checks) if checks is not None else pc.unique(verdicts.column("check")).to_pylist())
    rows = []
    for check in [*checks, "any"]:
        part = (
            verdicts
            if check == "any"
            else verdicts.filter(pc.equal(verdicts.column("check"), check))
        )
        filtered = len(failed_ids(part))
        errors = len(
            pc.unique(part.filter(pc.equal(part.column("verdict"), "error")).column("qa_id"))
        )
        rows.append(
            {
                "check": check,
                "filtered": filtered,
                "errors": errors,
                "n_pairs": n_pairs,
                "share": filtered / n_pairs if n_pairs else 0.0,
            }
        )
    schema = pa.schema(
        [
            ("check", pa.string()),
            ("filtered", pa.int64()),
            ("errors", pa.int64()),
            ("n_pairs", pa.int64()),
            ("share", pa.float64()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)
