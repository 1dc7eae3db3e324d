"""Where shard tasks run: threads of the flow's process (default), a Dask cluster or Ray.

A flow that runs shards takes the choice as parameters (``runner``, ``address``, ``workers``,
``shards_in_flight``), so a command, a deployment or the UI picks it per run, and opens the
runner around its shard phase with :func:`task_runner_for`; :func:`run_shards` submits every
shard at once and waits for all of them. The same runner can also be given to any flow with
``flow.with_options(task_runner=task_runner_for("dask", workers=4))`` for its ``.submit`` calls.

- ``threads`` (default): a :class:`prefect.task_runners.ThreadPoolTaskRunner` with
  ``shards_in_flight`` threads. The LLM work is I/O-bound, and the shards of a process share
  one LLM client (:mod:`medhall.llm.shared`): ``concurrency`` requests in flight in total,
  whatever the number of shards running.
- ``dask``: ``prefect-dask``'s ``DaskTaskRunner``, on a temporary ``distributed.LocalCluster``
  of ``workers`` processes (each with ``ceil(shards_in_flight / workers)`` threads), or on the
  scheduler at ``address`` (``tcp://host:8786``). Every worker process has its own LLM client:
  ``concurrency`` (and the per-minute limits and the cost cap) hold per process.
- ``ray``: ``prefect-ray``'s ``RayTaskRunner`` on a local Ray started for the run (``workers``
  CPUs) or the cluster at ``address`` (``ray://host:10001``); limits per worker process, as Dask.

Both cluster runners need the workers to import ``medhall``, ``tasks`` and ``flows`` (the
package installed there), to reach the Prefect API (``PREFECT_API_URL``), and to see the same
``MEDHALL_HOME`` and ``PREFECT_LOCAL_STORAGE_PATH`` as the flow (a shared file system across
machines; see README "Scale notes").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

RunnerKind = Literal["threads", "dask", "ray"]
RUNNERS: tuple[str, ...] = ("threads", "dask", "ray")
#: Shards running at once by default: enough that while some wait on the slowest requests of a
#: heavy-tailed API, the others keep the client's ``concurrency`` busy.
DEFAULT_SHARDS_IN_FLIGHT = 8


class ShardsFailed(RuntimeError):
    """Some shard tasks failed for good; the others finished (and are kept): a re-run redoes
    only the failed ones."""


def task_runner_for(kind: RunnerKind = "threads", address: str | None = None, workers: int = 2,
                    shards_in_flight: int = DEFAULT_SHARDS_IN_FLIGHT) -> Any:
    """A Prefect task runner (not started) for ``kind``; see the module docstring."""
    if shards_in_flight < 1 or workers < 1:
        raise ValueError("shards_in_flight and workers must be at least 1")
    if kind == "threads":
        if address:
            raise ValueError("address is for runner 'dask' or 'ray', not 'threads'")
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=shards_in_flight)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:
            raise RuntimeError("runner 'dask' needs prefect-dask: pip install 'medhall[dask]'") from e
        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": workers, "threads_per_worker": math.ceil(shards_in_flight / workers),
            "processes": True, "dashboard_address": None, "env": worker_env(),
        })
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as e:
            raise RuntimeError("runner 'ray' needs prefect-ray: pip install prefect-ray "
                               "(see README 'Scale notes')") from e
        if address:
            return RayTaskRunner(address=address)
        return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False,
                                          "runtime_env": {"env_vars": worker_env()}})
    raise ValueError(f"unknown runner {kind!r}: one of {', '.join(RUNNERS)}")


def worker_env() -> dict[str, str]:
    """What the worker processes of a local cluster must share with the flow: its Prefect API
    (the temporary server's too: without it every worker would start a server of its own, about
    10 s each, and its task runs would not show in the flow run), the store, result storage."""
    import os

    from prefect.context import FlowRunContext
    from prefect.settings import get_current_settings

    env = {k: os.environ[k] for k in ("MEDHALL_HOME", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH") if os.environ.get(k)}
    ctx = FlowRunContext.get()
    url = getattr(getattr(ctx, "client", None), "api_url", None) or get_current_settings().api.url
    if url:
        env["PREFECT_API_URL"] = str(url).rstrip("/")
    return env


def run_shards(runner: Any, task: Any, calls: Sequence[Mapping[str, Any]], *, what: str = "shard") -> list[Any]:
    """Submit ``task`` once per parameter mapping in ``calls`` to the started ``runner``, all at
    once (the runner bounds how many run), wait for every one, and return their results in
    order. A failure does not stop the others: once all are done, :class:`ShardsFailed` names
    the failed ones (their retries are the task's own)."""
    futures = [runner.submit(task, dict(params)) for params in calls]
    for future in futures:
        future.wait()
    results, failed = [], []
    for params, future in zip(calls, futures, strict=True):
        state = future.state
        if state.is_completed():
            results.append(future.result())
            continue
        try:
            future.result()
            why = f"ended {state.type.value}"
        except Exception as exc:  # noqa: BLE001 - reported with the others below
            why = f"{type(exc).__name__}: {exc}"
        failed.append(f"{what} {params.get('shard_key', '?')}: {why}"[:300])
        results.append(None)
    if failed:
        raise ShardsFailed(f"{len(failed)} of {len(calls)} {what}s failed (the others are saved; a re-run "
                           "redoes only these):\n  " + "\n  ".join(failed))
    return results


__all__ = ["DEFAULT_SHARDS_IN_FLIGHT", "RUNNERS", "RunnerKind", "ShardsFailed", "run_shards", "task_runner_for",
           "worker_env"]
