"""Dataset-build tasks: plan, one task per shard (generation + QC), assemble, split/export, stats.

Shard tasks are idempotent by completion markers (a finished shard is never planned again)
and cached on content fingerprints: the generator key (config, templates, QC settings), the
shard key (its images and caption hashes) and :func:`medhall.shards.cache_token` (the work
folder's id, so a deleted work folder cannot be answered from a stale cache, and the shard's
marker state, so a shard planned again for its failed images runs again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from medhall import build, shards
from medhall.build import BuildConfig
from tasks.common import artifact_key, cache_key, describe, store


def _shard_key(_ctx, p: dict[str, Any]) -> str:
    return cache_key("shard", p["cfg"].generator_key(), p["shard_key"], shards.cache_token(p["work_dir"], p["shard_key"]))


@task(name="plan-shards")
def plan_task(cfg: BuildConfig) -> dict[str, Any]:
    from medhall.ids import run_id

    plan = build.prepare(store(), cfg)
    return {
        "work_dir": str(plan.work_dir),
        "stats_path": str(plan.stats_path),
        "images_fingerprint": plan.images_fingerprint,
        "run_id": run_id("build", cfg.model_dump(mode="json"), [plan.images_fingerprint]),
        "todo": [{"key": s.key, "keys": list(s.keys), "image_ids": list(s.ids)} for s in plan.todo],
        "done": plan.done,
        "n_images": plan.n_images,
    }


@task(
    name="generate-shard", task_run_name="shard {shard_key}", retries=3, retry_delay_seconds=[5, 30, 120],
    cache_key_fn=_shard_key, persist_result=True,
)
def generate_shard_task(
    cfg: BuildConfig, work_dir: str, stats_path: str, shard_key: str, keys: list[str], image_ids: list[str], run_id: str,
) -> str:
    """Generate and QC one shard (LLM calls go through the cached layer: a retry never pays twice)."""
    shard = shards.Shard(shard_key, tuple(keys), tuple(image_ids))
    out = build.generate_shard(store(), cfg, Path(work_dir), Path(stats_path), shard, run_id)
    return str(out)


@task(name="assemble")
def assemble_task(cfg: BuildConfig, work_dir: str, images_fingerprint: str, run_id: str) -> dict[str, Any]:
    arts = build.assemble(store(), cfg, Path(work_dir), images_fingerprint, run_id)
    return {k: describe(a) for k, a in arts.items()}


@task(name="split-and-export")
def split_export_task(cfg: BuildConfig, run_id: str) -> dict[str, Any]:
    out = build.split_and_export(store(), cfg, run_id)
    return {
        "splits": describe(out["splits"]),
        "export_dir": str(out["export_dir"]),
        "exports": {subset: {fmt: [str(p) for p in paths] for fmt, paths in fmts.items()} for subset, fmts in out["exports"].items()},
    }


@task(name="build-statistics")
def stats_task(cfg: BuildConfig) -> dict[str, Any]:
    """Counts by kind/category/modality and QC yield: CSV + PNG on disk, tables in the Prefect UI."""
    from medhall.jobs import write_stats

    tables = build.statistics(store(), cfg)
    csv_path, png = write_stats(store(), cfg.dataset, cfg.source)
    key = artifact_key(cfg.dataset)
    for name, table in tables.items():
        create_table_artifact(table=table.to_pylist(), key=f"{key}-{name.replace('_', '-')}", description=f"{cfg.dataset}: {name}")
    qc = {r["check"]: r for r in tables["qc"].to_pylist()}
    filtered_share = qc.get("any", {}).get("share", 0.0)
    create_markdown_artifact(
        key=f"{key}-build-summary",
        markdown=(
            f"# {cfg.dataset}\n\nGenerator `{cfg.generator}`, {cfg.questions_per_image} pairs per image, "
            f"QC filtered **{100 * filtered_share:.1f} %** of pairs (the paper: 7.3 %).\n\n"
            f"Statistics: `{csv_path}`, chart: `{png}`.\n\nQuery: `medhall sql \"select kind, category, count(*) "
            f"from instructions__{cfg.dataset.replace('-', '_').replace('.', '_')} group by all\"`\n"
        ),
    )
    return {"csv": str(csv_path), "png": str(png), "qc_filtered_share": filtered_share}


@task(name="build-outcome")
def outcome_task(cfg: BuildConfig, max_failed_share: float = 0.0) -> build.Outcome:
    """What the build did against what was asked: pairs, images, failures by reason (an artifact)."""
    done = build.outcome(store(), cfg, max_failed_share)
    create_markdown_artifact(key=f"{artifact_key(cfg.dataset)}-outcome", markdown="```\n" + done.summary() + "\n```",
                             description=f"{cfg.dataset}: {'complete' if done.ok else 'INCOMPLETE'}")
    return done
