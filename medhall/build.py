"""Building an instruction dataset from an ingested corpus, shard by shard, resumably.

The steps (each a Prefect task in ``flows/build_dataset.py``; each callable on its own here):

1. :func:`prepare`: read the source images, compute the corpus statistics once, and plan
   shards of the images that have no finished shard yet (resume is a set difference on
   ``(image_id, caption hash)``);
2. :func:`generate_shard`: instruction pairs for one shard, written with a completion marker
   listing the shard's images that are done;
3. :func:`qc_shard`: rule checks (always) and the LLM self-check (when configured) of one
   shard's pairs;
4. :func:`assemble`: stream every finished shard of the images still in the source into the
   ``instructions`` and ``qc_verdicts`` artifacts;
5. :func:`split_and_export`: the image split, the ablation subsets and the exports;
6. :func:`statistics`: counts by kind, category and modality, and the QC yield per reason.

The shards follow :mod:`medhall.shards` (plan, atomic outputs, completion markers, read back,
sweep). Killed mid-way, a re-run redoes only unfinished shards; images added to the source form
new shards and only they are generated. Shard outputs live under
``<home>/work/<dataset>/<generator key>/`` (the key hashes the generator's and QC's config
and templates), so a change of generator settings starts a fresh set of shards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from medhall import atomic, schema, shards
from medhall.endpoints import LLMSettings
from medhall.errors import MedhallError
from medhall.generate import OfflineConfig
from medhall.ids import canonical_json, content_id, sha256_hex
from medhall.shards import Shard
from medhall.store import ArtifactStore

DEFAULT_EXPORTS = ("llava", "llamafactory", "medhalltune", "parquet")


class BuildConfig(BaseModel):
    """Everything that decides a build's output (all of it is recorded in the manifests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(..., description="Dataset whose images (and captions) are the input.")
    dataset: str = Field(..., description="Dataset to write the instruction tables to.")
    generator: Literal["offline", "llm"] = "offline"
    offline: OfflineConfig = Field(default_factory=OfflineConfig)
    questions_per_image: int = Field(10, ge=1, le=100)
    llm: LLMSettings | None = Field(None, description="LLM endpoint, for generator='llm' and/or llm_qc.")
    llm_qc: bool = Field(False, description="Run the LLM self-check (sees only the caption) besides the rules.")
    min_answer_words: int = Field(3, ge=0)
    shard_size: int = Field(1000, ge=1)
    test_images: int = Field(200, ge=0)
    split_by: tuple[str, ...] = ("modality",)
    seed: int = 0
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    exports: tuple[str, ...] = DEFAULT_EXPORTS

    def offline_config(self) -> OfflineConfig:
        """The offline generator's settings with this build's pairs per image and seed."""
        return self.offline.model_copy(update={"questions_per_image": self.questions_per_image, "seed": self.seed})

    def generator_key(self) -> str:
        """Hash of what decides a shard's content: generator, its config and templates, QC."""
        from medhall.generate import template_hash

        gen: dict[str, Any] = {"generator": self.generator, "qpi": self.questions_per_image, "seed": self.seed}
        if self.generator == "offline":
            gen["offline"] = self.offline_config().model_dump()
            gen["templates"] = template_hash()
        else:
            from medhall.generate.llm import LLMGenerator

            gen["llm"] = LLMGenerator.key_parts(self)
        gen["qc"] = {"min_words": self.min_answer_words, "llm_qc": self.llm_qc}
        if self.llm_qc:
            from medhall.qc.llm_check import LLMSelfCheck

            gen["qc"]["llm"] = LLMSelfCheck.key_parts(self)
        return sha256_hex(canonical_json(gen))[:16]


@dataclass(frozen=True)
class Plan:
    """What :func:`prepare` decided: where shards live, which are still to do."""

    work_dir: Path
    images_fingerprint: str
    stats_path: Path
    todo: tuple[Shard, ...]  # keys: ``<image_id>:<caption hash>``; ids: image ids
    done: int  # shards already finished
    n_images: int


def work_dir(store: ArtifactStore, cfg: BuildConfig) -> Path:
    return store.root / "work" / cfg.dataset / cfg.generator_key()


def _caption_key(image_id: str, caption: str | None) -> str:
    """A unit key of the build: the image and its caption (a new caption is new work)."""
    return f"{image_id}:{sha256_hex(caption or '')[:12]}"


def _source_batches(store: ArtifactStore, cfg: BuildConfig, columns: list[str], batch_size: int = 65536) -> Iterator[pa.RecordBatch]:
    """The source images' ``columns``, a batch at a time (the table is never held whole)."""
    path = store.get("images", cfg.source).data_path
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns, use_threads=False)


def _source_keys(store: ArtifactStore, cfg: BuildConfig) -> Iterator[tuple[str, str]]:
    """``(image key, image_id)`` of every source image, in file order (read in batches)."""
    for batch in _source_batches(store, cfg, ["image_id", "caption"]):
        ids = batch.column("image_id").to_pylist()
        yield from zip((_caption_key(i, c) for i, c in zip(ids, batch.column("caption").to_pylist(), strict=True)), ids, strict=True)


IMAGE_COLUMNS = ["image_id", "dataset", "caption", "modality", "body_part", "image_ref", "image_path"]


def source_images(store: ArtifactStore, cfg: BuildConfig) -> tuple[pa.Table, str]:
    art = store.get("images", cfg.source)
    return art.read(columns=IMAGE_COLUMNS), art.fingerprint


def prepare(store: ArtifactStore, cfg: BuildConfig) -> Plan:
    """Statistics of the whole corpus, and the shards still to generate.

    The images are read in batches (captions are not held whole); what stays is one key and
    one id per image still to do. What killed runs left behind (temporary files and folders of
    processes that are gone) is swept first.
    """
    from medhall.generate import corpus_statistics
    from medhall.store.housekeeping import sweep

    sweep(store.root)
    fingerprint = store.get("images", cfg.source).fingerprint
    wd = work_dir(store, cfg)
    stats_path = wd / f"corpus-stats-{fingerprint[:16]}.json"
    if not stats_path.exists():
        captions = (c for b in _source_batches(store, cfg, ["caption"]) for c in b.column("caption").to_pylist())
        atomic.write_bytes(stats_path, corpus_statistics(captions).to_json().encode())
    plan = shards.plan(wd, _source_keys(store, cfg), cfg.shard_size)
    return Plan(wd, fingerprint, stats_path, plan.todo, plan.shards_done, plan.units)


def _shard_images(store: ArtifactStore, cfg: BuildConfig, shard: Shard, images: pa.Table | None = None) -> pa.Table:
    wanted = pa.array(shard.ids, pa.string())
    if images is None:  # a task on its own: read just this shard's rows (filter pushed into the scan)
        import pyarrow.dataset as ds

        path = store.get("images", cfg.source).data_path
        return ds.dataset(path).to_table(columns=IMAGE_COLUMNS, filter=ds.field("image_id").isin(wanted), use_threads=False)
    return images.filter(pc.is_in(images.column("image_id"), wanted))


def make_generator(cfg: BuildConfig, store: ArtifactStore, client: Any = None):
    """The configured generator: ``generate(images, corpus_stats, run_id=) -> instructions``.

    ``client``: an :class:`medhall.llm.LLMClient` to use instead of one made from ``cfg.llm``.
    """
    if cfg.generator == "offline":
        from medhall.generate import OfflineGenerator

        return OfflineGenerator(cfg.offline_config())
    from medhall.generate.llm import LLMGenerator

    return LLMGenerator.from_build(cfg, store, client)


def _generate(generator: Any, images: pa.Table, stats: Any, run_id: str) -> tuple[pa.Table, list[dict], set[str]]:
    """(pairs, quarantine rows, ids of images that failed) from either kind of generator."""
    if hasattr(generator, "generate_with_problems"):
        r = generator.generate_with_problems(images, stats, run_id=run_id)
        return r.pairs, r.problems, r.failed_images
    return generator.generate(images, stats, run_id=run_id), [], set()


def generate_shard(
    store: ArtifactStore, cfg: BuildConfig, plan_dir: Path, stats_path: Path, shard: Shard, run_id: str,
    *, all_images: pa.Table | None = None, stats: Any = None, client: Any = None,
) -> Path:
    """Generate one shard's pairs, then QC them; the completion marker is written last.

    The marker marks done the images that were generated and have no QC verdict in ``error``. An image that failed (a request that failed for good, a reply that did not
    validate) is quarantined with its reason and left out of the marker, so the next run plans
    it again; requests that succeeded come from the LLM cache then, never paid twice.
    ``all_images``, ``stats`` and ``client`` may be passed by a caller that already holds them.
    Without ``client``, the shard uses the process's client for ``cfg.llm`` (:func:`shared_client`),
    so shards running at once on threads share its concurrency and rate limits.
    """
    if client is None and (cfg.generator == "llm" or cfg.llm_qc):
        with shared_client(cfg, store, run_id) as client:
            return _generate_shard(store, cfg, plan_dir, stats_path, shard, run_id, all_images, stats, client)
    return _generate_shard(store, cfg, plan_dir, stats_path, shard, run_id, all_images, stats, client)


def shared_client(cfg: BuildConfig, store: ArtifactStore, run_id: str):
    """A context holding the process's :class:`medhall.llm.LLMClient` for this build's endpoint
    (one per endpoint settings, store and run; generation and LLM QC share it), closed when its
    last shard leaves (:mod:`medhall.llm.shared`)."""
    from medhall.endpoints import LLMSettings, make_client
    from medhall.llm.shared import lease

    settings = cfg.llm or LLMSettings()
    key = ("build", settings.model_dump_json(), str(store.root), run_id)
    return lease(key, lambda: make_client(settings, run_id=run_id, home=store.root))


def _generate_shard(store: ArtifactStore, cfg: BuildConfig, plan_dir: Path, stats_path: Path, shard: Shard, run_id: str,
                    all_images: pa.Table | None, stats: Any, client: Any) -> Path:
    from medhall.generate import CorpusStats

    images = _shard_images(store, cfg, shard, all_images)
    stats = stats or CorpusStats.from_json(stats_path.read_text())
    pairs, problems, failed = _generate(make_generator(cfg, store, client), images, stats, run_id)
    pairs = pairs.set_column(pairs.schema.get_field_index("dataset"), "dataset", pa.array([cfg.dataset] * pairs.num_rows, pa.string()))
    verdicts = qc_pairs(store, cfg, pairs, images, run_id, client)
    errored = pc.is_in(pairs.column("qa_id"), verdicts.filter(pc.equal(verdicts.column("verdict"), "error")).column("qa_id"))
    failed |= set(pairs.filter(errored).column("image_id").to_pylist())
    problems += qc_problems(pairs, verdicts, run_id)
    for p in problems:
        p["dataset"] = cfg.dataset
    outputs = {None: pairs, "qc": verdicts, "quarantine": schema.from_rows("quarantine", problems)}
    done = [k for k, i in zip(shard.keys, shard.ids, strict=True) if i not in failed]
    return shards.write(plan_dir, shard, outputs, done=done, failed=failed)


def qc_problems(pairs: pa.Table, verdicts: pa.Table, run_id: str) -> list[dict[str, Any]]:
    """A quarantine row per pair whose QC check could not decide (a failed or unparsable LLM
    self-check): its image waits for the next run, and the reason is on record."""
    from medhall.sources.base import clip_raw

    errors = verdicts.filter(pc.equal(verdicts.column("verdict"), "error"))
    if errors.num_rows == 0:
        return []
    image_of = dict(zip(pairs.column("qa_id").to_pylist(), pairs.column("image_id").to_pylist(), strict=True))
    return [{"quarantine_id": content_id("qrn", "qc", r["check"], r["qa_id"]), "stage": "qc", "source": r["check"],
             "record_ref": f"{r['qa_id']}#qc", "record_id": image_of.get(r["qa_id"]), "reason": "qc_error",
             "detail": r["reason"] or "the check could not decide", "raw": clip_raw(r.get("raw")), "run_id": run_id}
            for r in errors.to_pylist()]


def qc_pairs(store: ArtifactStore, cfg: BuildConfig, pairs: pa.Table, images: pa.Table, run_id: str, client: Any = None) -> pa.Table:
    """Rule checks, plus the LLM self-check (caption only) when configured."""
    from medhall.qc.rules import rule_checks

    verdicts = [rule_checks(pairs, min_words=cfg.min_answer_words, run_id=run_id)]
    if cfg.llm_qc and pairs.num_rows:
        from medhall.qc.llm_check import LLMSelfCheck

        verdicts.append(LLMSelfCheck.from_build(cfg, store, client).check(pairs, images, run_id=run_id))
    return pa.concat_tables(verdicts)


def _held(markers: Sequence[shards.Marker], keep: set[str]) -> list[tuple[shards.Marker, pa.Array]]:
    """(finished shard, ids of the wanted images it finished), in shard-key order."""
    held = sorted(shards.claims(markers, keep, only_done=True), key=lambda h: h[0].key)
    return [(m, pa.array(ids, pa.string())) for m, ids in held]


def _shard_pairs(plan_dir: Path, held: list[tuple[shards.Marker, pa.Array]]) -> Iterator[pa.Table]:
    """Each finished shard's pairs of the images still wanted."""
    for marker, ids in held:
        t = pq.read_table(shards.output_path(plan_dir, marker.key))
        yield t.filter(pc.is_in(t.column("image_id"), ids))


def _shard_verdicts(plan_dir: Path, held: list[tuple[shards.Marker, pa.Array]]) -> Iterator[pa.Table]:
    """Each finished shard's verdicts of the pairs :func:`_shard_pairs` keeps (shard-local sets)."""
    for marker, ids in held:
        pairs = pq.read_table(shards.output_path(plan_dir, marker.key), columns=["qa_id", "image_id"])
        kept = pairs.filter(pc.is_in(pairs.column("image_id"), ids)).column("qa_id")
        t = pq.read_table(shards.output_path(plan_dir, marker.key, "qc"))
        yield t.filter(pc.is_in(t.column("qa_id"), kept.combine_chunks()))


def _open_problems(plan_dir: Path, markers: Sequence[shards.Marker]) -> Iterator[pa.Table]:
    """Quarantine rows of images that no shard has finished yet (the latest reason per image)."""
    done_ids = {m.id_of()[k] for m in markers for k in m.done}
    seen: set[str] = set()
    for marker in markers:  # newest first
        path = shards.output_path(plan_dir, marker.key, "quarantine")
        if not path.exists():
            continue
        rows = [r for r in pq.read_table(path).to_pylist() if r["record_id"] not in done_ids and r["record_id"] not in seen]
        seen.update(r["record_id"] for r in rows)
        if rows:
            yield schema.from_rows("quarantine", rows)


def assemble(store: ArtifactStore, cfg: BuildConfig, plan_dir: Path, images_fingerprint: str, run_id: str) -> dict[str, Any]:
    """Stream the finished shards of the images still in the source into the artifacts."""
    keep = {key for key, _ in _source_keys(store, cfg)}
    markers = shards.finished(plan_dir)
    held = _held(markers, keep)
    config = {"build": cfg.model_dump(mode="json"), "generator_key": cfg.generator_key()}
    instr = store.write(
        "instructions", _shard_pairs(plan_dir, held),
        dataset=cfg.dataset, config=config, inputs=[images_fingerprint], run_id=run_id,
    )
    qc = store.write(
        "qc_verdicts", _shard_verdicts(plan_dir, held), dataset=cfg.dataset, config=config,
        inputs=[instr.fingerprint], run_id=run_id,
    )
    quarantine = store.write(
        "quarantine", _open_problems(plan_dir, markers), dataset=cfg.dataset, config=config,
        inputs=[images_fingerprint], run_id=run_id,
    )
    out = {"instructions": instr, "qc_verdicts": qc, "quarantine": quarantine}
    if cfg.llm is not None:  # what the run asked the LLM, paid, and got from the cache
        from medhall.llm.ledger import write_ledger

        if (ledger := write_ledger(store, cfg.dataset, run_id, config)) is not None:
            out["llm_calls"] = ledger
    return out


def split_and_export(store: ArtifactStore, cfg: BuildConfig, run_id: str) -> dict[str, Any]:
    """The image split, the ablation subsets (as exports of their own) and every export.

    The split is drawn per image (in Arrow: a few columns per image). Everything per pair runs
    in DuckDB under a memory limit (:func:`medhall.export.sql.export_stored`): which export
    each pair goes to (QC verdicts, split, subsets, fractions, release ids) and the order of
    every file; the pairs stream from the artifact's Parquet file into all exports in one pass
    per order. Memory therefore stays flat however many pairs the build has.
    """
    from medhall.export.sql import export_stored
    from medhall.split import split_by_image
    from medhall.store.housekeeping import settle_exports

    images_art = store.get("images", cfg.source)  # the build's images are its source's (not copied)
    instr_art = store.get("instructions", cfg.dataset)
    out_dir = store.root / "exports" / cfg.dataset / f"v{instr_art.version:06d}"
    by = list(cfg.split_by)
    keys = images_art.read(columns=list(dict.fromkeys(["image_id", *by])))
    splits = split_by_image(keys, test_images=min(cfg.test_images, keys.num_rows), seed=cfg.seed, by=by, run_id=run_id)
    del keys
    exports = export_stored(
        instr_art.data_path, images_art.data_path, splits, out_dir,
        verdicts=store.get("qc_verdicts", cfg.dataset).data_path, formats=cfg.exports, name=cfg.dataset,
        fractions=cfg.fractions, seed=cfg.seed, tmp_dir=work_dir(store, cfg),
        png_dir=store.root / "images" / cfg.source,  # DICOM as PNG, once per image content
    )
    split_art = store.write("splits", splits, dataset=cfg.dataset, config={"build": cfg.model_dump(mode="json")}, inputs=[instr_art.fingerprint], run_id=run_id)
    disk = settle_exports(store, cfg.dataset, out_dir)  # unchanged files shared, old exports pruned
    return {"splits": split_art, "exports": exports, "export_dir": out_dir, "export_disk": disk}


def statistics(store: ArtifactStore, cfg: BuildConfig) -> dict[str, pa.Table]:
    """Counts by kind, category, modality; QC yield per reason (as the paper's 7.3 % filtered).

    DuckDB aggregates straight from the Parquet files, and only the verdicts that did not pass
    are read into memory, so this stays small however large the dataset.
    """
    import duckdb

    from medhall.qc.rules import qc_summary

    instr = store.get("instructions", cfg.dataset)
    verdicts = store.get("qc_verdicts", cfg.dataset)
    images = store.get("images", cfg.source)
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        con.execute("SET memory_limit = '256MB'")  # aggregates spill; a big dataset must not grow RSS
        i, v, m = (f"read_parquet('{a.data_path}')" for a in (instr, verdicts, images))
        by_category = con.sql(
            f"SELECT kind, category, count(*) AS pairs FROM {i} GROUP BY ALL ORDER BY kind, pairs DESC, category"
        ).to_arrow_table()
        by_modality = con.sql(
            f"SELECT m.modality, i.kind, count(*) AS pairs FROM {i} i JOIN {m} m USING (image_id) "
            "GROUP BY ALL ORDER BY m.modality, i.kind"
        ).to_arrow_table()
        checks = [r[0] for r in con.sql(f'SELECT DISTINCT "check" FROM {v}').fetchall()]
        not_passed = con.sql(f"SELECT qa_id, \"check\", verdict FROM {v} WHERE verdict <> 'correct'").to_arrow_table()
        # pairs whose check could not decide are not in the dataset (their image waits in the
        # quarantine for the next run): counted here, so the QC table never says 0 errors
        quarantine = store.latest("quarantine", cfg.dataset)
        undecided = dict(con.sql(
            f"SELECT source, count(DISTINCT record_ref) FROM read_parquet('{quarantine.data_path}') "
            "WHERE stage = 'qc' GROUP BY source").fetchall()) if quarantine is not None and quarantine.rows else {}
    finally:
        con.close()
    qc = qc_summary(not_passed, instr.rows, checks).to_pylist()
    for row in qc:
        row["errors"] += sum(undecided.values()) if row["check"] == "any" else undecided.get(row["check"], 0)
    return {
        "by_category": by_category.cast(pa.schema([("kind", pa.string()), ("category", pa.string()), ("pairs", pa.int64())])),
        "by_modality": by_modality.cast(pa.schema([("modality", pa.string()), ("kind", pa.string()), ("pairs", pa.int64())])),
        "qc": pa.Table.from_pylist(qc, schema=qc_summary(not_passed.slice(0, 0), 0, []).schema),
    }


class IncompleteBuild(MedhallError, RuntimeError):
    """The build did not do what was asked (nothing produced, or too many images failed); the
    message is its summary. What it did make is kept, and a re-run retries the rest."""


@dataclass(frozen=True)
class Outcome:
    """What a build did, by the numbers, and whether that is what was asked."""

    dataset: str
    images: int  # in the source
    images_with_pairs: int
    pairs: int
    failed: dict[str, int]  # reason -> images still failing after this run
    details: dict[str, str]  # reason -> one example detail
    max_failed_share: float = 0.0

    @property
    def failed_images(self) -> int:
        return sum(self.failed.values())

    @property
    def ok(self) -> bool:
        return self.pairs > 0 and self.failed_images <= self.max_failed_share * self.images

    def summary(self) -> str:
        head = (f"{self.dataset}: {self.pairs} pairs on {self.images_with_pairs} of {self.images} images"
                + (f"; {self.failed_images} image(s) failed" if self.failed_images else ""))
        lines = [head] + [f"  {reason}: {n} (e.g. {self.details[reason][:160]})" for reason, n in
                          sorted(self.failed.items(), key=lambda kv: -kv[1])]
        if not self.ok:
            why = ("nothing was produced" if self.pairs == 0 else
                   f"{self.failed_images} failed image(s) exceed the allowed share {self.max_failed_share:g}")
            lines.append(f"incomplete: {why}. What was made is kept; fix the cause and re-run to retry the "
                         "failed images (answers already paid for come from the cache)")
        return "\n".join(lines)


def outcome(store: ArtifactStore, cfg: BuildConfig, max_failed_share: float = 0.0) -> Outcome:
    """The build's :class:`Outcome`: its instructions against its source, and the images its
    latest quarantine still holds (the failures no run has cured yet), by reason."""
    import duckdb

    instr = store.latest("instructions", cfg.dataset)
    quarantine = store.latest("quarantine", cfg.dataset)
    images = store.get("images", cfg.source).rows
    pairs = with_pairs = 0
    if instr is not None and instr.rows:
        pairs = instr.rows
        with duckdb.connect() as con:
            with_pairs = con.execute(f"SELECT count(DISTINCT image_id) FROM read_parquet('{instr.data_path}')").fetchone()[0]
    failed: dict[str, int] = {}
    details: dict[str, str] = {}
    if quarantine is not None and quarantine.rows:
        with duckdb.connect() as con:
            rows = con.execute(f"SELECT reason, count(DISTINCT record_id), any_value(detail) FROM "
                               f"read_parquet('{quarantine.data_path}') GROUP BY reason").fetchall()
        failed = {r: int(n) for r, n, _ in rows}
        details = {r: d or "" for r, _, d in rows}
    return Outcome(cfg.dataset, images, int(with_pairs), pairs, failed, details, max_failed_share)


def run_build(store: ArtifactStore, cfg: BuildConfig, *, max_shards: int | None = None, client: Any = None,
              wait: bool = False) -> dict[str, Any]:
    """The whole build in one process (what the flow does with tasks), holding the dataset's
    writer lock (another build of it stops this one at once, or makes it wait with ``wait``).

    ``max_shards`` stops after that many shards (as a killed run would); ``client`` is an
    :class:`medhall.llm.LLMClient` to use instead of one made from ``cfg.llm``.
    """
    from medhall.store.locks import dataset_lock

    with dataset_lock(store, cfg.dataset, "build", wait=wait):
        return _run_build(store, cfg, max_shards=max_shards, client=client)


def _run_build(store: ArtifactStore, cfg: BuildConfig, *, max_shards: int | None, client: Any) -> dict[str, Any]:
    from medhall.generate import CorpusStats
    from medhall.ids import run_id as make_run_id

    plan = prepare(store, cfg)
    rid = make_run_id("build", cfg.model_dump(mode="json"), [plan.images_fingerprint])
    images, _ = source_images(store, cfg)
    stats = CorpusStats.from_json(plan.stats_path.read_text())
    for i, shard in enumerate(plan.todo):
        if max_shards is not None and i >= max_shards:
            return {"plan": plan, "stopped_after": i}
        generate_shard(store, cfg, plan.work_dir, plan.stats_path, shard, rid, all_images=images, stats=stats, client=client)
    arts = assemble(store, cfg, plan.work_dir, plan.images_fingerprint, rid)
    out = split_and_export(store, cfg, rid)
    return {"plan": plan, "run_id": rid, **arts, **out, "statistics": statistics(store, cfg)}


__all__: Sequence[str] = [
    "BuildConfig",
    "IncompleteBuild",
    "Outcome",
    "outcome",
    "qc_problems",
    "Plan",
    "Shard",
    "assemble",
    "generate_shard",
    "prepare",
    "qc_pairs",
    "run_build",
    "split_and_export",
    "statistics",
]
