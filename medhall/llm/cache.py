"""Content-addressed response cache and durable ledger in one SQLite file (WAL mode).

- ``responses``: key -> response text, finish_reason and usage. The key is the SHA-256 of the
  canonical request (:func:`request_key`): backend, model, messages with image hashes instead
  of base64, generation parameters, response format / schema, template hash. Concurrency and
  batch settings are not part of a request, so they cannot change a key.
- ``calls``: the ledger, one row per call in the ``llm_calls`` schema.

Writes go through one writer thread that commits whatever is queued in a single transaction
(group commit), so hundreds of calls per second cost a few commits. :meth:`ResponseCache.arecord`
returns only after its transaction committed: a call is reported done only once its response
and ledger row are on disk, so a crash can lose only calls that were never reported done.
With ``durable=False`` (the default, ``synchronous=NORMAL``) a committed row survives the
process being killed; ``durable=True`` (``synchronous=FULL``) also survives power loss.
Nothing is pickled: rows are plain columns.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from medhall.ids import canonical_json, sha256_hex
from medhall.llm.types import BackendResponse, ChatRequest, ImagePart, Message

LEDGER_FIELDS = ("call_id", "run_id", "stage", "backend", "model", "status", "error", "attempts",
                 "prompt_tokens", "completion_tokens", "latency_s", "cost_usd", "finish_reason",
                 "started_at")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, backend TEXT, model TEXT, text TEXT NOT NULL, finish_reason TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, created_at REAL);
CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, {", ".join(LEDGER_FIELDS)});
CREATE INDEX IF NOT EXISTS calls_run ON calls (run_id);
"""
_INSERT_RESPONSE = "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CALL = f"INSERT INTO calls ({', '.join(LEDGER_FIELDS)}) VALUES ({', '.join('?' * len(LEDGER_FIELDS))})"


def canonical_messages(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages as plain data, each image replaced by its content hash and encoding."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts = [{"type": "image", "sha256": p.sha256, "encoding": p.encoding, "detail": p.detail}
                 if isinstance(p, ImagePart) else {"type": "text", "text": p.text} for p in m.content]
        out.append({"role": m.role, "content": parts})
    return out


@lru_cache(maxsize=256)
def schema_json(schema: type) -> str:
    """The JSON schema of a pydantic model class, canonical (computed once per class)."""
    return canonical_json(schema.model_json_schema())


def request_key(request: ChatRequest, *, backend: str, model: str, schema: type | None = None,
                endpoint: Mapping[str, Any] | None = None) -> str:
    """SHA-256 hex of the canonical request: the cache key and the ledger's ``call_id``.
    ``endpoint``: where it goes (URL without credentials, the model the server reports), so two
    servers, or one server with another model under the same name, never share answers."""
    payload = {
        "backend": backend,
        "model": model,
        "messages": canonical_messages(request.messages),
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
        "stop": request.stop,
        "response_format": request.response_format,
        "schema": schema_json(schema) if schema is not None else None,
        "template_hash": request.template_hash,
    }
    if endpoint is not None:
        payload["endpoint"] = dict(endpoint)
    return sha256_hex(canonical_json(payload))


@dataclass(slots=True)
class _Write:
    row: Mapping[str, Any]
    response: tuple[Any, ...] | None
    future: asyncio.Future[None] | None


class ResponseCache:
    """SQLite store of responses and ledger rows; safe to share between threads and processes."""

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durable = durable
        self._local = threading.local()
        self._queue: queue.SimpleQueue[_Write | threading.Event | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._connect().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections must stay on their thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> BackendResponse | None:
        row = self._connect().execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens FROM responses WHERE key = ?",
            (key,)).fetchone()
        return None if row is None else BackendResponse(row[0], row[1], row[2] or 0, row[3] or 0)

    def __contains__(self, key: str) -> bool:
        return self._connect().execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    async def arecord(self, row: Mapping[str, Any], response: BackendResponse | None = None,
                      *, backend: str | None = None) -> None:
        """Queue a ledger row (and a response to cache under ``row['call_id']``); return once committed."""
        future = asyncio.get_running_loop().create_future()
        self._put(_Write(row, self._response_tuple(row, response, backend), future))
        await future

    def record(self, row: Mapping[str, Any], response: BackendResponse | None = None,
               *, backend: str | None = None) -> None:
        """Synchronous :meth:`arecord`: queue and wait for the commit."""
        self._put(_Write(row, self._response_tuple(row, response, backend), None))
        self.flush()

    @staticmethod
    def _response_tuple(row: Mapping[str, Any], response: BackendResponse | None,
                        backend: str | None) -> tuple[Any, ...] | None:
        if response is None:
            return None
        return (row["call_id"], backend or row.get("backend"), row.get("model"), response.text,
                response.finish_reason, response.prompt_tokens, response.completion_tokens,
                datetime.now(UTC).timestamp())

    def _put(self, item: _Write | threading.Event | None) -> None:
        with self._start_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="medhall-llm-cache", daemon=True)
                self._writer.start()
        self._queue.put(item)

    def flush(self) -> None:
        """Block until everything queued so far is committed."""
        if self._writer is None:
            return
        done = threading.Event()
        self._put(done)
        done.wait()

    def close(self) -> None:
        """Commit what is queued and stop the writer thread."""
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self._writer = None

    def _write_loop(self) -> None:
        conn = self._connect()
        while True:
            batch = [self._queue.get()]
            while len(batch) < 2048:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            writes = [b for b in batch if isinstance(b, _Write)]
            error = self._commit(conn, writes) if writes else None
            self._notify(writes, error)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is None for item in batch):
                return

    @staticmethod
    def _commit(conn: sqlite3.Connection, writes: list[_Write]) -> BaseException | None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            responses = [w.response for w in writes if w.response is not None]
            if responses:
                conn.executemany(_INSERT_RESPONSE, responses)
            conn.executemany(_INSERT_CALL, [_ledger_values(w.row) for w in writes])
            conn.execute("COMMIT")
            return None
        except Exception as exc:  # reported to every waiter; the writer thread lives on
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return exc

    @staticmethod
    def _notify(writes: list[_Write], error: BaseException | None) -> None:
        """Resolve the waiting futures: one wake-up per event loop per batch."""
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = defaultdict(list)
        for w in writes:
            if w.future is not None:
                by_loop[w.future.get_loop()].append(w.future)
        for loop, futures in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futures, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def ledger_rows(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Ledger rows in insertion order (all runs, or one)."""
        self.flush()
        sql = f"SELECT {', '.join(LEDGER_FIELDS)} FROM calls"
        params: tuple[Any, ...] = ()
        if run_id is not None:
            sql, params = sql + " WHERE run_id = ?", (run_id,)
        rows = self._connect().execute(sql + " ORDER BY seq", params).fetchall()
        out = [dict(zip(LEDGER_FIELDS, r, strict=True)) for r in rows]
        for r in out:
            if r["started_at"] is not None:
                r["started_at"] = datetime.fromtimestamp(r["started_at"], tz=UTC)
        return out


def _ledger_values(row: Mapping[str, Any]) -> tuple[Any, ...]:
    values = [row.get(f) for f in LEDGER_FIELDS]
    started = values[-1]
    if isinstance(started, datetime):
        values[-1] = started.timestamp()
    return tuple(values)


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for f in futures:
        if not f.done():
            if error is None:
                f.set_result(None)
            else:
                f.set_exception(error)
