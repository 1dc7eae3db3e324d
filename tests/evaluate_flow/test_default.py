"""The main job's evaluation with the real embedded SmolLM2 (slow: about 40 s to 3 min on 2 cores).

The fast equivalent with a scripted text model is test_pipeline.py::test_text_only_baseline_report."""

from __future__ import annotations

from typing import Any

import pytest

from .scripted import DATASET


@pytest.mark.slow
def test_evaluate_default_with_embedded_smollm2(built: Any, wordnet_ok: None) -> None:
    pytest.importorskip("gguf")
    from medhall.evaluate.pipeline import evaluate_default

    out = evaluate_default(built, DATASET)
    assert out["model"] == "smollm2-135m-instruct-text-only" and out["answered"] > 40
    assert set(out["artifacts"]) == {"predictions", "scores", "llm_calls"}  # no judgments without a judge
    md = open(out["report"]).read()
    assert "did not see the image" in md and "MEDHALL_LLM_BASE_URL" in md and "need a judge endpoint" in md
    assert "M. Score" in out["summary"] and out["judge_help"]
    preds = built.read("predictions", out["eval_dataset"])
    assert preds.num_rows == out["answered"] and set(preds.column("status").to_pylist()) == {"ok"}
    again = evaluate_default(built, DATASET)  # resumed: nothing answered again, no model load
    assert again["answered"] == 0 and again["seconds"]["answers"] < 5
