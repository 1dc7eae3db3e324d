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
    out = evaluate_model(**params)
    assert out["answer_shards_run"] == 2 and out["judge_shards_run"] == 2
    assert out["predictions"]["rows"] == 5 and out["judgments"]["rows"] == 5
    assert Path(out["report"]["markdown"]).exists() and Path(out["report"]["png"]).exists()
    judgments = built.read("judgments", out["eval_dataset"]).to_pylist()
    assert {j["status"] for j in judgments} == {"failed"}  # echo replies never parse: recorded, not scored
    assert all(j["raw"].startswith("echo:") and j["attempts"] == 3 for j in judgments)
    keys = _artifact_keys(out["eval_dataset"].lower())
    assert {f"{out['eval_dataset']}-report", f"{out['eval_dataset']}-table2"} <= keys

    served = server.stats()["total"]
    again = evaluate_model(**params)
    assert again["answer_shards_run"] == 0 and again["judge_shards_run"] == 0
    assert server.stats()["total"] == served
