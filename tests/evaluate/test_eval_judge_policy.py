"""The judge's parsing policy (issue #13): each axis needs exactly one score in 1-10.

A range ("7-8"), several or contradicting numbers for an axis, a missing axis, a score outside
1-10 or a reply cut at max_tokens is a failed judgment with a reason code and the raw reply,
never a number; a decimal (7.5) is kept as given and stored as a float. Each rule is pinned
here by behaviour, on the reply shapes judges really produce.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medhall import schema
from medhall.evaluate import judge
from medhall.evaluate.judge import (
    AXES,
    JudgeOutcome,
    JudgeParseError,
    JudgeReply,
    JudgeScores,
    judge_with_retries,
    judgment_row,
    judgment_rows,
    outcome_from_replies,
    parse_judge_reply,
    parse_reply,
)

GOOD = "7 8 6 9\n\nThe answer is mostly right."

# What a llama.cpp judge (an 8B instruct model behind llama-server) answered: every axis a band
# of the rubric rather than a score. The old parser read each range as its first number.
LLAMA_CPP_RANGES = """**Evaluation:**

**Clinical Accuracy:** 7-8
The answer correctly identifies the consolidation in the left midlung but misses its cavitary appearance.

**Clinical Relevance:** 8-9
It answers the question directly.

**Detail Level:** 6-7
Some detail, no differential.

**Risk Level:** 8
Generally safe; it recommends further evaluation."""

LLAMA_CPP_PLAIN = """Clinical Accuracy: 7 to 8
Clinical Relevance: 8
Detail Level: 6
Risk Level: 8

Explanation: the answer is mostly correct."""


def reason_of(text: str | None, **kwargs: str) -> str:
    with pytest.raises(JudgeParseError) as err:
        parse_judge_reply(text, **kwargs)
    return err.value.reason


def message_of(text: str | None, **kwargs: str) -> str:
    with pytest.raises(JudgeParseError) as err:
        parse_judge_reply(text, **kwargs)
    return str(err.value)


def labelled(accuracy: str = "7", relevance: str = "8", detail: str = "6", risk: str = "9", extra: str = "") -> str:
    return (f"Clinical Accuracy: {accuracy}\nClinical Relevance: {relevance}\nDetail Level: {detail}\n"
            f"Risk Level: {risk}\n{extra}\nWhy: fine.")


def as_json(**values: object) -> str:
    base: dict[str, object] = {"clinical_accuracy": 7, "clinical_relevance": 8, "detail_level": 6, "risk_level": 9}
    base.update(values)
    return json.dumps(base)


# --------------------------------------------------------------------------- ranges


def test_a_llama_cpp_reply_with_ranges_is_a_failure_with_its_raw_text():
    assert message_of(LLAMA_CPP_RANGES) == "range_score: Clinical Accuracy is a range ('7-8'), not one score"
    assert message_of(LLAMA_CPP_PLAIN) == "range_score: Clinical Accuracy is a range ('7 to 8'), not one score"
    outcome = outcome_from_replies([LLAMA_CPP_RANGES])
    assert not outcome.ok and outcome.scores is None and outcome.raw == LLAMA_CPP_RANGES
    assert outcome.error.startswith("parse failed: range_score: ")
    row = judgment_row(qa_id="q", model="m", judge_model="llama", rubric_hash="h", outcome=outcome)
    assert row["status"] == "failed" and row["raw"] == LLAMA_CPP_RANGES
    assert all(row[a] is None for a in AXES)


RANGES = ["7-8", "7 - 8", "7–8", "7—8", "7~8", "7 to 8", "7 TO 8", "7 or 8", "7/8", "7-8/10", "7/10-8/10", "7.5-8"]


@pytest.mark.parametrize("value", RANGES)
def test_a_labelled_range_is_a_range_score_failure(value: str):
    assert reason_of(labelled(accuracy=value)) == "range_score"
    assert reason_of(labelled(risk=value)) == "range_score"


@pytest.mark.parametrize("value", ["7-8", "7 to 8", "7/8"])
def test_a_range_in_a_json_value_is_a_range_score_failure(value: str):
    assert reason_of(as_json(detail_level=value)) == "range_score"
    assert reason_of(json.dumps({"scores": [value, 8, 6, 9]})) == "range_score"


def test_a_range_on_the_score_line_is_a_range_score_failure():
    assert message_of("7-8 8 6 9\nWhy.") == "range_score: a score on the first line is a range ('7-8'), not one score"
    assert reason_of("7 8 6–7 9") == "range_score"
    assert reason_of("7/8 8 6 9") == "range_score"
    assert reason_of("Scores: 7 to 8, 8, 6, 9") == "range_score"
    assert reason_of("7-8 8 6") == "range_score"  # a range is reported before the count


@pytest.mark.parametrize(("value", "score"), [("7/10", 7), ("10/10", 10), ("7.5/10", 7.5), ("7 / 10", 7),
                                               ("7 out of 10", 7), ("7 OUT OF 10", 7), ("1/10", 1)])
def test_a_score_out_of_ten_is_one_score(value: str, score: float):
    assert parse_judge_reply(labelled(accuracy=value)).clinical_accuracy == score
    assert parse_judge_reply(f"{value} 8 6 9").clinical_accuracy == score
    assert parse_judge_reply(as_json(clinical_accuracy=value)).clinical_accuracy == score


@pytest.mark.parametrize("value", ["4/5", "7/100", "7/10.5", "7/1"])
def test_a_score_over_anything_but_ten_is_not_read_as_out_of_ten(value: str):
    assert reason_of(labelled(accuracy=value)) == "range_score"


def test_prose_after_a_score_is_not_a_second_number():
    text = labelled(accuracy="7 - the answer is right", relevance="8 (on topic)", detail="6/10.", risk="9 and safe")
    assert parse_judge_reply(text).values() == (7, 8, 6, 9)
    assert parse_judge_reply("Accuracy - 7, Relevance - 8, Detail - 6, Safety - 9").values() == (7, 8, 6, 9)


def test_the_explanation_after_a_score_line_is_not_read_for_scores():
    reply = "7 8 6 9\n\nClinical Accuracy: 7-8 would be fair; it falls in the 7-8 band. Risk Level: 3."
    assert parse_judge_reply(reply).values() == (7, 8, 6, 9)


# --------------------------------------------------------------------------- decimals and the scale


def test_a_decimal_is_kept_as_given():
    assert parse_judge_reply("7.5 8 6 9.5\nWhy.").values() == (7.5, 8, 6, 9.5)
    assert parse_judge_reply(labelled(relevance="8.5")).clinical_relevance == 8.5
    assert parse_judge_reply(as_json(detail_level=6.5)).detail_level == 6.5
    assert parse_judge_reply(as_json(detail_level="6.25")).detail_level == 6.25
    scores = parse_judge_reply("7.5 8 6 9\nWhy.")
    assert all(isinstance(v, float) for v in scores.values())
    assert scores.as_reply() == "7.5 8 6 9\n\nWhy."  # an anchor shows 7.5 and 8, never 8.0


@pytest.mark.parametrize("line", ["1 1 1 1", "10 10 10 10", "1.0 10.0 1 10"])
def test_the_ends_of_the_scale_are_scores(line: str):
    assert min(parse_judge_reply(line).values()) >= 1 and max(parse_judge_reply(line).values()) <= 10


@pytest.mark.parametrize("line", ["0 8 6 9", "0.5 8 6 9", "0.99 8 6 9", "7 8 6 10.5", "7 8 6 10.01", "7 8 6 11", "7 8 6 100"])
def test_a_score_outside_one_to_ten_is_out_of_range(line: str):
    assert reason_of(line) == "out_of_range"


def test_out_of_range_everywhere_with_a_message():
    assert message_of("7 8 6 11") == "out_of_range: Risk Level is 11, outside 1-10"
    assert message_of(labelled(accuracy="0")) == "out_of_range: Clinical Accuracy is 0, outside 1-10"
    assert message_of(as_json(clinical_relevance=10.5)) == "out_of_range: Clinical Relevance is 10.5, outside 1-10"
    assert reason_of('{"clinical_accuracy": NaN, "clinical_relevance": 8, "detail_level": 6, "risk_level": 9}') == "out_of_range"
    assert reason_of('{"clinical_accuracy": Infinity, "clinical_relevance": 8, "detail_level": 6, "risk_level": 9}') == "out_of_range"


# --------------------------------------------------------------------------- one score per axis


def test_a_missing_axis_is_a_failure_naming_it():
    reply = "Clinical Accuracy: 7\nClinical Relevance: 8\nDetail Level: 6\n\nThe answer is safe."
    assert message_of(reply) == "missing_axis: no score for Risk Level"
    assert message_of("Clinical Accuracy: 7\nDetail Level: 6") == "missing_axis: no score for Clinical Relevance, Risk Level"
    assert message_of('{"accuracy": 7, "relevance": 8, "detail": 6}') == "missing_axis: no score for Risk Level"
    assert message_of(as_json(risk_level=None)) == "missing_axis: Risk Level is null"


def test_an_axis_given_twice_with_different_values_is_ambiguous():
    reply = labelled(extra="Summary: Clinical Accuracy: 5")
    assert message_of(reply) == "ambiguous_score: Clinical Accuracy is given twice with different values (5, 7)"
    dup = '{"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9, "accuracy": 8}'
    assert message_of(dup) == "ambiguous_score: Clinical Accuracy is given twice with different values (7, 8)"
    both = '{"clinical_accuracy": 7, "accuracy": "6", "relevance": 8, "detail": 6, "risk": 9}'
    assert reason_of(both) == "ambiguous_score"


def test_an_axis_given_twice_with_the_same_value_is_one_score():
    assert parse_judge_reply(labelled(extra="Summary: Clinical Accuracy: 7.0, Risk Level: 9/10")).values() == (7, 8, 6, 9)
    assert parse_judge_reply('{"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9, "clinical accuracy": "7"}').values() == (7, 8, 6, 9)


@pytest.mark.parametrize("value", ["7, 8", "7 8", "7 and 8", "7; 8", "7/10 8/10"])
def test_several_numbers_for_one_axis_are_ambiguous(value: str):
    assert reason_of(labelled(detail=value)) == "ambiguous_score"


def test_several_numbers_for_one_axis_say_which():
    assert message_of(labelled(accuracy="7, 8")) == "ambiguous_score: Clinical Accuracy has several numbers ('7, 8')"
    assert message_of(as_json(clinical_accuracy=[7, 8])) == "ambiguous_score: Clinical Accuracy is a list ([7, 8]), not one score"
    assert reason_of(as_json(clinical_accuracy="7, 8")) == "ambiguous_score"


def test_a_score_line_or_list_of_other_than_four_is_wrong_count():
    assert message_of("7 8 6\nWhy.") == "wrong_count: first line has 3 scores, expected 4: '7 8 6'"
    assert reason_of("7 8 6 9 10") == "wrong_count"
    assert message_of('{"scores": [7, 8, 6, 9, 5]}') == "wrong_count: 'scores' has 5 values, expected 4"


@pytest.mark.parametrize("value", ["high", "seven", "", "7 (good)", True, False, {"score": 7}])
def test_a_json_value_that_is_not_one_number_is_not_a_number(value: object):
    assert reason_of(as_json(risk_level=value)) == "not_a_number"


def test_not_a_number_says_what_it_got():
    assert message_of(as_json(risk_level="high")) == 'not_a_number: Risk Level is "high", not a number'
    assert message_of(as_json(risk_level=True)) == "not_a_number: Risk Level is true, not a number"


# --------------------------------------------------------------------------- truncated replies


def test_a_truncated_reply_is_never_parsed_even_when_it_would_parse():
    assert message_of(GOOD, finish_reason="length") == (
        "truncated_reply: the reply was cut at max_tokens (finish_reason=length); it is not read")
    assert reason_of("", finish_reason="length") == "truncated_reply"
    assert parse_judge_reply(GOOD, finish_reason="stop").values() == (7, 8, 6, 9)
    assert parse_judge_reply(GOOD, finish_reason=None).values() == (7, 8, 6, 9)


def test_a_truncated_reply_is_a_failed_judgment_with_its_raw_text():
    cut = JudgeReply("7 8 6 9\n\nThe answer identifies the", "length")
    with pytest.raises(JudgeParseError, match="^truncated_reply"):
        parse_reply(cut)
    assert parse_reply(JudgeReply(GOOD, "stop")).values() == (7, 8, 6, 9)
    assert parse_reply(GOOD).values() == (7, 8, 6, 9)
    failed = outcome_from_replies([cut])
    assert not failed.ok and failed.raw == cut.text and failed.attempts == 1
    assert failed.error.startswith("parse failed: truncated_reply: ")
    retried = outcome_from_replies([cut, JudgeReply(GOOD, "stop")])
    assert retried.ok and retried.attempts == 2 and retried.raw == GOOD
    last = outcome_from_replies([JudgeReply("first", "length"), None], [None, "timeout"])
    assert last.raw == "first" and last.error == "timeout"


def test_judge_with_retries_asks_again_after_a_truncated_reply():
    replies = [JudgeReply("7 8 6 9\nThe answ", "length"), JudgeReply(GOOD, "stop")]

    async def ask(messages, attempt):
        return replies[attempt]

    outcome = asyncio.run(judge_with_retries(ask, [], max_attempts=3))
    assert outcome.ok and outcome.attempts == 2

    async def always_cut(messages, attempt):
        return JudgeReply(f"7 8 6 9\ncut {attempt}", "length")

    failed = asyncio.run(judge_with_retries(always_cut, [], max_attempts=2))
    assert not failed.ok and failed.attempts == 2 and failed.raw == "7 8 6 9\ncut 1" and "truncated_reply" in failed.error


def _judge_through_the_llm_layer(tmp_path: Path, script: object, attempts: int) -> tuple[JudgeOutcome, list]:
    """One answer judged by the judge stage over an LLMClient with a scripted backend."""
    from medhall.evaluate.judging import _judge_one, _JudgeItem
    from medhall.llm import FakeBackend, LLMClient

    client = LLMClient(FakeBackend(script, model="llama"), cache=tmp_path / "cache.sqlite", backoff_initial_s=0.01, backoff_max_s=0.05)
    try:
        item = _JudgeItem("qa_1", judge.build_judge_messages("c", "Q?", "A.", "GT."), None)
        cfg = SimpleNamespace(judge_max_tokens=64, judge_attempts=attempts)
        outcome = asyncio.run(_judge_one(client, item, cfg, "hash"))
        return outcome, list(client.backend.requests)
    finally:
        client.close()


def test_the_judge_stage_records_a_reply_cut_at_max_tokens_as_truncated(tmp_path: Path):
    from medhall.llm.backends.fake import FakeReply

    outcome, requests = _judge_through_the_llm_layer(tmp_path, FakeReply("7 8 6 9\n\nThe answer is", finish_reason="length"), 2)
    assert not outcome.ok and outcome.raw == "7 8 6 9\n\nThe answer is" and outcome.attempts == 2
    assert outcome.error.startswith("parse failed: truncated_reply: ")
    repair = requests[-1].messages[-1].text()
    assert "truncated_reply" in repair and requests[-1].messages[-2].text() == "7 8 6 9\n\nThe answer is"


def test_the_judge_stage_accepts_a_complete_reply_after_a_truncated_one(tmp_path: Path):
    from medhall.llm.backends.fake import FakeReply

    def script(request):
        repaired = any(m.role == "assistant" for m in request.messages)
        return FakeReply(GOOD) if repaired else FakeReply("7 8 6 9\nThe", finish_reason="length")

    outcome, _ = _judge_through_the_llm_layer(tmp_path, script, 3)
    assert outcome.ok and outcome.attempts == 2 and outcome.scores.values() == (7, 8, 6, 9)


# --------------------------------------------------------------------------- real reply shapes


def test_gpt4o_release_format():
    reply = ("5 5 5 6\n\nThe AI assistant's response has notable inaccuracies. This leads to a score of 5 in "
             "Clinical Accuracy, as it provides a general idea but includes significant errors.")
    scores = parse_judge_reply(reply)
    assert scores.values() == (5, 5, 5, 6) and scores.explanation.startswith("The AI assistant's response")


MARKDOWN = {
    "bold label and colon": "**Clinical Accuracy:** 7\n**Clinical Relevance:** 8\n**Detail Level:** 6\n**Risk Level:** 9",
    "bold label": "**Clinical Accuracy**: 7\n**Clinical Relevance**: 8\n**Detail Level**: 6\n**Risk Level**: 9",
    "bold value": "Clinical Accuracy: **7**/10\nClinical Relevance: **8**/10\nDetail Level: **6**/10\nRisk Level: **9**/10",
    "list": "- **Clinical Accuracy**: 7\n- **Clinical Relevance**: 8\n- **Detail Level**: 6\n- **Lethal Level**: 9",
    "headings": "### Clinical Accuracy: 7\n### Clinical Relevance: 8\n### Detail Level: 6\n### Risk Level: 9",
    "snake case": "clinical_accuracy: 7\nclinical_relevance: 8\ndetail_level: 6\nrisk_level: 9",
    "code": "`clinical_accuracy` = 7\n`clinical_relevance` = 8\n`detail_level` = 6\n`risk_level` = 9",
    "score word": "Clinical Accuracy Score: 7\nClinical Relevance Score: 8\nDetail Level Score: 6\nRisk Level Score: 9",
    "em dash": "Clinical Accuracy — 7\nClinical Relevance – 8\nDetail Level - 6\nRisk Level — 9",
}


@pytest.mark.parametrize("text", MARKDOWN.values(), ids=MARKDOWN.keys())
def test_markdown_labelled_replies(text: str):
    scores = parse_judge_reply(text)
    assert scores.values() == (7, 8, 6, 9) and scores.explanation == text


def test_a_bold_range_is_still_a_range():
    assert reason_of("**Clinical Accuracy:** **7**-**8**\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9") == "range_score"


JSON_REPLIES = {
    "flat": ('{"clinical_accuracy": 7.5, "clinical_relevance": 8, "detail_level": 6, "risk_level": 9, "explanation": "ok"}', (7.5, 8, 6, 9)),
    "strings": ('{"Clinical Accuracy": "7/10", "Clinical Relevance": "8", "Detail Level": "6.5", "Lethal Level": 9}', (7, 8, 6.5, 9)),
    "fenced list": ('```json\n{"scores": [7, 8, 6, 9.5], "reason": "ok"}\n```', (7, 8, 6, 9.5)),
    "nested": ('{"scores": {"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9}, "explanation": "ok"}', (7, 8, 6, 9)),
    "embedded": ('Here are my scores: {"accuracy": 7, "relevance": 8, "detail": 6, "safety": 9}', (7, 8, 6, 9)),
}


@pytest.mark.parametrize(("text", "values"), JSON_REPLIES.values(), ids=JSON_REPLIES.keys())
def test_json_replies(text: str, values: tuple):
    assert parse_judge_reply(text).values() == values


def test_json_explanation_is_kept_as_text():
    assert parse_judge_reply(JSON_REPLIES["flat"][0]).explanation == "ok"
    structured = as_json()[:-1] + ', "reasoning": {"accuracy": "right"}}'
    assert parse_judge_reply(structured).explanation == '{"accuracy": "right"}'


# --------------------------------------------------------------------------- stored as floats


def test_judgments_store_scores_as_float64():
    table = schema.schema_for("judgments")
    assert {table.field(a).type for a in AXES} == {pa.float64()}
    rows = judgment_rows({"q": JudgeOutcome(parse_judge_reply("7.5 8 6 9\nWhy."), "7.5 8 6 9\nWhy.", 1)},
                         model="m", judge_model="j", rubric_hash="h")
    assert rows.column("clinical_accuracy").type == pa.float64()
    assert rows.to_pylist()[0]["clinical_accuracy"] == 7.5


def test_judge_scores_accept_ints_and_floats_not_strings():
    assert JudgeScores(clinical_accuracy=7, clinical_relevance=8.5, detail_level=6, risk_level=9).values() == (7, 8.5, 6, 9)
    assert JudgeScores.model_json_schema()["properties"]["clinical_accuracy"]["type"] == "number"


def _v1_judgments(store, dataset: str = "d"):
    """A judgments artifact as schema version 1 wrote it (int8 scores)."""
    outcome = JudgeOutcome(parse_judge_reply("7 8 6 9\nWhy."), "7 8 6 9\nWhy.", 1)
    art = store.write("judgments", judgment_rows({"q1": outcome}, model="base", judge_model="j", rubric_hash="h"), dataset=dataset)
    old = pq.read_table(art.data_path)
    for axis in AXES:
        i = old.schema.get_field_index(axis)
        old = old.set_column(i, old.schema.field(i).with_type(pa.int8()), old.column(i).cast(pa.int8()))
    pq.write_table(old, art.data_path)
    manifest = json.loads((art.path / "manifest.json").read_text())
    (art.path / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    return store.get("judgments", dataset)


def test_judgments_written_under_schema_1_read_as_floats(store):
    art = _v1_judgments(store)
    assert pq.read_table(art.data_path).column("clinical_accuracy").type == pa.int8()
    table = art.read()
    assert {table.column(a).type for a in AXES} == {pa.float64()}
    assert table.to_pylist()[0]["risk_level"] == 9.0
    assert art.read(columns=["qa_id", "detail_level"]).column("detail_level").type == pa.float64()
    assert store.read("judgments", "d").column("clinical_relevance").to_pylist() == [8.0]


def test_judgments_of_both_schema_versions_average_together(store):
    from medhall.evaluate.table2 import table2

    old = _v1_judgments(store).read()
    new = judgment_rows({"q2": JudgeOutcome(parse_judge_reply("8.5 8 6 9"), "8.5 8 6 9", 1)}, model="base", judge_model="j", rubric_hash="h")
    report = table2(pa.concat_tables([old, new]), None, {"q1": "positive", "q2": "positive"}, n_boot=10).to_pylist()
    accuracy = next(r for r in report if r["measure"] == "clinical_accuracy" and r["breakdown"] == "overall")
    assert accuracy["mean"] == 7.75 and accuracy["n"] == 2


def test_upgrade_casts_only_what_a_later_version_retyped():
    ints = pa.table({"qa_id": ["q"], "clinical_accuracy": pa.array([7], pa.int8()), "attempts": pa.array([1], pa.int32())})
    assert schema.upgrade("judgments", ints, 1).column("clinical_accuracy").type == pa.float64()
    assert schema.upgrade("judgments", ints, 1).column("attempts").type == pa.int32()
    assert schema.upgrade("judgments", ints, 2).column("clinical_accuracy").type == pa.int8()  # already current: untouched
    assert schema.upgrade("predictions", pa.table({"qa_id": ["q"]}), 1).column_names == ["qa_id"]
    assert schema.SCHEMA_VERSION == 2 and max(schema.RETYPED) <= schema.SCHEMA_VERSION


def test_a_baseline_judged_under_schema_1_still_anchors(store):
    from medhall.evaluate.judging import load_anchors

    _v1_judgments(store)
    store.write("predictions", schema.from_rows("predictions", [
        {"pred_id": "p1", "qa_id": "q1", "model": "base", "answer": "An opacity.", "status": "ok"}]), dataset="d")
    anchor = load_anchors(store, "base", ["q1"])["q1"]
    assert anchor.scores.values() == (7, 8, 6, 9) and anchor.scores.as_reply() == "7 8 6 9\n\nWhy."


def test_the_judge_work_folder_follows_the_parsing_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store):
    from medhall.evaluate.config import EvalConfig, ImportSpec
    from medhall.evaluate.judging import judge_dir

    answers = tmp_path / "answers-positive.jsonl"
    answers.write_text("")
    cfg = EvalConfig(dataset="d", split=None, model=ImportSpec(paths=(str(answers),)), model_name="m")
    client = SimpleNamespace(backend=SimpleNamespace(name="fake", model="judge"))
    now = judge_dir(store, cfg, client)
    monkeypatch.setattr(judge, "PARSER_VERSION", 1)
    assert judge_dir(store, cfg, client) != now


def test_the_catalog_shows_judgments_of_both_schema_versions_as_doubles(store):
    from medhall.store.catalog import build_catalog, query

    _v1_judgments(store)
    outcome = JudgeOutcome(parse_judge_reply("7.5 8 6 9"), "7.5 8 6 9", 1)
    store.write("judgments", judgment_rows({"q1": outcome}, model="base", judge_model="j", rubric_hash="h"), dataset="d")
    build_catalog(store)
    rows = query(store, "select _version, clinical_accuracy, typeof(clinical_accuracy) as t from judgments_versions order by _version")
    assert rows.to_pylist() == [{"_version": 1, "clinical_accuracy": 7.0, "t": "DOUBLE"},
                                {"_version": 2, "clinical_accuracy": 7.5, "t": "DOUBLE"}]


# --------------------------------------------------------------------------- what else a failure says


def test_every_failure_says_why_in_words():
    assert message_of("  \n ") == "empty: the reply is empty"
    assert message_of("I cannot evaluate this answer without the image.") == (
        "no_scores: no score line, labelled scores or JSON object found")
    assert message_of('{"accuracy": 7, "relevance": 8') == "bad_json: the reply looks like JSON but does not parse as an object"
    assert message_of('{"accuracy": 7, "detail": 6}') == "missing_axis: no score for Clinical Relevance, Risk Level"
    assert str(JudgeParseError("empty")) == "empty" and JudgeParseError("empty").detail == ""


JSON_LAYOUTS = {
    "explanation first": ('{"explanation": "Mostly right.", "clinical_accuracy": 7, "clinical_relevance": 8, '
                          '"detail_level": 6, "risk_level": 9}', "Mostly right."),
    "json then prose": ('{"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9}\nThe answer is mostly right.', ""),
    "embedded nested": ('My scores: {"scores": {"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9}}, as explained.', ""),
    "ratings list": ('{"ratings": [7, 8, 6, 9], "rationale": "ok"}', "ok"),
    "score object": ('{"score": {"accuracy": 7, "relevance": 8, "detail": 6, "risk": 9}}', ""),
}


@pytest.mark.parametrize(("text", "explanation"), JSON_LAYOUTS.values(), ids=JSON_LAYOUTS.keys())
def test_json_layouts(text: str, explanation: str):
    scores = parse_judge_reply(text)
    assert scores.values() == (7, 8, 6, 9) and scores.explanation == explanation


def test_outcomes_without_any_reply_say_so():
    assert outcome_from_replies([None]).error == "no reply"
    assert outcome_from_replies([None], [None]).error == "no reply"
    assert outcome_from_replies([]).error == "no reply" and outcome_from_replies([]).attempts == 0


def test_judge_with_retries_stops_at_the_first_reply_that_parses():
    calls: list[int] = []

    async def ask(messages, attempt):
        calls.append(attempt)
        return JudgeReply(GOOD, "stop")

    outcome = asyncio.run(judge_with_retries(ask, [], max_attempts=3))
    assert outcome.ok and outcome.attempts == 1 and outcome.raw == GOOD and calls == [0]


def test_a_reply_after_a_failed_call_still_counts():
    outcome = outcome_from_replies([None, GOOD], ["timeout", None])
    assert outcome.ok and outcome.attempts == 2 and outcome.raw == GOOD


def test_judge_with_retries_makes_three_calls_by_default_and_at_least_one():
    calls: list[int] = []

    async def bad(messages, attempt):
        calls.append(attempt)
        return "no scores"

    assert asyncio.run(judge_with_retries(bad, [])).attempts == 3 and calls == [0, 1, 2]
    assert asyncio.run(judge_with_retries(bad, [], max_attempts=1)).attempts == 1
    with pytest.raises(ValueError, match="^max_attempts must be at least 1$"):
        asyncio.run(judge_with_retries(bad, [], max_attempts=0))
