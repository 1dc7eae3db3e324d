"""zero_shot_vqa: several models on several medical VQA benchmarks -> Table 3, resumably."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.runners import DEFAULT_SHARDS_IN_FLIGHT, run_shards, task_runner_for
from medhall.vqa.config import VQAConfig
from tasks.common import configure_results
from tasks.vqa import answer_shard_task, assemble_task, plan_task, release_model_task, report_task


@flow(name="zero_shot_vqa", log_prints=True)
def zero_shot_vqa(
    benchmarks: list[dict[str, Any]],
    models: list[dict[str, Any]],
    closed_variant: Literal["gated", "run_eval", "run_eval_batch"] = "gated",
    max_new_tokens: int = 128,
    shard_size: int = 256,
    dataset: str = "vqa",
    shards_in_flight: int = DEFAULT_SHARDS_IN_FLIGHT,
) -> dict[str, Any]:
    """Ask every model every benchmark question zero-shot, score with LLaVA-Med's metrics and a
    strict variant, and publish Table 3 (open/closed per dataset, each base model followed by
    its fine-tuned ones) as Markdown, CSV, PNG and Prefect artifacts.

    ``benchmarks``: ``[{"name": "vqa_rad", "path": ".../test.json", "image_root": ...}]``;
    ``models``: ``[{"name": "llava-med", "kind": "local_vlm", "path": ..., "adapter": ...,
    "base": ..., "settings": {...}}]`` (docs/vqa_flow.md). Killed and re-run, it answers only
    unfinished shards; answers already made for a model are reused by later runs.

    An API model's shards run at once, ``shards_in_flight`` of them on threads, sharing the
    model's one LLM client (its ``concurrency`` is the total in flight); a local VLM's shards
    run one after another on the one loaded model.
    """
    configure_results()
    cfg = VQAConfig(
        benchmarks=benchmarks,
        models=models,
        closed_variant=closed_variant,
        max_new_tokens=max_new_tokens,
        shard_size=shard_size,
        dataset=dataset,
    )
    plan = plan_task(cfg)
    todo = sum(len(u["todo"]) for u in plan["units"])
    print(
        f"{len(cfg.models)} model(s) x {len(cfg.benchmarks)} benchmark(s): {todo} shard(s) to answer"
    )
    for spec in cfg.models:
        calls = [
            {
                "cfg": cfg,
                "model": spec.name,
                "benchmark": unit["benchmark"],
                "shard_key": shard["key"],
                "item_ids": shard["item_ids"],
                "run_id": plan["run_id"],
                "model_key": unit["model_key"],
                "benchmark_fingerprint": plan["fingerprints"][unit["benchmark"]],
                "work_dir": unit["work_dir"],
            }
            for unit in plan["units"]
            if unit["model"] == spec.name
            for shard in unit["todo"]
        ]
        if spec.kind == "api" and len(calls) > 1:  # I/O-bound: all at once, one client's limits
            with task_runner_for("threads", shards_in_flight=shards_in_flight) as runner:
                run_shards(runner, answer_shard_task, calls)
        else:  # one GPU model: one shard after another
            for call in calls:
                answer_shard_task(**call)
        release_model_task(spec.name)
    tables = assemble_task(cfg, plan["run_id"])
    report = report_task(cfg, tables["summary"], tables.get("pope"))
    return {
        "dataset": dataset,
        "run_id": plan["run_id"],
        "shards_run": todo,
        "artifacts": tables["artifacts"],
        "skipped": tables["skipped"],
        "counts": tables["counts"],
        "report": report,
    }


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(zero_shot_vqa(**json.loads(open(sys.argv[1], encoding="utf-8").read())))
