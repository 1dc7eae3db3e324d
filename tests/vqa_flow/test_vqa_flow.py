"""The zero_shot_vqa flow on a temporary Prefect server: artifacts, UI tables, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from medhall.store import ArtifactStore, query

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"
)


def test_flow_writes_table3_rows_and_ui_artifacts_and_resumes(
    flow_home: Path, benchmarks, models
) -> None:
    from prefect.artifacts import Artifact

    from flows.zero_shot_vqa import zero_shot_vqa

    params = {
        "benchmarks": benchmarks[1:],
        "models": models,
        "shard_size": 2,
        "dataset": "vqa-flow",
    }
    out = zero_shot_vqa(**params)
    assert out["shards_run"] == 4  # SLAKE and PMC-VQA, one shard each, two models
    assert out["artifacts"]["predictions"]["rows"] == 8
    n = (
        query(
            ArtifactStore(flow_home),
            "select count(*) n from predictions__vqa_flow where status = 'ok'",
        )
        .column("n")[0]
        .as_py()
    )
    assert n == 8
    assert Path(out["report"]["png"]).exists() and Path(out["report"]["csv"]).exists()
    md = Artifact.get("vqa-flow-table3")
    assert md is not None and "↳ tiny-tuned" in str(md.data) and "SLAKE closed" in str(md.data)
    table = Artifact.get("vqa-flow-table3-rows")
    assert table is not None and "tiny-base" in str(table.data)

    again = zero_shot_vqa(**params)
    assert again["shards_run"] == 0
    assert again["artifacts"]["predictions"] == out["artifacts"]["predictions"]  # same version


def test_answer_task_is_cached_on_explicit_inputs(flow_home: Path, benchmarks, models) -> None:
    import shutil

    from prefect import flow

    from medhall.vqa.config import VQAConfig
    from tasks.vqa import answer_shard_task, plan_task

    cfg = VQAConfig(benchmarks=benchmarks[2:], models=models[:1], shard_size=2)

    @flow
    def twice() -> list:
        plan = plan_task(cfg)
        unit = plan["units"][0]
        shard = unit["todo"][0]
        args = (
            cfg,
            unit["model"],
            unit["benchmark"],
            shard["key"],
            shard["item_ids"],
            plan["run_id"],
            unit["model_key"],
            plan["fingerprints"][unit["benchmark"]],
            unit["work_dir"],
        )
        first = answer_shard_task(*args, return_state=True)
        second = answer_shard_task(*args, return_state=True)
        shutil.rmtree(unit["work_dir"])  # a deleted work folder is not answered from the cache
        third = answer_shard_task(*args, return_state=True)
        return [first, second, third]

    states = twice()
    assert [s.name for s in states] == ["Completed", "Cached", "Completed"]
    assert Path(states[2].result()).exists()
