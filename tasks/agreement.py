"""Judge-agreement tasks: the release's questions and answers in, the candidate's judgments
(one task per shard: the evaluation's ``judge-shard`` task), the agreement with GPT-4o and its
report (Markdown, CSV, PNG and Prefect artifacts)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from medhall.evaluate import agreement_run
from medhall.evaluate.agreement_run import AgreementConfig
from medhall.evaluate.config import judge_model_name
from tasks.common import artifact_key, describe, store


@task(name="agreement-prepare")
def prepare_task(cfg: AgreementConfig) -> dict[str, Any]:
    """The release's questions ingested (once) and LLaVA-Med's answers imported; the judge
    shards still to do."""
    s = store()
    ecfg = agreement_run.prepare(s, cfg)
    run_id = agreement_run.agreement_run_id(s, cfg)
    plan = agreement_run.plan_agreement_judging(s, cfg, run_id)
    return {"eval_config": ecfg, "run_id": run_id, "work_dir": str(plan.work_dir), "judge_model": judge_model_name(ecfg),
            "todo": [{"key": sh.key, "qa_ids": list(sh.ids)} for sh in plan.todo], "done": plan.done, "total": plan.total}


@task(name="agreement-report")
def agreement_task(cfg: AgreementConfig, work_dir: str, run_id: str, judge_model: str) -> dict[str, Any]:
    """The candidate's judgments and ``judge_agreement`` into the store; the report on disk and
    as Prefect artifacts (the Markdown, the agreement rows of P and N together)."""
    result = agreement_run.finish(store(), cfg, work_dir, run_id, judge_model=judge_model)
    key = artifact_key(result.dataset)
    create_markdown_artifact(key=f"{key}-report", markdown=result.markdown,
                             description=f"Agreement of {judge_model} with GPT-4o")
    rows = [r for r in result.table.to_pylist() if r["kind"] == "all"]
    create_table_artifact(table=rows, key=f"{key}-agreement",
                          description="Agreement with GPT-4o per axis (P and N together), bootstrap 95 % intervals")
    return {**result.as_dict(), "artifacts": {k: describe(a) for k, a in result.artifacts.items()}, "ok": result.ok,
            "summary": agreement_run.describe_result(result)}
