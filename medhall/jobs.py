"""Whole jobs over the library, shared by the CLI and the Prefect tasks.

A job reads its inputs, calls the library, writes spine tables to the artifact store and
returns what it wrote. It holds no logic of its own beyond that wiring.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medhall.errors import MedhallError
from medhall.ids import file_sha256
from medhall.ids import run_id as make_run_id
from medhall.store import Artifact, ArtifactStore, build_catalog

DEFAULT_DATASET = "sample"
DEFAULT_BUILD = "sample-instruct"



@dataclass
class IngestOutcome:
    dataset: str
    run_id: str
    artifacts: dict[str, Artifact]
    summary: Any
    ok: bool


@dataclass
class DefaultOutcome:
    ingest: IngestOutcome
    build: dict[str, Any]
    stats_csv: Path
    stats_png: Path
    catalog: Path
    extras: dict[str, Any] = field(default_factory=dict)


class EmptyIngest(MedhallError, ValueError):
    """An ingest that would write empty tables over a dataset (or had nothing to read)."""


def ingest_to_store(
    adapter: str,
    paths: Sequence[Path],
    *,
    dataset: str,
    store: ArtifactStore,
    images_dir: Path | None = None,
    require_images: bool | None = None,
    options: Mapping[str, Any] | None = None,
    wait: bool = False,
    allow_outside_root: bool | None = None,
) -> IngestOutcome:
    """Ingest ``paths`` with the named adapter and write images, instructions and quarantine.

    Holds the dataset's writer lock (:func:`medhall.store.locks.dataset_lock`): another writer
    of ``dataset`` makes this one stop with who it is, or wait its turn with ``wait``."""
    from medhall.ingest import ingest
    from medhall.sources import get_adapter
    from medhall.store.housekeeping import sweep
    from medhall.store.locks import dataset_lock

    if not paths:
        raise EmptyIngest(f"no input files given for {dataset}: nothing was ingested and {dataset} is unchanged; "
                          "pass the corpus files (paths)")
    paths = [Path(p).resolve() for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
    inputs = [file_sha256(p) for p in paths if p.is_file()]
    config = {
        "adapter": adapter,
        "paths": [str(p) for p in paths],
        "images_dir": str(images_dir) if images_dir else None,
        "require_images": require_images,
        "options": dict(options or {}),
        **({"allow_outside_root": allow_outside_root} if allow_outside_root is not None else {}),
    }
    rid = make_run_id("ingest", config, inputs)
    with dataset_lock(store, dataset, "ingest", wait=wait):
        sweep(store.root)  # what killed runs left behind
        result = ingest(
            get_adapter(adapter, **dict(options or {})),
            paths,
            dataset=dataset,
            images_dir=images_dir,
            require_images=require_images,
            run_id=rid,
            allow_outside_root=allow_outside_root,
        )
        previous = store.latest("images", dataset)
        if result.images.num_rows == 0 and previous is not None and previous.rows > 0:
            raise EmptyIngest(
                f"{', '.join(str(p) for p in paths)} gave no image ({result.summary.records_read} records read, "
                f"{result.quarantine.num_rows} quarantined); {dataset} keeps its {previous.rows} images (version {previous.version}) instead of "
                "an empty version. Check the adapter and the paths")
        arts = {
            name: store.write(name, getattr(result, name), dataset=dataset, config=config, inputs=inputs, run_id=rid)
            for name in ("images", "instructions", "quarantine")
        }
    return IngestOutcome(dataset, rid, arts, result.summary, bool(result.ok))


def write_stats(store: ArtifactStore, dataset: str, images_dataset: str | None = None) -> tuple[Path, Path]:
    """Counts by modality / body part (and kind / category) as CSV and PNG under reports/.

    ``images_dataset``: where the images are when ``dataset`` is a build (builds do not copy them).
    """
    from medhall.report.stats import dataset_stats, plot_stats

    images = store.get("images", images_dataset or store.images_source(dataset)).read(columns=["modality", "body_part", "image_status"])
    latest_instr = store.latest("instructions", dataset)
    stats = dataset_stats(images, latest_instr.read(columns=["kind", "category"]) if latest_instr else None)
    out_dir = store.root / "reports" / dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "stats.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(stats.column_names)
        w.writerows(zip(*(stats.column(c).to_pylist() for c in stats.column_names), strict=True))
    png = plot_stats(stats, out_dir / "stats.png", title=f"{dataset}: {images.num_rows} images")
    return csv_path, png


def default_build_config(dataset: str = DEFAULT_DATASET, build: str = DEFAULT_BUILD):
    """The embedded default's build: the offline generator, rules QC, a 6-image test split."""
    from medhall.build import BuildConfig

    return BuildConfig(source=dataset, dataset=build, generator="offline", test_images=6, shard_size=8)


def run_default(
    store: ArtifactStore, dataset: str = DEFAULT_DATASET, build: str = DEFAULT_BUILD, *,
    evaluate: bool = True, eval_questions: int | None = None,
) -> DefaultOutcome:
    """The main job on the embedded default, in-process: the sample corpus ingested, an
    instruction dataset built from it (offline generator, QC, split, exports), the embedded
    SmolLM2 evaluated on its test split as a text-only baseline (metrics that need no judge;
    ``eval_questions`` caps the questions), counted and catalogued. ``flows/default.py`` runs
    the same steps as Prefect tasks."""
    from medhall import sample
    from medhall.build import run_build

    corpus_dir = store.root / "sample_corpus"
    captions = sample.materialize(corpus_dir)
    outcome = ingest_to_store("llava_med_captions", [captions], dataset=dataset, store=store)
    built = run_build(store, default_build_config(dataset, build)) if outcome.ok else {}
    extras: dict[str, Any] = {"corpus_dir": corpus_dir}
    if built and evaluate:
        from medhall.evaluate.pipeline import evaluate_default

        extras["evaluation"] = evaluate_default(store, build, max_questions=eval_questions)
    write_stats(store, dataset)
    stats_csv, stats_png = write_stats(store, build, dataset) if built else write_stats(store, dataset)
    catalog = build_catalog(store)
    return DefaultOutcome(outcome, built, stats_csv, stats_png, catalog, extras)


__all__ = [
    "DEFAULT_DATASET",
    "DefaultOutcome",
    "IngestOutcome",
    "ingest_to_store",
    "run_default",
    "write_stats",
]
