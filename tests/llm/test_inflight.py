"""Requests in flight are shared across processes: two runs asking the same requests at the same
time pay for each once (the attack: two builds of one source paid 384 of 400 requests twice)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend
from medhall.llm.inflight import InflightLocks

N = 40
WORKER = """
import sys
from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend

base_url, cache, n, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
backend = OpenAICompatBackend(base_url=base_url, model="test-model", api_key="sk-test")
with LLMClient(backend, cache=cache, max_concurrency=8, run_id=run) as client:
    print("READY", flush=True)
    sys.stdin.readline()  # both start together
    results = client.run([ChatRequest.simple(f"shared item {i}", max_tokens=16) for i in range(n)], progress=False)
    paid = sum(r.status == "ok" for r in results)
    cached = sum(r.status == "cached" for r in results)
    print("RESULT", paid, cached, sum(not r.ok for r in results), flush=True)
"""


def _start(server: Any, cache: Path, run: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, server.base_url, str(cache), str(N), run],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    return proc


def test_two_processes_asking_the_same_requests_pay_once(server: Any, tmp_path: Path) -> None:
    server.configure(latency=0.15)
    cache = tmp_path / "cache.sqlite"
    procs = [_start(server, cache, run) for run in ("a", "b")]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
        results.append(tuple(int(x) for x in line.split()[1:]))
        assert p.returncode == 0
    stats = server.stats()["by_prompt"]
    served = {p: c["served"] for p, c in stats.items() if p.startswith("shared item")}
    assert len(served) == N and set(served.values()) == {1}, served  # each request paid once in all
    assert sum(r[0] for r in results) == N  # one process paid each, the other read it
    assert sum(r[1] for r in results) == N
    assert all(r[2] == 0 for r in results)


def test_lock_is_per_key_and_released_by_a_dead_process(tmp_path: Path) -> None:
    key = "ab" * 32
    other = "cd" * 32
    code = (
        "import sys, time; from medhall.llm.inflight import InflightLocks; "
        f"l = InflightLocks({str(tmp_path)!r}); assert l.try_acquire({key!r}); print('HELD', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        locks = InflightLocks(tmp_path)
        assert not locks.try_acquire(key)  # held by another process
        assert locks.try_acquire(other)  # another key is free
        locks.release(other)
        holder.kill()
        holder.wait()
        assert locks.try_acquire(key)  # the kernel dropped the dead holder's lock
        locks.release(key)
        locks.close()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()


def test_same_key_in_another_thread_waits_for_the_first(tmp_path: Path) -> None:
    locks = InflightLocks(tmp_path, poll_s=0.01)
    key = "ef" * 32
    assert locks.try_acquire(key)
    assert not locks.try_acquire(key)  # a second asker in this process (another loop) waits too
    got: list[bool] = []

    def other_loop() -> None:
        async def main() -> None:
            async with locks.hold(key) as waited:
                got.append(waited)
        asyncio.run(main())

    t = threading.Thread(target=other_loop)
    t.start()
    t.join(0.2)
    assert t.is_alive() and not got  # still waiting
    locks.release(key)
    t.join(5)
    assert got == [True]
    locks.close()


@pytest.mark.parametrize("threads", [2])
def test_threads_with_their_own_loops_share_one_client_without_paying_twice(server: Any, tmp_path: Path, threads: int) -> None:
    server.configure(latency=0.1)
    backend = OpenAICompatBackend(base_url=server.base_url, model="test-model", api_key="sk-test")
    requests = [ChatRequest.simple(f"threaded item {i}", max_tokens=16) for i in range(12)]
    with LLMClient(backend, cache=tmp_path / "c.sqlite", max_concurrency=4) as client:
        out: list[list[Any]] = []
        workers = [threading.Thread(target=lambda: out.append(client.run(requests, progress=False))) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    assert len(out) == threads and all(r.ok for rs in out for r in rs)
    served = {p: c["served"] for p, c in server.stats()["by_prompt"].items() if p.startswith("threaded item")}
    assert len(served) == 12 and set(served.values()) == {1}
