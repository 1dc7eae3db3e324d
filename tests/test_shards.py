"""The shard module on its own: plan, kill mid-shard, re-plan, resume, add keys, change config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from medhall import shards


def units(n: int, version: str = "v1", start: int = 0) -> list[tuple[str, str]]:
    """(key, id) pairs: ``id_007:v1`` stands for unit ``id_007`` at input version v1."""
    return [(f"id_{i:03d}:{version}", f"id_{i:03d}") for i in range(start, start + n)]


def compute(shard: shards.Shard) -> pa.Table:
    return pa.table({"id": list(shard.ids), "value": [int(i[3:]) * 10 for i in shard.ids]})


def run_all(wd: Path, todo: tuple[shards.Shard, ...]) -> None:
    for shard in todo:
        shards.write(wd, shard, {None: compute(shard)}, done=shard.keys)


def read_ids(wd: Path, wanted: list[str]) -> list[str]:
    return sorted(i for t in shards.read(wd, wanted, id_column="id") for i in t.column("id").to_pylist())


def test_plan_cuts_sorted_pending_keys_into_shards_named_by_their_keys(tmp_path: Path) -> None:
    p = shards.plan(tmp_path, reversed(units(7)), 3)
    assert [len(s.keys) for s in p.todo] == [3, 3, 1]
    assert [k for s in p.todo for k in s.keys] == sorted(k for k, _ in units(7))
    assert all(s.ids == tuple(k.rsplit(":", 1)[0] for k in s.keys) for s in p.todo)
    assert p.todo[0].key == shards.shard_key(reversed(p.todo[0].keys))  # the order given does not matter
    assert len({s.key for s in p.todo}) == 3
    assert (p.shards_done, p.units_done, p.units) == (0, 0, 7)
    assert shards.work_id(tmp_path) is not None  # the folder has an identity once planned
    with pytest.raises(ValueError):
        shards.plan(tmp_path, units(1), 0)


def test_duplicate_units_are_planned_once(tmp_path: Path) -> None:
    p = shards.plan(tmp_path, units(3) + units(3), 10)
    assert p.units == 3 and len(p.todo[0].keys) == 3


def test_finished_units_are_not_planned_again_and_read_back_once(tmp_path: Path) -> None:
    first = shards.plan(tmp_path, units(10), 4)
    run_all(tmp_path, first.todo)
    again = shards.plan(tmp_path, units(10), 4)
    assert again.todo == () and (again.shards_done, again.units_done, again.units) == (3, 10, 10)
    assert read_ids(tmp_path, [k for k, _ in units(10)]) == [i for _, i in units(10)]
    assert read_ids(tmp_path, [k for k, _ in units(2)]) == ["id_000", "id_001"]  # only what is wanted


def test_added_keys_form_new_shards_and_only_they_are_planned(tmp_path: Path) -> None:
    run_all(tmp_path, shards.plan(tmp_path, units(6), 3).todo)
    p = shards.plan(tmp_path, units(6) + units(4, start=6), 3)
    assert [i for s in p.todo for i in s.ids] == [f"id_{i:03d}" for i in range(6, 10)]
    assert p.units_done == 6 and p.units == 10


def test_a_changed_input_is_new_work_and_its_newest_result_is_read(tmp_path: Path) -> None:
    run_all(tmp_path, shards.plan(tmp_path, units(4), 4).todo)
    changed = units(1, "v2") + units(3, start=1)  # unit 0's input changed
    p = shards.plan(tmp_path, changed, 4)
    assert [s.keys for s in p.todo] == [("id_000:v2",)]
    (s,) = p.todo
    shards.write(tmp_path, s, {None: pa.table({"id": ["id_000"], "value": [-1]})}, done=s.keys)
    rows = {r["id"]: r["value"] for t in shards.read(tmp_path, [k for k, _ in changed], id_column="id") for r in t.to_pylist()}
    assert rows == {"id_000": -1, "id_001": 10, "id_002": 20, "id_003": 30}  # the v2 result, each unit once


def test_a_config_change_starts_fresh_shards_and_the_old_ones_stay(tmp_path: Path) -> None:
    wd_a = tmp_path / shards.config_key({"model": "a", "seed": 0})
    wd_b = tmp_path / shards.config_key({"seed": 0, "model": "b"})
    assert wd_a != wd_b and shards.config_key({"model": "a", "seed": 0}) == shards.config_key({"seed": 0, "model": "a"})
    run_all(wd_a, shards.plan(wd_a, units(5), 2).todo)
    assert len(shards.plan(wd_b, units(5), 2).todo) == 3  # nothing of config a counts for b
    assert shards.plan(wd_a, units(5), 2).todo == ()  # and a is still done when it comes back


def test_units_not_done_are_planned_again_under_the_same_key_and_supersede(tmp_path: Path) -> None:
    (shard,) = shards.plan(tmp_path, units(3), 10).todo
    failed = pa.table({"id": list(shard.ids), "value": [None, 10, None]}, pa.schema([("id", pa.string()), ("value", pa.int64())]))
    shards.write(tmp_path, shard, {None: failed}, done=[shard.keys[1]], failed=["id_000", "id_002"])
    assert not shards.is_done(tmp_path, shard)
    (retry,) = shards.plan(tmp_path, units(3), 10).todo
    assert retry.keys == ("id_000:v1", "id_002:v1")
    # every unit of a shard failed: the same shard again, and its cache token has changed
    (only,) = shards.plan(tmp_path, units(1), 10).todo
    before = shards.cache_token(tmp_path, only.key)
    shards.write(tmp_path, only, {None: pa.table({"id": ["id_000"], "value": [None]}, failed.schema)}, done=[], failed=["id_000"])
    assert shards.plan(tmp_path, units(1), 10).todo == (only,)
    assert shards.cache_token(tmp_path, only.key) != before and before[1] is None
    shards.write(tmp_path, only, {None: pa.table({"id": ["id_000"], "value": [0]})}, done=only.keys)
    assert shards.is_done(tmp_path, only)
    assert shards.cache_token(tmp_path, only.key) == before  # done in full: its cached result stands
    rows = {r["id"]: r["value"] for t in shards.read(tmp_path, [k for k, _ in units(3)], id_column="id") for r in t.to_pylist()}
    assert rows == {"id_000": 0, "id_001": 10, "id_002": None}  # the newest answer of each, failures kept
    done_only = [i for t in shards.read(tmp_path, [k for k, _ in units(3)], id_column="id", only_done=True)
                 for i in t.column("id").to_pylist()]
    assert sorted(done_only) == ["id_000", "id_001"]


def test_write_keeps_named_outputs_and_refuses_keys_it_was_not_asked(tmp_path: Path) -> None:
    (shard,) = shards.plan(tmp_path, units(2), 10).todo
    with pytest.raises(ValueError, match="not asked"):
        shards.write(tmp_path, shard, {None: compute(shard)}, done=["id_999:v1"])
    assert not shards.marker_path(tmp_path, shard.key).exists()
    main = shards.write(tmp_path, shard, {None: compute(shard), "qc": pa.table({"id": ["id_001"]})}, done=shard.keys, note="x")
    assert main == shards.output_path(tmp_path, shard.key) and main.exists()
    assert shards.output_path(tmp_path, shard.key, "qc").name == f"{shard.key}.qc.parquet"
    (m,) = shards.finished(tmp_path)
    assert (m.key, m.keys, m.ids, m.done, m.meta) == (shard.key, shard.keys, shard.ids, frozenset(shard.keys), {"rows": 2, "note": "x"})


def test_markers_of_earlier_versions_are_read(tmp_path: Path) -> None:
    d = shards.shards_dir(tmp_path)
    d.mkdir(parents=True)
    # the build's marker: done image keys under "images"; the evaluation's: qa_ids, no "keys"
    (d / "aaaa.done.json").write_text(json.dumps({"images": ["img_1:abc"], "failed": ["img_2"], "pairs": 3}))
    (d / "bbbb.done.json").write_text(json.dumps({"done": ["qa_1"], "failed": ["qa_2"], "rows": 2}))
    markers = {m.key: m for m in shards.finished(tmp_path)}
    assert markers["aaaa"].done == {"img_1:abc"} and markers["aaaa"].id_of()["img_1:abc"] == "img_1"
    assert markers["bbbb"].keys == ("qa_1", "qa_2") and markers["bbbb"].ids == ("qa_1", "qa_2")
    p = shards.plan(tmp_path, [("img_1:abc", "img_1"), ("img_2:def", "img_2"), ("qa_1", "qa_1"), ("qa_2", "qa_2")], 10)
    assert [k for s in p.todo for k in s.keys] == ["img_2:def", "qa_2"]


KILLED_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    import pyarrow as pa
    from medhall import shards

    wd, kill_at = sys.argv[1], int(sys.argv[2])
    plan = shards.plan(wd, [(f"id_{i:03d}:v1", f"id_{i:03d}") for i in range(9)], 3)
    real_replace = os.replace
    for n, shard in enumerate(plan.todo):
        if n == kill_at:  # die as the marker is renamed into place: outputs written, marker not
            def dying_replace(src, dst, *a, **k):
                if str(dst).endswith(".done.json"):
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(src, dst, *a, **k)
            os.replace = dying_replace
        table = pa.table({"id": list(shard.ids), "value": [int(i[3:]) * 10 for i in shard.ids]})
        shards.write(wd, shard, {None: table}, done=shard.keys)
    """
)


def test_a_process_killed_mid_shard_is_resumed_from_its_unfinished_shards(tmp_path: Path) -> None:
    wd = tmp_path / "stage"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(wd), "1"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    first = shards.plan(wd, units(9), 3)  # young leftovers are left alone (another process may own them)
    assert len(shards.finished(wd)) == 1 and len(first.todo) == 2 and first.units_done == 3
    leftovers = sorted(p.name for p in shards.shards_dir(wd).iterdir() if not p.name.endswith(".done.json"))
    killed = first.todo[0]
    assert f"{killed.key}.parquet" in leftovers  # the killed shard's output, with no marker
    assert any(n.startswith(f".{killed.key}.done.json.") and n.endswith(".tmp") for n in leftovers)  # its marker's temp file
    removed = {p.name for p in shards.sweep(wd, older_than_s=0)}
    assert removed == set(leftovers) - {f"{m.key}.parquet" for m in shards.finished(wd)}
    resumed = shards.plan(wd, units(9), 3)
    assert resumed.todo == first.todo  # the killed shard keeps its name
    run_all(wd, resumed.todo)
    assert shards.plan(wd, units(9), 3).todo == ()
    assert read_ids(wd, [k for k, _ in units(9)]) == [i for _, i in units(9)]  # all there, each once
    assert not [p for p in shards.shards_dir(wd).iterdir() if p.name.endswith(".tmp")]


def test_sweep_leaves_finished_shards_and_young_files(tmp_path: Path) -> None:
    run_all(tmp_path, shards.plan(tmp_path, units(2), 1).todo[:1])
    d = shards.shards_dir(tmp_path)
    orphan, tmp = d / "ffff.parquet", d / ".ffff.parquet.0123.tmp"
    orphan.write_bytes(b"x")
    tmp.write_bytes(b"x")
    assert shards.sweep(tmp_path) == []  # younger than the default age
    os.utime(orphan, (0, 0))
    assert shards.sweep(tmp_path) == [orphan] and tmp.exists()
    assert shards.sweep(tmp_path, older_than_s=0) == [tmp]
    assert len(shards.finished(tmp_path)) == 1 and len(list(d.glob("*.parquet"))) == 1
    assert shards.sweep(tmp_path / "missing") == []


def test_work_id_is_new_for_a_remade_folder(tmp_path: Path) -> None:
    wd = tmp_path / "w"
    assert shards.work_id(wd) is None
    first = shards.work_id(wd, create=True)
    assert first and shards.work_id(wd) == first
    (wd / shards.WORK_ID_FILE).unlink()
    assert shards.work_id(wd, create=True) != first
