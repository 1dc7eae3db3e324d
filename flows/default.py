"""The main job on the embedded default as a flow: the sample corpus in, tables and stats out."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.build_dataset import build_dataset
from flows.evaluate_model import evaluate_model
from medhall.jobs import DEFAULT_BUILD, DEFAULT_DATASET, default_build_config
from tasks.common import configure_results, store
from tasks.ingest import ingest_task, stats_task


@task(name="materialise-sample-corpus")
def materialise_sample() -> str:
    from medhall import sample

    return str(sample.materialize(store().root / "sample_corpus"))


@flow(name="build_default", log_prints=True)
def build_default(
    dataset: str = DEFAULT_DATASET, build: str = DEFAULT_BUILD, evaluate: bool = True, eval_questions: int | None = None
) -> dict[str, Any]:
    """The main job on the embedded default (no API key, GPU or download needed): the sample
    corpus ingested, an instruction dataset built from it with the offline generator, and the
    embedded SmolLM2 evaluated on its test split as a text-only baseline (no judge needed)."""
    configure_results()
    captions = materialise_sample()
    result = ingest_task("llava_med_captions", [captions], dataset)
    result["stats"] = stats_task(dataset)
    cfg = default_build_config(dataset, build)
    result["build"] = build_dataset(
        source=cfg.source, dataset=cfg.dataset, generator=cfg.generator, test_images=cfg.test_images,
        shard_size=cfg.shard_size, seed=cfg.seed, exports=list(cfg.exports),
    )
    if evaluate:
        result["evaluation"] = evaluate_model(dataset=build, max_questions=eval_questions)
    from medhall.store import build_catalog

    result["catalog"] = str(build_catalog(store()))
    return result


if __name__ == "__main__":  # pragma: no cover
    print(build_default())
