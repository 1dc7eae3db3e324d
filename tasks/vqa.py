"""Zero-shot VQA tasks: plan, one task per answer shard, release a model, assemble, report.

Answer shards are idempotent by completion markers (:mod:`medhall.shards`: a shard whose items
are all done is never planned again) and cached on explicit inputs: the model key (kind, files
with fingerprints, generation settings), the benchmark file's fingerprint, the shard key (its
items' ids, prompts and image stamps) and :func:`medhall.shards.cache_token` (the work
folder's id, written by the plan, so a shard of a deleted work folder is never answered from a
stale cache, and the shard's marker state, so a shard planned again for its failures runs
again). A model's runner is kept loaded between its shard tasks (tasks of one flow run share
this process) and unloaded by :func:`release_model_task` before the next model.
"""

from __future__ import annotations

import threading
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from medhall import shards
from medhall.vqa import pipeline as vqa
from medhall.vqa.config import VQAConfig
from medhall.vqa.report import report
from medhall.vqa.runners import RunnerPool
from tasks.common import artifact_key, cache_key, describe, store

#: The runners of the models being answered, shared by the shard tasks of this process.
POOL = RunnerPool()
_POOL_LOCK = threading.Lock()  # shard tasks on threads: one runner (one client, one model load) per model


@task(name="vqa-plan")
def plan_task(cfg: VQAConfig) -> dict[str, Any]:
    """Load the benchmarks and plan the shards still to answer (small, serialisable)."""
    p = vqa.plan(store(), cfg)
    return {
        "run_id": p.run_id,
        "fingerprints": p.fingerprints,
        "units": [
            {
                "model": u.model,
                "benchmark": u.benchmark,
                "model_key": u.model_key,
                "work_dir": str(u.work_dir),
                "items": u.items,
                "done_shards": u.done_shards,
                "todo": [{"key": s.key, "item_ids": list(s.ids)} for s in u.todo],
            }
            for u in p.units
        ],
    }


def _answer_key(_ctx: Any, p: dict[str, Any]) -> str:
    """Model key, benchmark fingerprint, shard key and :func:`medhall.shards.cache_token`."""
    key = p["shard_key"]
    return cache_key("vqa-shard", p["model_key"], p["benchmark_fingerprint"], key, *shards.cache_token(p["work_dir"], key))


@task(
    name="vqa-answer-shard",
    task_run_name="{model} on {benchmark}: shard {shard_key}",
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    cache_key_fn=_answer_key,
    persist_result=True,
)
def answer_shard_task(
    cfg: VQAConfig,
    model: str,
    benchmark: str,
    shard_key: str,
    item_ids: list[str],
    run_id: str,
    model_key: str,
    benchmark_fingerprint: str,
    work_dir: str,
) -> str:
    """Answer one shard (a GPU or an API is touched: retried). Returns its predictions file.

    ``model_key``, ``benchmark_fingerprint`` and ``work_dir`` come from the plan and make the
    cache key.
    """
    with _POOL_LOCK:
        runner = POOL.get(cfg.model(model), cfg)
    return str(
        vqa.answer_shard(store(), cfg, model, benchmark, item_ids, run_id=run_id, runner=runner)
    )


@task(name="vqa-release-model", task_run_name="unload {model}")
def release_model_task(model: str) -> None:
    """Unload ``model`` before the next one is loaded."""
    with _POOL_LOCK:
        POOL.release(model)


@task(name="vqa-assemble")
def assemble_task(cfg: VQAConfig, run_id: str) -> dict[str, Any]:
    """Predictions, scores and quarantine artifacts; the long summary rows for the report."""
    out = vqa.assemble(store(), cfg, run_id)
    return {
        "artifacts": {k: describe(out[k]) for k in ("predictions", "scores", "quarantine")},
        "summary": out["summary"],
        "skipped": out["skipped"],
        "counts": out["counts"],
        "pope": out["pope"].to_pylist() if out["pope"] is not None else None,
    }


@task(name="vqa-report")
def report_task(cfg: VQAConfig, summary: list[dict[str, Any]], pope: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Table 3 files (and the closed yes/no items' POPE-style scores), published as a Markdown
    and a table artifact in the Prefect UI."""
    rep = report(store(), cfg, summary, pope=pope)
    key = artifact_key(cfg.dataset)
    create_markdown_artifact(
        key=f"{key}-table3",
        markdown=rep["markdown_text"]
        + f"\nFiles: `{rep['markdown']}`, `{rep['csv']}`, `{rep['png']}`.\n",
        description=f"Zero-shot VQA (Table 3) of {cfg.dataset}",
    )
    create_table_artifact(
        table=rep["rows"],
        key=f"{key}-table3-rows",
        description=f"Zero-shot VQA scores (%) of {cfg.dataset}",
    )
    if rep.get("pope_markdown_text"):
        create_markdown_artifact(key=f"{key}-pope", markdown=rep["pope_markdown_text"],
                                 description=f"Judge-free POPE-style scores of {cfg.dataset}'s closed yes/no questions")
    return {k: v for k, v in rep.items() if not k.endswith("markdown_text")}
