"""The metric cache: a re-run of a finished evaluation's metrics computes nothing and writes no
new ``scores`` version; a changed answer is the only pair scored again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from medhall.evaluate import text_metrics
from medhall.evaluate.metric_cache import MetricCache, cache_path
from medhall.evaluate.text_metrics import EncoderUnavailable, compute_metrics

REFS = ["the liver is enlarged", "no fracture is seen", "the chest x-ray shows a right lower lobe pneumonia"]
HYPS = ["the liver is large", "there is a fracture of the femur", "pneumonia in the right lower lobe"]


def _forbid_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a metric was computed although every value is cached")

    for name in ("meteor", "rouge", "bertscore"):
        monkeypatch.setattr(text_metrics, name, boom)


def _encoder_or_skip() -> None:
    try:
        text_metrics.default_encoder_dir()
    except EncoderUnavailable as e:
        pytest.skip(str(e))


def test_second_run_computes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _encoder_or_skip()
    metrics = ["rouge1", "rougeL", "bertscore_f1"]
    cache = MetricCache(tmp_path / "scores.sqlite")
    first = compute_metrics(REFS, HYPS, metrics, cache=cache)
    assert (cache.computed, cache.hits) == (9, 0) and len(cache) == 9
    assert [r.values for r in first] == [r.values for r in compute_metrics(REFS, HYPS, metrics)]  # same as uncached

    _forbid_scoring(monkeypatch)
    again = MetricCache(tmp_path / "scores.sqlite")  # a new process would open it afresh
    second = compute_metrics(REFS, HYPS, metrics, cache=again)
    assert (again.computed, again.hits) == (0, 9)
    assert [(r.metric, r.values, r.params) for r in second] == [(r.metric, r.values, r.params) for r in first]


def test_only_new_pairs_are_scored(tmp_path: Path) -> None:
    cache = MetricCache(tmp_path / "scores.sqlite")
    compute_metrics(REFS, HYPS, ["rouge1", "rouge2"], cache=cache)
    changed = [*HYPS[:2], "a new answer"]
    before = cache.computed
    results = compute_metrics(REFS, changed, ["rouge1", "rouge2", "rougeL"], cache=cache)
    # rouge1/rouge2 of the changed pair, and rougeL (never asked for before) of all three
    assert cache.computed - before == 2 + 3
    assert results[0].values == compute_metrics(REFS, changed, ["rouge1"])[0].values
    # the key holds the params: another stemmer setting is another value
    other = MetricCache.identity(text_metrics.rouge_params("rouge1", use_stemmer=False))
    assert MetricCache.key("rouge1", other, REFS[0], HYPS[0]) != MetricCache.key(
        "rouge1", MetricCache.identity(text_metrics.rouge_params("rouge1")), REFS[0], HYPS[0])


def test_rerun_of_an_evaluation_computes_and_writes_nothing(built: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pipeline.compute_metrics twice on a small evaluation (6 questions, canned answers)."""
    _encoder_or_skip()
    from medhall.evaluate.pipeline import EvalConfig, compute_metrics, load_questions
    from medhall.schema import from_rows

    cfg = EvalConfig(dataset="sample-instruct", model_name="canned", metrics=("rouge", "bertscore"), max_questions=6)
    questions = load_questions(built, cfg).rows()
    rows = [{"pred_id": f"p{i}", "qa_id": q["qa_id"], "model": "canned", "status": "ok",
             "answer": " ".join(q["answer"].split()[: 3 + i])} for i, q in enumerate(questions)]
    built.write("predictions", from_rows("predictions", rows), dataset=cfg.eval_dataset())

    cache = MetricCache(cache_path(built.root))
    first, skipped = compute_metrics(built, cfg, "run-1", cache=cache)
    assert skipped == [] and first.rows == 6 * 4 and cache.computed == 6 * 4 and first.version == 1

    _forbid_scoring(monkeypatch)
    again = MetricCache(cache_path(built.root))
    second, _ = compute_metrics(built, cfg, "run-1", cache=again)
    assert (again.computed, again.hits) == (0, 6 * 4)
    assert second.version == 1 and second.fingerprint == first.fingerprint  # no new scores version
    assert [a.version for a in built.versions("scores", cfg.eval_dataset())] == [1]
