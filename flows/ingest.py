"""The ingest flow: a corpus into the store, with statistics shown in the Prefect UI."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.common import configure_results
from tasks.ingest import ingest_task, stats_task


@flow(name="ingest_corpus", log_prints=True)
def ingest_corpus(
    adapter: str,
    paths: list[str],
    dataset: str,
    images_dir: str | None = None,
    require_images: bool | None = None,
    options: dict[str, Any] | None = None,
    allow_outside_root: bool | None = None,
) -> dict[str, Any]:
    """Ingest corpus files with an adapter (llava_med_captions, llava_med_instruct, pubmedvision,
    medhalltune, generic) into ``dataset``; bad rows go to the quarantine table.
    ``allow_outside_root``: follow image paths that resolve outside the images root (default:
    the setting ``ingest_allow_outside_root``, off)."""
    configure_results()
    result = ingest_task(adapter, paths, dataset, images_dir, require_images, options, allow_outside_root)
    if result["ok"]:
        result["stats"] = stats_task(dataset)
    return result


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(ingest_corpus(sys.argv[1], sys.argv[3:], sys.argv[2]))
