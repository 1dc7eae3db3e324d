"""Exports of stored artifacts with flat memory: membership and order decided in DuckDB.

What :func:`medhall.build.split_and_export` runs. The in-memory writers
(:func:`medhall.export.export_all`, :func:`medhall.split.ablation_subsets`) hold a few key
columns and a mask per export for every pair; this path holds nothing per pair in Python:

1. **Membership** (:func:`membership`): one DuckDB table, one narrow row per pair (its row in
   the Parquet file, a flag per export, the release ``question_id``). It is computed with the
   same rules as the in-memory path: a pair is *kept* unless a QC verdict says ``incorrect``
   (:func:`medhall.split.kept_mask`), the ablation subsets are train-only
   (:func:`medhall.split.ablation_masks`), the nested fractions follow
   :func:`medhall.split.nested_order` (rank by ``sha256(seed:qa_id)`` within kind and
   category, then by ``(rank + 0.5) / size``), and release ids follow
   :func:`medhall.export.medhalltune.question_ids`.
2. **Streaming** (:func:`stream_exports`): per output order, one query joins the pairs (read
   from their Parquet file), their flags and their image's columns, sorts them (DuckDB spills
   to ``tmp_dir`` past ``memory_limit``) and hands :data:`~medhall.export.base.BATCH_SIZE`-row
   Arrow batches to every sink that wants them. Ties are broken by file row, as the stable
   in-memory sort does, so the files are byte-identical to the in-memory path's.

The DuckDB database is a temporary file under ``tmp_dir``, removed afterwards: its tables and
sorts live on disk once they outgrow the memory limit. Only per-image keys (``image_id``,
file name, split) are held in Arrow, for the split checks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from medhall.export.base import (
    BATCH_SIZE,
    IMAGE_COLUMNS,
    INSTRUCTION_COLUMNS,
    PathLike,
    Sink,
    image_paths,
)
from medhall.export.medhalltune import QUESTION_ID
from medhall.export.render import PNG, dicom_pngs
from medhall.schema import KINDS, SPLITS
from medhall.split import (
    DEFAULT_FRACTIONS,
    FRACTION_STRATA,
    LeakError,
    check_fractions,
    check_no_leak,
    check_question_leak,
    fraction_name,
    image_names,
    leak_suspects,
)
from medhall.tempfiles import owner_tag

if TYPE_CHECKING:
    import duckdb

#: DuckDB's working memory (its sorts, joins and tables spill to disk past it); the
#: environment variable ``MEDHALL_EXPORT_MEMORY`` overrides it. Below about 200 MB the sort
#: of a few million pairs fails with DuckDB's out-of-memory error.
DEFAULT_MEMORY_LIMIT = "256MB"
#: The subsets of :func:`medhall.split.ablation_masks`, before the fractions.
SUBSETS = ("full", "positive_only", "negative_only", "no_qc")
_ROW = "__row"


@contextlib.contextmanager
def connect(tmp_dir: PathLike | None = None, *, memory_limit: str | None = None, threads: int | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection on a temporary database file under ``tmp_dir`` (removed on exit),
    with ``memory_limit`` (default: ``$MEDHALL_EXPORT_MEMORY`` or :data:`DEFAULT_MEMORY_LIMIT`)."""
    import duckdb

    memory_limit = memory_limit or os.environ.get("MEDHALL_EXPORT_MEMORY") or DEFAULT_MEMORY_LIMIT
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".medhall-export-{owner_tag()}-", dir=tmp_dir))
    con = duckdb.connect(str(folder / "export.duckdb"))
    try:
        con.execute(f"SET memory_limit = {_lit(memory_limit)}")
        con.execute(f"SET threads = {int(threads or min(4, os.cpu_count() or 1))}")
        con.execute(f"SET temp_directory = '{folder / 'spill'}'")
        yield con
    finally:
        con.close()
        shutil.rmtree(folder, ignore_errors=True)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str | PathLike) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _parquet(path: PathLike) -> str:
    return f"read_parquet({_lit(path)}, file_row_number = true)"


# --------------------------------------------------------------------------- membership


@dataclass
class Membership:
    """What :func:`membership` made: the ``members`` table's flag columns and counts."""

    flags: dict[str, str] = field(default_factory=dict)  # export name -> flag column
    columns: list[str] = field(default_factory=list)  # instruction columns in the file
    question_ids: bool = False
    counts: dict[str, int] = field(default_factory=dict)


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    """The first row of ``sql``."""
    return con.execute(sql).fetchall()[0]


def _examples(con: duckdb.DuckDBPyConnection, sql: str, limit: int = 5) -> str:
    return ", ".join(str(r[0]) for r in con.execute(f"{sql} LIMIT {limit}").fetchall())


def membership(
    con: duckdb.DuckDBPyConnection,
    instructions: PathLike,
    images: pa.Table,
    splits: pa.Table,
    *,
    verdicts: PathLike | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    release: bool = False,
    drop_errors: bool = False,
) -> Membership:
    """Create the ``members`` table (one row per pair of ``instructions``) and check the split.

    Flags: ``filtered_<split>`` (kept pairs of each split), and for each ablation subset
    ``<subset>`` (train pairs only). ``release``: number the kept pairs for the release
    format (``question_id``) and check their kinds. ``images`` needs ``image_id`` and
    ``image_ref`` (per image, for the file-name leak check). Raises
    :class:`medhall.split.LeakError` as :func:`medhall.split.check_no_leak` does.
    """
    check_fractions(fractions)
    check_no_leak(splits)
    schema_names = set(con.sql(f"SELECT * FROM read_parquet({_lit(instructions)}) LIMIT 0").columns)
    out = Membership(columns=[c for c in INSTRUCTION_COLUMNS if c in schema_names])
    con.register("__splits", splits.select(["image_id", "split"]))
    bad = ["incorrect", "error"] if drop_errors else ["incorrect"]
    rejected = (
        f"SELECT DISTINCT qa_id FROM read_parquet({_lit(verdicts)}) WHERE verdict IN ({', '.join(map(_lit, bad))})"
        if verdicts is not None else "SELECT NULL::VARCHAR AS qa_id WHERE false"
    )
    kind = "kind" if "kind" in schema_names else "NULL::VARCHAR"
    category = "category" if "category" in schema_names else "NULL::VARCHAR"
    con.execute(f"""
        CREATE TABLE pairs AS
        SELECT i.file_row_number AS {_ROW}, i.qa_id, i.image_id, {kind} AS kind, {category} AS category,
               s.split, r.qa_id IS NULL AS kept
        FROM {_parquet(instructions)} i
        LEFT JOIN (SELECT image_id, any_value(split) AS split FROM __splits GROUP BY image_id) s USING (image_id)
        LEFT JOIN ({rejected}) r USING (qa_id)
    """)
    con.unregister("__splits")
    unassigned = _one(con, "SELECT count(*) FROM pairs WHERE split IS NULL")[0]
    if unassigned:
        raise LeakError(f"{unassigned} pair(s) have an image with no split, e.g. {_examples(con, 'SELECT qa_id FROM pairs WHERE split IS NULL')}")
    _check_name_leak(con, instructions, images, splits)

    flags = {f"filtered_{s}": f"kept AND split = {_lit(s)}" for s in SPLITS}
    flags |= {
        "full": "kept AND split = 'train'",
        "positive_only": "kept AND split = 'train' AND kind = 'positive'",
        "negative_only": "kept AND split = 'train' AND kind = 'negative'",
        "no_qc": "split = 'train'",
    }
    joins = []
    if fractions:
        n_full = _one(con, "SELECT count(*) FROM pairs WHERE kept AND split = 'train'")[0]
        _fraction_positions(con, seed)
        joins.append("__frac")
        for f in sorted(fractions):
            flags[fraction_name(f)] = f"frac_pos <= {int(f * n_full + 0.5)}"
    if release:
        _release_ids(con, instructions, schema_names)
        joins.append("__qids")
        out.question_ids = True
    out.flags = {name: f"f_{name}" for name in flags}
    con.execute(f"""
        CREATE TABLE members AS
        SELECT {_ROW}, {', '.join(f"coalesce({e}, false) AS {_q(out.flags[n])}" for n, e in flags.items())}
               {', question_id' if release else ''}
        FROM pairs {' '.join(f'LEFT JOIN {t} USING ({_ROW})' for t in joins)}
    """)
    for t in ["pairs", *joins]:
        con.execute(f"DROP TABLE {t}")
    totals = _one(con, "SELECT " + ", ".join(f"count(*) FILTER (WHERE {_q(c)})" for c in out.flags.values()) + " FROM members")
    out.counts = dict(zip(out.flags, totals, strict=True))
    return out


def _check_name_leak(con: duckdb.DuckDBPyConnection, instructions: PathLike, images: pa.Table, splits: pa.Table) -> None:
    """The question check of :func:`medhall.split.check_no_leak`, over the kept pairs of the
    images whose file name is in both splits (read from the file, those pairs only)."""
    suspects = leak_suspects(splits, images.select(["image_id", "image_ref"]))
    if suspects is None:
        return
    con.register("__suspects", suspects.select(["image_id"]))
    pairs = con.sql(f"""
        SELECT i.image_id, i.question, i.qa_id FROM {_parquet(instructions)} i
        JOIN pairs m ON m.{_ROW} = i.file_row_number
        WHERE m.kept AND i.image_id IN (SELECT image_id FROM __suspects)
    """).to_arrow_table()
    con.unregister("__suspects")
    check_question_leak(pairs, suspects)


def _fraction_positions(con: duckdb.DuckDBPyConnection, seed: int) -> None:
    """Table ``__frac``: the 1-based place in :func:`medhall.split.nested_order` of each pair
    of the ``full`` subset (kept, train)."""
    stratum = " || '|' || ".join(f"coalesce(CAST({c} AS VARCHAR), 'unknown')" for c in FRACTION_STRATA)
    con.execute(f"""
        CREATE TABLE __frac AS
        WITH f AS (
            SELECT {_ROW}, sha256({_lit(f"{seed}:")} || qa_id) AS h, {stratum} AS stratum
            FROM pairs WHERE kept AND split = 'train'
        ), ranked AS (
            SELECT {_ROW}, h,
                   (row_number() OVER (PARTITION BY stratum ORDER BY h, {_ROW}) - 0.5)
                   / count(*) OVER (PARTITION BY stratum) AS p
            FROM f
        )
        SELECT {_ROW}, row_number() OVER (ORDER BY p, h, {_ROW}) AS frac_pos FROM ranked
    """)


def _release_ids(con: duckdb.DuckDBPyConnection, instructions: PathLike, schema_names: set[str]) -> None:
    """Table ``__qids``: the release ``question_id`` of each kept pair (rules of
    :func:`medhall.export.medhalltune.question_ids`); checks their kinds first."""
    bad_kind = _one(con, f"SELECT count(*) FROM pairs WHERE kept AND (kind IS NULL OR kind NOT IN ({', '.join(map(_lit, KINDS))}))")[0]
    if bad_kind:
        raise ValueError(f"medhalltune export: {bad_kind} pair(s) have no kind (positive/negative); the release has one file per kind")
    if QUESTION_ID in schema_names:  # the file has its own ids: used as they are
        con.execute(f"""CREATE TABLE __qids AS SELECT p.{_ROW}, CAST(i.question_id AS BIGINT) AS question_id
                        FROM pairs p JOIN {_parquet(instructions)} i ON p.{_ROW} = i.file_row_number WHERE p.kept""")
        return
    if "source_qa_id" in schema_names:
        con.execute(f"""
            CREATE TABLE __qids AS SELECT p.{_ROW}, p.kind, i.source_qa_id AS src FROM pairs p
            JOIN {_parquet(instructions)} i ON p.{_ROW} = i.file_row_number WHERE p.kept
        """)
        n, bad, distinct = _one(con, r"""
            SELECT count(*), count(*) FILTER (WHERE src IS NULL OR NOT regexp_full_match(src, '\d{1,18}')),
                   count(DISTINCT (kind, TRY_CAST(src AS BIGINT)))
            FROM __qids
        """)
        if n > 0 and bad == 0 and distinct == n:
            con.execute(f"CREATE OR REPLACE TABLE __qids AS SELECT {_ROW}, CAST(src AS BIGINT) AS question_id FROM __qids")
            return
        con.execute("DROP TABLE __qids")
    con.execute(f"""
        CREATE TABLE __qids AS
        SELECT {_ROW}, row_number() OVER (PARTITION BY kind ORDER BY qa_id, {_ROW}) - 1 AS question_id FROM pairs WHERE kept
    """)


# --------------------------------------------------------------------------- streaming


@dataclass
class FlagJob:
    """A sink and the ``members`` flag column that selects its rows."""

    sink: Sink
    flag: str | None  # None: no rows (an empty file, left out when the sink omits empty files)


def _order_sql(order: Sequence[tuple[str, str]]) -> str:
    keys = [f"{_q(c)} {'DESC' if d == 'descending' else 'ASC'} NULLS LAST" for c, d in order]
    return ", ".join([*keys, _q(_ROW)])


def stream_exports(
    con: duckdb.DuckDBPyConnection,
    instructions: PathLike,
    images: PathLike,
    info: Membership,
    jobs: Sequence[FlagJob],
    *,
    pngs: pa.Table | None = None,
    batch_size: int = BATCH_SIZE,
) -> list[Path]:
    """Feed every job's sink the rows of its flag, in the sink's order (one sorted query per
    order). Rows are the view of :func:`medhall.export.base.view_batches`: the instruction
    columns (and ``question_id`` when numbered), then ``image``, ``image_name`` and the image
    columns. ``pngs``: ``(image_id, png_path)`` of the DICOM images rendered to PNG
    (:func:`medhall.export.render.dicom_pngs`), written in place of their own path. All files
    are committed together at the end; returns every sink's paths."""
    image_cols = set(con.sql(f"SELECT * FROM read_parquet({_lit(images)}) LIMIT 0").columns)
    pick = [c for c in ("image_ref", "image_path", *IMAGE_COLUMNS) if c in image_cols or c == "image_ref"]
    rendered = pngs is not None and pngs.num_rows > 0
    if rendered:
        con.register("__pngs", pngs.select(["image_id", PNG]))
    names = list(info.columns) + ([QUESTION_ID] if info.question_ids and QUESTION_ID not in info.columns else [])
    left = ", ".join(f"i.{_q(c)}" for c in info.columns) + (", m.question_id" if QUESTION_ID in names and QUESTION_ID not in info.columns else "")
    flags = list(dict.fromkeys(j.flag for j in jobs if j.flag))
    # The joins run here, on their own: the sorts below then read one table (joining while
    # sorting makes DuckDB hold the hash tables and the sort runs at once).
    con.execute(f"""
        CREATE TABLE __rows AS
        SELECT {left}, {', '.join(f'g.{_q(c)}' for c in pick)}{f', p.{_q(PNG)}' if rendered else ''},
               m.{_ROW}{''.join(f', m.{_q(f)}' for f in flags)}
        FROM {_parquet(instructions)} i
        JOIN (SELECT * FROM members WHERE {' OR '.join(_q(f) for f in flags) or 'false'}) m ON m.{_ROW} = i.file_row_number
        JOIN (
            SELECT image_id, {', '.join(_q(c) for c in pick)} FROM {_parquet(images)}
            QUALIFY row_number() OVER (PARTITION BY image_id ORDER BY file_row_number) = 1
        ) g ON g.image_id = i.image_id
        {'LEFT JOIN __pngs p ON p.image_id = i.image_id' if rendered else ''}
    """)
    if rendered:
        con.unregister("__pngs")
    orders = list(dict.fromkeys(tuple(j.sink.order) for j in jobs))
    with contextlib.ExitStack() as stack:
        for j in jobs:
            stack.enter_context(j.sink)
        for order in orders:
            group = [(j, j.flag) for j in jobs if tuple(j.sink.order) == order and j.flag]
            if not group:
                continue
            wanted = list(dict.fromkeys(f for _, f in group))
            query = f"SELECT * FROM __rows WHERE {' OR '.join(map(_q, wanted))} ORDER BY {_order_sql(order)}"
            roots = list(dict.fromkeys(j.sink.image_root for j, _ in group))
            for rb in con.sql(query).to_arrow_reader(batch_size):
                batch = pa.Table.from_batches([rb])
                views = {root: _view(batch, names, root) for root in roots}
                for j, flag in group:
                    view = views[j.sink.image_root].filter(batch.column(flag))
                    if view.num_rows:
                        j.sink.write(view)
    con.execute("DROP TABLE __rows")
    return [p for j in jobs for p in j.sink.paths]


def _view(batch: pa.Table, names: Sequence[str], image_root: PathLike | None) -> pa.Table:
    image = image_paths(batch, image_root)
    cols = [batch.column(c) for c in names] + [image, image_names(batch)]
    cols += [batch.column(c) if c in batch.column_names else pa.nulls(batch.num_rows, pa.string()) for c in (*IMAGE_COLUMNS, PNG)]
    return pa.Table.from_arrays(cols, names=[*names, "image", "image_name", *IMAGE_COLUMNS, PNG]).combine_chunks()


# --------------------------------------------------------------------------- the build's exports


def export_stored(
    instructions: PathLike,
    images: PathLike,
    splits: pa.Table,
    out_dir: PathLike,
    *,
    verdicts: PathLike | None = None,
    formats: Sequence[str] | None = None,
    name: str = "medhall",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    image_root: PathLike | None = None,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
    memory_limit: str | None = None,
    threads: int | None = None,
    batch_size: int = BATCH_SIZE,
    tmp_dir: PathLike | None = None,
    png_dir: PathLike | None = None,
) -> dict[str, dict[str, list[Path]]]:
    """Every export of a stored build, from its Parquet files, in one run.

    ``out_dir/filtered/<format>/``: the QC-filtered pairs (no ``incorrect`` verdict in
    ``verdicts``), train and test, in each of ``formats``; ``out_dir/subsets/<subset>/``: each
    ablation subset of the train split as Parquet (``<name>_<subset>_train.parquet``; the
    subsets have no test split, and no test file). The same files
    :func:`medhall.export.export_all` writes for :func:`medhall.split.filtered` and for each of
    :func:`medhall.split.ablation_subsets`: a file that would hold no row is not written.
    Returns ``{"filtered": {format: paths}, subset: {"parquet": paths}, ...}``, the files
    written.

    DICOM images are rendered once to PNG under ``png_dir`` (default ``out_dir/images``; the
    build passes its images folder, ``<home>/images/<source>``), and every format points at
    the PNG (:mod:`medhall.export.render`). DuckDB works under ``memory_limit`` (see
    :func:`connect`) in a temporary folder under ``tmp_dir`` (default: ``out_dir``), removed at
    the end.
    """
    import pyarrow.parquet as pq

    from medhall.export import SINKS, chosen_formats, sink_options
    from medhall.export.render import COLUMNS as PNG_INPUTS

    chosen = chosen_formats(formats)
    out = Path(out_dir)
    image_keys = pq.read_table(images, columns=["image_id", "image_ref"])
    with connect(tmp_dir if tmp_dir is not None else out, memory_limit=memory_limit, threads=threads) as con:
        info = membership(
            con, instructions, image_keys, splits, verdicts=verdicts, fractions=fractions, seed=seed, release="medhalltune" in chosen
        )
        present = set(pq.read_schema(images).names)
        pngs = dicom_pngs(
            pq.read_table(images, columns=[c for c in PNG_INPUTS if c in present]), png_dir if png_dir is not None else out / "images"
        )
        jobs: list[FlagJob] = []
        sinks: dict[str, dict[str, list[Sink]]] = {"filtered": {}}
        for fmt in chosen:
            sinks["filtered"][fmt] = []
            for split in SPLITS:
                sink = SINKS[fmt](out / "filtered" / fmt, name=name, split=split, **sink_options(fmt, image_root, format_options))
                jobs.append(FlagJob(sink, info.flags[f"filtered_{split}"]))
                sinks["filtered"][fmt].append(sink)
        for subset in [*SUBSETS, *(fraction_name(f) for f in sorted(fractions))]:
            sink = SINKS["parquet"](out / "subsets" / subset / "parquet", name=f"{name}_{subset}", split="train", **sink_options("parquet", image_root, format_options))
            jobs.append(FlagJob(sink, info.flags[subset]))
            sinks[subset] = {"parquet": [sink]}
        for j in jobs:
            j.sink.omit_empty = True
        stream_exports(con, instructions, images, info, jobs, pngs=pngs, batch_size=batch_size)
    return {
        group: {fmt: list(dict.fromkeys(p for sink in fmt_sinks for p in sink.paths)) for fmt, fmt_sinks in by_format.items()}
        for group, by_format in sinks.items()
    }


__all__ = ["DEFAULT_MEMORY_LIMIT", "FlagJob", "Membership", "connect", "export_stored", "membership", "stream_exports"]
