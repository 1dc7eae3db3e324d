"""Requests in flight, shared across processes: one pays, the others read its answer.

Within a process the client already sends a request once however many callers ask it at the
same time (its per-loop ``inflight`` futures). Across processes (two builds of one source, a
flow's workers) this module does the same with the cache file's neighbour
``<cache dir>/inflight.lock``: before sending a cacheable request a process takes a POSIX
byte-range lock on the byte whose offset is the request key's first 60 bits. Another process
asking the same request finds that byte locked, waits (polling, without holding a concurrency
slot) and, once it is free, reads the answer from the shared cache instead of paying again.

The lock is released when the answer has been committed to the cache, or when the process
dies (the kernel drops its locks), so a killed holder never blocks anyone. POSIX locks belong
to the process, so the keys this process holds are also kept in a set: another thread or event
loop of the same process asking the same request waits like another process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

LOCK_FILE = "inflight.lock"
_OFFSET_BITS = 60


class InflightLocks:
    """Cross-process, per-request-key locks over one file (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], *, poll_s: float = 0.05, max_poll_s: float = 0.5) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.poll_s, self.max_poll_s = poll_s, max_poll_s
        self._fd: int | None = None
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._held: set[int] = set()  # offsets this process holds

    def _file(self) -> int:
        with self._guard:
            if self._pid != os.getpid():  # a forked child: the parent's locks are not its own
                self._fd, self._pid = None, os.getpid()
                self._held.clear()
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            return self._fd

    @staticmethod
    def offset(key: str) -> int:
        return int(key[: _OFFSET_BITS // 4], 16)

    def try_acquire(self, key: str) -> bool:
        """Take ``key``'s lock if no other process holds it (never blocks)."""
        fd, off = self._file(), self.offset(key)
        with self._guard:
            if off in self._held:  # another loop or thread of this process is asking it
                return False
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, off, os.SEEK_SET)
            except (BlockingIOError, PermissionError):
                return False
            self._held.add(off)
            return True

    def release(self, key: str) -> None:
        off = self.offset(key)
        with self._guard:
            if off in self._held and self._fd is not None:
                self._held.discard(off)
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, off, os.SEEK_SET)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[bool]:
        """Hold ``key``'s lock for the block; yields whether this process had to wait for another."""
        waited = False
        delay = self.poll_s
        while not self.try_acquire(key):
            waited = True
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.max_poll_s)
        try:
            yield waited
        finally:
            self.release(key)

    def close(self) -> None:
        with self._guard:
            if self._fd is not None:
                os.close(self._fd)  # drops every lock this process holds on the file
                self._fd = None
                self._held.clear()


__all__ = ["LOCK_FILE", "InflightLocks"]
