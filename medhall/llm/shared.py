"""One LLM client per endpoint in a process, shared by the threads that use it at the same time.

The limits of an :class:`medhall.llm.LLMClient` (``max_concurrency`` requests in flight, the
rate limiter, the budget) are the client's. Shard tasks running at once on threads must
therefore use one client, not one each, or N shards would have N times the limit in flight.
:func:`lease` hands every caller with the same key the same client while any of them holds it,
and closes it when the last one lets go (a process that runs many builds keeps none alive).

How the limits divide:

- **threads of one process** (the default task runner): one client per key, so ``concurrency``
  requests in flight in total, one requests/min and tokens/min budget, one cost cap.
- **processes** (Dask workers, Ray actors, several ``medhall build`` at once): each process has
  its own client, so each holds ``concurrency`` in flight and its own rate limits and cost cap.
  With W worker processes, set ``concurrency`` to C / W (and the per-minute limits and
  ``max_cost_usd`` likewise) to keep C in total. Requests asked by two processes at once are
  still sent once (:mod:`medhall.llm.inflight`), and answers are shared through the SQLite
  cache, when the processes share ``MEDHALL_HOME``.
- **machines**: the same as processes, provided ``MEDHALL_HOME`` is one shared file system
  with working POSIX byte-range locks (NFSv4 with lockd, Lustre with ``flock``, CephFS); else
  each machine has its own cache and in-flight locks, and two machines may pay for the same
  request.

A forked child does not inherit the parent's clients (their threads did not come along).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

_lock = threading.Lock()
_clients: dict[Hashable, list[Any]] = {}  # key -> [client, holders]
_pid = os.getpid()


def _forget_if_forked() -> None:
    global _pid
    if _pid != os.getpid():
        _clients.clear()
        _pid = os.getpid()


@contextlib.contextmanager
def lease(key: Hashable, factory: Callable[[], Any]) -> Iterator[Any]:
    """The process's client for ``key`` (made with ``factory`` if no one holds one), for the
    block; closed when the last holder leaves."""
    with _lock:
        _forget_if_forked()
        entry = _clients.get(key)
        if entry is None:
            entry = _clients[key] = [factory(), 0]
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _lock:
            entry[1] -= 1
            last = entry[1] == 0 and _clients.get(key) is entry
            if last:
                del _clients[key]
        if last:
            entry[0].close()


def held() -> dict[Hashable, int]:
    """Keys of the clients held now, with their holders (for tests and diagnostics)."""
    with _lock:
        _forget_if_forked()
        return {k: e[1] for k, e in _clients.items()}


__all__ = ["held", "lease"]
