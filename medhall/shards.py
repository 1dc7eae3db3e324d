"""Resumable sharded stages: the one protocol the build, the evaluation and zero-shot VQA share.

The pattern is datatrove's completion markers. A stage's work is a set of *units*, each with
a **key** that changes when the unit's input changes (``<image_id>:<caption hash>`` in the
build, a ``qa_id`` in the evaluation, ``<item_id>:<prompt and image hash>`` in VQA) and an
**id** the stage works on (the image, question or item id). In a stage's work folder:

1. :func:`plan` takes the units and leaves out those whose key a finished shard marked done
   (resume is a set difference); what is left is sorted by key and cut into :class:`Shard`\\ s.
   A shard's key hashes its unit keys, so the same pending work gets the same shard name:
   a shard killed mid-way is redone under its own name and overwrites what it left.
2. The stage computes a shard and calls :func:`write`: its outputs
   (``shards/<key>.parquet``, ``shards/<key>.<name>.parquet``) are written atomically, then
   its completion marker ``shards/<key>.done.json`` **last**: a marker means the outputs are
   whole. The marker lists the unit keys asked, the ids they stand for, the keys *done* (a
   final result: asking again would not change it) and the ids that failed. A key asked but
   not done is planned again by the next run; its new result supersedes the old one.
3. :func:`finished` reads the markers back (newest first); :func:`claims` gives each wanted
   unit to the newest finished shard that asked it (or marked it done), and :func:`read`
   streams those rows of the shards' outputs.
4. :func:`sweep` removes what a killed process left: temp files of interrupted atomic writes
   and outputs of shards that never got their marker.

A stage names its work folder after a hash of what decides its results (:func:`config_key`),
so a change of config starts fresh shards while the old ones stay for when it comes back;
:func:`work_id` gives the folder an identity for cache keys (a deleted and remade folder is a
new one), and :func:`cache_token` adds the marker's state, so a shard planned again for its
failures is not answered from a cache.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from medhall import atomic
from medhall.ids import canonical_json, sha256_hex

SHARDS_DIR = "shards"
DONE_SUFFIX = ".done.json"
WORK_ID_FILE = ".work-id"
#: :func:`sweep` leaves files younger than this alone (another process may be writing them).
SWEEP_AFTER_S = 300.0


@dataclass(frozen=True)
class Shard:
    """Units computed together: one task, one completion marker."""

    key: str
    keys: tuple[str, ...]  # unit keys, sorted
    ids: tuple[str, ...]  # the ids they stand for, in the same order


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided for one work folder."""

    work_dir: Path
    todo: tuple[Shard, ...]
    shards_done: int  # finished shards in the folder
    units_done: int  # wanted units some finished shard marked done
    units: int  # wanted units


@dataclass(frozen=True)
class Marker:
    """A finished shard, as its completion marker says."""

    key: str
    keys: tuple[str, ...]
    ids: tuple[str, ...]
    done: frozenset[str]
    failed: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def id_of(self) -> dict[str, str]:
        return dict(zip(self.keys, self.ids, strict=True))


def config_key(config: Any) -> str:
    """16 hex of the hash of ``config`` (canonical JSON): a work folder's name part."""
    return sha256_hex(canonical_json(config))[:16]


def shard_key(keys: Iterable[str]) -> str:
    """16 hex of the hash of a shard's unit keys (in sorted order)."""
    return sha256_hex(canonical_json(sorted(keys)))[:16]


def shards_dir(work_dir: Path | str) -> Path:
    return Path(work_dir) / SHARDS_DIR


def output_path(work_dir: Path | str, key: str, name: str | None = None) -> Path:
    """``shards/<key>.parquet``, or ``shards/<key>.<name>.parquet`` for a named output."""
    return shards_dir(work_dir) / (f"{key}.parquet" if name is None else f"{key}.{name}.parquet")


def marker_path(work_dir: Path | str, key: str) -> Path:
    """The completion marker of shard ``key``."""
    return shards_dir(work_dir) / f"{key}{DONE_SUFFIX}"


# --------------------------------------------------------------------------------- reading


def _marker(path: Path) -> Marker:
    data = json.loads(path.read_text())
    # Markers written before this module had their own fields per stage: the build's "images"
    # (done keys) and "pairs"; the evaluation's "done" and "failed" qa_ids and no "keys".
    done = data.pop("done", None)
    if done is None:
        done = data.pop("images", [])
    failed = data.pop("failed", [])
    keys = data.pop("keys", None) or sorted({*done, *failed})
    ids = data.pop("ids", None) or [k.rsplit(":", 1)[0] for k in keys]
    return Marker(path.name[: -len(DONE_SUFFIX)], tuple(keys), tuple(ids), frozenset(done), tuple(failed), data)


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda m: (m.stat().st_mtime_ns, m.name), reverse=True)


def finished(work_dir: Path | str) -> list[Marker]:
    """The folder's finished shards, newest marker first."""
    d = shards_dir(work_dir)
    return [_marker(m) for m in _newest_first(d.glob(f"*{DONE_SUFFIX}"))] if d.is_dir() else []


def done_keys(markers: Iterable[Marker]) -> set[str]:
    """Every unit key some finished shard marked done."""
    return {k for m in markers for k in m.done}


def claims(markers: Sequence[Marker], wanted: Iterable[str], *, only_done: bool = False) -> list[tuple[Marker, list[str]]]:
    """Which finished shard holds each wanted unit's result: the newest shard that asked its
    key (``only_done``: that marked it done). Returns ``(marker, ids it holds)`` for the
    markers that hold any, newest first; each unit is held by one shard only."""
    wanted = set(wanted)
    out = []
    for m in markers:
        mine = wanted.intersection(m.done if only_done else m.keys)
        if mine:
            wanted -= mine
            ids = m.id_of()
            out.append((m, sorted({ids[k] for k in mine})))
    return out


def read(
    work_dir: Path | str, wanted: Iterable[str], *, id_column: str, name: str | None = None,
    only_done: bool = False, columns: list[str] | None = None,
) -> Iterator[pa.Table]:
    """Each finished shard's rows (of output ``name``) for the wanted units it holds
    (:func:`claims`), newest shard first, a shard at a time."""
    for marker, ids in claims(finished(work_dir), wanted, only_done=only_done):
        t = pq.read_table(output_path(work_dir, marker.key, name), columns=columns)
        yield t.filter(pc.is_in(t.column(id_column), pa.array(ids, pa.string())))


# --------------------------------------------------------------------------------- planning


def plan(work_dir: Path | str, units: Iterable[tuple[str, str]], shard_size: int, *, sweep_after_s: float = SWEEP_AFTER_S) -> Plan:
    """The units (``(key, id)`` pairs, read once) that no finished shard marked done, sorted by
    key and cut into shards of ``shard_size``. Creates the folder and its :func:`work_id`, and
    :func:`sweep`\\ s what a killed process left there."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, not {shard_size}")
    wd = Path(work_dir)
    shards_dir(wd).mkdir(parents=True, exist_ok=True)
    work_id(wd, create=True)
    sweep(wd, older_than_s=sweep_after_s)
    markers = finished(wd)
    done = done_keys(markers)
    pending: dict[str, str] = {}
    done_wanted: set[str] = set()
    for key, id_ in units:
        if key in done:
            done_wanted.add(key)
        else:
            pending.setdefault(key, id_)
    todo_keys = sorted(pending)
    todo = []
    for start in range(0, len(todo_keys), shard_size):
        chunk = todo_keys[start : start + shard_size]
        todo.append(Shard(shard_key(chunk), tuple(chunk), tuple(pending[k] for k in chunk)))
    return Plan(wd, tuple(todo), len(markers), len(done_wanted), len(done_wanted) + len(pending))


def is_done(work_dir: Path | str, shard: Shard) -> bool:
    """Whether a finished marker of this shard marked all its units done (nothing to redo)."""
    path = marker_path(work_dir, shard.key)
    return path.exists() and set(shard.keys) <= _marker(path).done


# --------------------------------------------------------------------------------- writing


def write(
    work_dir: Path | str, shard: Shard, outputs: Mapping[str | None, pa.Table], *,
    done: Iterable[str], failed: Iterable[str] = (), **meta: Any,
) -> Path:
    """Write a shard's outputs (``None``: the main one; a name: ``<key>.<name>.parquet``)
    atomically, then its completion marker, last. ``done``: the unit keys whose result is
    final; ``failed``: the ids that failed (done or not). Returns the main output's path."""
    done = sorted(set(done))
    unknown = set(done) - set(shard.keys)
    if unknown:
        raise ValueError(f"shard {shard.key}: done keys it was not asked: {sorted(unknown)[:3]}")
    for name, table in outputs.items():
        atomic.write_parquet(output_path(work_dir, shard.key, name), table)
    rows = outputs[None].num_rows if None in outputs else None
    marker = {"keys": list(shard.keys), "ids": list(shard.ids), "done": done, "failed": sorted(set(failed)), "rows": rows, **meta}
    atomic.write_bytes(marker_path(work_dir, shard.key), json.dumps(marker, sort_keys=True).encode())
    return output_path(work_dir, shard.key)


# --------------------------------------------------------------------------------- housekeeping


def sweep(work_dir: Path | str, *, older_than_s: float = SWEEP_AFTER_S) -> list[Path]:
    """Remove what a killed process left in the shards folder, older than ``older_than_s``:
    temp files of atomic writes (``.<name>.<hex>.tmp``) and outputs of shards with no marker
    (a later run writes them anew). Returns what was removed."""
    d = shards_dir(work_dir)
    if not d.is_dir():
        return []
    cutoff = time.time() - older_than_s
    finished_keys = {m.name[: -len(DONE_SUFFIX)] for m in d.glob(f"*{DONE_SUFFIX}")}
    removed = []
    for p in d.iterdir():
        name = p.name
        leftover = (name.startswith(".") and name.endswith(".tmp")) or (
            name.endswith(".parquet") and name.split(".", 1)[0] not in finished_keys
        )
        try:
            if leftover and p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # a concurrent sweep or rename got there first
            continue
    return removed


def work_id(work_dir: Path | str, *, create: bool = False) -> str | None:
    """A random id written once into a work folder (with ``create``).

    A deleted and remade folder gets a new id (an inode number may be reused; this is not), so
    a cache key that includes it cannot answer for shard outputs that are gone.
    """
    path = Path(work_dir) / WORK_ID_FILE
    if not path.exists() and create:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, uuid.uuid4().hex.encode())
    return path.read_text().strip() if path.exists() else None


def cache_token(work_dir: Path | str, key: str) -> list[Any]:
    """What an orchestrator's cache key for shard ``key`` must include besides the shard's
    inputs: the folder's :func:`work_id` (a deleted folder's results are gone) and, while the
    shard's marker leaves some of its units undone, the marker's state (a shard planned again
    for its failures runs again; a shard done in full is answered from the cache)."""
    marker = marker_path(work_dir, key)
    try:
        m = _marker(marker)
        state = None if set(m.keys) <= m.done else marker.stat().st_mtime_ns
    except FileNotFoundError:
        state = None
    return [work_id(work_dir), state]


__all__: Sequence[str] = [
    "DONE_SUFFIX",
    "Marker",
    "Plan",
    "Shard",
    "cache_token",
    "claims",
    "config_key",
    "done_keys",
    "finished",
    "is_done",
    "marker_path",
    "output_path",
    "plan",
    "read",
    "shard_key",
    "sweep",
    "work_id",
    "write",
]
