"""Throughput and fault-tolerance benchmark of the LLM layer against the local test server.

    python benchmarks/llm_throughput.py [--n 2000] [--concurrency 64] [--latency 0.1]
                                        [--fault-rate 0.1] [--out benchmarks/results/llm_throughput.json]

Three runs through the real ``openai`` client path, with the cache and the ledger on:

1. clean: ``n`` distinct requests; throughput as a fraction of the latency-bound limit,
   concurrency / latency (the goal is at least 0.85);
2. rerun: the same requests again: all must come from the cache with zero server requests;
3. faults: ``n`` other requests with ``fault-rate`` of server attempts failing (429 with
   Retry-After, 500, dropped connection, malformed body, hang past the timeout, truncated
   output): every request must end completed or failed with a reason, none lost, none paid twice.

Each run starts with ``--warmup`` untimed requests (connections opened, first-call costs paid).
The server runs in its own process (tests/llm/server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from medhall.llm import ChatRequest, LLMClient, OpenAICompatBackend

ROOT = Path(__file__).resolve().parents[1]
FAULT_KINDS = ["429", "500", "drop", "malformed", "hang", "length"]


def load_server_module() -> Any:
    spec = importlib.util.spec_from_file_location("medhall_llm_test_server", ROOT / "tests/llm/server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_client(base_url: str, cache: Path, args: argparse.Namespace) -> LLMClient:
    backend = OpenAICompatBackend(base_url=base_url, model="bench-model", api_key="sk-bench-not-a-real-key",
                                  timeout=args.timeout, max_connections=args.concurrency, transport=args.transport)
    return LLMClient(backend, cache=cache, max_concurrency=args.concurrency, max_attempts=args.max_attempts,
                     backoff_initial_s=0.05, backoff_max_s=1.0, run_id="bench")


def requests(prefix: str, n: int) -> list[ChatRequest]:
    return [ChatRequest.simple(f"{prefix} request {i}: describe finding {i % 97}", max_tokens=64, stage="bench")
            for i in range(n)]


async def timed_run(client: LLMClient, reqs: list[ChatRequest], warmup: list[ChatRequest]) -> tuple[list[Any], float]:
    """Warm up (open the connections, first-call costs), then time ``reqs``."""
    try:
        await client.arun(warmup)
        t0 = time.perf_counter()
        results = await client.arun(reqs)
        return results, time.perf_counter() - t0
    finally:
        await client.backend.aclose()


def summarise(name: str, results: list[Any], wall: float, stats_before: dict[str, Any], stats: dict[str, Any],
              n: int, limit: float, ledger: Any) -> dict[str, Any]:
    statuses = Counter(r.status for r in results)
    by_body = stats["by_body"]
    ok_rows = Counter(cid for cid, st in zip(ledger.column("call_id").to_pylist(),
                                             ledger.column("status").to_pylist(), strict=True) if st == "ok")
    return {
        "run": name,
        "n": n,
        "wall_s": round(wall, 3),
        "req_per_s": round(n / wall, 1),
        "limit_req_per_s": limit,
        "ratio": round(n / wall / limit, 3),
        "statuses": dict(statuses),
        "failures_by_kind": dict(Counter(r.error_kind for r in results if not r.ok)),
        "failed_without_reason": sum(1 for r in results if not r.ok and not r.error),
        "lost": n - len(results),
        "server_requests": stats["total"] - stats_before["total"],
        "paid_twice": sum(1 for c in by_body.values() if c["served"] > 1),
        "ledger_ok_twice": sum(1 for c in ok_rows.values() if c > 1),
        "retried_attempts": sum(r.attempts - 1 for r in results if r.attempts > 1),
    }


def run_benchmark(args: argparse.Namespace) -> list[dict[str, Any]]:
    server_mod = load_server_module()
    limit = args.concurrency / args.latency
    faults = {"fault_rate": args.fault_rate, "fault_kinds": FAULT_KINDS, "hang_s": args.timeout * 3}
    runs = [("clean", "clean", {}), ("rerun (cached)", "clean", {}), (f"faults {args.fault_rate:.0%}", "faulty", faults)]
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, server_mod.ServerProcess(latency=args.latency) as server:
        cache = Path(tmp) / "cache.sqlite"
        for name, prefix, config in runs:
            server.configure(**config)
            before = server.stats()
            client = make_client(server.base_url, cache, args)
            client.run_id = name
            warmup = requests(f"warm-up {prefix}", args.warmup)
            results, wall = asyncio.run(timed_run(client, requests(prefix, args.n), warmup))
            ledger = client.ledger_table(run_id=name)
            client.close()
            out.append(summarise(name, results, wall, before, server.stats(), args.n, limit, ledger))
    return out


def problems(rows: list[dict[str, Any]]) -> list[str]:
    """Broken guarantees (throughput is reported, not enforced: it depends on the machine)."""
    found = [f"{r['run']}: {k} = {r[k]}" for r in rows
             for k in ("lost", "paid_twice", "ledger_ok_twice", "failed_without_reason") if r[k]]
    found += [f"{r['run']}: {r['server_requests']} server requests" for r in rows
              if r["run"].startswith("rerun") and r["server_requests"]]
    return found


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="LLM layer throughput (openai client -> local server)")
    for col in ("run", "n", "wall_s", "req_per_s", "ratio", "statuses", "server_requests", "lost", "paid_twice"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("run", "n", "wall_s", "req_per_s", "ratio", "statuses",
                                             "server_requests", "lost", "paid_twice")))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1, help="server latency per request, seconds")
    parser.add_argument("--fault-rate", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=1.0, help="client timeout per attempt, seconds")
    parser.add_argument("--max-attempts", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests before each run")
    parser.add_argument("--transport", choices=["httpx", "aiohttp"], default="httpx",
                        help="the openai SDK's HTTP transport (aiohttp must be installed)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/llm_throughput.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = run_benchmark(args)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    machine = {"cpus": os.cpu_count(), "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
               "python": sys.version.split()[0]}
    args.out.write_text(json.dumps({"config": config, "machine": machine, "runs": rows}, indent=2) + "\n")
    Console().print(f"wrote {args.out}")
    broken = problems(rows)
    for line in broken:
        Console().print(f"[red]FAILED GUARANTEE[/red] {line}")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
