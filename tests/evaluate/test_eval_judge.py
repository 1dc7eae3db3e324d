"""The clinical judge: rubric files, message layout, reply parsing, retries and rows."""

from __future__ import annotations

import asyncio
import json
import shutil
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

from medhall.evaluate.judge import (
    AXES,
    JudgeOutcome,
    JudgeParseError,
    JudgeScores,
    build_judge_messages,
    judge_with_retries,
    judgment_id,
    judgment_rows,
    load_rubric,
    outcome_from_replies,
    parse_judge_reply,
)

# --------------------------------------------------------------------------- rubric


def test_rubric_files_and_hash():
    r = load_rubric()
    assert len(r.hash) == 16 and int(r.hash, 16) >= 0
    assert load_rubric("v1").hash == r.hash
    for label in ("Clinical Accuracy", "Clinical Relevance", "Detail Level", "Risk Level"):
        assert label in r.rubric
    for band in ("1-2", "3-4", "5-6", "7-8", "9-10"):
        assert r.rubric.count(band) == 4, band
    assert "first line" in r.rubric and "7 8 6 9" in r.rubric


def test_packaged_templates_are_read_from_prompts_judge_version():
    from medhall.evaluate.judge import _templates_dir

    folder = _templates_dir("v1")
    assert folder.parts[-3:] == ("prompts", "judge", "v1") and (folder / "rubric.txt").is_file()


def test_rubric_hash_follows_the_text(tmp_path: Path):
    folder = tmp_path / "custom"
    shutil.copytree(Path(str(resources.files("medhall").joinpath("prompts", "judge", "v1"))), folder)
    assert load_rubric(path=folder).hash == load_rubric().hash
    (folder / "rubric.txt").write_text((folder / "rubric.txt").read_text() + "\nBe strict.\n")
    assert load_rubric(path=folder).hash != load_rubric().hash
    (folder / "anchor.txt").unlink()
    with pytest.raises(FileNotFoundError, match="anchor.txt"):
        load_rubric(path=folder)


# --------------------------------------------------------------------------- messages


def test_message_layout_with_anchor():
    msgs = build_judge_messages(
        "Chest x-ray with a left midlung consolidation.",
        "What does the x-ray show?",
        "A consolidation.",
        "A cavitary consolidation in the left midlung.",
        anchor_answer="An opacity.",
        anchor_scores="5 5 5 6\n\nSome explanation.",
    )
    assert [m["role"] for m in msgs] == ["system", "user", "user"]
    assert msgs[0]["content"] == "You are a helpful and precise assistant for checking the quality of the answer."
    case = msgs[1]["content"]
    parts = [
        "Figure Caption: Chest x-ray with a left midlung consolidation.",
        "[Question]: What does the x-ray show?",
        "[Answer]: A consolidation.\n [End of Answer]",
        "[Ground Truth Answer]: A cavitary consolidation in the left midlung.\n [End of Ground Truth Answer]",
        "[System]: " + load_rubric().rubric,
        load_rubric().anchor_note,
    ]
    positions = [case.index(p) for p in parts]
    assert positions == sorted(positions) and positions[0] == 0
    assert msgs[2]["content"] == "Sample Answer: An opacity.\n\nSample Scores: 5 5 5 6\n\nSome explanation."


def test_message_layout_without_anchor_and_scores_object():
    msgs = build_judge_messages(None, "Q?", "A.", "GT.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert load_rubric().anchor_note not in msgs[1]["content"]
    assert msgs[1]["content"].startswith("Figure Caption: (no caption)")
    anchor = JudgeScores(clinical_accuracy=5, clinical_relevance=5, detail_level=5, risk_level=6, explanation="Why.")
    msgs = build_judge_messages("c", "Q?", "A.", "GT.", "Base answer.", anchor)
    assert msgs[2]["content"].endswith("Sample Scores: 5 5 5 6\n\nWhy.")
    with pytest.raises(ValueError, match="together"):
        build_judge_messages("c", "Q?", "A.", "GT.", anchor_answer="only the answer")


# --------------------------------------------------------------------------- parsing


def test_parses_every_real_release_result(release_preds):
    n = 0
    for path in release_preds.values():
        for line in path.read_text().splitlines():
            result = json.loads(line)["result"]
            expected = tuple(int(t) for t in result.split("\n")[0].strip().split(" "))
            parsed = parse_judge_reply(result)
            assert parsed.values() == expected
            assert parsed.explanation and not parsed.explanation[0].isdigit()
            n += 1
    assert n == 1110 + 1128


EXPECTED = (7, 8, 6, 9)
VARIANTS = {
    "official": "7 8 6 9\n\nThe answer is mostly right.",
    "trailing spaces": "7 8 6 9  \nExplanation.",
    "commas": "7, 8, 6, 9\nExplanation.",
    "semicolons": "7; 8; 6; 9",
    "out of ten": "7/10 8/10 6/10 9/10\nExplanation.",
    "bold": "**7 8 6 9**\n\nExplanation.",
    "brackets": "[7, 8, 6, 9]\nExplanation.",
    "scores prefix": "Scores: 7 8 6 9\nExplanation.",
    "integral floats": "7.0 8.0 6.0 9.0",
    "labelled lethal": "Clinical Accuracy: 7\nClinical Relevance: 8\nDetail Level: 6\nLethal Level: 9\n\nWhy.",
    "labelled risk markdown": "1. **Clinical Accuracy**: 7/10\n2. **Clinical Relevance**: 8/10\n3. **Detail Level**: 6/10\n4. **Risk Level**: 9/10",
    "labelled short": "Accuracy - 7, Relevance - 8, Detail - 6, Safety - 9",
    "json": '{"clinical_accuracy": 7, "clinical_relevance": 8, "detail_level": 6, "risk_level": 9, "explanation": "ok"}',
    "json mixed keys": '{"Clinical Accuracy": "7", "ClinicalRelevance": 8.0, "detail level": "6/10", "Lethal Level": 9}',
    "json fenced": '```json\n{"scores": [7, 8, 6, 9], "reason": "ok"}\n```',
    "json nested": '{"scores": {"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9}, "explanation": "ok"}',
    "json embedded": 'My evaluation: {"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9}',
}


@pytest.mark.parametrize("text", VARIANTS.values(), ids=VARIANTS.keys())
def test_parses_variants(text: str):
    assert parse_judge_reply(text).values() == EXPECTED


def test_explanations_kept():
    assert parse_judge_reply("7 8 6 9\n\nBecause.").explanation == "Because."
    assert parse_judge_reply(VARIANTS["json"]).explanation == "ok"
    assert "Why." in parse_judge_reply(VARIANTS["labelled lethal"]).explanation


REJECTED = {
    "empty": ("", "empty"),
    "blank": ("  \n ", "empty"),
    "none": (None, "empty"),
    "prose": ("I cannot evaluate this answer without the image.", "no_scores"),
    "zero": ("0 8 6 9\nExplanation.", "out_of_range"),
    "eleven": ("7 8 6 11", "out_of_range"),
    "three numbers": ("7 8 6\nExplanation.", "wrong_count"),
    "five numbers": ("7 8 6 9 10", "wrong_count"),
    "labelled missing": ("Clinical Accuracy: 7\nClinical Relevance: 8\nDetail Level: 6", "missing_axis"),
    "labelled ambiguous": ("Clinical Accuracy: 7\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9\nClinical Accuracy: 3", "ambiguous_score"),
    "labelled out of range": ("Clinical Accuracy: 0\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9", "out_of_range"),
    "json missing": ('{"accuracy": 7, "relevance": 8, "detail": 6}', "missing_axis"),
    "json broken": ('{"accuracy": 7, "relevance": 8', "bad_json"),
    "json boolean": ('{"accuracy": true, "relevance": 8, "detail": 6, "risk": 9}', "not_a_number"),
    "json words": ('{"accuracy": "high", "relevance": 8, "detail": 6, "risk": 9}', "not_a_number"),
    "json eleven": ('{"accuracy": 11, "relevance": 8, "detail": 6, "risk": 9}', "out_of_range"),
    "json list short": ('{"scores": [7, 8, 6]}', "wrong_count"),
    "range": ("Clinical Accuracy: 7-8\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9", "range_score"),
    "several numbers": ("Clinical Accuracy: 7, 8\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9", "ambiguous_score"),
    "truncated": ("7 8 6 9\nThe answer", "truncated_reply"),
}


@pytest.mark.parametrize(("text", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_rejects_with_reason(text: str | None, reason: str):
    with pytest.raises(JudgeParseError) as err:
        parse_judge_reply(text, finish_reason="length" if reason == "truncated_reply" else "stop")
    assert err.value.reason == reason


def test_scores_model_validates_and_is_a_schema():
    with pytest.raises(ValidationError):
        JudgeScores(clinical_accuracy=0, clinical_relevance=8, detail_level=6, risk_level=9)
    with pytest.raises(ValidationError):
        JudgeScores(clinical_accuracy=11, clinical_relevance=8, detail_level=6, risk_level=9)
    with pytest.raises(ValidationError):
        JudgeScores(clinical_accuracy="7", clinical_relevance=8, detail_level=6, risk_level=9)
    schema = JudgeScores.model_json_schema()
    for axis in AXES:
        assert schema["properties"][axis]["minimum"] == 1 and schema["properties"][axis]["maximum"] == 10
    assert set(schema["required"]) == set(AXES)
    ok = JudgeScores.model_validate_json('{"clinical_accuracy": 7, "clinical_relevance": 8, "detail_level": 6, "risk_level": 9}')
    assert ok.values() == EXPECTED and ok.as_reply() == "7 8 6 9"


# --------------------------------------------------------------------------- retries and rows


def test_outcome_retries_then_fails():
    good = outcome_from_replies(["no scores here", "7 8 6 9\nok"])
    assert good.ok and good.attempts == 2 and good.raw == "7 8 6 9\nok"
    bad = outcome_from_replies(["no scores here", "0 1 1 1"])
    assert not bad.ok and bad.attempts == 2 and bad.raw == "0 1 1 1" and "out_of_range" in bad.error
    lost = outcome_from_replies([None], ["timeout"])
    assert not lost.ok and lost.raw is None and lost.error == "timeout"


def test_judge_with_retries_calls_until_parsed():
    calls: list[int] = []
    replies = ["garbage", "Clinical Accuracy: 7\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9"]

    async def ask(messages, attempt):
        calls.append(attempt)
        return replies[attempt]

    outcome = asyncio.run(judge_with_retries(ask, build_judge_messages("c", "q", "a", "gt"), max_attempts=3))
    assert outcome.ok and outcome.attempts == 2 and calls == [0, 1]

    async def always_bad(messages, attempt):
        return "still garbage"

    failed = asyncio.run(judge_with_retries(always_bad, [], max_attempts=3))
    assert not failed.ok and failed.attempts == 3 and failed.raw == "still garbage"


def test_judgment_id_is_the_content_hash_of_what_identifies_a_judgment():
    from medhall.ids import content_id

    assert judgment_id("m", "qa_1", "gpt-4o", "h") == content_id("jdg", "m", "qa_1", "gpt-4o", "h")
    assert judgment_id("m", "qa_1", "gpt-4o", "h").startswith("jdg_")


def test_judgment_rows_keep_failures():
    scores = parse_judge_reply("7 8 6 9\nFine.")
    table = judgment_rows(
        {"qa_1": JudgeOutcome(scores, "7 8 6 9\nFine.", 1), "qa_2": JudgeOutcome(None, "gibberish", 3, "parse failed: no_scores")},
        model="m", judge_model="gpt-4o", rubric_hash=load_rubric().hash, anchor_model="llava-med-v1.5-7b", run_id="run_x",
    )
    ok, failed = table.to_pylist()
    assert ok["status"] == "ok" and (ok["clinical_accuracy"], ok["risk_level"]) == (7, 9) and ok["explanation"] == "Fine."
    assert failed["status"] == "failed" and failed["attempts"] == 3 and failed["raw"] == "gibberish"
    assert all(failed[a] is None for a in AXES) and "no_scores" in failed["error"] and failed["explanation"] is None
    assert ok["judgment_id"] == judgment_id("m", "qa_1", "gpt-4o", load_rubric().hash)
    assert ok["anchor_model"] == "llava-med-v1.5-7b" and ok["run_id"] == "run_x"
