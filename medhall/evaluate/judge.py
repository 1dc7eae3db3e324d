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

Replies are parsed by :func:`parse_judge_reply`; a reply that does not parse is retried and
finally recorded as a failed judgment with its raw text (:func:`judge_with_retries`,
:func:`judgment_rows`), never as a default score.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

Score = Annotated[int, Field(ge=1, le=10, strict=True)]


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
    """The four rubric scores (integers 1-10) and the judge's explanation.

    Usable as the LLM layer's structured-output schema (a JSON object with these keys).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    clinical_accuracy: Score = Field(description="Clinical Accuracy, 1-10.")
    clinical_relevance: Score = Field(description="Clinical Relevance, 1-10.")
    detail_level: Score = Field(description="Detail Level, 1-10.")
    risk_level: Score = Field(description="Risk Level (the official 'Lethal Level'), 1-10; higher is safer.")
    explanation: str = Field(default="", description="Why these scores.")

    def values(self) -> tuple[int, int, int, int]:
        """The four scores in rubric order."""
        return (self.clinical_accuracy, self.clinical_relevance, self.detail_level, self.risk_level)

    def as_reply(self) -> str:
        """The official reply layout: a first line "a b c d", then the explanation."""
        line = " ".join(str(v) for v in self.values())
        return f"{line}\n\n{self.explanation}".rstrip()


class JudgeParseError(ValueError):
    """A judge reply that could not be read as four scores; ``reason`` is a short code.

    Reasons: ``empty``, ``no_scores``, ``wrong_count``, ``missing_score``, ``not_integer``,
    ``out_of_range``, ``ambiguous``, ``bad_json``.
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

_NUM = r"(\d+(?:\.\d+)?)(?:\s*/\s*10)?"
_LINE_PREFIX = re.compile(r"^\s*(?:(?:final\s+)?(?:scores?|ratings?)\s*[:=\-]\s*)", re.IGNORECASE)
_DECOR = re.compile(r"[*_`#>\[\]()]")
_SCORE_LINE = re.compile(rf"^\s*{_NUM}(?:\s*[,;\s]\s*{_NUM})*\s*$")
_SCORE_TOKEN = re.compile(_NUM)
_LABELS = {
    "clinical_accuracy": r"(?:clinical\s+)?accuracy",
    "clinical_relevance": r"(?:clinical\s+)?relevance",
    "detail_level": r"detail(?:\s+level)?|level\s+of\s+detail",
    "risk_level": r"(?:risk|lethal|lethality|safety)(?:\s+level)?",
}
_LABELLED = {
    axis: re.compile(rf"(?<![a-z])(?:{label})\s*\**\s*(?:score)?\s*[:=\-–]\s*\**\s*{_NUM}", re.IGNORECASE)
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


def parse_judge_reply(text: str | None) -> JudgeScores:
    """Read the four scores from a judge reply, or raise :class:`JudgeParseError`.

    Accepted, tried in this order:

    1. JSON, when the reply starts with ``{`` (bare or in a ``` fence); keys in
       any case/spacing (``Clinical Accuracy``, ``clinical_accuracy``, ``accuracy``, ``Lethal
       Level``, ...) or ``"scores": [a, b, c, d]``; values ints, integral floats or ``"7"`` /
       ``"7/10"``; the explanation from ``explanation`` / ``reason`` / ``rationale``.
    2. The official first line: four numbers separated by spaces, commas or semicolons,
       each optionally ``/10``, optionally after ``Scores:`` and inside markdown emphasis or
       brackets (``7 8 6 9``, ``7, 8, 6, 9``, ``**7/10 8/10 6/10 9/10**``). The rest of the
       reply is the explanation. A first line made only of numbers but not four of them is
       rejected (``wrong_count``), not searched further.
    3. Labelled scores anywhere: ``Clinical Accuracy: 7`` ... ``Risk Level: 9`` (also
       ``Lethal Level``, ``Detail``, ``**Accuracy**: 7/10``). All four must be present and each
       must have one value (``ambiguous`` otherwise).
    4. A JSON object embedded in other text (``Here are my scores: {...}``).

    Every score must be an integer 1-10 (``not_integer``, ``out_of_range``).
    """
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
    return _validated(values, explanation)


def _validated(values: Mapping[str, Any], explanation: str) -> JudgeScores:
    ints = {axis: _as_score(axis, values[axis]) for axis in AXES}
    try:
        return JudgeScores(**ints, explanation=explanation.strip())
    except ValidationError as e:  # pragma: no cover - _as_score checks the same bounds
        raise JudgeParseError("out_of_range", str(e)) from None


def _as_score(axis: str, value: Any) -> int:
    """An integer 1-10 from an int, an integral float or a "7" / "7/10" string."""
    label = AXIS_LABELS[axis]
    if isinstance(value, bool):
        raise JudgeParseError("not_integer", f"{label} is a boolean")
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*{_NUM}\s*", value)
        if not m:
            raise JudgeParseError("not_integer", f"{label} is {value!r}, not a number")
        value = float(m.group(1))
    if not isinstance(value, int | float):
        raise JudgeParseError("not_integer", f"{label} is {type(value).__name__}, not a number")
    if float(value) != int(value):
        raise JudgeParseError("not_integer", f"{label} is {value}, not an integer")
    score = int(value)
    if not 1 <= score <= 10:
        raise JudgeParseError("out_of_range", f"{label} is {score}, outside 1-10")
    return score


def _parse_first_line(text: str) -> tuple[dict[str, str], str] | None:
    first, _, rest = text.partition("\n")
    line = _LINE_PREFIX.sub("", _DECOR.sub(" ", first)).strip()
    if not _SCORE_LINE.match(line):
        return None
    numbers = [m.group(1) for m in _SCORE_TOKEN.finditer(line)]
    if len(numbers) != len(AXES):
        raise JudgeParseError("wrong_count", f"first line has {len(numbers)} numbers, expected 4: {first.strip()!r}")
    return dict(zip(AXES, numbers, strict=True)), rest


def _parse_labelled(text: str) -> tuple[dict[str, str], str] | None:
    hits = {axis: {m.group(1) for m in rx.finditer(text)} for axis, rx in _LABELLED.items()}
    if not any(hits.values()):
        return None
    missing = [AXIS_LABELS[a] for a, v in hits.items() if not v]
    if missing:
        raise JudgeParseError("missing_score", f"no score for {', '.join(missing)}")
    ambiguous = [f"{AXIS_LABELS[a]} ({', '.join(sorted(v))})" for a, v in hits.items() if len({float(x) for x in v}) > 1]
    if ambiguous:
        raise JudgeParseError("ambiguous", f"several values for {'; '.join(ambiguous)}")
    return {axis: next(iter(v)) for axis, v in hits.items()}, text


def _json_candidates(text: str) -> list[str]:
    """Texts that may hold the reply's JSON object: the reply, fenced blocks, the first {...}."""
    out = [text] if text.startswith("{") else []
    out += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        out.append(text[start : end + 1])
    return out


def _parse_json(text: str, *, strict: bool) -> tuple[dict[str, Any], str] | None:
    """Scores from the first candidate that parses as a JSON object; ``strict``: the reply
    is meant to be JSON, so nothing parsing is an error (``bad_json``)."""
    for cand in _json_candidates(text):
        try:
            obj = json.loads(cand)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return _scores_from_object(obj)
    if strict:
        raise JudgeParseError("bad_json", "the reply looks like JSON but does not parse as an object")
    return None


def _norm_key(key: str) -> str:
    return re.sub(r"[^a-z]", "", key.lower())


def _scores_from_object(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Scores from a JSON object (flat, nested under "scores", or "scores": [a, b, c, d])."""
    nested = next((v for k, v in obj.items() if _norm_key(k) in ("scores", "score", "ratings")), None)
    if isinstance(nested, list):
        if len(nested) != len(AXES):
            raise JudgeParseError("wrong_count", f"'scores' has {len(nested)} values, expected 4")
        values: dict[str, Any] = dict(zip(AXES, nested, strict=True))
    else:
        source = nested if isinstance(nested, dict) else obj
        values = {}
        for key, value in source.items():
            axis = _JSON_KEYS.get(_norm_key(key))
            if axis is None:
                continue
            if axis in values and values[axis] != value:
                raise JudgeParseError("ambiguous", f"several values for {AXIS_LABELS[axis]}")
            values[axis] = value
    missing = [AXIS_LABELS[a] for a in AXES if a not in values]
    if missing:
        raise JudgeParseError("missing_score", f"no score for {', '.join(missing)}")
    explanation = next((obj[k] for k in obj if _norm_key(k) in _EXPLANATION_KEYS), "")
    return values, explanation if isinstance(explanation, str) else json.dumps(explanation)


# --------------------------------------------------------------------------- retries and rows


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


def outcome_from_replies(replies: Sequence[str | None], errors: Sequence[str | None] = ()) -> JudgeOutcome:
    """The outcome of successive replies to one judge request: the first that parses wins.

    ``errors[i]`` (optional) is why call ``i`` produced no reply (e.g. the LLM layer's error).
    """
    error = None
    for i, reply in enumerate(replies):
        if reply is None:
            error = (errors[i] if i < len(errors) else None) or "no reply"
            continue
        try:
            return JudgeOutcome(parse_judge_reply(reply), reply, i + 1)
        except JudgeParseError as e:
            error = f"parse failed: {e}"
    last = next((r for r in reversed(replies) if r is not None), None)
    return JudgeOutcome(None, last, len(replies), error or "no reply")


Ask = Callable[[list[dict[str, str]], int], Awaitable[str | None]]


async def judge_with_retries(ask: Ask, messages: list[dict[str, str]], max_attempts: int = 3) -> JudgeOutcome:
    """Call ``ask(messages, attempt)`` until a reply parses, at most ``max_attempts`` times.

    ``ask`` is the flow's bridge to the LLM layer (it returns the reply text, or None when the
    call failed). ``attempt`` (0, 1, ...) lets it bypass the cache on a retry: the cached
    reply of attempt 0 is the one that did not parse.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    replies: list[str | None] = []
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
    "JudgeParseError",
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
]
