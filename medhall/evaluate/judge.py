"""The MedHallTune clinical judge: rubric, messages, reply parsing and judgment rows.

Pure functions; the evaluation flow sends the messages through the LLM layer (temperature 0,
cached) and hands the replies back here.

Message order (OpenAI chat format), as in the official MedHallTune judge:

1. ``system``: :file:`system.txt`.
2. ``user``: the case, then the rubric: ``Figure Caption: …``, ``[Question]: …``,
   ``[Answer]: … [End of Answer]``, ``[Ground Truth Answer]: … [End of Ground Truth Answer]``,
   ``[System]: <rubric>``.
3. ``user`` (only with an anchor): ``Sample Answer: …`` and ``Sample Scores: …``: a baseline
   model's answer to the same question and its judge output (the in-context anchor that keeps
   the scale consistent across models).

Replies are parsed by :func:`parse_judge_reply`: each axis needs exactly one score in 1-10
(decimals kept); a range ("7-8"), several or contradicting numbers for an axis, a missing axis
or a truncated reply (finish_reason "length") is a failure with a reason code, never a number.
A reply that does not parse is retried and finally recorded as a failed judgment with its raw
text (:func:`judge_with_retries`, :func:`judgment_rows`), never as a default score.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from medhall.ids import canonical_json, content_id, sha256_hex

AXES = ("clinical_accuracy", "clinical_relevance", "detail_level", "risk_level")
AXIS_LABELS = {
    "clinical_accuracy": "Clinical Accuracy",
    "clinical_relevance": "Clinical Relevance",
    "detail_level": "Detail Level",
    "risk_level": "Risk Level",
}
DEFAULT_RUBRIC_VERSION = "v1"
TEMPLATE_FILES = ("system.txt", "user.txt", "rubric.txt", "anchor_note.txt", "anchor.txt")
#: Stands in for the template hash of judgments imported from the MedHallTune release (made
#: with the official prompt, not one of ours).
RELEASE_RUBRIC = "medhalltune-official"

MIN_SCORE, MAX_SCORE = 1, 10
#: The reply-parsing policy: part of the judge stage's work-folder key, so judgments parsed
#: under an older policy are parsed again (from the LLM cache) rather than reused. 2: ranges,
#: ambiguous and truncated replies are failures; decimals are kept.
PARSER_VERSION = 2

Score = Annotated[float, Field(ge=MIN_SCORE, le=MAX_SCORE, strict=True)]


# --------------------------------------------------------------------------- rubric


@dataclass(frozen=True)
class Rubric:
    """The judge's template texts and their hash (16 hex of SHA-256 over the files)."""

    version: str
    system: str
    user: str
    rubric: str
    anchor_note: str
    anchor: str
    hash: str


def _templates_dir(version: str) -> Path:
    return Path(str(resources.files("medhall").joinpath("prompts", "judge", version)))


def load_rubric(version: str = DEFAULT_RUBRIC_VERSION, path: str | Path | None = None) -> Rubric:
    """Read the judge templates of ``version`` (packaged, read once) or of a user directory
    ``path`` (read on every call, so edits show)."""
    if path is not None:
        return _read_rubric(Path(path), Path(path).name)
    return _packaged_rubric(version)


@lru_cache(maxsize=8)
def _packaged_rubric(version: str) -> Rubric:
    return _read_rubric(_templates_dir(version), version)


def _read_rubric(folder: Path, version: str) -> Rubric:
    missing = [n for n in TEMPLATE_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"judge templates missing in {folder}: {', '.join(missing)}")
    texts = {n: (folder / n).read_text(encoding="utf-8").rstrip() for n in TEMPLATE_FILES}
    return Rubric(
        version=version,
        system=texts["system.txt"],
        user=texts["user.txt"],
        rubric=texts["rubric.txt"],
        anchor_note=texts["anchor_note.txt"],
        anchor=texts["anchor.txt"],
        hash=sha256_hex(canonical_json(texts))[:16],
    )


# --------------------------------------------------------------------------- scores


class JudgeScores(BaseModel):
    """The four rubric scores (numbers 1-10, a judge's 7.5 kept as given) and the judge's
    explanation. Ints are accepted (and held as floats); strings and booleans are not.

    Usable as the LLM layer's structured-output schema (a JSON object with these keys).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clinical_accuracy: Score = Field(description="Clinical Accuracy, 1-10.")
    clinical_relevance: Score = Field(description="Clinical Relevance, 1-10.")
    detail_level: Score = Field(description="Detail Level, 1-10.")
    risk_level: Score = Field(description="Risk Level (the official 'Lethal Level'), 1-10; higher is safer.")
    explanation: str = Field(default="", description="Why these scores.")

    def values(self) -> tuple[float, float, float, float]:
        """The four scores in rubric order."""
        return (self.clinical_accuracy, self.clinical_relevance, self.detail_level, self.risk_level)

    def as_reply(self) -> str:
        """The official reply layout: a first line "a b c d" (7, not 7.0; 7.5 as 7.5), then the
        explanation."""
        line = " ".join(f"{v:g}" for v in self.values())
        return f"{line}\n\n{self.explanation}".rstrip()


class JudgeParseError(ValueError):
    """A judge reply that could not be read as four scores; ``reason`` is a short code.

    Reasons (see :func:`parse_judge_reply`): ``truncated_reply``, ``empty``, ``no_scores``,
    ``range_score``, ``ambiguous_score``, ``missing_axis``, ``wrong_count``, ``out_of_range``,
    ``not_a_number``, ``bad_json``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# --------------------------------------------------------------------------- messages


def build_judge_messages(
    caption: str | None,
    question: str,
    answer: str,
    ground_truth: str | None,
    anchor_answer: str | None = None,
    anchor_scores: str | JudgeScores | None = None,
    *,
    rubric: Rubric | None = None,
) -> list[dict[str, str]]:
    """The judge's chat messages: system, user (case + rubric), and user (anchor) if given.

    ``anchor_scores`` is the baseline's judge output: its raw text (as the release stores it,
    scores line plus explanation) or a :class:`JudgeScores`. Anchor answer and scores come
    together or not at all.
    """
    if (anchor_answer is None) != (anchor_scores is None):
        raise ValueError("anchor_answer and anchor_scores must be given together")
    r = rubric or load_rubric()
    anchored = anchor_answer is not None
    rubric_text = f"{r.rubric}\n\n{r.anchor_note}" if anchored else r.rubric
    case = r.user.format(
        caption=(caption or "").strip() or "(no caption)",
        question=question.strip(),
        answer=answer.strip(),
        ground_truth=(ground_truth or "").strip(),
        rubric=rubric_text,
    )
    messages = [{"role": "system", "content": r.system}, {"role": "user", "content": case}]
    if anchored:
        scores = anchor_scores.as_reply() if isinstance(anchor_scores, JudgeScores) else str(anchor_scores)
        messages.append({"role": "user", "content": r.anchor.format(anchor_answer=anchor_answer.strip(), anchor_scores=scores.strip())})
    return messages


# --------------------------------------------------------------------------- parsing
#
# The score grammar, shared by every layout (first line, labelled, JSON strings):
#   score  = number ["/10" | "out of 10"]       7, 7.5, 7/10, 7.5/10, 7 out of 10
#   range  = score ("-" | "–" | "—" | "~" | "/" | "to" | "or") score      7-8, 7 to 8, 7/8
#   phrase = score, then more scores joined by range or list separators (",", ";", spaces, "and")
# A number over anything but 10 ("7/8", "4/5") is a range or another scale, never a 1-10 score.

_NUMBER = r"\d+(?:\.\d+)?"
_OUT_OF_TEN = r"(?:[ \t]*/[ \t]*10|[ \t]+out[ \t]+of[ \t]+10)(?!\.?\d)"
_SCORE = rf"(?P<n>{_NUMBER})(?:{_OUT_OF_TEN})?"
_RANGE_GAP = r"[ \t]*(?:[-–—~/]|\b(?:to|or)\b)[ \t]*"
_LIST_GAP = r"(?:[ \t]*[,;][ \t]*|[ \t]+)(?:and[ \t]+)?"
_PHRASE = rf"{_SCORE}(?:(?:{_RANGE_GAP}|{_LIST_GAP}){_SCORE})*".replace("(?P<n>", "(?:")
_SCORE_RX = re.compile(_SCORE, re.IGNORECASE)
_RANGE_RX = re.compile(_RANGE_GAP, re.IGNORECASE)
_PHRASE_RX = re.compile(_PHRASE, re.IGNORECASE)
_LINE_PREFIX = re.compile(r"^\s*(?:(?:final\s+)?(?:scores?|ratings?)\s*[:=\-]\s*)", re.IGNORECASE)
_DECOR = re.compile(r"[*_`#>\[\]()]")
_MARKUP = str.maketrans({"*": None, "`": None, "_": " "})
_LABELS = {
    "clinical_accuracy": r"(?:clinical\s+)?accuracy",
    "clinical_relevance": r"(?:clinical\s+)?relevance",
    "detail_level": r"detail(?:\s+level)?|level\s+of\s+detail",
    "risk_level": r"(?:risk|lethal|lethality|safety)(?:\s+level)?",
}
_LABELLED = {
    axis: re.compile(rf"(?<![a-z])(?:{label})[ \t]*(?:score)?[ \t]*[:=\-–—][ \t]*(?P<phrase>{_PHRASE})", re.IGNORECASE)
    for axis, label in _LABELS.items()
}
_JSON_KEYS = {
    "clinicalaccuracy": "clinical_accuracy", "accuracy": "clinical_accuracy",
    "clinicalrelevance": "clinical_relevance", "relevance": "clinical_relevance",
    "detaillevel": "detail_level", "detail": "detail_level", "levelofdetail": "detail_level",
    "risklevel": "risk_level", "risk": "risk_level", "lethallevel": "risk_level",
    "lethal": "risk_level", "safety": "risk_level", "safetylevel": "risk_level",
}
_EXPLANATION_KEYS = ("explanation", "explanations", "reason", "reasoning", "rationale", "comment")
_LEADING_JSON = re.compile(r"(?:```(?:json)?\s*)?\{", re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_judge_reply(text: str | None, *, finish_reason: str | None = None) -> JudgeScores:
    """Read the four scores from a judge reply, or raise :class:`JudgeParseError`.

    ``finish_reason`` is the LLM layer's: ``"length"`` (cut at max_tokens) is a failure
    (``truncated_reply``) whatever the text holds; a partial reply is never read.

    Layouts, tried in this order:

    1. JSON, when the reply starts with ``{`` (bare or in a ``` fence); keys in
       any case/spacing (``Clinical Accuracy``, ``clinical_accuracy``, ``accuracy``, ``Lethal
       Level``, ...) or ``"scores": [a, b, c, d]``; values numbers or strings such as
       ``"7"``, ``"7.5"``, ``"7/10"``; the explanation from ``explanation`` / ``reason`` / ...
    2. The official first line: four scores separated by spaces, commas or semicolons, each
       optionally ``/10``, optionally after ``Scores:`` and inside markdown emphasis or
       brackets (``7 8 6 9``, ``7, 8, 6, 9``, ``**7/10 8/10 6/10 9/10**``). The rest of the
       reply is the explanation, and is not read for scores. A first line made only of
       scores but not four of them is rejected (``wrong_count``), not searched further.
    3. Labelled scores anywhere: ``Clinical Accuracy: 7`` ... ``Risk Level: 9`` (also
       ``Lethal Level``, ``Detail``, ``**Clinical Accuracy:** 7``, ``clinical_accuracy = 7``).
    4. A JSON object embedded in other text (``Here are my scores: {...}``).

    Every axis must have exactly one score, a number 1-10 kept as given (7.5 stays 7.5):

    - ``range_score``: a range (``7-8``, ``7–8``, ``7 to 8``, ``7 or 8``, ``7/8``); ``N/10``
      and ``N out of 10`` are one score out of ten, any other ``N/M`` is a range.
    - ``ambiguous_score``: several numbers for one axis (``Accuracy: 7, 8``, a JSON list), or
      an axis given twice with different values (the same value twice is fine).
    - ``missing_axis``: an axis without a score; ``wrong_count``: a score line or list that
      is not four scores; ``out_of_range``: outside 1-10; ``not_a_number``: ``"high"``,
      ``true``; ``no_scores``, ``empty``, ``bad_json``.
    """
    if finish_reason == "length":
        raise JudgeParseError("truncated_reply", "the reply was cut at max_tokens (finish_reason=length); it is not read")
    if text is None or not text.strip():
        raise JudgeParseError("empty", "the reply is empty")
    text = text.strip()
    leading_json = bool(_LEADING_JSON.match(text))
    found = _parse_json(text, strict=True) if leading_json else None
    found = found or _parse_first_line(text) or _parse_labelled(text)
    if found is None and not leading_json:
        found = _parse_json(text, strict=False)
    if found is None:
        raise JudgeParseError("no_scores", "no score line, labelled scores or JSON object found")
    values, explanation = found
    return JudgeScores(**{axis: _in_scale(axis, values[axis]) for axis in AXES}, explanation=explanation.strip())


def _in_scale(axis: str, value: float) -> float:
    if not MIN_SCORE <= value <= MAX_SCORE:
        raise JudgeParseError("out_of_range", f"{AXIS_LABELS[axis]} is {value:g}, outside {MIN_SCORE}-{MAX_SCORE}")
    return value


def _scores_of(phrase: str, what: str) -> list[float]:
    """The scores of a phrase, in order; ``range_score`` when two are joined as a range."""
    scores = list(_SCORE_RX.finditer(phrase))
    for a, b in pairwise(scores):
        if _RANGE_RX.fullmatch(phrase[a.end() : b.start()]):
            raise JudgeParseError("range_score", f"{what} is a range ({phrase[a.start() : b.end()]!r}), not one score")
    return [float(m.group("n")) for m in scores]


def _read_phrase(axis: str, phrase: str) -> float:
    """The one score a phrase gives an axis (``range_score`` / ``ambiguous_score`` otherwise)."""
    scores = _scores_of(phrase, AXIS_LABELS[axis])
    if len(scores) != 1:
        raise JudgeParseError("ambiguous_score", f"{AXIS_LABELS[axis]} has several numbers ({phrase.strip()!r})")
    return scores[0]


def _as_score(axis: str, value: Any) -> float:
    """A JSON value as a score: a number, or a string that is one score ("7", "7.5", "7/10")."""
    label = AXIS_LABELS[axis]
    if value is None:
        raise JudgeParseError("missing_axis", f"{label} is null")
    if isinstance(value, list):
        raise JudgeParseError("ambiguous_score", f"{label} is a list ({json.dumps(value)}), not one score")
    if isinstance(value, str) and _PHRASE_RX.fullmatch(value.strip()):
        return _read_phrase(axis, value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JudgeParseError("not_a_number", f"{label} is {json.dumps(value)}, not a number")
    return float(value)


def _parse_first_line(text: str) -> tuple[dict[str, float], str] | None:
    first, _, rest = text.partition("\n")
    line = _LINE_PREFIX.sub("", _DECOR.sub(" ", first)).strip()
    if not _PHRASE_RX.fullmatch(line):
        return None
    scores = _scores_of(line, "a score on the first line")
    if len(scores) != len(AXES):
        raise JudgeParseError("wrong_count", f"first line has {len(scores)} scores, expected 4: {first.strip()!r}")
    return dict(zip(AXES, scores, strict=True)), rest


def _parse_labelled(text: str) -> tuple[dict[str, float], str] | None:
    plain = text.translate(_MARKUP)
    hits = {axis: [m.group("phrase") for m in rx.finditer(plain)] for axis, rx in _LABELLED.items()}
    if not any(hits.values()):
        return None
    missing = [AXIS_LABELS[a] for a, v in hits.items() if not v]
    if missing:
        raise JudgeParseError("missing_axis", f"no score for {', '.join(missing)}")
    values = {}
    for axis, phrases in hits.items():
        given = {_read_phrase(axis, p) for p in phrases}
        if len(given) > 1:
            raise JudgeParseError("ambiguous_score", f"{AXIS_LABELS[axis]} is given twice with different values ({', '.join(f'{v:g}' for v in sorted(given))})")
        values[axis] = given.pop()
    return values, text


def _json_candidates(text: str) -> list[str]:
    """Texts that may hold the reply's JSON object: the reply, fenced blocks, the first {...}."""
    out = [text] if text.startswith("{") else []
    out += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        out.append(text[start : end + 1])
    return out


class _JsonObject(dict):
    """A parsed JSON object that keeps its key-value pairs in order, repeated keys included
    (``json`` would keep only the last value of a repeated key)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _parse_json(text: str, *, strict: bool) -> tuple[dict[str, float], str] | None:
    """Scores from the first candidate that parses as a JSON object; ``strict``: the reply
    is meant to be JSON, so nothing parsing is an error (``bad_json``)."""
    for cand in _json_candidates(text):
        try:
            obj = json.loads(cand, object_pairs_hook=_JsonObject)
        except ValueError:
            continue
        if isinstance(obj, _JsonObject):
            return _scores_from_object(obj)
    if strict:
        raise JudgeParseError("bad_json", "the reply looks like JSON but does not parse as an object")
    return None


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


def _scores_from_object(obj: _JsonObject) -> tuple[dict[str, float], str]:
    """Scores from a JSON object (flat, nested under "scores", or "scores": [a, b, c, d])."""
    nested = next((v for k, v in obj.pairs if _norm_key(k) in ("scores", "score", "ratings")), None)
    if isinstance(nested, list):
        if len(nested) != len(AXES):
            raise JudgeParseError("wrong_count", f"'scores' has {len(nested)} values, expected 4")
        values = {axis: _as_score(axis, v) for axis, v in zip(AXES, nested, strict=True)}
    else:
        values = {}
        for key, value in (nested if isinstance(nested, _JsonObject) else obj).pairs:
            axis = _JSON_KEYS.get(_norm_key(key))
            if axis is None:
                continue
            score = _as_score(axis, value)
            if axis in values and values[axis] != score:
                raise JudgeParseError("ambiguous_score", f"{AXIS_LABELS[axis]} is given twice with different values "
                                                         f"({values[axis]:g}, {score:g})")
            values[axis] = score
    missing = [AXIS_LABELS[a] for a in AXES if a not in values]
    if missing:
        raise JudgeParseError("missing_axis", f"no score for {', '.join(missing)}")
    explanation = next((v for k, v in obj.pairs if _norm_key(k) in _EXPLANATION_KEYS), "")
    return values, explanation if isinstance(explanation, str) else json.dumps(explanation)


# --------------------------------------------------------------------------- retries and rows


@dataclass(frozen=True)
class JudgeReply:
    """A judge reply as the LLM layer returned it: the text and why generation stopped
    (``finish_reason`` ``"length"``: cut at max_tokens, a ``truncated_reply`` failure)."""

    text: str
    finish_reason: str | None = None


Reply = str | JudgeReply | None


def parse_reply(reply: str | JudgeReply) -> JudgeScores:
    """:func:`parse_judge_reply` of a reply text or a :class:`JudgeReply` (finish reason included)."""
    if isinstance(reply, JudgeReply):
        return parse_judge_reply(reply.text, finish_reason=reply.finish_reason)
    return parse_judge_reply(reply)


def _text(reply: str | JudgeReply) -> str:
    return reply.text if isinstance(reply, JudgeReply) else reply


@dataclass(frozen=True)
class JudgeOutcome:
    """The end of judging one answer: scores, or a failure with the last raw reply and why."""

    scores: JudgeScores | None
    raw: str | None
    attempts: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.scores is not None


def outcome_from_replies(replies: Sequence[Reply], errors: Sequence[str | None] = ()) -> JudgeOutcome:
    """The outcome of successive replies to one judge request: the first that parses wins.

    A reply is its text or a :class:`JudgeReply` (a truncated one never parses); the outcome
    keeps the last reply's text. ``errors[i]`` (optional) is why call ``i`` produced no reply
    (e.g. the LLM layer's error).
    """
    error = None
    for i, reply in enumerate(replies):
        if reply is None:
            error = (errors[i] if i < len(errors) else None) or "no reply"
            continue
        try:
            return JudgeOutcome(parse_reply(reply), _text(reply), i + 1)
        except JudgeParseError as e:
            error = f"parse failed: {e}"
    last = next((_text(r) for r in reversed(replies) if r is not None), None)
    return JudgeOutcome(None, last, len(replies), error or "no reply")


Ask = Callable[[list[dict[str, str]], int], Awaitable[Reply]]


async def judge_with_retries(ask: Ask, messages: list[dict[str, str]], max_attempts: int = 3) -> JudgeOutcome:
    """Call ``ask(messages, attempt)`` until a reply parses, at most ``max_attempts`` times.

    ``ask`` is the flow's bridge to the LLM layer (it returns the reply: its text or a
    :class:`JudgeReply` with the finish reason, or None when the call failed). ``attempt`` (0, 1, ...) lets it bypass the cache on a retry: the cached
    reply of attempt 0 is the one that did not parse.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    replies: list[Reply] = []
    for attempt in range(max_attempts):
        replies.append(await ask(messages, attempt))
        outcome = outcome_from_replies(replies[-1:])
        if outcome.ok:
            return JudgeOutcome(outcome.scores, outcome.raw, attempt + 1)
    return outcome_from_replies(replies)


def judgment_id(model: str, qa_id: str, judge_model: str, rubric_hash: str) -> str:
    return content_id("jdg", model, qa_id, judge_model, rubric_hash)


def judgment_row(
    *,
    qa_id: str,
    model: str,
    judge_model: str,
    rubric_hash: str,
    outcome: JudgeOutcome,
    anchor_model: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """One ``judgments`` row. A failure: status failed, null scores, the raw reply kept and
    ``error`` saying why it failed."""
    row: dict[str, Any] = {
        "judgment_id": judgment_id(model, qa_id, judge_model, rubric_hash),
        "qa_id": qa_id,
        "model": model,
        "judge_model": judge_model,
        "raw": outcome.raw,
        "status": "ok" if outcome.ok else "failed",
        "attempts": outcome.attempts,
        "anchor_model": anchor_model,
        "rubric_hash": rubric_hash,
        "run_id": run_id,
    }
    if outcome.scores is not None:
        row.update(dict(zip(AXES, outcome.scores.values(), strict=True)), explanation=outcome.scores.explanation)
    else:
        row.update(dict.fromkeys(AXES), explanation=None, error=outcome.error)
    return row


def judgment_rows(
    outcomes: Mapping[str, JudgeOutcome] | Iterable[tuple[str, JudgeOutcome]],
    *,
    model: str,
    judge_model: str,
    rubric_hash: str,
    anchor_model: str | None = None,
    run_id: str | None = None,
) -> pa.Table:
    """The ``judgments`` table of ``(qa_id, outcome)`` pairs (every outcome becomes a row)."""
    from medhall.schema import from_rows

    pairs = outcomes.items() if isinstance(outcomes, Mapping) else outcomes
    return from_rows(
        "judgments",
        [
            judgment_row(qa_id=q, model=model, judge_model=judge_model, rubric_hash=rubric_hash,
                         outcome=o, anchor_model=anchor_model, run_id=run_id)
            for q, o in pairs
        ],
    )


__all__ = [
    "AXES",
    "AXIS_LABELS",
    "RELEASE_RUBRIC",
    "JudgeOutcome",
    "MAX_SCORE",
    "MIN_SCORE",
    "PARSER_VERSION",
    "JudgeParseError",
    "JudgeReply",
    "JudgeScores",
    "Rubric",
    "build_judge_messages",
    "judge_with_retries",
    "judgment_id",
    "judgment_row",
    "judgment_rows",
    "load_rubric",
    "outcome_from_replies",
    "parse_judge_reply",
    "parse_reply",
]
