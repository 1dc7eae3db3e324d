"""Leftovers of killed processes are swept; unchanged export files are shared; gc prunes old
versions but never the latest nor what a kept version was made from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medhall import schema
from medhall.store import ArtifactStore
from medhall.store.housekeeping import (
    collect,
    disk_usage,
    export_versions,
    freed_by,
    prune_exports,
    settle_exports,
    share_unchanged,
    sweep,
)
from medhall.store.locks import dataset_lock
from medhall.tempfiles import host_id, is_leftover, owner_tag

ROOT = Path(__file__).parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _images(*ids_: str):
    return schema.from_rows("images", [{"image_id": i, "dataset": "d", "source": "s", "image_ref": f"{i}.png"} for i in ids_])


def _instructions(n: int, dataset: str = "b"):
    rows = [{"qa_id": f"q{i}", "dataset": dataset, "source": "s", "image_id": f"img{i % 3}", "kind": "positive",
             "question": f"what is shown {i}?", "answer": "a lung"} for i in range(n)]
    return schema.from_rows("instructions", rows)


def _old(path: Path, age_s: float = 7 * 3600) -> Path:
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_is_leftover_by_owner_and_age() -> None:
    dead, me = _dead_pid(), os.getpid()
    now = time.time()
    assert is_leftover(f".tmp-{dead}@{host_id()}-abc", now)
    assert not is_leftover(f".tmp-{me}@{host_id()}-abc", now - 10 * 86400)  # alive: never, however old
    assert not is_leftover(".tmp-abc", now)  # no owner tag (an older medhall): only when stale
    assert is_leftover(".tmp-abc", now - 7 * 3600)
    assert not is_leftover(f".tmp-{dead}@00000000-abc", now)  # another host's: by age only
    assert is_leftover(f".data.parquet.{dead}@{host_id()}.ff.tmp", now)
    assert is_leftover(f".medhall-export-{dead}@{host_id()}-x1", now)
    assert is_leftover(f".medhall-sort-{dead}@{host_id()}-x1", now)
    assert is_leftover(f".gc-{dead}@{host_id()}-x1", now)
    assert is_leftover(f".catalog.duckdb.{dead}@{host_id()}.ab", now)
    for name in ("data.parquet", "v000001", ".medhall-files.json", "tmp-1", "x.tmp", ".lock"):
        assert not is_leftover(name, now - 30 * 86400), name


def test_sweep_removes_dead_processes_temporaries_and_nothing_else(store: ArtifactStore) -> None:
    art = store.write("images", _images("a"), dataset="d")
    dead, tag = _dead_pid(), owner_tag()
    tdir = art.path.parent
    (tdir / f".tmp-{dead}@{host_id()}-1").mkdir()
    (tdir / f".tmp-{dead}@{host_id()}-1" / "data.parquet").write_bytes(b"x" * 1000)
    live = tdir / f".tmp-{tag}-2"
    live.mkdir()
    work = store.root / "work" / "d" / "k"
    work.mkdir(parents=True)
    export_tmp = work / f".medhall-export-{dead}@{host_id()}-zz"
    (export_tmp / "db").mkdir(parents=True)
    legacy_old = work / ".medhall-export-legacy"
    legacy_old.mkdir()
    _old(legacy_old)
    legacy_new = work / ".medhall-export-recent"
    legacy_new.mkdir()
    atomic_left = work / f".stats.json.{dead}@{host_id()}.ab.tmp"
    atomic_left.write_text("{}")
    keep = [art.data_path, live, legacy_new, work / "corpus-stats.json"]
    keep[-1].write_text("{}")

    assert set(sweep(store.root, dry_run=True)) == {tdir / f".tmp-{dead}@{host_id()}-1", export_tmp, legacy_old, atomic_left}
    assert all(p.exists() for p in (export_tmp, legacy_old, atomic_left))  # dry run: nothing removed
    removed = sweep(store.root)
    assert set(removed) == {tdir / f".tmp-{dead}@{host_id()}-1", export_tmp, legacy_old, atomic_left}
    assert not any(p.exists() for p in removed)
    assert all(p.exists() for p in keep)
    assert store.read("images", "d").num_rows == 1


WRITER = """
import sys, time
import pyarrow as pa
from medhall import schema
from medhall.store import ArtifactStore
from medhall.export.sql import connect

store = ArtifactStore(sys.argv[1])
def batches():
    yield schema.from_rows("images", [{"image_id": "a", "dataset": "d", "source": "s", "image_ref": "a.png"}])
    with connect(store.root / "work" / "d") as con:  # an export's DuckDB folder, mid-way
        con.execute("CREATE TABLE t AS SELECT range AS x FROM range(100000)")
        print("MIDWAY", flush=True)
        time.sleep(60)
    yield schema.from_rows("images", [])
store.write("images", batches(), dataset="d")
"""


def test_a_run_killed_mid_write_and_mid_export_leaves_nothing_after_the_next_run(store: ArtifactStore) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "MIDWAY"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    leftovers = [p for p in store.root.rglob(".*") if p.name.startswith((".tmp-", ".medhall-export-"))]
    assert {p.name.split("-")[0] + "-" for p in leftovers} >= {".tmp-", ".medhall-"}, leftovers
    assert disk_usage([store.root]) > 0
    removed = sweep(store.root)  # what every build and ingest does first
    assert set(removed) == set(leftovers)
    assert not [p for p in store.root.rglob(".*") if p.name.startswith((".tmp-", ".medhall-export-"))]
    assert store.versions("images", "d") == []


def _export(store: ArtifactStore, dataset: str, version: int, files: dict[str, bytes]) -> Path:
    folder = store.root / "exports" / dataset / f"v{version:06d}"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def test_unchanged_export_files_are_hard_links_and_old_exports_are_pruned(store: ArtifactStore, monkeypatch) -> None:
    big = os.urandom(200_000)
    v1 = _export(store, "b", 1, {"filtered/parquet/b_train.parquet": big + b"1", "filtered/parquet/b_test.parquet": big,
                                 "subsets/full/parquet/b_full_train.parquet": big + b"1"})
    first = share_unchanged(v1)
    assert first == {"files": 3, "linked": 1, "bytes_saved": len(big) + 1}  # full == the filtered train
    assert os.path.samefile(v1 / "filtered/parquet/b_train.parquet", v1 / "subsets/full/parquet/b_full_train.parquet")
    before = disk_usage([store.root / "exports"])
    # a one-row rebuild: the train files change, the test file does not
    v2 = _export(store, "b", 2, {"filtered/parquet/b_train.parquet": big + b"12", "filtered/parquet/b_test.parquet": big,
                                 "subsets/full/parquet/b_full_train.parquet": big + b"12"})
    counts = settle_exports(store, "b", v2)
    assert counts["linked"] == 2 and counts["pruned"] == 1
    assert export_versions(store, "b") == [v2]  # keep_exports=1: the previous export is gone
    assert (v2 / "filtered/parquet/b_test.parquet").read_bytes() == big
    after = disk_usage([store.root / "exports"])
    assert after <= before + 64 * 1024  # the rebuild cost about its own size, not a new copy
    # with two kept, a third export shares with the second and keeps it
    monkeypatch.setenv("MEDHALL_KEEP_EXPORTS", "2")
    from medhall.config import get_settings

    get_settings(fresh=True)
    v3 = _export(store, "b", 3, {"filtered/parquet/b_train.parquet": big + b"12", "filtered/parquet/b_test.parquet": big,
                                 "subsets/full/parquet/b_full_train.parquet": big + b"123"})
    counts = settle_exports(store, "b", v3)
    assert counts["linked"] == 2 and counts["pruned"] == 0
    assert export_versions(store, "b") == [v2, v3]
    assert freed_by([v2]) < 4096 * 2 + len(big)  # v2's shared files stay alive through v3's links
    assert prune_exports(store, "b", keep=1, dry_run=True) == [v2]
    get_settings(fresh=True)


def test_gc_keeps_the_newest_and_everything_they_were_made_from(store: ArtifactStore) -> None:
    src = [store.write("images", _images(*[f"i{j}" for j in range(k + 1)]), dataset="src") for k in range(4)]
    # the build's instructions v1..v3 were all made from images v1; images v2..v4 came later
    instr = [store.write("instructions", _instructions(10 + k), dataset="b", inputs=[src[0].fingerprint]) for k in range(3)]
    for a in instr:
        _export(store, "b", a.version, {"x.json": f"{a.version}".encode() * 1000})
    report = collect(store, keep=1, dry_run=True)
    names = {p.relative_to(store.root).as_posix() for p in report.removed}
    assert names == {"store/src/images/v000002", "store/src/images/v000003", "store/b/instructions/v000001",
                     "store/b/instructions/v000002", "exports/b/v000001", "exports/b/v000002"}
    assert all((store.root / n).exists() for n in names)  # dry run
    assert report.bytes_freed > 0
    report = collect(store, keep=1)
    assert not any((store.root / n).exists() for n in names)
    assert [a.version for a in store.versions("images", "src")] == [1, 4]  # v1: the kept build's input
    assert [a.version for a in store.versions("instructions", "b")] == [3]
    assert export_versions(store, "b") == [store.root / "exports" / "b" / "v000003"]
    nxt = store.write("instructions", _instructions(20), dataset="b")
    assert nxt.version == 4  # numbers are never reused
    from medhall.store import query

    assert query(store, "select count(*) n from instructions").to_pylist() == [{"n": 20}]  # the catalog follows


def test_gc_skips_a_dataset_being_written_and_refuses_keep_zero(store: ArtifactStore) -> None:
    for k in range(3):
        store.write("images", _images(*[f"i{j}" for j in range(k + 1)]), dataset="busy")
    held, done = threading.Event(), threading.Event()

    def writer() -> None:  # another writer (a thread here: the lock is per thread as per process)
        with dataset_lock(store, "busy", "build"):
            held.set()
            done.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(10)
    try:
        report = collect(store, keep=1)
    finally:
        done.set()
        t.join()
    assert report.removed == [] and report.skipped == {"busy": f"being written (pid {os.getpid()})"}
    assert len(store.versions("images", "busy")) == 3
    with pytest.raises(ValueError, match="at least 1"):
        collect(store, keep=0)


def test_gc_removes_png_renders_no_kept_image_has(store: ArtifactStore) -> None:
    from medhall.export.render import png_name

    def imgs(*shas: str):
        return schema.from_rows("images", [{"image_id": f"i{k}", "dataset": "src", "source": "s", "image_ref": f"{k}.dcm",
                                            "sha256": sha} for k, sha in enumerate(shas)])

    store.write("images", imgs("a" * 64, "b" * 64), dataset="src")
    store.write("images", imgs("b" * 64, "c" * 64), dataset="src")
    pngs = store.root / "images" / "src"
    pngs.mkdir(parents=True)
    for name in (png_name("a" * 64), png_name("b" * 64), png_name("c" * 64), f"{'c' * 64}.png"):
        (pngs / name).write_bytes(b"png")
    report = collect(store, keep=1)
    assert sorted(p.name for p in report.removed if p.suffix == ".png") == sorted([png_name("a" * 64), f"{'c' * 64}.png"])
    assert sorted(p.name for p in pngs.iterdir()) == sorted([png_name("b" * 64), png_name("c" * 64)])
