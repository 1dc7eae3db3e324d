"""build_dataset: an ingested corpus -> a quality-controlled instruction dataset, split and exported."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows.runners import DEFAULT_SHARDS_IN_FLIGHT, RunnerKind, run_shards, task_runner_for
from medhall.build import DEFAULT_EXPORTS, BuildConfig, IncompleteBuild
from medhall.endpoints import LLMSettings
from medhall.store.locks import dataset_lock
from tasks.build import (
    assemble_task,
    generate_shard_task,
    outcome_task,
    plan_task,
    split_export_task,
    stats_task,
)
from tasks.common import configure_results, store


@flow(name="build_dataset", log_prints=True)
def build_dataset(
    source: str = "sample",
    dataset: str = "sample-instruct",
    generator: Literal["offline", "llm"] = "offline",
    questions_per_image: int = 10,
    llm: LLMSettings | None = None,
    llm_qc: bool = False,
    test_images: int = 200,
    shard_size: int = 1000,
    seed: int = 0,
    exports: list[str] = list(DEFAULT_EXPORTS),  # noqa: B006 (Prefect needs a plain default)
    max_failed_share: float = 0.0,
    wait: bool = False,
    runner: RunnerKind = "threads",
    shards_in_flight: int = DEFAULT_SHARDS_IN_FLIGHT,
    address: str | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Generate hallucination (negative) and non-hallucination (positive) pairs for every image of
    ``source``, quality-control them, split by image and export. Killed and re-run, it redoes only
    unfinished shards; images added to the source are the only ones generated. API keys come from
    the environment (MEDHALL_LLM_API_KEY), never from parameters. The run ends Failed when it
    produced nothing or more than ``max_failed_share`` of the images failed for good (default:
    any), with the failures by reason; a re-run retries them. Another build of ``dataset`` running
    makes this one stop at once, saying whose it is, or wait for it with ``wait``.

    Shards run at once, ``shards_in_flight`` of them, on ``runner`` (flows/runners.py): ``threads``
    of this process (their LLM calls share one client: ``llm.concurrency`` requests in flight in
    total), ``dask`` (a local cluster of ``workers`` processes, or the scheduler at ``address``) or
    ``ray``; on a cluster ``llm.concurrency`` holds per worker process. A shard that fails for
    good does not stop the others; the run then ends Failed naming it, and a re-run redoes it."""
    configure_results()
    cfg = BuildConfig(
        source=source, dataset=dataset, generator=generator, questions_per_image=questions_per_image,
        llm=llm, llm_qc=llm_qc, test_images=test_images, shard_size=shard_size, seed=seed, exports=tuple(exports),
    )
    task_runner = task_runner_for(runner, address, workers, shards_in_flight)  # a bad choice stops here
    with dataset_lock(store(), dataset, "build", wait=wait, on_wait=lambda h: print(
            f"waiting for another build of {dataset} (pid {h.get('pid', '?')}, started at {h.get('started_at', '?')})")):
        return _build(cfg, max_failed_share, task_runner)


def _build(cfg: BuildConfig, max_failed_share: float, task_runner: Any) -> dict[str, Any]:
    dataset = cfg.dataset
    plan = plan_task(cfg)
    print(f"{plan['n_images']} images: {plan['done']} shard(s) already done, {len(plan['todo'])} to do")
    if plan["todo"]:
        calls = [{"cfg": cfg, "work_dir": plan["work_dir"], "stats_path": plan["stats_path"], "shard_key": s["key"],
                  "keys": s["keys"], "image_ids": s["image_ids"], "run_id": plan["run_id"]} for s in plan["todo"]]
        with task_runner:  # every shard submitted at once; the runner bounds how many run
            run_shards(task_runner, generate_shard_task, calls)
    tables = assemble_task(cfg, plan["work_dir"], plan["images_fingerprint"], plan["run_id"])
    exported = split_export_task(cfg, plan["run_id"])
    stats = stats_task(cfg)
    done = outcome_task(cfg, max_failed_share)
    print(done.summary())
    if not done.ok:  # the run ends Failed, saying why; what it made is kept
        raise IncompleteBuild(done.summary())
    return {"dataset": dataset, "run_id": plan["run_id"], "shards_run": len(plan["todo"]), **tables, **exported,
            "stats": stats, "outcome": {"pairs": done.pairs, "images": done.images, "failed": done.failed}}


if __name__ == "__main__":  # pragma: no cover
    print(build_dataset())
