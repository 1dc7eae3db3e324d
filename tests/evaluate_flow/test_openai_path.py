"""The real OpenAI-compatible path: the local test server (tests/llm/server.py) as the judge and
as an API model under test, end to end, including judge replies that do not parse.

The server answers ``echo: <prompt>`` (which no judge parser reads as scores) unless the last
user message carries ``[[reply:TEXT]]``; imported answers carry that directive for half of the
questions, so the judge's case message makes the server reply with valid scores for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medhall.endpoints import LLMSettings
from medhall.evaluate.pipeline import APISpec, EvalConfig, ImportSpec, load_questions, run_eval

from .scripted import DATASET, GOOD

N = 8


def _submission(store: Any, cfg: EvalConfig, tmp_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Official-format JSONL per kind (question_id = qa_id); one question left unanswered.
    Returns the files and the expected judge outcome per answered qa_id (ok / failed)."""
    rows = load_questions(store, cfg).rows()
    expected: dict[str, str] = {}
    files = {kind: tmp_path / f"submission_{kind}.jsonl" for kind in ("positive", "negative")}
    lines: dict[str, list[str]] = {k: [] for k in files}
    for i, r in enumerate(rows[:-1]):
        directive = i % 2 == 0
        answer = "The scan shows the expected anatomy." + (f" [[reply:{GOOD}]]" if directive else "")
        expected[r["qa_id"]] = "ok" if directive else "failed"
        lines[r["kind"]].append(json.dumps({"question_id": r["qa_id"], "image": "x.png", "question": r["question"], "answer": answer}))
    for kind, path in files.items():
        path.write_text("\n".join(lines[kind]) + "\n")
    return list(files.values()), expected


def test_server_as_judge_end_to_end(built: Any, server: Any, tmp_path: Path) -> None:
    judge = LLMSettings(base_url=server.base_url, model="judge-model", timeout_s=5)
    probe = EvalConfig(dataset=DATASET, model=ImportSpec(paths=("p",)), model_name="imported", max_questions=N)
    files, expected = _submission(built, probe, tmp_path)
    cfg = EvalConfig(dataset=DATASET, model=ImportSpec(paths=tuple(map(str, files))), model_name="imported",
                     judge=judge, metrics=("rouge",), max_questions=N, shard_size=3, n_boot=100)
    result = run_eval(built, cfg)

    preds = {r["qa_id"]: r for r in built.read("predictions", result.eval_dataset).to_pylist()}
    assert len(preds) == N and set(r["origin"] for r in preds.values()) == {"import"}
    missing = [r for r in preds.values() if r["status"] == "failed"]
    assert len(missing) == 1 and missing[0]["error"].startswith("not_answered")

    judgments = {r["qa_id"]: r for r in built.read("judgments", result.eval_dataset).to_pylist()}
    assert judgments.keys() == expected.keys()  # every answered question judged, none dropped
    for qa, want in expected.items():
        j = judgments[qa]
        assert j["status"] == want and j["judge_model"] == "judge-model"
        if want == "ok":
            assert (j["clinical_accuracy"], j["clinical_relevance"], j["detail_level"], j["risk_level"]) == (7, 8, 6, 9)
            assert j["attempts"] == 1
        else:  # the server's reply did not parse: retried (with the reason), then failed with its raw text
            assert j["raw"].startswith("echo:") and j["attempts"] == 3 and j["clinical_accuracy"] is None
    n_ok = sum(v == "ok" for v in expected.values())
    stats = server.stats()
    assert stats["served"] == n_ok + 3 * (len(expected) - n_ok)
    assert stats["last_body"]["temperature"] == 0

    ledger = built.read("llm_calls", result.eval_dataset).to_pylist()
    assert {r["stage"] for r in ledger} == {"judge"} and {r["backend"] for r in ledger} == {"openai"}
    overall = [r for r in result.report.table.to_pylist() if r["breakdown"] == "overall" and r["measure"] == "risk_level"]
    assert sum(r["n_failed"] for r in overall) == len(expected) - n_ok
    assert "judge-model" in result.report.markdown

    server.reset()  # resume: nothing is asked again
    again = run_eval(built, cfg)
    assert again.answered == 0 and again.judged == 0 and server.stats()["total"] == 0


def test_server_as_api_model_under_test(built: Any, server: Any) -> None:
    llm = LLMSettings(base_url=server.base_url, model="vlm-model", timeout_s=5)
    cfg = EvalConfig(dataset=DATASET, model=APISpec(llm=llm, max_tokens=64), metrics=("rouge",), max_questions=4, n_boot=100)
    result = run_eval(built, cfg)
    assert result.model == "vlm-model"
    preds = built.read("predictions", result.eval_dataset).to_pylist()
    assert [p["status"] for p in preds] == ["ok"] * 4 and {p["origin"] for p in preds} == {"api"}
    assert all(p["answer"].startswith("echo:") for p in preds)
    assert server.stats()["images"] == 4  # each question went with its image
    assert all(json.loads(p["meta"])["image"] for p in preds)
    assert "did not see the image" not in result.report.markdown
