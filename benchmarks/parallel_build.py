"""A whole LLM build (LLM generation + LLM QC, the ``build_dataset`` flow) against the local
OpenAI-compatible server with heavy-tailed latency, shards one after another against shards at
once, on threads and on a 2-worker Dask LocalCluster.

    python benchmarks/parallel_build.py                          # 200 images, C=16, lognormal mean 1 s, p99 10 s
    python benchmarks/parallel_build.py --variants threads dask  # a subset
    python benchmarks/parallel_build.py --timeout 10             # also abandon and re-ask attempts past 10 s

The limit is Little's law: with C requests in flight and a mean latency L, at most C / L
requests per second. Reported per variant: requests served per second of the whole flow run
(plan, every shard, assemble, split, exports, statistics: shard boundaries included) as a
fraction of C / L, for the nominal L and for the mean of the latencies the server really slept;
and the same fraction for an *oracle*: the very latencies the run met, sent in the order they
arrived, C at a time with no stage or shard barrier and no overhead (without ``--timeout``:
with it, the abandoned attempts' full latencies are in the list, and the oracle means little). The oracle is what any
schedule loses at the end of a finite build to the slowest requests; the gap between a variant
and the oracle is what the build's structure (generation before QC in a shard, shards, Prefect)
costs. Requests meet the same latency in every variant (drawn from the request's body and
attempt number), so the variants are compared on the same draws. Requests per second count the
distinct requests the build needed; with ``--timeout`` the abandoned attempts are extra work for
the server (``served_by_server``, ``attempts``; the server's ``max_in_flight`` then counts them
too, still sleeping after the client gave up on them), not throughput.

- ``sequential``: one shard after another (``shards_in_flight=1``; what the flow did before);
- ``threads``: every shard submitted at once to the thread runner (``shards_in_flight`` 8); one
  LLM client for the process, so C requests in flight in all;
- ``dask``: a 2-worker ``distributed.LocalCluster`` (``runner="dask"``), each worker process with
  ``concurrency`` C / 2, so C in all.

Each variant builds in a fresh store (its own LLM cache: every request is paid). Results go to
benchmarks/results/parallel_build.json.
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def _server_module():
    spec = importlib.util.spec_from_file_location("medhall_llm_test_server", ROOT / "tests/llm/server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def oracle_seconds(latencies: list[float], concurrency: int) -> float:
    """Makespan of these latencies sent in this order, ``concurrency`` at a time, no barrier."""
    slots = [0.0] * concurrency
    end = 0.0
    for latency in latencies:
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + latency)
        end = max(end, start + latency)
    return end


def one(variant: str, args: argparse.Namespace, server, workdir: Path) -> dict:
    from build_scale import synthetic_images

    import flows
    from medhall.config import get_settings
    from medhall.endpoints import LLMSettings
    from medhall.store import ArtifactStore

    home = workdir / variant
    os.environ["MEDHALL_HOME"] = str(home)
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "prefect-results")
    get_settings(fresh=True)
    store = ArtifactStore(home)
    store.write("images", synthetic_images(args.images), dataset="bench-src")
    c = args.concurrency
    per_process = c // args.workers if variant == "dask" else c
    llm = LLMSettings(model="test-model", base_url=server.base_url, text_only=True, concurrency=per_process,
                      timeout_s=args.timeout, max_attempts=4)
    runner = {"sequential": "threads", "threads": "threads", "dask": "dask"}[variant]
    in_flight = 1 if variant == "sequential" else args.shards_in_flight
    server.reset()
    t0 = time.perf_counter()
    out = flows.run("build_dataset", source="bench-src", dataset="bench", generator="llm", llm_qc=True,
                    questions_per_image=args.questions, llm=llm, shard_size=args.shard_size, test_images=20,
                    exports=["parquet"], runner=runner, shards_in_flight=in_flight, workers=args.workers)
    wall = time.perf_counter() - t0
    stats = server.stats()
    # the requests the build needed (each distinct request answered once); with --timeout, attempts
    # abandoned and re-asked are extra work the server did, not extra throughput
    served = sum(1 for b in stats["by_body"].values() if b["served"] > 0)
    latencies = stats["latencies"]
    llm_phase = stats["last_response_at"] - stats["first_request_at"]
    realised_mean = sum(latencies) / len(latencies)
    oracle = oracle_seconds(latencies, c)
    rate = served / wall
    qa = store.get("instructions", "bench").read(columns=["qa_id"]).column("qa_id").to_pylist()
    import hashlib

    return {
        "variant": variant, "runner": runner, "shards_in_flight": in_flight, "concurrency_per_process": per_process,
        "shards": out["shards_run"], "pairs": out["outcome"]["pairs"], "failed": out["outcome"]["failed"],
        "pairs_hash": hashlib.sha256("\n".join(sorted(qa)).encode()).hexdigest()[:16],
        "requests": served, "served_by_server": stats["served"], "attempts": stats["total"],
        "max_in_flight_at_server": stats["max_in_flight"],
        "wall_s": round(wall, 2), "llm_phase_s": round(llm_phase, 2), "requests_per_s": round(rate, 3),
        "ratio_llm_phase": round(served / llm_phase / (c / args.mean), 3),
        "ratio_nominal": round(rate / (c / args.mean), 3),
        "realised_mean_latency_s": round(realised_mean, 3), "max_latency_s": round(max(latencies), 2),
        "ratio_realised": round(rate / (c / realised_mean), 3),
        "oracle_s": round(oracle, 2), "oracle_ratio_nominal": round(len(latencies) / oracle / (c / args.mean), 3),
        "vs_oracle": round(oracle / wall, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--questions", type=int, default=4, help="pairs per image (QC asks once per pair)")
    parser.add_argument("--concurrency", type=int, default=16, help="C: requests in flight in all")
    parser.add_argument("--mean", type=float, default=1.0, help="mean latency (s)")
    parser.add_argument("--p99", type=float, default=10.0, help="99th percentile latency (s)")
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--shards-in-flight", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before an attempt is abandoned and re-asked")
    parser.add_argument("--variants", nargs="+", default=["sequential", "threads", "dask"])
    parser.add_argument("--out", default=None, help="default results/parallel_build[_timeout<T>].json")
    args = parser.parse_args()
    suffix = "" if args.timeout == 60.0 else f"_timeout{args.timeout:g}"
    args.out = args.out or str(HERE / "results" / f"parallel_build{suffix}.json")

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="medhall-bench-prefect-"))
    from prefect import flow

    @flow
    def warm_up() -> None:  # the temporary Prefect server starts here, outside the timings
        return None

    warm_up()
    server_mod = _server_module()
    workdir = Path(tempfile.mkdtemp(prefix="medhall-bench-parallel-"))
    results = []
    with server_mod.ServerProcess(responder="medhall", latency_dist="lognormal", latency_mean=args.mean,
                                  latency_p99=args.p99) as server:
        for variant in args.variants:
            r = one(variant, args, server, workdir)
            results.append(r)
            print(json.dumps(r), flush=True)
    report = {
        "images": args.images, "questions_per_image": args.questions, "concurrency": args.concurrency,
        "latency": {"dist": "lognormal", "mean_s": args.mean, "p99_s": args.p99}, "shard_size": args.shard_size,
        "timeout_s": args.timeout, "limit_requests_per_s": args.concurrency / args.mean, "runs": results,
        "same_pairs": len({r["pairs_hash"] for r in results}) == 1,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nC={args.concurrency}, lognormal mean {args.mean} s, p99 {args.p99} s: limit {args.concurrency / args.mean:.1f} req/s")
    print(f"{'variant':<11} {'req/s':>7} {'ratio':>6} {'ratio(real L)':>13} {'LLM phase':>9} {'oracle':>6} "
          f"{'vs oracle':>9} {'wall':>7}")
    for r in results:
        print(f"{r['variant']:<11} {r['requests_per_s']:>7.2f} {r['ratio_nominal']:>6.3f} {r['ratio_realised']:>13.3f} "
              f"{r['ratio_llm_phase']:>9.3f} {r['oracle_ratio_nominal']:>6.3f} {r['vs_oracle']:>9.3f} {r['wall_s']:>6.1f}s")
    print("same pairs in every variant:", report["same_pairs"])
    return 0 if all(not r["failed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
