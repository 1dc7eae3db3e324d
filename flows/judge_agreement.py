"""judge_agreement: how a candidate judge agrees with GPT-4o on the MedHallTune release's answers."""

from __future__ import annotations

from typing import Any

from prefect import flow

from medhall.endpoints import LLMSettings
from medhall.evaluate.agreement_run import DEFAULT_RELEASE_DIR, AgreementConfig
from medhall.evaluate.config import EvalError
from tasks.agreement import agreement_task, prepare_task
from tasks.common import configure_results
from tasks.evaluate import judge_shard_task


@flow(name="judge_agreement", log_prints=True)
def judge_agreement(
    judge: LLMSettings | None = None,
    n: int | None = 200,
    release_dir: str = DEFAULT_RELEASE_DIR,
    dataset: str = "medhalltune",
    seed: int = 0,
    n_boot: int = 1000,
    shard_size: int = 200,
    judge_attempts: int = 3,
    judge_max_tokens: int = 512,
    rubric_version: str = "v1",
) -> dict[str, Any]:
    """Run a candidate judge over the MedHallTune release's LLaVA-Med-v1.5-7B answers and measure
    its agreement with GPT-4o's judgments (Spearman, Kendall, quadratic-weighted kappa, bias,
    exact and ±1 agreement with bootstrap 95 % intervals, per axis, for P and N apart), beside
    both judges' leaderboard rows. Killed and re-run, it judges only unfinished shards; LLM calls
    are cached. API keys come from the environment, never parameters. The run ends Failed when
    the judge judged nothing.

    Args:
        judge: The candidate judge: an OpenAI-compatible endpoint (base_url, model) or a local
            model (backend transformers); empty: MEDHALL_LLM_BASE_URL and MEDHALL_LLM_MODEL.
        n: Judge a seeded sample of this many of the release's 2,238 questions; empty: all.
        release_dir: Folder holding the release's val_*_qa-filtered.jsonl and
            llava-med-prediction-*-GPT4o-eval-filtered.jsonl files.
        dataset: Dataset the release's questions are ingested into (once).
        seed: Seed of the question sample and of the bootstrap.
        n_boot: Bootstrap resamples of the 95 % intervals.
        shard_size: Answers per judge task.
        judge_attempts: Judge calls per answer until a reply parses.
        judge_max_tokens: The judge's token limit per reply.
        rubric_version: Judge templates medhall/prompts/judge/<version>.
    """
    configure_results()
    cfg = AgreementConfig(judge=judge, n=n, release_dir=release_dir, dataset=dataset, seed=seed, n_boot=n_boot,
                          shard_size=shard_size, judge_attempts=judge_attempts, judge_max_tokens=judge_max_tokens,
                          rubric_version=rubric_version)
    plan = prepare_task(cfg)
    print(f"{plan['judge_model']} on {plan['total']} of the release's answers: {plan['done']} judged before, "
          f"{len(plan['todo'])} shard(s) to judge")
    for shard in plan["todo"]:
        judge_shard_task(plan["eval_config"], plan["work_dir"], shard["key"], shard["qa_ids"], plan["run_id"])
    out = agreement_task(cfg, plan["work_dir"], plan["run_id"], plan["judge_model"])
    out["judge_shards_run"] = len(plan["todo"])
    print(out["summary"])
    if not out["ok"]:
        raise EvalError(f"the judge {plan['judge_model']} judged none of the answers: {out['summary']}")
    return out


if __name__ == "__main__":  # pragma: no cover
    print(judge_agreement())
