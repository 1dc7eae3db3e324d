"""MedHallTune release adapter: the three file layouts, and the real release files."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from medhall.ids import image_id
from medhall.ingest import format_summary, ingest
from medhall.sources import MedHallTuneRelease, get_adapter
from medhall.sources.medhalltune import kind_from_filename

VAL = ["val_positive_qa-filtered.jsonl", "val_negative_qa-filtered.jsonl"]
PRED = [
    "llava-med-prediction-postive-GPT4o-eval-filtered.jsonl",
    "llava-med-prediction-negative-GPT4o-eval-filtered.jsonl",
]
BARE = ["positive_qa.jsonl", "negative_qa.jsonl"]

VAL_ROW = {
    "question_id": 0,
    "image": "34760421_FIG1.jpg",
    "text": "What does the chest x-ray reveal about the left midlung?\n<image>",
    "gpt4_answer": "A large airspace consolidation with a cavitary appearance.",
    "fig_caption": "Initial chest x-ray showing large airspace consolidation in the left midlung.",
}


def test_three_layouts(make):
    bare = make.jsonl(
        "positive_qa.jsonl",
        [{"question_id": 0, "image": VAL_ROW["image"], "question": VAL_ROW["text"]}],
    )
    val = make.jsonl("val_positive_qa-filtered.jsonl", [VAL_ROW])
    pred = make.jsonl(
        PRED[0],
        [
            {
                **VAL_ROW,
                "question": VAL_ROW["text"].replace("\n<image>", ""),
                "answer": "model says",
                "result": "5 5 5 6\n...",
            }
        ],
    )
    a = MedHallTuneRelease()
    (b,), (v,), (p,) = (list(a.read(x)) for x in (bare, val, pred))
    for r in (b, v, p):
        assert r.image_ref == "34760421_FIG1.jpg" and r.source_id == "0" and len(r.qa) == 1
        assert r.qa[0].question == "What does the chest x-ray reveal about the left midlung?"
        assert r.qa[0].kind == "positive" and r.qa[0].source_qa_id == "0"
    assert b.caption is None and b.qa[0].answer is None
    assert v.caption == VAL_ROW["fig_caption"] and v.qa[0].answer == VAL_ROW["gpt4_answer"]
    assert p.qa[0].answer == VAL_ROW["gpt4_answer"]  # the model's answer is not ground truth
    assert "model says" not in str(p.qa[0]) and p.meta == {}


def test_kind_from_file_name_or_option(make):
    assert (
        kind_from_filename("llava-med-prediction-postive-GPT4o-eval-filtered.jsonl") == "positive"
    )
    assert kind_from_filename("negative_qa.jsonl") == "negative"
    assert kind_from_filename("release.jsonl") is None
    path = make.jsonl("release.jsonl", [VAL_ROW])
    assert next(iter(MedHallTuneRelease().read(path))).qa[0].kind is None
    assert (
        next(iter(get_adapter("medhalltune", kind="negative").read(path))).qa[0].kind == "negative"
    )
    with pytest.raises(ValueError):
        MedHallTuneRelease(kind="maybe")


def test_bad_lines_and_missing_images_flagged(make, reasons):
    path = make.jsonl(
        "val_negative_qa-filtered.jsonl",
        [
            VAL_ROW,
            {"question_id": 1, "text": "No image?"},
            {"question_id": 2, "image": "x.jpg", "text": "<image>"},
            b"{",
        ],
    )
    res = ingest("medhalltune", path, dataset="d")
    assert reasons(res) == {
        "missing_field": ["val_negative_qa-filtered.jsonl:2", "val_negative_qa-filtered.jsonl:3"],
        "malformed_json": ["val_negative_qa-filtered.jsonl:4"],
    }
    row = res.images.to_pylist()[0]
    assert row["image_status"] == "missing" and row["image_id"] == image_id(ref="34760421_FIG1.jpg")
    assert res.ok and res.instructions.column("kind").to_pylist() == ["negative"]


def test_present_images_are_checked(make):
    make.image("34760421_FIG1.jpg", seed=3)
    res = ingest(
        "medhalltune", make.jsonl("val_positive_qa-filtered.jsonl", [VAL_ROW]), dataset="d"
    )
    assert res.images.column("image_status").to_pylist() == ["ok"]
    assert res.summary.images_missing == 0


# ----------------------------------------------------------------- the real release files


def test_release_val_files(release_dir):
    t0 = time.perf_counter()
    res = ingest("medhalltune", [release_dir / f for f in VAL], dataset="medhalltune_val")
    elapsed = time.perf_counter() - t0
    instr = res.instructions
    assert instr.num_rows == 2238
    assert Counter(instr.column("kind").to_pylist()) == {"positive": 1110, "negative": 1128}
    assert instr.column("answer").null_count == 0
    assert len(set(instr.column("image_id").to_pylist())) == 396
    assert res.images.num_rows == 396
    assert set(res.images.column("image_status").to_pylist()) == {"missing"}
    assert res.images.column("caption").null_count == 0
    s = res.summary
    assert (s.images_missing, s.images_ok, s.missing_kept, s.quarantined) == (396, 0, True, {})
    assert "396 not on disk: kept with image_status=missing" in format_summary(s)
    assert elapsed < 10


def test_release_all_six_files_collapse_to_the_val_questions(release_dir):
    res = ingest(
        "medhalltune", [release_dir / f for f in (*BARE, *VAL, *PRED)], dataset="medhalltune_all"
    )
    instr = res.instructions
    assert res.summary.records_read == 3 * 2238
    assert instr.num_rows == 2238
    assert Counter(instr.column("kind").to_pylist()) == {"positive": 1110, "negative": 1128}
    assert (
        instr.column("answer").null_count == 0
    )  # the bare (unanswered) copies merged into the answered ones
    assert res.summary.qa_unanswered_merged == 2238 and res.summary.qa_duplicates == 2238
    assert len(set(instr.column("image_id").to_pylist())) == 396
    assert set(res.images.column("image_status").to_pylist()) == {"missing"}
    val = ingest("medhalltune", [release_dir / f for f in VAL], dataset="medhalltune_all")
    assert sorted(instr.column("qa_id").to_pylist()) == sorted(
        val.instructions.column("qa_id").to_pylist()
    )


def test_release_bare_files_alone_and_required_images(release_dir):
    bare = ingest("medhalltune", [release_dir / f for f in BARE], dataset="bare")
    assert (
        bare.instructions.num_rows == 2238 and bare.instructions.column("answer").null_count == 2238
    )
    assert bare.images.num_rows == 396
    strict = ingest(
        "medhalltune", [release_dir / f for f in VAL], dataset="strict", require_images=True
    )
    assert not strict.ok and strict.summary.quarantined == {"missing_image": 2238}
