"""Kill a batch mid-way (SIGKILL), re-run it: completed requests come from the cache, none is lost or duplicated."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend

N, CONCURRENCY, KILL_AFTER = 60, 4, 20

# The batch as a separate process prints "DONE <i>" for each result as the client reports it.
WORKER = """
import asyncio, sys
from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend

base_url, cache, n, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
backend = OpenAICompatBackend(base_url=base_url, model="test-model", api_key="sk-test")
client = LLMClient(backend, cache=cache, max_concurrency=concurrency, run_id="first")

async def main():
    requests = [ChatRequest.simple(f"crash item {i}", max_tokens=16) for i in range(n)]
    async for i, result in client.astream(requests):
        print(f"DONE {i} {result.status}", flush=True)

asyncio.run(main())
"""


def prompt(i: int) -> str:
    return f"crash item {i}"


def test_killed_batch_resumes_from_cache_without_loss_or_duplicates(server: Any, tmp_path: Path) -> None:
    server.configure(latency=0.05)
    cache = tmp_path / "cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WORKER, server.base_url, str(cache), str(N), str(CONCURRENCY)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    reported: list[int] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while len(reported) < KILL_AFTER and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "the worker ended before it was killed"
        if line.startswith("DONE"):
            _, i, status = line.split()
            assert status == "ok"
            reported.append(int(i))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == KILL_AFTER and len(set(reported)) == KILL_AFTER
    before = server.stats()["by_prompt"]
    assert sum(c["attempts"] for c in before.values()) < N  # it really stopped mid-way

    backend = OpenAICompatBackend(base_url=server.base_url, model="test-model", api_key="sk-test")
    with LLMClient(backend, cache=cache, max_concurrency=CONCURRENCY, run_id="second") as client:
        results = client.run([ChatRequest.simple(prompt(i), max_tokens=16) for i in range(N)], progress=False)
        ledger = client.ledger_table().to_pylist()
    after = server.stats()["by_prompt"]

    assert all(r.ok for r in results), [r.error for r in results if not r.ok]  # none lost
    for i in reported:  # reported done before the kill: served from the cache, never asked again
        assert results[i].status == "cached"
        assert after[prompt(i)] == before[prompt(i)] == {"attempts": 1, "served": 1}
    # Every request was completed exactly once in the ledger (ok in one run, cached otherwise) ...
    ok_rows = collections.Counter(r["call_id"] for r in ledger if r["status"] == "ok")
    assert set(ok_rows.values()) == {1} and len(ok_rows) == N
    # ... and the server answered twice only requests that were in flight at the kill, never reported.
    twice = {p for p, c in after.items() if c["served"] > 1}
    assert len(twice) <= CONCURRENCY
    assert not twice & {prompt(i) for i in reported}
    first_run_ok = {r["call_id"] for r in ledger if r["run_id"] == "first" and r["status"] == "ok"}
    assert {results[i].call_id for i in reported} <= first_run_ok
    assert sum(r.status == "cached" for r in results) == len(first_run_ok)
