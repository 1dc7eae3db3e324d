"""run_eval end to end on a built sample dataset: a tiny local VLM under test, a scripted judge
(parseable and unparseable replies), resume, anchoring, comparison, the text-only baseline."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.compute as pc
import pytest

from medhall.evaluate.pipeline import (
    EvalConfig,
    LocalVLMSpec,
    default_eval_config,
    eval_dataset_name,
    load_questions,
    run_eval,
)

from .scripted import BAD, DATASET, bucket, judge_script

N = 9


def _cfg(tiny_llava: Any, **kw: Any) -> EvalConfig:
    base = dict(dataset=DATASET, model=LocalVLMSpec(path=str(tiny_llava), max_new_tokens=12), max_questions=N,
                shard_size=4, metrics=("rouge", "bertscore"), n_boot=200)
    return EvalConfig(**{**base, **kw})


def test_tiny_vlm_with_scripted_judge(built: Any, tiny_llava: Any, fake_client: Any) -> None:
    cfg = _cfg(tiny_llava)
    judge = fake_client(judge_script)
    result = run_eval(built, cfg, judge_client=judge)
    assert result.answered == N and result.eval_dataset == eval_dataset_name(DATASET, "test", "tiny-llava", N)

    preds = built.read("predictions", result.eval_dataset)
    assert preds.num_rows == N and set(preds.column("origin").to_pylist()) == {"local"}
    assert set(preds.column("run_id").to_pylist()) == {result.run_id}

    judgments = built.read("judgments", result.eval_dataset).to_pylist()
    assert len(judgments) == N  # every answer judged: no row dropped
    questions = {r["qa_id"]: r for r in load_questions(built, cfg).rows()}
    for j in judgments:
        b = bucket(questions[j["qa_id"]]["question"].strip())
        assert j["judge_model"] == "fake-judge" and j["anchor_model"] is None and j["run_id"] == result.run_id
        if b == 2:  # never parsed: failed, raw kept, no score
            assert j["status"] == "failed" and j["raw"] == BAD and j["attempts"] == 3
            assert j["clinical_accuracy"] is None and j["error"].startswith("parse failed: no_scores")
        else:  # parsed at once, or on the retry that showed the judge its reply
            assert j["status"] == "ok" and j["attempts"] == (1 if b == 0 else 2)
            assert (j["clinical_accuracy"], j["risk_level"]) == (7, 9)
    failed = sum(j["status"] == "failed" for j in judgments)
    assert 0 < failed < N

    report = result.report.table.to_pylist()
    acc = [r for r in report if r["breakdown"] == "overall" and r["measure"] == "clinical_accuracy"]
    assert sum(r["n"] for r in acc) == N - failed and sum(r["n_failed"] for r in acc) == failed
    assert all(r["mean"] == 7.0 for r in acc if r["n"])  # failures are never averaged in
    assert {r["breakdown"] for r in report} == {"overall", "category", "modality"}

    scores = built.read("scores", result.eval_dataset)
    bert = scores.filter(pc.equal(scores.column("metric"), "bertscore_f1"))
    assert bert.num_rows == N
    params = json.loads(bert.column("params")[0].as_py())
    assert params["encoder"] == "sentence-transformers/all-MiniLM-L6-v2" and params["num_layers"] == 6
    assert {"rouge1", "rouge2", "rougeL"} <= set(scores.column("metric").to_pylist())

    md = result.report.markdown_path.read_text()
    assert f"**{failed} failed**" in md and "never averaged in" in md
    assert result.report.png_path.stat().st_size > 0 and result.report.csv_path.exists()
    ledger = built.read("llm_calls", result.eval_dataset)
    assert set(ledger.column("stage").to_pylist()) == {"judge"}


def test_resume_makes_no_new_calls(built: Any, tiny_llava: Any, fake_client: Any) -> None:
    cfg = _cfg(tiny_llava, metrics=("rouge",))
    judge = fake_client(judge_script)
    first = run_eval(built, cfg, judge_client=judge)
    calls = judge.backend.total_calls
    assert first.answered == N and first.judged == N and calls > N  # retries included

    again = run_eval(built, cfg, judge_client=fake_client(judge_script, cache="other.sqlite"))
    assert again.answered == 0 and again.judged == 0  # nothing recomputed, not even from a cache
    for table in ("predictions", "judgments", "scores"):
        assert built.get(table, again.eval_dataset).version == 1  # identical content: no new version


def test_killed_run_resumes_with_unfinished_shards_only(built: Any, tiny_llava: Any) -> None:
    from medhall.evaluate.pipeline import EvalError

    cfg = _cfg(tiny_llava, metrics=("rouge",))
    with pytest.raises(EvalError, match="stopped after 1"):
        run_eval(built, cfg, max_shards=1)
    result = run_eval(built, cfg)
    assert result.answered == N - 4  # the first shard of 4 was not answered again
    assert built.read("predictions", result.eval_dataset).num_rows == N


def test_anchor_and_comparison(built: Any, tiny_llava: Any, fake_client: Any) -> None:
    base = _cfg(tiny_llava, model_name="tiny-base", metrics=("rouge",))
    run_eval(built, base, judge_client=fake_client(judge_script))
    tuned = _cfg(tiny_llava, model_name="tiny-tuned", metrics=("rouge",), baseline_model="tiny-base")
    judge = fake_client(judge_script, cache="tuned.sqlite")
    result = run_eval(built, tuned, judge_client=judge, compare_with="tiny-base")

    base_ok = {j["qa_id"] for j in built.read("judgments", base.eval_dataset()).to_pylist() if j["status"] == "ok"}
    rows = built.read("judgments", result.eval_dataset).to_pylist()
    for j in rows:  # anchored where the baseline has a judged answer; else no anchor, recorded as null
        assert j["anchor_model"] == ("tiny-base" if j["qa_id"] in base_ok else None)
    first_calls = [r for r in judge.backend.requests if not any(m.role == "assistant" for m in r.messages)]
    anchored = [r for r in first_calls if len(r.messages) == 3]
    assert len(anchored) == len(base_ok) and "Sample Answer:" in anchored[0].messages[2].text()
    assert "Sample Scores: 7 8 6 9" in anchored[0].messages[2].text()

    comparison = result.report.comparison
    assert comparison is not None and set(comparison.column("model_a").to_pylist()) - {None} == {"tiny-base"}
    assert any(d is not None for d in comparison.column("diff").to_pylist())
    assert result.report.compare_paths["csv"].exists() and result.report.compare_paths["png"].exists()
    assert "tiny-base vs tiny-tuned" in result.report.markdown


def test_text_only_baseline_report(built: Any, fake_client: Any, wordnet_ok: None) -> None:
    """The main job's configuration with a scripted text model: the report's wording."""
    client = fake_client("It is probably a normal scan.", model="SmolLM2-135M-Instruct", cache="text.sqlite")
    cfg = default_eval_config(DATASET, max_questions=6)
    result = run_eval(built, cfg, client=client)
    md = result.report.markdown
    assert "**Text-only baseline: this model did not see the image**" in md
    for needle in ("need a judge endpoint", "MEDHALL_LLM_BASE_URL", "MEDHALL_LLM_MODEL", "MEDHALL_LLM_API_KEY", "--judge-url"):
        assert needle in md
    for request in client.backend.requests:  # the question alone: no image, no caption
        assert [m.role for m in request.messages] == ["user"] and request.messages[0].images() == []
        assert "Figure Caption" not in request.messages[0].text() and request.max_tokens == 48
    metrics = set(built.read("scores", result.eval_dataset).column("metric").to_pylist())
    assert metrics == {"meteor", "rouge1", "rouge2", "rougeL", "bertscore_f1"}
    meta = [json.loads(m) for m in built.read("predictions", result.eval_dataset).column("meta").to_pylist()]
    assert all(m["image"] is False for m in meta)
    assert result.model == "smollm2-135m-instruct-text-only"


def test_anchor_from_release_judgments(store: Any, medhalltune_dir: Any, fake_client: Any) -> None:
    """The release's LLaVA-Med answers and GPT-4o judge outputs anchor the judge (exact qa_id joins)."""
    from medhall.evaluate.pipeline import ImportSpec, import_baseline
    from medhall.jobs import ingest_to_store

    from .scripted import GOOD

    vals = sorted(medhalltune_dir.glob("val_*_qa-filtered.jsonl"))
    preds = sorted(medhalltune_dir.glob("llava-med-prediction-*-GPT4o-eval-filtered.jsonl"))
    ingest_to_store("medhalltune", vals, dataset="mht", store=store)
    target = import_baseline(store, "mht", preds)
    assert target == "mht-baseline-llava-med-v1.5-7b"
    cfg = EvalConfig(dataset="mht", split=None, model=ImportSpec(paths=tuple(map(str, preds))), model_name="llava-copy",
                     baseline_model="llava-med-v1.5-7b", metrics=("rouge",), max_questions=5, n_boot=100)
    judge = fake_client(GOOD)
    result = run_eval(store, cfg, judge_client=judge)
    rows = store.read("judgments", result.eval_dataset).to_pylist()
    assert len(rows) == 5 and {r["anchor_model"] for r in rows} == {"llava-med-v1.5-7b"}
    anchor = judge.backend.requests[0].messages[2].text()
    assert anchor.startswith("Sample Answer:") and "Sample Scores:" in anchor
    case = judge.backend.requests[0].messages[1].text()
    assert "Figure Caption:" in case and "(no caption)" not in case
