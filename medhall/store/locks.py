"""One writer per dataset: an advisory lock that dies with its process.

A build or an ingest holds ``<home>/locks/<dataset>.lock`` (``flock``) from start to end, with
who holds it (pid, host, command, start time) written in the file. A second writer of the same
dataset stops at once with that information, or, with ``wait=True``, waits its turn. The
kernel drops the lock when the holder exits, however it exits (``kill -9`` included), so a
stale lock never blocks anyone; the file itself stays, holding nothing.

Runs of *different* datasets go on side by side; what they share (an LLM request asked by two
builds) is deduplicated by the LLM cache's in-flight locks (:mod:`medhall.llm.inflight`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from medhall.errors import MedhallError
from medhall.store.artifacts import DATASET_RE, ArtifactStore

LOCKS_DIR = "locks"


class DatasetBusy(MedhallError, RuntimeError):
    """Another process is writing the dataset."""

    def __init__(self, dataset: str, what: str, holder: dict) -> None:
        self.dataset, self.holder = dataset, holder
        who = f"pid {holder.get('pid', '?')}"
        if holder.get("host") and holder["host"] != socket.gethostname():
            who += f" on {holder['host']}"
        started = holder.get("started_at", "an unknown time")
        doing = holder.get("what") or "a run"
        super().__init__(
            f"another {doing} of {dataset} is running ({who}, started at {started}); "
            f"this {what} did nothing. Wait for it to finish, or pass --wait to start after it."
        )


def lock_path(store: ArtifactStore, dataset: str) -> Path:
    if not DATASET_RE.match(dataset):
        raise ValueError(f"invalid dataset name {dataset!r}")
    return store.root / LOCKS_DIR / f"{dataset}.lock"


def holder(store: ArtifactStore, dataset: str) -> dict | None:
    """Who holds the dataset's lock now (None when nobody does)."""
    path = lock_path(store, dataset)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def dataset_lock(
    store: ArtifactStore,
    dataset: str,
    what: str = "build",
    *,
    wait: bool = False,
    poll_s: float = 0.5,
    on_wait: Callable[[dict], None] | None = None,
) -> Iterator[Path]:
    """Hold ``dataset``'s writer lock for the ``with`` block.

    Raises :class:`DatasetBusy` when another process holds it, unless ``wait`` (then polls every
    ``poll_s`` seconds, calling ``on_wait(holder)`` once). Re-entrant within a process: a flow
    that holds the lock can call code that takes it again on the same thread; another thread
    of the same process is a writer like any other.
    """
    path = lock_path(store, dataset)
    key = (str(path), threading.get_ident())
    if key in _HELD:  # the same process already holds it (a flow calling run_build, a task)
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                info = _read(fd)
                if not wait:
                    raise DatasetBusy(dataset, what, info) from None
                if on_wait is not None and not told:
                    on_wait(info)
                    told = True
                time.sleep(poll_s)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:4])),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_HELD: dict[tuple[str, int], int] = {}

__all__ = ["DatasetBusy", "dataset_lock", "holder", "lock_path"]
