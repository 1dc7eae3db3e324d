"""The runner protocol's data and the predictions table (no model needed)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medhall.ids import content_id
from medhall.images import ImageProblem
from medhall.infer import Answer, LocalVLM, Query, Runner, predictions_table
from medhall.schema import PREDICTIONS


def test_importing_the_package_loads_no_torch() -> None:
    code = (
        "import sys; from medhall.infer import LocalVLM; LocalVLM('/nowhere'); "
        "heavy = {'torch', 'transformers', 'peft'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predictions_table_validates_against_the_schema() -> None:
    queries = [Query("qa_1", "Is there a mass?", "a.png"), Query("qa_2", "Which organ?", None)]
    answers = [
        Answer("qa_1", "No mass is seen.", latency_s=0.5, meta={"new_tokens": 5}),
        Answer.failure("qa_2", ImageProblem("missing_image", "no such file: b.png"), 0.1),
    ]
    table = predictions_table("tiny-llava", queries, answers, origin="local", run_id="run_x")
    assert table.schema.equals(PREDICTIONS, check_metadata=True)
    ok, failed = table.to_pylist()
    assert ok["pred_id"] == content_id("pred", "tiny-llava", "qa_1")
    assert (ok["status"], ok["answer"], ok["error"]) == ("ok", "No mass is seen.", None)
    assert json.loads(ok["meta"]) == {"new_tokens": 5} and ok["run_id"] == "run_x"
    assert (failed["status"], failed["answer"]) == ("failed", None)
    assert failed["error"] == "missing_image: no such file: b.png"
    assert failed["question"] == "Which organ?" and failed["origin"] == "local"


def test_predictions_table_refuses_mismatches() -> None:
    q = [Query("qa_1", "?")]
    with pytest.raises(ValueError, match="origin"):
        predictions_table("m", q, [Answer("qa_1", "x")], origin="elsewhere")
    with pytest.raises(ValueError, match="1 queries but 0 answers"):
        predictions_table("m", q, [])
    with pytest.raises(ValueError, match="paired"):
        predictions_table("m", q, [Answer("qa_2", "x")])


def test_answer_failure_describes_the_error() -> None:
    assert Answer.failure("q", ValueError("bad")).error == "ValueError: bad"
    assert Answer.failure("q", "plain words").error == "plain words"
    assert not Answer.failure("q", "x").ok and Answer("q", "").ok  # an empty answer is an answer


def test_local_vlm_is_a_runner_and_checks_its_options() -> None:
    runner = LocalVLM("/models/llava-med-v1.5-mistral-7b-hf", adapter_path="/lora/run1/")
    assert isinstance(runner, Runner)
    assert runner.name == "llava-med-v1.5-mistral-7b-hf+run1"
    assert "batch_size" not in runner.settings() and runner.settings()["decoding"] == "greedy"
    assert LocalVLM("x", name="mine").name == "mine"
    for bad in ({"dtype": "int8"}, {"device": "tpu"}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            LocalVLM("x", **bad)
    assert LocalVLM("x").answer([]) == []  # nothing to do loads nothing
