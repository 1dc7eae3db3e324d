"""Judge-free POPE scores: which questions count, the yes/no decision rules, the confusion
counts by hand, the breakdowns, and the evaluation's report, table and demo output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medhall.evaluate.pope import (
    KnownQuestion,
    confusion_scores,
    decide,
    expected_answer,
    is_polar,
    known_questions,
    pope_scores,
)

# --------------------------------------------------------------------------- which questions


@pytest.mark.parametrize("question", [
    "Is there a foreign body in this X-ray?",
    "Does this CT scan show dental caries?",
    "Can a lytic lesion be seen in this image?",
    "Any sign of a lymphoma in this picture?",
    "Quick question: is there a sarcoma in there?",
    "My doctor mentioned a fracture. Can you see it on my ultrasound image?",
    "I was told the mass is on the right side. Is that what the image shows?",
    "So the lesion is large, right?",
    "Looks like the nodule is calcified, doesn't it?",
    "I count two nodules here, right?",
    "Are the findings compatible with pneumonia?",
    "Can you spot a stent in this picture?",
])
def test_yes_no_questions(question):
    assert is_polar(question)


@pytest.mark.parametrize("question", [
    "Please comment on the surgical clip in this MRI scan.",
    "How large is the lipoma in this image?",
    "Where exactly is the mass located in this image?",
    "Can you describe the papilledema seen near the microaneurysms?",
    "Could you tell me what the lesion looks like?",
    "Describe the microaneurysms seen in this image.",
    "What does it mean that the lesion is large?",
    "Is there a mass",  # no question mark: not asked as a question
    "",
])
def test_open_questions(question):
    assert not is_polar(question)


def _row(question, category, meta, answer="...", qa="qa_1", modality="CT"):
    return {"qa_id": qa, "question": question, "answer": answer, "category": category, "meta": json.dumps(meta),
            "modality": modality}


def test_the_offline_generator_tasks_say_the_answer():
    absent = expected_answer(_row("Is there a hernia in this CT scan?", "nonexistent_object",
                                  {"task": "absent", "strategy": "adversarial", "strategy_requested": "adversarial"},
                                  answer="There is no hernia visible in this image."))
    assert absent == KnownQuestion("qa_1", "no", "nonexistent_object", "adversarial", None, "CT", "generator")
    swap = expected_answer(_row("Is the mass on the right side?", "object_manipulation",
                                {"task": "attribute", "swapped": {"group": "laterality", "from": "left", "to": "right"}}))
    assert (swap.expected, swap.attribute_type, swap.strategy) == ("no", "laterality", None)
    number = expected_answer(_row("Does this image show two nodules?", "object_manipulation",
                                  {"task": "number", "swapped": {"group": "number"}}))
    assert (number.expected, number.attribute_type) == ("no", "number")
    present = expected_answer(_row("Does this MRI scan show a lesion?", "finding_recognition", {"task": "present"},
                                   answer="Yes. An enhancing lesion."))
    assert (present.expected, present.strategy, present.basis) == ("yes", None, "generator")
    assert expected_answer(_row("Is this image consistent with glioma?", "disease_recognition", {"task": "confirm"})).expected == "yes"
    # a relation the caption does not support is not a "no"; an open question needs a judge
    assert expected_answer(_row("Is the mass invading the liver?", "object_manipulation", {"task": "relation"})) is None
    assert expected_answer(_row("How large is the hernia in this image?", "nonexistent_object", {"task": "absent"})) is None
    # an offline task whose answer is not yes/no is never read from its ground truth
    assert expected_answer(_row("Is it true that MRI uses ionising radiation?", "knowledge_distortion",
                                {"task": "premise"}, answer="No. MRI uses no ionising radiation.")) is None


def test_other_rows_take_the_answer_from_the_ground_truth():
    yes = expected_answer({"qa_id": "q", "question": "Is there an effusion?", "answer": "Yes, a small left effusion.",
                           "category": None, "meta": None})
    assert (yes.expected, yes.basis) == ("yes", "ground_truth")
    no = expected_answer({"qa_id": "q", "question": "Is the heart enlarged?", "answer": "No", "category": None, "meta": "{}"})
    assert no.expected == "no"
    assert expected_answer({"qa_id": "q", "question": "Is the heart enlarged?", "answer": "There is cardiomegaly.",
                            "category": None, "meta": None}) is None


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(("answer", "first_word", "pope"), [
    ("Yes, there is a small hernia.", "yes", "yes"),
    ("No.", "no", "no"),
    ("no, there is none", "no", "no"),
    ("There is no hernia in this image.", None, "no"),
    ("The answer to your question is: no, there is no sarcoma in there.", None, "no"),
    ("The image shows a large hernia.", None, "yes"),  # POPE reads anything without a negation as yes
    ("Not that I can see.", None, "yes"),  # POPE's list has "not" and "No" but not "Not"
    ("Yes. But it is not large.", "yes", "yes"),  # POPE reads the first sentence only
    ("", None, "yes"),
    (None, None, "yes"),
    ("Yesterday's scan showed it.", None, "yes"),
])
def test_decision_rules(answer, first_word, pope):
    assert decide(answer, "first_word") == first_word
    assert decide(answer, "pope") == pope
    with pytest.raises(ValueError, match="unknown decision rule"):
        decide("yes", "lenient")


# --------------------------------------------------------------------------- the scores


def test_confusion_scores_by_hand():
    s = confusion_scores(["yes", "yes", "no", "no", "no"], ["yes", "no", "yes", "no", None], n_failed=2)
    assert (s["tp"], s["fn"], s["fp"], s["tn"], s["undecided"], s["n"], s["n_failed"]) == (1, 1, 1, 1, 1, 5, 2)
    assert (s["n_expected_yes"], s["n_expected_no"]) == (2, 3)
    assert s["accuracy"] == 0.5 and s["accuracy_all"] == pytest.approx(2 / 5)
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5
    assert s["yes_ratio"] == 0.5 and s["hallucination_rate"] == 0.5 and s["undecided_share"] == pytest.approx(0.2)
    always_yes = confusion_scores(["yes", "no", "no", "no"], ["yes"] * 4)
    assert always_yes["precision"] == 0.25 and always_yes["recall"] == 1.0 and always_yes["f1"] == pytest.approx(0.4)
    assert always_yes["yes_ratio"] == 1.0 and always_yes["hallucination_rate"] == 1.0 and always_yes["accuracy"] == 0.25
    all_no = confusion_scores(["no", "no"], ["no", "no"])
    assert all_no["precision"] is None and all_no["recall"] is None and all_no["f1"] is None
    assert all_no["accuracy"] == 1.0 and all_no["hallucination_rate"] == 0.0 and all_no["yes_ratio"] == 0.0
    wrong = confusion_scores(["yes", "no"], ["no", "yes"])
    assert wrong["precision"] == 0.0 and wrong["recall"] == 0.0 and wrong["f1"] == 0.0
    nothing = confusion_scores([], [])
    assert nothing["n"] == 0 and nothing["accuracy"] is None and nothing["undecided_share"] is None


def test_pope_scores_breakdowns_share_the_yes_questions_across_strategies():
    known = [
        KnownQuestion("y1", "yes", "finding_recognition", modality="CT"),
        KnownQuestion("y2", "yes", "disease_recognition", modality="MR"),
        KnownQuestion("r1", "no", "nonexistent_object", strategy="random", modality="CT"),
        KnownQuestion("r2", "no", "nonexistent_object", strategy="random", modality="CT"),
        KnownQuestion("p1", "no", "nonexistent_object", strategy="popular", modality="MR"),
        KnownQuestion("a1", "no", "object_manipulation", attribute_type="laterality", modality=None),
    ]
    answers = {"y1": "Yes.", "y2": "No, it is not.", "r1": "Yes, I see one.", "r2": "No.", "p1": "There is none.", "a1": None}
    t = pope_scores(known, answers, model="m")
    from medhall.schema import POPE_SCORES

    assert t.schema.equals(POPE_SCORES, check_metadata=False)
    rows = {(r["rule"], r["breakdown"], r["group"]): r for r in t.to_pylist()}
    overall = rows[("first_word", "overall", "all")]
    assert (overall["n"], overall["n_failed"], overall["tp"], overall["fn"], overall["fp"], overall["tn"], overall["undecided"]) \
        == (5, 1, 1, 1, 1, 1, 1)
    random_ = rows[("first_word", "strategy", "random")]
    assert (random_["n"], random_["n_expected_yes"], random_["n_expected_no"]) == (4, 2, 2)
    popular = rows[("first_word", "strategy", "popular")]
    assert (popular["n"], popular["undecided"]) == (3, 1)
    assert ("first_word", "strategy", "adversarial") not in rows  # no adversarial question: no group
    # POPE's rule finds no "no" in "There is none": a yes, so a hallucination; the strict rule leaves it undecided
    assert rows[("pope", "strategy", "popular")]["fp"] == 1 and rows[("pope", "strategy", "popular")]["undecided"] == 0
    assert rows[("first_word", "attribute_type", "laterality")]["n_failed"] == 1
    assert rows[("first_word", "modality", "unknown")]["n"] == 0
    assert rows[("first_word", "category", "nonexistent_object")]["hallucination_rate"] == 0.5
    order = [(r["breakdown"], r["group"]) for r in t.to_pylist() if r["rule"] == "first_word"]
    assert order[:3] == [("overall", "all"), ("strategy", "random"), ("strategy", "popular")]
    assert order[-1] == ("modality", "unknown")


def test_known_questions_skips_what_needs_a_judge():
    rows = [_row("Is there a hernia?", "nonexistent_object", {"task": "absent", "strategy": "random"}, qa="a"),
            _row("Describe the hernia.", "nonexistent_object", {"task": "absent", "strategy": "random"}, qa="b"),
            _row("What is shown?", "captioning", {"task": "describe"}, qa="c")]
    assert [k.qa_id for k in known_questions(rows)] == ["a"]


# --------------------------------------------------------------------------- in the evaluation


def test_the_evaluation_scores_pope_stores_it_and_reports_it(built, tmp_path: Path, capsys):
    """Imported answers to the sample build's test split: "Yes, it is there." to every question
    whose answer is known without a judge (a model that hallucinates every absent finding)."""
    from medhall.cli import _print_evaluation
    from medhall.evaluate.pipeline import EvalConfig, ImportSpec, load_questions, run_eval
    from medhall.evaluate.pope import eval_pope
    from medhall.store import query

    cfg0 = EvalConfig(dataset="sample-instruct", model=ImportSpec(paths=(str(tmp_path / "answers.jsonl"),)),
                      model_name="yes-man", metrics=("rouge",), n_boot=20)
    questions = load_questions(built, cfg0)
    instr = {r["qa_id"]: r for r in built.read("instructions", "sample-instruct").to_pylist()}
    known = {k.qa_id: k for k in known_questions({**r, "meta": instr[r["qa_id"]]["meta"]} for r in questions.rows())}
    assert known and any(k.expected == "no" for k in known.values())
    with (tmp_path / "answers.jsonl").open("w") as f:
        for r in questions.rows():
            answer = "Yes, it is there." if r["qa_id"] in known else "I cannot tell."
            f.write(json.dumps({"question_id": r["qa_id"], "question": r["question"], "answer": answer}) + "\n")
    result = run_eval(built, cfg0)
    assert "pope_scores" in result.artifacts
    pope = result.report.pope
    overall = next(r for r in pope.to_pylist() if r["rule"] == "first_word" and r["breakdown"] == "overall")
    no = sum(1 for k in known.values() if k.expected == "no")
    assert overall["n"] == len(known) and overall["undecided"] == 0 and overall["fp"] == no
    assert overall["yes_ratio"] == 1.0 and overall["hallucination_rate"] == 1.0
    assert "## Hallucination without a judge" in result.report.markdown
    assert "hallucination rate 100.0 %" in result.report.markdown
    assert result.report.pope_paths["chart"].exists() and result.report.pope_paths["csv"].exists()
    view = result.eval_dataset.replace("-", "_")
    got = query(built, f"select hallucination_rate from pope_scores__{view} where rule = 'first_word' and breakdown = 'overall'")
    assert got.to_pylist() == [{"hallucination_rate": 1.0}]
    again = eval_pope(built, cfg0)  # the same scores from the stored answers (run_id aside)
    assert again.drop_columns(["run_id"]).equals(pope.drop_columns(["run_id"]))
    _print_evaluation(result.report.markdown_path)
    printed = capsys.readouterr().out
    assert "Hallucination without a judge" in printed and "hallucination rate 100.0 %" in printed


def test_the_report_section_without_and_with_known_questions():
    from medhall.evaluate.pope import markdown_section, summary_lines

    assert "No question of this set has a yes/no answer" in markdown_section(None)
    assert summary_lines(None) == []
    known = [KnownQuestion("a", "no", "nonexistent_object", strategy="random"), KnownQuestion("b", "yes", "finding_recognition")]
    t = pope_scores(known, {"a": "There is no such thing.", "b": "Yes."}, model="m")
    lines = summary_lines(t)
    assert lines[0] == "2 yes/no questions whose right answer is known without a judge (1 yes, 1 no):"
    assert lines[1].startswith("`first_word`: hallucination rate n/a (0 of 0 decided no-questions answered yes)")
    assert "undecided 1 of 2 (50.0 %)" in lines[1]
    assert lines[2].startswith("`pope`: hallucination rate 0.0 % (0 of 1 decided no-questions answered yes), accuracy 100.0 %")
    section = markdown_section(t)
    assert f"**{lines[0]}**" in section and "| strategy | random | 2 | 1 / 1 |" in section
