"""Writers together: two builds of one dataset never run at once (the second stops, saying whose
build is running, or waits with --wait); two builds of different datasets from one source run
side by side and pay for each LLM request once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from medhall.store.locks import DatasetBusy, dataset_lock, holder

ROOT = Path(__file__).parents[2]


def _build_cmd(home: Path, dataset: str, server: Any, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medhall.cli", "--home", str(home), "build", "--local", "--source", "src",
            "--dataset", dataset, "--generator", "llm", "--model", "test-model", "--base-url", server.base_url,
            "-q", "4", "--test-images", "6", "--shard-size", "10", "--attempts", "2", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "MEDHALL_LLM_API_KEY": "sk-test-concurrent", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def test_a_second_writer_of_a_dataset_stops_and_says_whose_run_holds_it(corpus_store, server) -> None:
    server.configure(responder="medhall")
    with dataset_lock(corpus_store, "dup", "build"):
        info = holder(corpus_store, "dup")
        assert info is not None and info["pid"] == os.getpid() and info["what"] == "build"
        proc = subprocess.run(_build_cmd(corpus_store.root, "dup", server), capture_output=True, text=True,
                              cwd=ROOT, env=_env(), timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    msg = " ".join(proc.stderr.split())
    assert f"another build of dup is running (pid {os.getpid()}, started at" in msg
    assert "--wait" in msg
    assert "Traceback" not in proc.stderr
    assert not (corpus_store.root / "store" / "dup").exists()  # it wrote nothing
    assert server.stats()["total"] == 0  # and asked nothing
    assert holder(corpus_store, "dup") is None  # released with the block


def test_wait_starts_after_the_holder_and_a_dead_holder_blocks_nobody(corpus_store, server) -> None:
    server.configure(responder="medhall")
    code = ("import sys, time; from medhall.store import ArtifactStore; from medhall.store.locks import dataset_lock\n"
            f"with dataset_lock(ArtifactStore({str(corpus_store.root)!r}), 'waited'):\n"
            "    print('HELD', flush=True); time.sleep(float(sys.argv[1]))")
    first = subprocess.Popen([sys.executable, "-c", code, "2.0"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert first.stdout is not None and first.stdout.readline().strip() == "HELD"
    started = time.monotonic()
    proc = subprocess.run(_build_cmd(corpus_store.root, "waited", server, "--wait"), capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=180)
    first.wait()
    first.stdout.close()
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 1.5  # it waited for the holder
    assert (corpus_store.root / "store" / "waited" / "instructions").is_dir()

    killed = subprocess.Popen([sys.executable, "-c", code, "60"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert killed.stdout is not None and killed.stdout.readline().strip() == "HELD"
    with pytest.raises(DatasetBusy, match=f"pid {killed.pid}"):
        with dataset_lock(corpus_store, "waited"):
            pass
    killed.kill()
    killed.wait()
    killed.stdout.close()
    with dataset_lock(corpus_store, "waited"):  # kill -9 released it
        pass


def test_lock_is_reentrant_on_one_thread_and_exclusive_across_threads(store) -> None:
    with dataset_lock(store, "x"):
        with dataset_lock(store, "x"):  # a flow holding it calls code that takes it again
            pass
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with dataset_lock(store, "x"):
                    pass
            except DatasetBusy as e:
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert len(errors) == 1
        with dataset_lock(store, "y"):  # another dataset is free
            pass
    with pytest.raises(ValueError):
        dataset_lock(store, "../etc").__enter__()


def test_two_builds_of_different_datasets_from_one_source_pay_each_request_once(corpus_store, server) -> None:
    server.configure(responder="medhall", latency=0.05)
    procs = [subprocess.Popen(_build_cmd(corpus_store.root, name, server), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env()) for name in ("one", "two")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    by_prompt = server.stats()["by_prompt"]
    assert by_prompt and all(c["served"] == 1 for c in by_prompt.values()), {
        p[:60]: c for p, c in by_prompt.items() if c["served"] != 1}
    for name in ("one", "two"):
        assert (corpus_store.root / "store" / name / "instructions").is_dir()
