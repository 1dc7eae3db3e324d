"""The main job on the embedded default as a flow: the sample corpus in, tables and stats out."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from medhall.jobs import DEFAULT_DATASET
from tasks.common import configure_results, store
from tasks.ingest import ingest_task, stats_task


@task(name="materialise-sample-corpus")
def materialise_sample() -> str:
    from medhall import sample

    return str(sample.materialize(store().root / "sample_corpus"))


@flow(name="build_default", log_prints=True)
def build_default(dataset: str = DEFAULT_DATASET) -> dict[str, Any]:
    """Build the embedded default dataset (no API key, GPU or download needed)."""
    configure_results()
    captions = materialise_sample()
    result = ingest_task("llava_med_captions", [captions], dataset)
    result["stats"] = stats_task(dataset)
    from medhall.store import build_catalog

    result["catalog"] = str(build_catalog(store()))
    return result


if __name__ == "__main__":  # pragma: no cover
    print(build_default())
