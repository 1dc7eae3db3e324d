"""Ingest tasks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact

from medhall.jobs import ingest_to_store, write_stats
from tasks.common import artifact_key, cache_key, describe, path_fingerprint, store


def _ingest_key(_ctx, params: dict[str, Any]) -> str:
    return cache_key(
        "ingest",
        params["adapter"],
        [path_fingerprint(p) for p in params["paths"]],
        # images are read relative to images_dir, else to each file's folder: their listing counts
        [path_fingerprint(d) for d in sorted({params["images_dir"]} if params.get("images_dir") else {str(Path(p).parent) for p in params["paths"]})],
        params["dataset"],
        params.get("require_images"),
        params.get("options"),
        # what may be read changes the result: the root rule and the image limits (settings)
        *_guard_key(params.get("allow_outside_root")),
    )


def _guard_key(allow_outside_root: bool | None) -> tuple[Any, ...]:
    from medhall.config import get_settings

    s = get_settings()
    allow = s.ingest_allow_outside_root if allow_outside_root is None else allow_outside_root
    return bool(allow), s.image_max_bytes, s.image_max_pixels, s.ingest_screen_injection


@task(name="ingest", cache_key_fn=_ingest_key, persist_result=True, task_run_name="ingest {adapter} -> {dataset}")
def ingest_task(
    adapter: str,
    paths: list[str],
    dataset: str,
    images_dir: str | None = None,
    require_images: bool | None = None,
    options: dict[str, Any] | None = None,
    allow_outside_root: bool | None = None,
) -> dict[str, Any]:
    """Ingest files into ``dataset``; returns the written artifacts and the summary counts."""
    out = ingest_to_store(
        adapter, [Path(p) for p in paths], dataset=dataset, store=store(),
        images_dir=Path(images_dir) if images_dir else None, require_images=require_images, options=options,
        allow_outside_root=allow_outside_root,
    )
    summary = dataclasses.asdict(out.summary)
    return {
        "dataset": dataset,
        "run_id": out.run_id,
        "ok": out.ok,
        "artifacts": {k: describe(a) for k, a in out.artifacts.items()},
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str | dict)},
    }


@task(name="dataset-stats")
def stats_task(dataset: str) -> dict[str, str]:
    """Counts by modality/body part as CSV + PNG, published as a Prefect table artifact."""
    import pyarrow.csv as pacsv

    csv_path, png = write_stats(store(), dataset)
    rows = pacsv.read_csv(csv_path).to_pylist()
    create_table_artifact(table=rows, key=f"{artifact_key(dataset)}-stats", description=f"Statistics of dataset {dataset}")
    return {"csv": str(csv_path), "png": str(png)}

