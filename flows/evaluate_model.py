"""evaluate_model: a model's answers on a built dataset's split -> judge scores, text metrics,
judge-free POPE scores, Table 2."""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel

from medhall.endpoints import LLMSettings
from medhall.evaluate.outcome import IncompleteEvaluation, eval_outcome
from medhall.evaluate.pipeline import (
    DEFAULT_METRICS,
    MODEL_SPEC,
    APISpec,
    EvalConfig,
    ImportSpec,
    LocalVLMSpec,
    TextLLMSpec,
)
from tasks.common import configure_results, store
from tasks.evaluate import (
    answer_shard_task,
    assemble_judgments_task,
    assemble_predictions_task,
    judge_shard_task,
    metrics_task,
    plan_answers_task,
    plan_judging_task,
    pope_task,
    report_task,
)

ModelParam = dict[str, Any] | LocalVLMSpec | APISpec | TextLLMSpec | ImportSpec | None


@flow(name="evaluate_model", log_prints=True)
def evaluate_model(
    dataset: str = "sample-instruct",
    model: ModelParam = None,
    model_name: str | None = None,
    judge: LLMSettings | None = None,
    baseline_model: str | None = None,
    split: str | None = "test",
    metrics: list[str] = list(DEFAULT_METRICS),  # noqa: B006 (Prefect needs a plain default)
    shard_size: int = 200,
    max_questions: int | None = None,
    compare_with: str | None = None,
    max_failed_share: float = 0.0,
) -> dict[str, Any]:
    """Evaluate a model on ``dataset``'s ``split``: its answers (``model``: ``{"kind": "local_vlm",
    "path": ...}``, ``{"kind": "api", "llm": {...}}``, ``{"kind": "text_llm"}`` (default: the embedded
    SmolLM2, question only) or ``{"kind": "import", "paths": [...]}``), the clinical judge when
    ``judge`` is given (anchored on ``baseline_model``'s judged answers), METEOR/ROUGE/BERTScore,
    judge-free POPE scores of the yes/no questions whose answer is known, and the Table 2 report (optionally side by side with ``compare_with``). Killed and re-run,
    it redoes only unfinished shards. API keys come from the environment, never parameters. The
    run ends Failed when it answered nothing, when failures exceed ``max_failed_share`` (default:
    any), or when the judge judged nothing or the baseline anchored nothing."""
    configure_results()
    spec = model if isinstance(model, BaseModel) else MODEL_SPEC.validate_python(model or {"kind": "text_llm"})
    cfg = EvalConfig(dataset=dataset, split=split, model=spec, model_name=model_name, judge=judge,
                     baseline_model=baseline_model, metrics=tuple(metrics), shard_size=shard_size,
                     max_questions=max_questions)
    plan = plan_answers_task(cfg)
    print(f"{cfg.resolved_model_name()} on {dataset}/{split or 'all'}: {plan['total']} questions, "
          f"{plan['done']} answered before, {len(plan['todo'])} shard(s) to answer")
    for shard in plan["todo"]:
        answer_shard_task(cfg, plan["work_dir"], shard["key"], shard["qa_ids"], plan["run_id"])
    out: dict[str, Any] = {"eval_dataset": plan["eval_dataset"], "run_id": plan["run_id"],
                           "answer_shards_run": len(plan["todo"]),
                           "predictions": assemble_predictions_task(cfg, plan["work_dir"], plan["run_id"])}
    judge_model = None
    if judge is not None:
        jplan = plan_judging_task(cfg, plan["run_id"])
        judge_model = jplan["judge_model"]
        for shard in jplan["todo"]:
            judge_shard_task(cfg, jplan["work_dir"], shard["key"], shard["qa_ids"], plan["run_id"])
        out["judge_shards_run"] = len(jplan["todo"])
        out["judgments"] = assemble_judgments_task(cfg, jplan["work_dir"], plan["run_id"])
    out["scores"] = metrics_task(cfg, plan["run_id"])
    out["pope_scores"] = pope_task(cfg, plan["run_id"])
    out["report"] = report_task(cfg, plan["run_id"], judge_model, compare_with)
    done = eval_outcome(store(), cfg, judge_model, max_failed_share)
    print(done.summary())
    if not done.ok:  # the run ends Failed, saying why; the report and what was made are kept
        raise IncompleteEvaluation(done.summary())
    return out


if __name__ == "__main__":  # pragma: no cover
    print(evaluate_model())
