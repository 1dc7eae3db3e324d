"""Import answers and judgments made elsewhere: the MedHallTune submission and release files.

- A submission is JSONL ``{question_id, image, question, answer}`` per line, one file per kind
  (positive = non-hallucination, negative = hallucination). question ids repeat across the two
  kinds, so a row is identified by ``(kind, question_id)``.
- The release's prediction files (``llava-med-prediction-{postive,negative}-GPT4o-eval-filtered
  .jsonl``) carry, besides those fields, the ground truth (``text``, ``gpt4_answer``,
  ``fig_caption``) and the judge's raw output ``result``.

Joins are exact: a question's ``qa_id`` is computed the way ingest computes it for the
release's questions, ``qa_id(image_id(ref=image), question without "<image>", gpt4_answer)``
(:func:`release_questions`). A submission row (which has no ground truth) is mapped through a
:class:`QuestionIndex` built from the release's val files or from an ``instructions`` table.

Bad lines (malformed JSON, a missing field, an unknown or duplicate question) become
problems (:class:`medhall.sources.base.Rejected`, the ingest's record of a refused row),
never a crash and never a silent drop.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from medhall.evaluate.judge import (
    RELEASE_RUBRIC,
    JudgeOutcome,
    JudgeParseError,
    judgment_row,
    parse_judge_reply,
)
from medhall.ids import content_id, image_id, qa_id
from medhall.schema import from_rows
from medhall.sources.base import Rejected, clip_raw
from medhall.sources.medhalltune import kind_from_filename
from medhall.sources.reading import (
    Row,
    id_or_none,
    iter_json_rows,
    normalise_kind,
    strip_image_token,
    text_or_none,
)

RELEASE_MODEL = "llava-med-v1.5-7b"
RELEASE_JUDGE = "gpt-4o"


@dataclass(frozen=True)
class ReleaseQuestion:
    """A question of the release with its ground truth, as ingest sees it."""

    question_id: str
    kind: str | None
    qa_id: str
    image: str
    question: str
    ground_truth: str | None
    caption: str | None


class QuestionIndex:
    """``(kind, question_id) -> (qa_id, question)``: how a submission row finds its question."""

    def __init__(self, entries: Iterable[tuple[str | None, str, str, str]]) -> None:
        """``entries``: ``(kind, question_id, qa_id, question)``."""
        self._by_key: dict[tuple[str | None, str], tuple[str, str]] = {}
        for kind, qid, qa, question in entries:
            self._by_key.setdefault((kind, qid), (qa, question))

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, kind: str | None, question_id: str) -> tuple[str, str] | None:
        return self._by_key.get((kind, question_id))

    @classmethod
    def from_release(cls, paths: Iterable[str | Path]) -> QuestionIndex:
        """From the release's val (or prediction) files, which carry the ground truth."""
        return cls((q.kind, q.question_id, q.qa_id, q.question) for p in paths for q in release_questions(p)[0])

    @classmethod
    def from_instructions(cls, instructions: pa.Table) -> QuestionIndex:
        """From an ``instructions`` table (``source_qa_id`` is the release's question_id)."""
        cols = instructions.select(["kind", "source_qa_id", "qa_id", "question"]).to_pylist()
        return cls((r["kind"], r["source_qa_id"], r["qa_id"], r["question"]) for r in cols if r["source_qa_id"] is not None)


# --------------------------------------------------------------------------- reading


def _problem(row: Row, reason: str, detail: str, qid: str | None = None) -> Rejected:
    raw = row.raw if row.raw is not None else json.dumps(row.data, ensure_ascii=False, default=str)
    return Rejected(row.ref, reason, detail, record_id=qid, raw=clip_raw(raw))


def _file_kind(path: Path, kind: str | None) -> str | None:
    if kind is None:
        return kind_from_filename(path)
    norm = normalise_kind(kind)
    if norm is None:
        raise ValueError(f"kind must be positive or negative, got {kind!r}")
    return norm


def _rows(path: Path, problems: list[Rejected]) -> Iterator[Row]:
    """The file's parsed rows; unreadable lines go to ``problems``."""
    for item in iter_json_rows(path):
        if isinstance(item, Rejected):
            problems.append(item)
        else:
            yield item


def _release_question(row: Row, kind: str | None) -> ReleaseQuestion | Rejected:
    d = row.data
    qid = id_or_none(d.get("question_id"))
    image = text_or_none(d.get("image"))
    raw_q = d.get("text") if isinstance(d.get("text"), str) else d.get("question")
    question = strip_image_token(raw_q) if isinstance(raw_q, str) else ""
    for name, value in (("question_id", qid), ("image", image), ("text", question)):
        if not value:
            return _problem(row, "missing_field", f"required field {name!r} is missing or empty", qid)
    truth = text_or_none(d.get("gpt4_answer"))
    return ReleaseQuestion(
        question_id=qid,
        kind=kind,
        qa_id=qa_id(image_id(ref=image), question, truth),
        image=image,
        question=question,
        ground_truth=truth,
        caption=text_or_none(d.get("fig_caption")),
    )


def release_questions(path: str | Path, kind: str | None = None) -> tuple[list[ReleaseQuestion], list[Rejected]]:
    """The questions of a release file (val or prediction layout) with their ingest qa_ids."""
    path = Path(path)
    file_kind = _file_kind(path, kind)
    problems: list[Rejected] = []
    out: list[ReleaseQuestion] = []
    for row in _rows(path, problems):
        item = _release_question(row, file_kind)
        (problems if isinstance(item, Rejected) else out).append(item)
    return out, problems


# --------------------------------------------------------------------------- predictions


def prediction_id(model: str, qa_id_: str) -> str:
    return content_id("pred", model, qa_id_)


def _resolve(row: Row, kind: str | None, index: QuestionIndex | None) -> tuple[str, str] | Rejected:
    """The row's ``(qa_id, question)``: from its own ground truth, else through the index."""
    d = row.data
    qid = id_or_none(d.get("question_id"))
    if qid is None:
        return _problem(row, "missing_field", "required field 'question_id' is missing or empty")
    if "gpt4_answer" in d:
        item = _release_question(row, kind)
        return item if isinstance(item, Rejected) else (item.qa_id, item.question)
    if index is None:
        return _problem(row, "unknown_question", "no ground truth in the row and no question index given", qid)
    found = index.get(kind, qid)
    if found is None:
        return _problem(row, "unknown_question", f"no {kind or 'unknown-kind'} question with question_id {qid}", qid)
    asked = d.get("question")
    if isinstance(asked, str) and strip_image_token(asked) and strip_image_token(asked) != found[1]:
        return _problem(row, "question_mismatch", f"question_id {qid} is {found[1]!r} in the index, not {strip_image_token(asked)!r}", qid)
    return found


def _prediction_row(row: Row, model: str, qa: str, question: str, run_id: str | None) -> dict[str, Any]:
    answer = row.data.get("answer")
    ok = isinstance(answer, str)
    meta = {"question_id": id_or_none(row.data.get("question_id")), "image": row.data.get("image"), "record_ref": row.ref}
    return {
        "pred_id": prediction_id(model, qa),
        "qa_id": qa,
        "model": model,
        "question": question,
        "answer": answer if ok else None,
        "status": "ok" if ok else "failed",
        "error": None if ok else "no answer in the imported row",
        "origin": "import",
        "meta": json.dumps(meta, ensure_ascii=False),
        "run_id": run_id,
    }


def import_predictions(
    path: str | Path,
    model: str,
    *,
    index: QuestionIndex | None = None,
    kind: str | None = None,
    run_id: str | None = None,
) -> tuple[pa.Table, list[Rejected]]:
    """A ``predictions`` table from a submission JSONL (or a release prediction file).

    ``kind`` defaults to the file name's (``positive``/``postive``/``negative``). Rows without
    ground truth are mapped through ``index``. A row whose ``answer`` is missing or not text
    becomes a failed prediction *and* a ``missing_field`` problem; rows that cannot be mapped
    to a question (``malformed_json``, ``missing_field``, ``unknown_question``,
    ``question_mismatch``) and repeats of a question (``duplicate_id``; the first is kept)
    are problems only.
    """
    path = Path(path)
    file_kind = _file_kind(path, kind)
    problems: list[Rejected] = []
    rows: dict[str, dict[str, Any]] = {}
    for row in _rows(path, problems):
        found = _resolve(row, file_kind, index)
        if isinstance(found, Rejected):
            problems.append(found)
            continue
        qa, question = found
        qid = id_or_none(row.data.get("question_id"))
        if qa in rows:
            problems.append(_problem(row, "duplicate_id", f"question_id {qid} answered twice; the first answer is kept", qid))
            continue
        rows[qa] = _prediction_row(row, model, qa, question, run_id)
        if rows[qa]["status"] == "failed":
            problems.append(_problem(row, "missing_field", "field 'answer' is missing or not text", qid))
    return from_rows("predictions", rows.values()), problems


# --------------------------------------------------------------------------- judgments


def import_release_judgments(
    path: str | Path,
    judge_model: str = RELEASE_JUDGE,
    model: str = RELEASE_MODEL,
    *,
    kind: str | None = None,
    run_id: str | None = None,
) -> pa.Table:
    """A ``judgments`` table from a release prediction file's ``result`` (the judge's raw reply).

    Each ``result`` goes through :func:`~medhall.evaluate.judge.parse_judge_reply`; one that
    does not parse becomes a failed judgment with its raw text. Lines without a question are
    skipped here (:func:`release_questions` reports them); a repeated question keeps its first.
    """
    path = Path(path)
    file_kind = _file_kind(path, kind)
    rows: dict[str, dict[str, Any]] = {}
    for row in _rows(path, []):
        q = _release_question(row, file_kind)
        if isinstance(q, Rejected):
            continue
        result = row.data.get("result")
        out = judgment_row(
            qa_id=q.qa_id, model=model, judge_model=judge_model, rubric_hash=RELEASE_RUBRIC,
            outcome=_release_outcome(result if isinstance(result, str) else None), run_id=run_id,
        )
        rows.setdefault(out["judgment_id"], out)
    return from_rows("judgments", rows.values())


def _release_outcome(raw: str | None) -> JudgeOutcome:
    if raw is None:
        return JudgeOutcome(None, None, 0, "no judge output ('result') in the row")
    try:
        return JudgeOutcome(parse_judge_reply(raw), raw, 1)
    except JudgeParseError as e:
        return JudgeOutcome(None, raw, 1, f"parse failed: {e}")


def problems_table(problems: Iterable[Rejected], *, stage: str = "import", source: str | None = None,
                   dataset: str | None = None, run_id: str | None = None) -> pa.Table:
    """The problems as ``quarantine`` rows (so nothing refused is lost)."""
    return from_rows("quarantine", [
        {
            "quarantine_id": content_id("qrn", stage, source, p.record_ref, p.reason),
            "stage": stage, "dataset": dataset, "source": source, "record_ref": p.record_ref,
            "record_id": p.record_id, "reason": p.reason, "detail": p.detail, "raw": p.raw, "run_id": run_id,
        }
        for p in problems
    ])


def kinds_of(questions: Iterable[ReleaseQuestion]) -> Mapping[str, str | None]:
    """``{qa_id: kind}`` of release questions (the report's positive/negative split)."""
    return {q.qa_id: q.kind for q in questions}


__all__ = [
    "RELEASE_JUDGE",
    "RELEASE_MODEL",
    "QuestionIndex",
    "ReleaseQuestion",
    "import_predictions",
    "import_release_judgments",
    "kinds_of",
    "prediction_id",
    "problems_table",
    "release_questions",
]
