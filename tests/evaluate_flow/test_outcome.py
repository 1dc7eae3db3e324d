"""Every evaluation outcome is true: predictions that do not match, a judge that parses
nothing, a baseline that anchors nothing each make the evaluation incomplete, by reason."""

from __future__ import annotations

import json
from typing import Any

from medhall.evaluate.outcome import eval_outcome
from medhall.evaluate.pipeline import EvalConfig, ImportSpec, LocalVLMSpec, load_questions, run_eval

from .scripted import DATASET, judge_script


def test_predictions_that_match_no_question_are_an_incomplete_evaluation(built: Any, tmp_path) -> None:
    wrong = tmp_path / "preds.jsonl"
    wrong.write_text("\n".join(json.dumps({"question_id": f"nope-{i}", "text": "an answer"}) for i in range(5)))
    cfg = EvalConfig(dataset=DATASET, model=ImportSpec(paths=[str(wrong)]), model_name="imported", max_questions=6,
                     metrics=("rouge",))
    run_eval(built, cfg)
    done = eval_outcome(built, cfg)
    assert not done.ok and done.answered == 0 and done.questions == 6
    assert sum(done.answer_failures.values()) == 6
    assert "no question was answered" in done.summary() and "incomplete" in done.summary()


def test_a_complete_evaluation_and_a_baseline_that_anchors_nothing(built: Any, tiny_llava: Any, fake_client: Any) -> None:
    def cfg(**kw: Any) -> EvalConfig:
        return EvalConfig(dataset=DATASET, model=LocalVLMSpec(path=str(tiny_llava), max_new_tokens=8), max_questions=4,
                          metrics=("rouge",), n_boot=50, **kw)

    def always_parses(request: Any) -> str:
        return "Clinical Accuracy: 7\nClinical Relevance: 8\nDetail Level: 6\nRisk Level: 9\nExplanation: fine."

    plain = cfg()
    run_eval(built, plain, judge_client=fake_client(always_parses))
    done = eval_outcome(built, plain, "fake-judge")
    assert done.ok and done.answered == done.judged == 4 and done.answer_failures == {}
    assert "4 of 4 questions answered, 4 judged by fake-judge" in done.summary()

    anchored_on_nobody = cfg(model_name="tuned", baseline_model="never-evaluated")
    run_eval(built, anchored_on_nobody, judge_client=fake_client(always_parses, cache="t.sqlite"))
    done = eval_outcome(built, anchored_on_nobody, "fake-judge")
    assert not done.ok and done.anchored == 0
    assert "the baseline 'never-evaluated' anchored none of the judgments" in done.summary()


def test_judge_failures_count_against_the_threshold(built: Any, tiny_llava: Any, fake_client: Any) -> None:
    cfg = EvalConfig(dataset=DATASET, model=LocalVLMSpec(path=str(tiny_llava), max_new_tokens=8), max_questions=9,
                     metrics=("rouge",), n_boot=50, shard_size=4)
    run_eval(built, cfg, judge_client=fake_client(judge_script))  # a third of the replies never parse
    done = eval_outcome(built, cfg, "fake-judge")
    failed = sum(done.judge_failures.values())
    assert 0 < failed < 9 and not done.ok and "judgments failed: parse failed: no_scores" in done.summary()
    assert eval_outcome(built, cfg, "fake-judge", max_failed_share=0.9).ok
    assert len(load_questions(built, cfg).qa_ids) == 9


def test_a_comparison_is_made_on_the_questions_both_models_answered(built: Any, tiny_llava: Any, tmp_path) -> None:
    base = EvalConfig(dataset=DATASET, model=LocalVLMSpec(path=str(tiny_llava), max_new_tokens=8), model_name="base",
                      max_questions=6, metrics=("rouge",), n_boot=50)
    run_eval(built, base)
    rows = load_questions(built, base).rows()
    partial = tmp_path / "partial.jsonl"  # answers for half of the questions only
    partial.write_text("\n".join(json.dumps({"question_id": r["qa_id"], "answer": "The image shows a scan."})
                                 for r in rows[:3]))
    other = EvalConfig(dataset=DATASET, model=ImportSpec(paths=[str(partial)]), model_name="partial", max_questions=6,
                       metrics=("rouge",), n_boot=50)
    result = run_eval(built, other, compare_with="base")
    assert "Compared on the 3 of 6 questions both models answered (partial: 3, base: 6)" in result.report.markdown
    cells = [r for r in result.report.comparison.to_pylist() if r["breakdown"] == "overall" and r["measure"] == "rougeL"]
    assert cells and all(r["n_a"] == r["n_b"] for r in cells) and sum(r["n_a"] for r in cells) == 3
