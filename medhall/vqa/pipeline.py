"""Zero-shot medical VQA (the paper's Table 3) over several models and benchmarks, resumably.

The steps (each a Prefect task in ``flows/zero_shot_vqa.py``; each callable on its own here):

1. :func:`load`: read every benchmark (:func:`medhall.vqa.loaders.load_benchmark`); rows
   that could not be read become ``quarantine`` rows (stage ``vqa``).
2. :func:`plan`: for each (model, benchmark), the items that no finished shard has answered
   yet, cut into shards (:func:`medhall.shards.plan`). Resume is a set difference on item keys
   (:func:`medhall.vqa.config.item_key`: ``<item_id>:<hash of the prompt and the image's
   presence and size>``).
3. :func:`answer_shard`: one shard's answers from the model's runner, written as
   ``predictions`` rows with a completion marker written last (:func:`medhall.shards.write`).
4. :func:`assemble`: the finished shards into the ``predictions`` artifact, every answer scored
   (:func:`medhall.vqa.metrics.score_items`) into the ``scores`` artifact (long: one
   row per item, model and metric), the loader problems into ``quarantine``.
5. :func:`medhall.vqa.report.report`: Table 3 as Markdown, CSV and PNG, and the long summary
   as CSV, under ``<home>/reports/<dataset>/``.

:func:`run_vqa` runs them in one process. Each model's runner is made once, answers all its
shards on every benchmark, and is unloaded (``unload()``) before the next model is loaded.

Answers live under ``<home>/work/vqa/<model key>/<benchmark>/shards/``: the model key
(:func:`medhall.vqa.config.model_key`) hashes what decides an answer, so answers are reused by
any later run, under any output dataset name, that asks the same model the same questions. A
run killed mid-way redoes only unfinished shards. An item whose image is missing or
undecodable is answered with a failure (``predictions.status = failed``) and counts as done
until its image appears or changes size; other failures (a generation error) are asked again
on the next run, even when they were a whole shard (the shard's marker did not mark them done).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from medhall import shards
from medhall.ids import canonical_json, content_id
from medhall.store import ArtifactStore
from medhall.vqa.config import (
    BenchmarkSpec,
    ModelSpec,
    VQAConfig,
    image_path,
    item_key,
    model_key,
    path_fingerprint,
)
from medhall.vqa.data import VQAItem, VQALoad, prompt_for, read_image_bytes
from medhall.vqa.loaders import load_benchmark
from medhall.vqa.report import report
from medhall.vqa.runners import RunnerFactory, RunnerPool, make_runner

if TYPE_CHECKING:
    from medhall.infer.base import Answer, Query, Runner

#: Failures that asking again would repeat (the input is at fault): such an item counts as done.
FINAL_ERRORS: tuple[str, ...] = ("missing_image", "corrupt_image")
#: Per-item metrics written to the ``scores`` table (those of the item's split).
SCORE_METRICS: tuple[str, ...] = (
    "llava_recall", "llava_precision", "llava_f1", "llava_open_hit", "token_f1", "exact_match",
    "llava_closed", "closed_strict", "choice_acc",
)  # fmt: skip
ORIGINS: dict[str, str] = {"local_vlm": "local", "api": "api"}


# --------------------------------------------------------------------------------------------
# Step 1: load


@dataclass(frozen=True)
class Loaded:
    """Every benchmark's items, their problems as quarantine rows, what was skipped."""

    items: dict[str, list[VQAItem]]  # benchmark name -> items
    quarantine: pa.Table
    skipped: dict[str, dict[str, int]]
    fingerprints: dict[str, str]  # benchmark name -> file fingerprint
    run_id: str


_LOAD_CACHE: dict[str, VQALoad] = {}
_LOAD_CACHE_SIZE = 8


def load_items(spec: BenchmarkSpec, fingerprint: str | None = None) -> VQALoad:
    """The benchmark's :class:`VQALoad`, memoised per (spec, file fingerprint) in this process
    (shard tasks of one flow run read each file once)."""
    fingerprint = fingerprint or path_fingerprint(spec.path) or ""
    key = canonical_json([spec.model_dump(mode="json"), fingerprint])
    if key not in _LOAD_CACHE:
        if len(_LOAD_CACHE) >= _LOAD_CACHE_SIZE:
            _LOAD_CACHE.pop(next(iter(_LOAD_CACHE)))
        _LOAD_CACHE[key] = load_benchmark(spec.name, spec.path, **spec.options)
    return _LOAD_CACHE[key]


def vqa_run_id(cfg: VQAConfig, fingerprints: Mapping[str, str]) -> str:
    """The run id: the config, the benchmark fingerprints and the model keys."""
    from medhall.ids import run_id

    inputs = [*fingerprints.values(), *(model_key(m, cfg) for m in cfg.models)]
    return run_id("vqa", cfg.model_dump(mode="json"), inputs)


def load(cfg: VQAConfig) -> Loaded:
    """Read every benchmark; rows that could not be read become quarantine rows (stage ``vqa``)."""
    from medhall.evaluate.predictions import problems_table

    fingerprints = {b.name: path_fingerprint(b.path) or "" for b in cfg.benchmarks}
    rid = vqa_run_id(cfg, fingerprints)
    loads = {b.name: load_items(b, fingerprints[b.name]) for b in cfg.benchmarks}
    quarantine = pa.concat_tables(
        [
            problems_table(ld.problems, stage="vqa", source=name, dataset=cfg.dataset, run_id=rid)
            for name, ld in loads.items()
        ]
    )
    return Loaded(
        items={name: ld.items for name, ld in loads.items()},
        quarantine=quarantine,
        skipped={name: dict(ld.skipped) for name, ld in loads.items()},
        fingerprints=fingerprints,
        run_id=rid,
    )


# --------------------------------------------------------------------------------------------
# Step 2: plan


@dataclass(frozen=True)
class Unit:
    """One model on one benchmark: its work folder and the shards still to answer."""

    model: str
    benchmark: str
    model_key: str
    work_dir: Path
    todo: tuple[shards.Shard, ...]
    done_shards: int
    items: int


@dataclass(frozen=True)
class VQAPlan:
    """What :func:`plan` decided."""

    run_id: str
    fingerprints: dict[str, str]
    units: tuple[Unit, ...]

    def units_of(self, model: str) -> list[Unit]:
        return [u for u in self.units if u.model == model]

    @property
    def shards_todo(self) -> int:
        return sum(len(u.todo) for u in self.units)


def work_dir(store: ArtifactStore, spec: ModelSpec, benchmark: str, cfg: VQAConfig) -> Path:
    """``<home>/work/vqa/<model key>/<benchmark>``: shared by every run asking that model."""
    return store.root / "work" / "vqa" / model_key(spec, cfg) / benchmark


def plan(store: ArtifactStore, cfg: VQAConfig, loaded: Loaded | None = None) -> VQAPlan:
    """For every (model, benchmark), the items no finished shard has done, in shards."""
    loaded = loaded or load(cfg)
    units = []
    for spec in cfg.models:
        for bench in cfg.benchmarks:
            wd, items = work_dir(store, spec, bench.name, cfg), loaded.items[bench.name]
            keys = ((item_key(it, bench.images_dir()), it.item_id) for it in items)
            p = shards.plan(wd, keys, cfg.shard_size)
            units.append(
                Unit(spec.name, bench.name, model_key(spec, cfg), wd, p.todo, p.shards_done, len(items))
            )
    return VQAPlan(loaded.run_id, loaded.fingerprints, tuple(units))


# --------------------------------------------------------------------------------------------
# Step 3: answer one shard


def _query(item: VQAItem, images_dir: Path) -> Query | Answer:
    """The item's query, or its failure when the image cannot be given to the model."""
    from medhall.infer.base import Answer, Query

    path = image_path(item, images_dir)
    if path is None:
        return _embedded_query(item)
    if not path.is_file():
        return Answer.failure(item.item_id, f"missing_image: no such file: {path}")
    return Query(qa_id=item.item_id, question=prompt_for(item), image=path)


def _embedded_query(item: VQAItem) -> Query | Answer:
    """A query with an image decoded from its Parquet row."""
    import io

    from PIL import Image

    from medhall.infer.base import Answer, Query

    try:
        with Image.open(io.BytesIO(read_image_bytes(item))) as im:
            image = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - one bad image fails its item only
        return Answer.failure(item.item_id, f"corrupt_image: {type(e).__name__}: {e}")
    return Query(qa_id=item.item_id, question=prompt_for(item), image=image)


def ask(
    runner: Runner, items: Sequence[VQAItem], images_dir: Path
) -> tuple[list[Query], list[Answer]]:
    """Queries for ``items`` and their answers; items whose image cannot be given fail without
    reaching the model."""
    from medhall.infer.base import Query

    prepared = [_query(it, images_dir) for it in items]
    to_ask = [p for p in prepared if isinstance(p, Query)]
    answers = iter(runner.answer(to_ask) if to_ask else [])
    queries = [
        p if isinstance(p, Query) else Query(qa_id=it.item_id, question=prompt_for(it))
        for p, it in zip(prepared, items, strict=True)
    ]
    return queries, [next(answers) if isinstance(p, Query) else p for p in prepared]


def is_final(answer: Answer) -> bool:
    """An answer that asking again would not change: a text, or a failure of the input."""
    return answer.ok or (answer.error or "").startswith(FINAL_ERRORS)


def _shard_items(cfg: VQAConfig, benchmark: str, item_ids: Sequence[str]) -> list[VQAItem]:
    by_id = {it.item_id: it for it in load_items(cfg.benchmark(benchmark)).items}
    missing = [i for i in item_ids if i not in by_id]
    if missing:
        raise KeyError(f"{benchmark}: no item(s) {missing[:5]} in {cfg.benchmark(benchmark).path}")
    return [by_id[i] for i in item_ids]


def answer_shard(
    store: ArtifactStore,
    cfg: VQAConfig,
    model: str,
    benchmark: str,
    item_ids: Sequence[str],
    *,
    run_id: str | None = None,
    runner: Runner | None = None,
) -> Path:
    """Answer one shard of ``benchmark`` with ``model``; the completion marker is written last.

    Returns the shard's predictions file. A shard whose marker marked all its items done is
    not asked again (one with failures that asking again may fix is).
    ``runner``: an already made runner of ``model`` (default: one made for this shard alone;
    pass one from a :class:`~medhall.vqa.runners.RunnerPool` to load a model once for many
    shards).
    """
    from medhall.infer.base import predictions_table

    spec, bench = cfg.model(model), cfg.benchmark(benchmark)
    items = _shard_items(cfg, bench.name, item_ids)
    keys = [item_key(it, bench.images_dir()) for it in items]
    asked = sorted(zip(keys, item_ids, strict=True))  # a shard's unit keys are sorted
    shard = shards.Shard(shards.shard_key(keys), tuple(k for k, _ in asked), tuple(i for _, i in asked))
    wd = work_dir(store, spec, bench.name, cfg)
    if shards.is_done(wd, shard):
        return shards.output_path(wd, shard.key)
    queries, answers = ask(runner or make_runner(spec, cfg), items, bench.images_dir())
    table = predictions_table(spec.name, queries, answers, origin=ORIGINS[spec.kind], run_id=run_id)
    done = [k for k, a in zip(keys, answers, strict=True) if is_final(a)]
    failed = [a.qa_id for a in answers if not a.ok]
    return shards.write(wd, shard, {None: table}, done=done, failed=failed, model=spec.name, run_id=run_id)


# --------------------------------------------------------------------------------------------
# Step 4: assemble and score


def latest_predictions(wd: Path, keys: Iterable[str], model: str) -> pa.Table:
    """Each item's latest answer (newest marker first) among the finished shards that asked its
    current key, with ``model`` and ``pred_id`` set to the model's current name."""
    from medhall.schema import empty, from_rows

    rows: dict[str, dict[str, Any]] = {}
    for table in shards.read(wd, keys, id_column="qa_id"):
        for r in table.to_pylist():
            rows.setdefault(
                r["qa_id"], {**r, "model": model, "pred_id": content_id("pred", model, r["qa_id"])}
            )
    return (
        from_rows("predictions", sorted(rows.values(), key=lambda r: r["qa_id"]))
        if rows
        else empty("predictions")
    )


def score_rows(
    model: str, item_scores: Iterable[Mapping[str, Any]], closed_variant: str, run_id: str | None
) -> list[dict[str, Any]]:
    """Long ``scores`` rows of :func:`medhall.vqa.metrics.score_items` output (items
    without an answer have none); ``params`` names the benchmark, split, closed-question rule
    and, for multiple choice, the option read and the rule that read it."""
    out = []
    for s in item_scores:
        if s["missing"]:
            continue
        params = {"benchmark": s["benchmark"], "split": s["split"]}
        if s["split"] == "closed":
            params["closed_variant"] = closed_variant
        if s["split"] == "choice":
            params.update(choice_rule=s["choice_rule"], choice_letter=s["choice_letter"])
        text = canonical_json(params)
        out.extend(
            {
                "qa_id": s["item_id"],
                "model": model,
                "metric": m,
                "value": s[m],
                "params": text,
                "run_id": run_id,
            }
            for m in SCORE_METRICS
            if m in s
        )
    return out


@dataclass(frozen=True)
class Scored:
    """One model's scores on one benchmark: long ``scores`` rows and the summary rows."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]


def score(
    model: str, items: Sequence[VQAItem], predictions: pa.Table, cfg: VQAConfig, run_id: str | None
) -> Scored:
    """Score ``predictions`` (failed ones count as missing) of ``model`` on ``items``."""
    from medhall.vqa.metrics import score_items, summarise

    answers = {
        q: a
        for q, a, s in zip(
            *(predictions.column(c).to_pylist() for c in ("qa_id", "answer", "status")), strict=True
        )
        if s == "ok"
    }
    item_scores = score_items(items, answers, closed_variant=cfg.closed_variant)
    summary = [{"model": model, **r} for r in summarise(item_scores)]
    return Scored(score_rows(model, item_scores, cfg.closed_variant, run_id), summary)


def _collect(
    store: ArtifactStore, cfg: VQAConfig, loaded: Loaded, run_id: str
) -> Iterator[tuple[pa.Table, Scored]]:
    for spec in cfg.models:
        for bench in cfg.benchmarks:
            items = loaded.items[bench.name]
            keys = [item_key(it, bench.images_dir()) for it in items]
            preds = latest_predictions(work_dir(store, spec, bench.name, cfg), keys, spec.name)
            yield preds, score(spec.name, items, preds, cfg, run_id)


def _pope(cfg: VQAConfig, loaded: Loaded, predictions: Sequence[pa.Table], run_id: str | None) -> pa.Table | None:
    """Judge-free POPE-style scores of each model's answers to the closed yes/no items
    (:func:`medhall.evaluate.pope.vqa_known`), by benchmark; None when there is no such item.
    ``predictions`` come in :func:`_collect`'s order (model by model, benchmark by benchmark)."""
    from medhall.evaluate.pope import pope_scores, vqa_known

    tables, it = [], iter(predictions)
    for spec in cfg.models:
        known, answers = [], {}
        for bench in cfg.benchmarks:
            preds = next(it)
            known += vqa_known(loaded.items[bench.name])
            answers.update({q: a for q, a, s in zip(*(preds.column(c).to_pylist() for c in ("qa_id", "answer", "status")),
                                                    strict=True) if s == "ok"})
        if known:
            tables.append(pope_scores(known, answers, model=spec.name, run_id=run_id))
    return pa.concat_tables(tables) if tables else None


def assemble(
    store: ArtifactStore, cfg: VQAConfig, run_id: str | None = None, loaded: Loaded | None = None
) -> dict[str, Any]:
    """Write the ``predictions``, ``scores`` and ``quarantine`` artifacts of ``cfg.dataset``.

    Returns the artifacts, the long ``summary`` rows (``model``, ``benchmark``, ``split``,
    ``metric``, ``value``, ``n``), the rows each loader ``skipped`` and ``counts`` (predictions
    ``answered`` (ok or failed), ``failed``, ``quarantined`` loader rows).
    """
    from medhall.schema import from_rows

    loaded = loaded or load(cfg)
    run_id = run_id or loaded.run_id
    collected = list(_collect(store, cfg, loaded, run_id))
    config = {
        "vqa": cfg.model_dump(mode="json"),
        "model_keys": {m.name: model_key(m, cfg) for m in cfg.models},
    }
    inputs = list(loaded.fingerprints.values())
    meta = {"dataset": cfg.dataset, "config": config, "run_id": run_id}
    preds = store.write("predictions", [p for p, _ in collected], inputs=inputs, **meta)
    score_table = from_rows("scores", [r for _, s in collected for r in s.rows])
    scores = store.write("scores", score_table, inputs=[preds.fingerprint], **meta)
    quarantine = store.write("quarantine", loaded.quarantine, inputs=inputs, **meta)
    pope = _pope(cfg, loaded, [p for p, _ in collected], run_id)
    pope_art = store.write("pope_scores", pope, inputs=[preds.fingerprint], **meta) if pope is not None else None
    return {
        "predictions": preds,
        "scores": scores,
        "quarantine": quarantine,
        "pope_scores": pope_art,
        "pope": pope,
        "summary": [r for _, s in collected for r in s.summary],
        "skipped": loaded.skipped,
        "counts": {
            "answered": sum(p.num_rows for p, _ in collected),
            "failed": sum(p.column("status").to_pylist().count("failed") for p, _ in collected),
            "quarantined": quarantine.rows,
        },
    }


# --------------------------------------------------------------------------------------------
# The whole run in one process


def run_vqa(
    store: ArtifactStore,
    cfg: VQAConfig,
    *,
    runner_factory: RunnerFactory | None = None,
    max_shards: int | None = None,
) -> dict[str, Any]:
    """Load, answer every unfinished shard (model by model), assemble, report.

    ``runner_factory(spec, cfg)`` replaces :func:`~medhall.vqa.runners.make_runner`;
    ``max_shards`` stops after that many shards, as a killed run would (nothing is assembled
    then).
    """
    loaded = load(cfg)
    the_plan = plan(store, cfg, loaded)
    pool = RunnerPool(runner_factory or make_runner)
    run = 0
    for spec in cfg.models:
        try:
            for unit in the_plan.units_of(spec.name):
                for shard in unit.todo:
                    if max_shards is not None and run >= max_shards:
                        return {"plan": the_plan, "run_id": loaded.run_id, "shards_run": run, "stopped": True}
                    answer_shard(
                        store,
                        cfg,
                        spec.name,
                        unit.benchmark,
                        shard.ids,
                        run_id=loaded.run_id,
                        runner=pool.get(spec, cfg),
                    )
                    run += 1
        finally:
            pool.release(spec.name)
    out = assemble(store, cfg, loaded.run_id, loaded)
    return {
        "plan": the_plan,
        "run_id": loaded.run_id,
        "shards_run": run,
        "stopped": False,
        **out,
        "report": report(store, cfg, out["summary"], pope=out["pope"]),
    }


__all__: Sequence[str] = [
    "FINAL_ERRORS",
    "ORIGINS",
    "SCORE_METRICS",
    "Loaded",
    "Scored",
    "Unit",
    "VQAPlan",
    "answer_shard",
    "ask",
    "assemble",
    "is_final",
    "latest_predictions",
    "load",
    "load_items",
    "plan",
    "run_vqa",
    "score",
    "score_rows",
    "vqa_run_id",
    "work_dir",
]
