"""The evaluate_model flow under prefect_test_harness: a tiny local VLM under test, the local
OpenAI-compatible server as judge; report artifacts in Prefect; a re-run runs no shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .scripted import DATASET


def _artifact_keys(prefix: str) -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key and a.key.startswith(prefix)}


def test_evaluate_model_flow(flow_home: Path, built: Any, tiny_llava: Path, server: Any) -> None:
    from flows.evaluate_model import evaluate_model
    from medhall.endpoints import LLMSettings

    params = dict(
        dataset=DATASET, model={"kind": "local_vlm", "path": str(tiny_llava), "max_new_tokens": 8},
        judge=LLMSettings(base_url=server.base_url, model="judge-model", timeout_s=5),
        metrics=["rouge"], shard_size=3, max_questions=5,
    )
    # echo replies never parse: every judgment is recorded as failed, so the run ends Failed, saying why
    state = evaluate_model(**params, return_state=True)
    assert state.is_failed() and "the judge judge-model judged no answer" in state.message
    eval_dataset = "sample-instruct-test-n5-eval-tiny-llava"
    assert built.latest("predictions", eval_dataset).rows == 5
    judgments = built.read("judgments", eval_dataset).to_pylist()
    assert len(judgments) == 5 and {j["status"] for j in judgments} == {"failed"}  # recorded, not scored
    assert all(j["raw"].startswith("echo:") and j["attempts"] == 3 for j in judgments)
    report = built.root / "reports" / eval_dataset
    assert (report / "report.md").exists() and (report / "report.png").exists()  # what was made is kept
    keys = _artifact_keys(eval_dataset.lower())
    assert {f"{eval_dataset}-report", f"{eval_dataset}-table2"} <= keys

    served = server.stats()["total"]
    again = evaluate_model(**params, return_state=True)
    assert again.is_failed() and server.stats()["total"] == served  # nothing asked twice

    # a judge that answers: the same flow completes
    server.configure(responder="medhall")
    out = evaluate_model(**{**params, "judge": LLMSettings(base_url=server.base_url, model="judge-2", timeout_s=5)})
    assert out["judge_shards_run"] == 2 and out["predictions"]["rows"] == 5
