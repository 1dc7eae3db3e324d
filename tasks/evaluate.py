"""Evaluation tasks: plan, one task per shard of answers and of judgments, assemble, metrics,
judge-free POPE scores, report.

Shard tasks are idempotent by completion markers (a finished question is never planned again)
and cached on explicit inputs: the stage's work directory (its name hashes the model identity,
and for the judge also the judge's identity and the rubric hash), the shard key (a hash of its
qa_ids) and :func:`medhall.shards.cache_token` (the shard's marker state, so a shard replanned
for its failures runs again, and the work folder's id, so a deleted one cannot be answered
from a stale cache). Tasks
that touch a model, a GPU or a network retry three times; LLM calls go through the cached
layer, so a retry never pays twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from medhall import shards
from medhall.evaluate import pipeline
from medhall.evaluate.pipeline import EvalConfig, qa_shard
from tasks.common import artifact_key, cache_key, describe, store

RETRY_DELAYS = [5, 30, 120]


def _shard_cache_key(stage: str) -> Any:
    def key(_ctx: Any, p: dict[str, Any]) -> str:
        wd = Path(p["work_dir"])
        return cache_key(stage, wd.name, p["shard_key"], *shards.cache_token(wd, p["shard_key"]))

    return key


def _plan_dict(plan: pipeline.StagePlan) -> dict[str, Any]:
    return {
        "work_dir": str(plan.work_dir),
        "run_id": plan.run_id,
        "todo": [{"key": s.key, "qa_ids": list(s.ids)} for s in plan.todo],
        "done": plan.done,
        "total": plan.total,
    }


@task(name="plan-answers")
def plan_answers_task(cfg: EvalConfig) -> dict[str, Any]:
    """The questions of the split not answered yet, in shards."""
    return {**_plan_dict(pipeline.plan_answers(store(), cfg)), "eval_dataset": cfg.eval_dataset()}


@task(name="answer-shard", task_run_name="answers {shard_key}", retries=3, retry_delay_seconds=RETRY_DELAYS,
      cache_key_fn=_shard_cache_key("answers"), persist_result=True)
def answer_shard_task(cfg: EvalConfig, work_dir: str, shard_key: str, qa_ids: list[str], run_id: str) -> dict[str, Any]:
    """The model's answers to one shard (local VLM, API model, text-only baseline or import)."""
    table = pipeline.answer_shard(store(), cfg, Path(work_dir), qa_shard(shard_key, qa_ids), run_id)
    ok = sum(1 for s in table.column("status").to_pylist() if s == "ok")
    return {"shard": shard_key, "rows": table.num_rows, "ok": ok, "failed": table.num_rows - ok}


@task(name="assemble-predictions")
def assemble_predictions_task(cfg: EvalConfig, work_dir: str, run_id: str) -> dict[str, Any]:
    return describe(pipeline.assemble_predictions(store(), cfg, Path(work_dir), run_id))


@task(name="plan-judging")
def plan_judging_task(cfg: EvalConfig, run_id: str) -> dict[str, Any]:
    """The ok answers not judged yet, in shards."""
    return {**_plan_dict(pipeline.plan_judging(store(), cfg, run_id)), "judge_model": pipeline.judge_model_name(cfg)}


@task(name="judge-shard", task_run_name="judge {shard_key}", retries=3, retry_delay_seconds=RETRY_DELAYS,
      cache_key_fn=_shard_cache_key("judge"), persist_result=True)
def judge_shard_task(cfg: EvalConfig, work_dir: str, shard_key: str, qa_ids: list[str], run_id: str) -> dict[str, Any]:
    """Judge one shard's answers (temperature 0, cached LLM calls; failures recorded with their raw reply)."""
    table = pipeline.judge_shard(store(), cfg, Path(work_dir), qa_shard(shard_key, qa_ids), run_id)
    ok = sum(1 for s in table.column("status").to_pylist() if s == "ok")
    return {"shard": shard_key, "rows": table.num_rows, "ok": ok, "failed": table.num_rows - ok}


@task(name="assemble-judgments")
def assemble_judgments_task(cfg: EvalConfig, work_dir: str, run_id: str) -> dict[str, Any]:
    return describe(pipeline.assemble_judgments(store(), cfg, Path(work_dir), run_id))


@task(name="text-metrics")
def metrics_task(cfg: EvalConfig, run_id: str) -> dict[str, Any]:
    """METEOR, ROUGE and BERTScore into the ``scores`` table (the encoder in every row's params)."""
    art, skipped = pipeline.compute_metrics(store(), cfg, run_id)
    return {**describe(art), "skipped": len(skipped)}


@task(name="pope-scores")
def pope_task(cfg: EvalConfig, run_id: str) -> dict[str, Any] | None:
    """Judge-free POPE scores of the yes/no questions whose answer is known (``pope_scores``);
    None when there is no such question."""
    art = pipeline.compute_pope(store(), cfg, run_id)
    return describe(art) if art is not None else None


@task(name="evaluation-report")
def report_task(cfg: EvalConfig, run_id: str, judge_model: str | None, compare_with: str | None) -> dict[str, Any]:
    """Markdown/CSV/PNG on disk; the report and the overall Table 2 rows as Prefect artifacts."""
    s = store()
    ledger = pipeline.write_ledger(s, cfg, run_id)
    files = pipeline.write_report(s, cfg, run_id, judge_model=judge_model, compare_with=compare_with)
    key = artifact_key(cfg.eval_dataset())
    create_markdown_artifact(key=f"{key}-report", markdown=files.markdown, description=f"Evaluation of {cfg.resolved_model_name()}")
    overall = [r for r in files.table.to_pylist() if r["breakdown"] == "overall"]
    create_table_artifact(table=overall, key=f"{key}-table2", description="Table 2: means and bootstrap 95 % intervals, P and N")
    if files.pope is not None:
        rows = [r for r in files.pope.to_pylist() if r["breakdown"] in ("overall", "strategy")]
        create_table_artifact(table=rows, key=f"{key}-pope",
                              description="Judge-free hallucination scores (POPE-style yes/no questions with a known answer)")
    if files.comparison is not None:
        rows = [r for r in files.comparison.to_pylist() if r["breakdown"] == "overall"]
        create_table_artifact(table=rows, key=f"{key}-compare", description=f"{compare_with} vs {cfg.resolved_model_name()}")
    return {
        "markdown": str(files.markdown_path), "csv": str(files.csv_path), "png": str(files.png_path),
        "compare": {k: str(v) for k, v in files.compare_paths.items()},
        "pope": {k: str(v) for k, v in files.pope_paths.items()},
        "llm_calls": describe(ledger) if ledger is not None else None,
    }
