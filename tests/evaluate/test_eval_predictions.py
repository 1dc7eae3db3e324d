"""Import of predictions (submission format, release files) and of the release's judgments."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from medhall.evaluate.predictions import (
    RELEASE_MODEL,
    QuestionIndex,
    import_predictions,
    import_release_judgments,
    problems_table,
    release_questions,
)
from medhall.ids import image_id, qa_id
from medhall.schema import from_rows, schema_for

VAL_ROWS = [
    {"question_id": 0, "image": "1_FIG1.jpg", "text": "What is shown?\n<image>", "gpt4_answer": "A mass.", "fig_caption": "CT with a mass."},
    {"question_id": 1, "image": "1_FIG1.jpg", "text": "Is it malignant?\n<image>", "gpt4_answer": "Unclear.", "fig_caption": "CT with a mass."},
    {"question_id": 2, "image": "2_FIG3.jpg", "text": "Which organ?\n<image>", "gpt4_answer": "The liver.", "fig_caption": "Liver MRI."},
]


def _jsonl(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def val_index(tmp_path: Path) -> QuestionIndex:
    return QuestionIndex.from_release([_jsonl(tmp_path / "val_positive_qa-filtered.jsonl", VAL_ROWS)])


def test_release_questions_use_the_ingest_qa_id(tmp_path: Path):
    qs, problems = release_questions(_jsonl(tmp_path / "val_negative_qa-filtered.jsonl", VAL_ROWS))
    assert not problems and [q.kind for q in qs] == ["negative"] * 3
    assert qs[0].qa_id == qa_id(image_id(ref="1_FIG1.jpg"), "What is shown?", "A mass.")
    assert (qs[0].question, qs[0].ground_truth, qs[0].caption) == ("What is shown?", "A mass.", "CT with a mass.")


def test_submission_with_bad_lines(tmp_path: Path, val_index: QuestionIndex):
    sub = _jsonl(tmp_path / "my-model-positive.jsonl", [
        {"question_id": 0, "image": "1_FIG1.jpg", "question": "What is shown?\n<image>", "answer": "A tumour."},
        '{"question_id": 1, "image": "1_FIG1.jpg", "question": ',  # malformed JSON
        {"image": "1_FIG1.jpg", "question": "Is it malignant?", "answer": "No."},  # no question_id
        {"question_id": 99, "image": "9.jpg", "question": "Unknown?", "answer": "?"},  # not in the index
        {"question_id": 0, "image": "1_FIG1.jpg", "question": "What is shown?", "answer": "Again."},  # duplicate
        {"question_id": 1, "image": "1_FIG1.jpg", "question": "Is it malignant?"},  # no answer
        {"question_id": 2, "image": "2_FIG3.jpg", "question": "Which bone?", "answer": "Femur."},  # other question
        "",
        "[1, 2]",  # not an object
    ])
    table, problems = import_predictions(sub, "my-model", index=val_index, run_id="run_1")
    assert table.schema.equals(schema_for("predictions"), check_metadata=False)
    rows = {r["qa_id"]: r for r in table.to_pylist()}
    first = rows[qa_id(image_id(ref="1_FIG1.jpg"), "What is shown?", "A mass.")]
    assert (first["answer"], first["status"], first["origin"], first["question"]) == ("A tumour.", "ok", "import", "What is shown?")
    failed = rows[qa_id(image_id(ref="1_FIG1.jpg"), "Is it malignant?", "Unclear.")]
    assert failed["status"] == "failed" and failed["answer"] is None and failed["error"]
    assert len(rows) == 2
    reasons = sorted((p.record_ref, p.reason) for p in problems)
    assert reasons == sorted([
        ("my-model-positive.jsonl:2", "malformed_json"),
        ("my-model-positive.jsonl:3", "missing_field"),
        ("my-model-positive.jsonl:4", "unknown_question"),
        ("my-model-positive.jsonl:5", "duplicate_id"),
        ("my-model-positive.jsonl:6", "missing_field"),
        ("my-model-positive.jsonl:7", "question_mismatch"),
        ("my-model-positive.jsonl:9", "bad_value"),
    ])
    quarantine = problems_table(problems, source="my-model-positive.jsonl", run_id="run_1")
    assert quarantine.num_rows == 7 and set(quarantine.column("stage").to_pylist()) == {"import"}


def test_kind_decides_the_question(tmp_path: Path, val_index: QuestionIndex):
    sub = _jsonl(tmp_path / "answers.jsonl", [{"question_id": 0, "image": "1_FIG1.jpg", "question": "What is shown?", "answer": "x"}])
    table, problems = import_predictions(sub, "m", index=val_index)
    assert table.num_rows == 0 and [p.reason for p in problems] == ["unknown_question"]  # no kind known
    table, problems = import_predictions(sub, "m", index=val_index, kind="positive")
    assert table.num_rows == 1 and not problems
    with pytest.raises(ValueError, match="kind"):
        import_predictions(sub, "m", index=val_index, kind="maybe")


def test_index_from_instructions(tmp_path: Path):
    qa = qa_id(image_id(ref="1_FIG1.jpg"), "What is shown?", "A mass.")
    instructions = from_rows("instructions", [{
        "qa_id": qa, "image_id": image_id(ref="1_FIG1.jpg"), "dataset": "d", "question": "What is shown?",
        "answer": "A mass.", "kind": "negative", "source": "medhalltune", "source_qa_id": "0",
    }])
    index = QuestionIndex.from_instructions(instructions)
    sub = _jsonl(tmp_path / "negative.jsonl", [{"question_id": "0", "image": "1_FIG1.jpg", "question": "What is shown?", "answer": "x"}])
    table, problems = import_predictions(sub, "m", index=index)
    assert not problems and table.column("qa_id").to_pylist() == [qa]


def test_release_prediction_files(release_preds, release_vals):
    for kind, n in (("positive", 1110), ("negative", 1128)):
        table, problems = import_predictions(release_preds[kind], RELEASE_MODEL)
        assert table.num_rows == n and problems == []
        assert set(table.column("status").to_pylist()) == {"ok"}
        val_ids = {q.qa_id for q in release_questions(release_vals[kind])[0]}
        assert set(table.column("qa_id").to_pylist()) == val_ids
        judgments = import_release_judgments(release_preds[kind])
        assert judgments.num_rows == n and set(judgments.column("status").to_pylist()) == {"ok"}
        assert set(judgments.column("qa_id").to_pylist()) == val_ids
        assert set(judgments.column("judge_model").to_pylist()) == {"gpt-4o"}


def test_official_submission_joins_like_the_release(tmp_path: Path, release_preds, release_vals):
    """A submission in the official format maps to the same qa_ids as the release's own file."""
    index = QuestionIndex.from_release(release_vals.values())
    assert len(index) == 1110 + 1128
    for kind in ("positive", "negative"):
        lines = [json.loads(x) for x in release_preds[kind].read_text().splitlines()]
        sub = _jsonl(tmp_path / f"sub_{kind}.jsonl", [{k: d[k] for k in ("question_id", "image", "question", "answer")} for d in lines])
        table, problems = import_predictions(sub, "other-model", index=index, kind=kind)
        reference, _ = import_predictions(release_preds[kind], "other-model")
        assert problems == [] and table.num_rows == len(lines)
        assert table.select(["pred_id", "qa_id", "answer"]).equals(reference.select(["pred_id", "qa_id", "answer"]))


def test_failed_release_result_is_kept(tmp_path: Path):
    rows = [dict(VAL_ROWS[0], question="What is shown?", answer="A mass.", result="Cannot rate."),
            dict(VAL_ROWS[1], question="Is it malignant?", answer="No.", result="3 4 5 6\nWhy.")]
    judgments = import_release_judgments(_jsonl(tmp_path / "pred-positive.jsonl", rows))
    bad, good = judgments.to_pylist()
    assert bad["status"] == "failed" and bad["raw"] == "Cannot rate." and bad["clinical_accuracy"] is None
    assert good["status"] == "ok" and good["detail_level"] == 5
    assert isinstance(judgments, pa.Table)
