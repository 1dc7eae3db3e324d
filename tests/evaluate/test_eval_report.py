"""Report: bootstrap intervals, Table 2 cells, breakdowns, comparison and renderers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from medhall.evaluate.judge import AXES
from medhall.evaluate.report import (
    markdown_compare,
    markdown_pn,
    markdown_table,
    plot_report,
    write_csv,
)
from medhall.evaluate.table2 import REPORT_SCHEMA, bootstrap_mean, compare, label_maps, table2
from medhall.schema import from_rows


def test_bootstrap_contains_mean_and_is_seeded():
    x = np.random.default_rng(1).normal(5, 2, size=500)
    a = bootstrap_mean(x, seed=7)
    assert a.ci_low < a.mean < a.ci_high and a.n == 500 and a.mean == pytest.approx(float(x.mean()))
    assert bootstrap_mean(x, seed=7) == a
    assert bootstrap_mean(x, seed=8) != a
    assert a.ci_high - a.ci_low == pytest.approx(2 * 1.96 * x.std() / np.sqrt(500), rel=0.15)
    assert bootstrap_mean([]).mean is None and bootstrap_mean([3.0]).ci_low == 3.0


def _judgment(qa: str, scores: tuple[int, int, int, int] | None, model: str = "m") -> dict:
    row = {"judgment_id": f"j_{model}_{qa}", "qa_id": qa, "model": model, "judge_model": "gpt-4o",
           "status": "ok" if scores else "failed", "attempts": 1}
    row.update(dict(zip(AXES, scores or (None,) * 4, strict=True)))
    return row


@pytest.fixture
def small():
    judgments = from_rows("judgments", [
        _judgment("p1", (8, 8, 6, 9)), _judgment("p2", (6, 6, 4, 7)), _judgment("p3", None),
        _judgment("n1", (2, 3, 4, 1)), _judgment("n2", (4, 5, 6, 3)), _judgment("x1", (5, 5, 5, 5)),
    ])
    scores = from_rows("scores", [
        {"qa_id": "p1", "model": "m", "metric": "meteor", "value": 0.5, "params": "{}"},
        {"qa_id": "p2", "model": "m", "metric": "meteor", "value": 0.3, "params": "{}"},
        {"qa_id": "n1", "model": "m", "metric": "meteor", "value": None, "params": "{}"},
        {"qa_id": "n2", "model": "m", "metric": "meteor", "value": 0.2, "params": "{}"},
    ])
    kinds = {"p1": "positive", "p2": "positive", "p3": "positive", "n1": "negative", "n2": "negative"}
    return judgments, scores, kinds


def _cell(report: pa.Table, **keys) -> dict:
    mask = None
    for k, v in keys.items():
        m = pc.equal(report[k], v)
        mask = m if mask is None else pc.and_(mask, m)
    rows = report.filter(mask).to_pylist()
    assert len(rows) == 1, keys
    return rows[0]


def test_table2_means_failures_and_unknown_kind(small):
    judgments, scores, kinds = small
    report = table2(judgments, scores, kinds, categories={"p1": "captioning", "p2": "captioning"}, seed=1)
    assert report.schema.equals(REPORT_SCHEMA)
    acc_p = _cell(report, breakdown="overall", kind="positive", measure="clinical_accuracy")
    assert (acc_p["mean"], acc_p["n"], acc_p["n_failed"]) == (7.0, 2, 1)  # the failure is counted, not averaged
    assert acc_p["ci_low"] <= 7.0 <= acc_p["ci_high"]
    assert _cell(report, breakdown="overall", kind="negative", measure="risk_level")["mean"] == 2.0
    met_n = _cell(report, breakdown="overall", kind="negative", measure="meteor")
    assert (met_n["mean"], met_n["n"], met_n["n_failed"]) == (0.2, 1, 1)
    assert _cell(report, breakdown="overall", kind="unknown", measure="detail_level")["n"] == 1
    assert _cell(report, breakdown="category", group="captioning", kind="positive", measure="detail_level")["mean"] == 5.0
    assert _cell(report, breakdown="category", group="unknown", kind="positive", measure="detail_level")["n_failed"] == 1
    assert report.filter(pc.equal(report["breakdown"], "modality")).num_rows == 0
    assert table2(judgments, scores, kinds, seed=1).equals(table2(judgments, scores, kinds, seed=1))


def test_scores_of_different_encoders_are_not_mixed(small):
    judgments, _, kinds = small
    scores = from_rows("scores", [
        {"qa_id": "p1", "model": "m", "metric": "bertscore_f1", "value": 0.9, "params": '{"encoder":"roberta-large"}'},
        {"qa_id": "p2", "model": "m", "metric": "bertscore_f1", "value": 0.7, "params": '{"encoder":"minilm"}'},
    ])
    with pytest.raises(ValueError, match="different params"):
        table2(judgments, scores, kinds)


def test_label_maps():
    instructions = from_rows("instructions", [
        {"qa_id": "q1", "image_id": "img_1", "dataset": "d", "question": "?", "kind": "negative",
         "category": "object_manipulation", "source": "s"},
    ])
    images = from_rows("images", [{"image_id": "img_1", "dataset": "d", "source": "s", "image_ref": "a.jpg", "modality": "CT"}])
    maps = label_maps(instructions, images)
    assert maps == {"kinds": {"q1": "negative"}, "categories": {"q1": "object_manipulation"}, "modalities": {"q1": "CT"}}


def test_compare_and_renderers(small, tmp_path: Path):
    judgments, scores, kinds = small
    base = table2(judgments, scores, kinds)
    tuned_j = from_rows("judgments", [_judgment("p1", (9, 9, 7, 9), "tuned"), _judgment("n1", (6, 6, 6, 6), "tuned")])
    tuned = table2(tuned_j, None, kinds)
    cmp = compare(base, tuned)
    acc_n = _cell(cmp, breakdown="overall", kind="negative", measure="clinical_accuracy")
    assert (acc_n["mean_a"], acc_n["mean_b"], acc_n["diff"]) == (3.0, 6.0, 3.0)
    assert _cell(cmp, breakdown="overall", kind="positive", measure="meteor")["diff"] is None
    with pytest.raises(ValueError, match="one model"):
        compare(pa.concat_tables([base, tuned]), tuned)

    pn = markdown_pn(pa.concat_tables([base, tuned]))
    assert "| Method | Cli. Acc. P&N |" in pn and "| m | 7.00&3.00 |" in pn and "| tuned | 9.00&6.00 |" in pn
    table = markdown_table(base)
    assert "| m | all | positive | Cli. Acc. | 7.000 |" in table and "95 % CI" in table
    assert "| all | negative | Cli. Acc. | 3.000 | 6.000 | +3.000 |" in markdown_compare(cmp, labels=("base", "fine-tuned"))

    path = write_csv(base, tmp_path / "report.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == base.num_rows and rows[0]["measure"] == "clinical_accuracy"
    png = plot_report(pa.concat_tables([base, tuned]), tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
