"""The LLM client: the one place with concurrency, rate limits, retries, cache, ledger and budget.

Every call, whatever the backend, goes through :meth:`LLMClient.acomplete`:

1. The request's key (:func:`medhall.llm.cache.request_key`) is computed. A deterministic
   request (temperature 0 or a fixed seed, or ``cache=True``) is served from the cache if it
   was answered before, or joins an identical request already in flight: nothing is paid twice.
2. The budget is checked with the worst case of this call (estimated prompt + ``max_tokens``).
   Once a call would break the cap, it and every later call end ``budget_exceeded``.
3. Attempts run under a semaphore (max requests in flight) and the rate limiter; tenacity
   retries rate limits, 5xx, timeouts, dropped connections and malformed bodies with
   exponential backoff and jitter (at least a 429's ``Retry-After``, which also pauses every
   other caller). Other errors (400, 401, 403, 404) fail at once with a clear reason.
4. ``finish_reason == "length"`` is a failure (``truncated``). With a pydantic ``schema`` the
   reply is validated; an invalid reply gets one repair request, then fails with its raw text.
5. The ledger row (and the response, when cacheable and valid) is committed before the result
   is returned: a result reported done is on disk. Truncated and invalid replies are never
   cached, and a cached reply that no longer validates is asked again: a re-run re-asks what
   failed and pays nothing for what succeeded.

Endpoints as they are: a schema goes as OpenAI's ``json_schema`` structured output; an endpoint
that rejects it (llama.cpp answers 500, others 400/422) gets JSON mode with the schema in the
prompt, then the schema in the prompt alone (the reply is validated here either way). What an
endpoint accepts is learnt from its first refusal and remembered per endpoint beside the cache
(``endpoints.json``). The endpoint (URL without credentials, and the model the server reports
at ``/models``) is part of every cache key. A server's ``Retry-After`` is honoured up to
``max_retry_after_s`` (logged when capped); after ``max_connection_failures`` connection
failures in a row the client stops sending ("cannot reach URL") instead of retrying each
request to its end.

Threads: :meth:`LLMClient.run` (the synchronous entry every stage uses) runs its batch on the
client's own event loop, one daemon thread per client, whichever thread calls it. Shard tasks
running at once on threads therefore share one semaphore (``max_concurrency`` requests in
flight in total, not per thread), one rate limiter, one budget and one in-flight table (a
request asked by two shards at once is sent once). Coroutines awaited on another loop
(``await client.arun(...)``) keep a semaphore of that loop. Processes do not share a client: see
:mod:`medhall.llm.shared` for one client per endpoint in a process and how limits divide across
processes and machines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import json
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from medhall.llm.backends.base import Backend
from medhall.llm.cache import ResponseCache, request_key
from medhall.llm.errors import BackendError
from medhall.llm.inflight import InflightLocks
from medhall.llm.pricing import PriceTable
from medhall.llm.progress import BatchProgress
from medhall.llm.ratelimit import RateLimiter
from medhall.llm.types import BackendResponse, ChatRequest, ChatResult, Message, Usage

log = logging.getLogger(__name__)

IMAGE_TOKENS = 765  # a 1024x1024 image at high detail on GPT-4o
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)
#: How a reply schema reaches an endpoint, best first (see the module doc).
FORMAT_MODES = ("json_schema", "json_object", "prompt")
SCHEMA_PROMPT = "Reply with one JSON object, and no other text, that matches this JSON schema:\n{schema}"
REPAIR_PROMPT = ("Your reply could not be used: {error}\nReply again with only a JSON object that "
                 "matches this JSON schema, and no other text:\n{schema}")


def default_cache_path() -> Path:
    """``<home>/llm/cache.sqlite`` of the settings' artifact-store root."""
    from medhall.config import get_settings

    return get_settings().resolved_home() / "llm" / "cache.sqlite"


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """An upper bound of the prompt's tokens, so a budget is never overrun: a token per byte of
    text (a byte-level BPE never needs more), the ``response_format`` schema counted too (it is
    billed as prompt), images at GPT-4o's largest high-detail count, 4 tokens a message. The
    reservation made with it is given back as soon as the call reports its real usage."""
    text = sum(len(m.text().encode()) for m in request.messages)
    schema = len(json.dumps(request.response_format).encode()) if request.response_format else 0
    images = sum(len(m.images()) for m in request.messages)
    return text + schema + 4 * len(request.messages) + IMAGE_TOKENS * images + 1


@functools.lru_cache(maxsize=256)
def json_schema_format(schema: type[BaseModel]) -> dict[str, Any]:
    """``response_format`` asking an OpenAI-compatible server for JSON that fits ``schema``."""
    return {"type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}}


def with_schema(request: ChatRequest, schema: type[BaseModel], mode: str) -> ChatRequest:
    """``request`` asking for ``schema`` the way ``mode`` says: ``json_schema`` (structured
    output), ``json_object`` (JSON mode + the schema in the system message) or ``prompt`` (the
    schema in the system message alone)."""
    if mode == "json_schema":
        return request.model_copy(update={"response_format": json_schema_format(schema)})
    note = SCHEMA_PROMPT.format(schema=json.dumps(schema.model_json_schema(), separators=(",", ":")))
    messages = list(request.messages)
    if messages and messages[0].role == "system" and isinstance(messages[0].content, str):
        messages[0] = Message.system(messages[0].content + "\n\n" + note)
    else:
        messages.insert(0, Message.system(note))
    return request.model_copy(update={"messages": messages,
                                      "response_format": {"type": "json_object"} if mode == "json_object" else None})


class EndpointMemory:
    """What each endpoint accepts (its schema mode), kept in a JSON file beside the cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.modes: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            self.modes = {}

    def mode(self, endpoint: str) -> str:
        return self.modes.get(endpoint, FORMAT_MODES[0])

    def downgrade(self, endpoint: str, refused: str) -> str:
        """The mode after ``refused`` (unchanged when another caller already moved past it)."""
        current = self.mode(endpoint)
        if FORMAT_MODES.index(current) <= FORMAT_MODES.index(refused) < len(FORMAT_MODES) - 1:
            current = self.modes[endpoint] = FORMAT_MODES[FORMAT_MODES.index(refused) + 1]
            log.warning("%s does not accept %s: asking it with %s from now on", endpoint, refused, current)
            try:
                from medhall import atomic

                atomic.write_bytes(self.path, json.dumps(self.modes, indent=1, sort_keys=True).encode())
            except OSError as e:  # remembering is an optimisation: the next run learns again
                log.warning("could not remember %s's format in %s: %s", endpoint, self.path, e)
        return current


def validate_output(text: str, schema: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
    """(instance, None) when ``text`` (bare, fenced, or with prose around one object) validates, else (None, why)."""
    body = _FENCE.sub(r"\1", text)
    try:
        return schema.model_validate_json(body), None
    except ValidationError as exc:
        start, end = body.find("{"), body.rfind("}")
        if 0 <= start < end and (start, end) != (0, len(body) - 1):
            try:
                return schema.model_validate_json(body[start : end + 1]), None
            except ValidationError:
                pass
        return None, str(exc).replace("\n", " ")[:500]


def repair_request(request: ChatRequest, raw: str, error: str, schema: type[BaseModel]) -> ChatRequest:
    """The original conversation, the invalid reply, and a request to fix it."""
    from medhall.llm.cache import schema_json

    repair = REPAIR_PROMPT.format(error=error, schema=schema_json(schema))
    messages = [*request.messages, Message.assistant(raw), Message.user(repair)]
    return request.model_copy(update={"messages": messages})


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Fewer and shorter full garbage collections while a batch runs; undone afterwards.

    A full collection pauses the event loop, and so every request in flight: with the openai
    SDK imported, 40-90 ms several times per 2,000 requests. Freezing the objects that exist
    before the batch (they are not traversed) and making full collections 10 times rarer took
    the benchmark from about 0.86 to 0.91 of its latency bound.
    """
    global _gc_users, _gc_thresholds
    with _gc_lock:  # batches of several clients or threads overlap: the first in sets, the last out restores
        if _gc_users == 0:
            _gc_thresholds = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(_gc_thresholds[0], _gc_thresholds[1], max(_gc_thresholds[2], 100))
        _gc_users += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_thresholds)
                gc.unfreeze()


_gc_lock = threading.Lock()
_gc_users = 0
_gc_thresholds: tuple[int, ...] = gc.get_threshold()
_progress_lock = threading.Lock()
_progress_shown = False  # one progress display at a time in a process (concurrent batches run without)


class _HomeLoop:
    """An event loop running forever in a daemon thread: where :meth:`LLMClient.run` sends its
    batches, so that every thread of the process shares the client's asyncio objects."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 10.0) -> None:
        if self.pid != os.getpid() or not self.thread.is_alive():  # a forked child: the thread is not here
            return
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


@dataclass(slots=True)
class _Ticket:
    """One call's budget state: its worst-case tokens and the cost reserved for it."""

    model: str
    tokens: int
    max_tokens: int
    reserved: float = 0.0
    checked: bool = False


@dataclass
class _LoopState:
    """Asyncio objects, which belong to one event loop."""

    semaphore: asyncio.Semaphore
    inflight: dict[str, asyncio.Future[ChatResult]] = field(default_factory=dict)
    identity_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LLMClient:
    """Concurrent, rate-limited, retried, cached and costed LLM calls over one backend.

    Args:
        backend: any :class:`medhall.llm.backends.Backend`.
        cache: a :class:`ResponseCache` or a path; default ``<home>/llm/cache.sqlite``.
        use_cache: serve and store responses (the ledger is written either way).
        cache_nondeterministic: cache requests with temperature > 0 and no seed too.
        run_id: written on every ledger row.
        max_concurrency: requests in flight at once.
        requests_per_min, tokens_per_min: token-bucket limits (None: unlimited).
        max_attempts: attempts per request, first included.
        backoff_initial_s, backoff_max_s: exponential backoff with jitter between attempts.
        request_timeout_s: a limit per attempt enforced here (the HTTP backend has its own too).
        prices: a PriceTable, a mapping of model -> {input, output} per 1M tokens, or a YAML/JSON path.
        max_cost_usd: budget cap; calls that could break it are not sent.
        tune_gc: make full garbage collections rarer while a batch runs (see :func:`quiet_gc`).
        max_retry_after_s: the longest wait a server's Retry-After gets (longer asks are capped, logged).
        max_connection_failures: connection failures in a row after which no request is sent.
    """

    def __init__(self, backend: Backend, *, cache: ResponseCache | str | Path | None = None,
                 use_cache: bool = True, cache_nondeterministic: bool = False, run_id: str | None = None,
                 max_concurrency: int = 16, requests_per_min: float | None = None,
                 tokens_per_min: float | None = None, max_attempts: int = 5, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, request_timeout_s: float | None = None,
                 prices: PriceTable | Mapping[str, Any] | str | Path | None = None,
                 max_cost_usd: float | None = None, tune_gc: bool = True, max_retry_after_s: float = 60.0,
                 max_connection_failures: int = 8) -> None:
        self.backend = backend
        self.max_retry_after_s = max_retry_after_s
        self.max_connection_failures = max_connection_failures
        self._connection_failures = 0
        self.unreachable: str | None = None  # set once the circuit opens: every later attempt fails at once
        self.tune_gc = tune_gc
        self.cache = cache if isinstance(cache, ResponseCache) else ResponseCache(cache or default_cache_path())
        self.use_cache = use_cache
        self.cache_nondeterministic = cache_nondeterministic
        self.run_id = run_id
        self.max_concurrency = max_concurrency
        self.limiter = RateLimiter(requests_per_min, tokens_per_min)
        self.request_timeout_s = request_timeout_s
        self.prices = _price_table(prices)
        self.max_cost_usd = max_cost_usd
        self.spent_usd = 0.0
        self.budget_error: str | None = None  # set once a call is refused; sticky until the cap changes
        self._refused_cap: float | None = None
        self._reserved_usd = 0.0
        self._backoff = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s,
                                               jitter=backoff_initial_s)
        self._default_pause = backoff_initial_s
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(max_attempts), wait=self._wait, reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, BackendError) and e.retryable),
            before_sleep=_log_retry)
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self.endpoints = EndpointMemory(self.cache.path.parent / "endpoints.json")
        self.inflight_locks = InflightLocks(self.cache.path.parent)
        self._identity: dict[str, Any] | None = None
        self._identity_known = False
        self._home: _HomeLoop | None = None
        self._home_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"LLMClient(backend={self.backend!r}, cache={self.cache!r}, "
                f"max_concurrency={self.max_concurrency}, max_cost_usd={self.max_cost_usd})")

    # ----------------------------------------------------------------- public API
    async def acomplete(self, request: ChatRequest, schema: type[BaseModel] | None = None) -> ChatResult:
        """One request; with ``schema``, the reply validated into ``result.parsed`` (one repair retry)."""
        first = await self._call(request, schema)
        if first.error_kind != "invalid_output" or schema is None or first.text is None:
            return first
        second = await self._call(repair_request(request, first.text, first.error or "", schema), schema)
        totals = {"attempts": first.attempts + second.attempts, "latency_s": first.latency_s + second.latency_s,
                  "cost_usd": first.cost_usd + second.cost_usd}
        if second.ok:
            return second.model_copy(update=totals)
        error = f"invalid {schema.__name__} after one repair: {second.error}"
        return first.model_copy(update={**totals, "status": "failed", "text": second.text or first.text,
                                        "error": error, "error_kind": second.error_kind})

    async def astream(self, requests: Iterable[ChatRequest], schema: type[BaseModel] | None = None,
                      *, progress: bool = False) -> AsyncIterator[tuple[int, ChatResult]]:
        """Yield ``(index, result)`` as results complete; each is durable before it is yielded."""
        requests = list(requests)
        window = asyncio.Semaphore(max(4 * self.max_concurrency, 256))  # bounds tasks alive at once
        done: asyncio.Queue[tuple[int, ChatResult]] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, request: ChatRequest) -> None:
            try:
                done.put_nowait((i, await self._guarded(request, schema)))
            finally:
                window.release()

        async def feed() -> None:
            for i, request in enumerate(requests):
                await window.acquire()
                task = asyncio.create_task(one(i, request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        feeder = asyncio.create_task(feed())
        gc_context = quiet_gc() if self.tune_gc else contextlib.nullcontext()
        global _progress_shown
        with _progress_lock:  # batches running at once (shard threads) would draw over each other
            shown = progress and not _progress_shown
            _progress_shown = _progress_shown or shown
        try:
            with gc_context, BatchProgress(len(requests), enabled=shown) as bar:
                for _ in range(len(requests)):
                    i, result = await done.get()
                    bar.update(result)
                    yield i, result
        finally:
            if shown:
                with _progress_lock:
                    _progress_shown = False
            feeder.cancel()
            for task in list(tasks):
                task.cancel()

    async def arun(self, requests: Iterable[ChatRequest], schema: type[BaseModel] | None = None,
                   *, progress: bool = False) -> list[ChatResult]:
        """All results, in input order."""
        requests = list(requests)
        results: list[ChatResult | None] = [None] * len(requests)
        async for i, result in self.astream(requests, schema, progress=progress):
            results[i] = result
        return [r for r in results if r is not None]

    def run(self, requests: Iterable[ChatRequest], schema: type[BaseModel] | None = None,
            *, progress: bool = True) -> list[ChatResult]:
        """Synchronous :meth:`arun`, run on the client's own event loop (:meth:`home_loop`).

        Any number of threads may call it at once: their batches share the client's semaphore
        (``max_concurrency`` requests in flight in total), rate limiter, budget and in-flight
        table. An exception in the caller (Ctrl-C) cancels the batch; what finished is saved.
        """
        requests = list(requests)
        home = self._home_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is home.loop:
            raise RuntimeError("LLMClient.run() was called on the client's own event loop: await arun() there")
        future = home.submit(self.arun(requests, schema, progress=progress))
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def home_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (in a daemon thread of its own, started on first use) that runs every
        :meth:`run` of this client in this process."""
        return self._home_loop().loop

    def _home_loop(self) -> _HomeLoop:
        with self._home_lock:
            home = self._home
            if home is None or home.pid != os.getpid() or not home.thread.is_alive():
                home = self._home = _HomeLoop(f"medhall-llm-{self.backend.name}")
                weakref.finalize(self, home.stop, 1.0)  # a client dropped unclosed stops its thread
            return home

    def ledger_table(self, run_id: str | None = None) -> pa.Table:
        """The ledger (all runs in this cache, or one run) as an ``llm_calls`` Arrow table."""
        from medhall.schema import from_rows

        return from_rows("llm_calls", self.cache.ledger_rows(run_id))

    def close(self) -> None:
        """Close the backend's connections, stop the client's event loop, commit pending writes
        and stop the cache's writer thread. A later :meth:`run` starts a new loop."""
        with self._home_lock:
            home, self._home = self._home, None
        if (home is not None and home.pid == os.getpid() and home.thread.is_alive()
                and threading.current_thread() is not home.thread):  # not from a coroutine on that loop
            try:
                home.submit(self.backend.aclose()).result(timeout=10)
            except Exception as exc:  # closing is best effort: the process may be going down
                log.debug("closing the %s backend: %s", self.backend.name, exc)
            home.stop()
        self.cache.close()
        self.inflight_locks.close()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- one call
    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            self._states = {lp: s for lp, s in self._states.items() if not lp.is_closed()}
            state = self._states[loop] = _LoopState(asyncio.Semaphore(self.max_concurrency))
        return state

    async def _guarded(self, request: ChatRequest, schema: type[BaseModel] | None) -> ChatResult:
        """:meth:`acomplete`, with an unexpected error turned into a failed result (never lost)."""
        try:
            return await self.acomplete(request, schema)
        except Exception as exc:  # a bug must not lose the request
            return _internal_failure("", exc)

    async def _endpoint_identity(self) -> dict[str, Any] | None:
        """Where requests go (URL without credentials, the server's own model identity), asked
        once; None for backends that are not endpoints (local, fake)."""
        endpoint = getattr(self.backend, "endpoint", None)
        if endpoint is None:
            return None
        state = self._state()
        async with state.identity_lock:
            if not self._identity_known:
                probe = getattr(self.backend, "server_model", None)
                server = await probe() if probe is not None else None
                self._identity = {"url": endpoint, **({"server_model": server} if server else {})}
                self._identity_known = True
        return self._identity

    async def _call(self, request: ChatRequest, schema: type[BaseModel] | None) -> ChatResult:
        """One request, in the schema mode the endpoint accepts (learning it from a refusal)."""
        backend = self.backend
        if request.model is None:
            request = request.model_copy(update={"model": backend.model})
        if schema is None or request.response_format is not None or not backend.supports_json_schema:
            return await self._call_once(request, schema)
        endpoint = getattr(backend, "endpoint", None) or backend.name
        while True:
            mode = self.endpoints.mode(f"{endpoint}|{request.model}")
            result = await self._call_once(with_schema(request, schema, mode), schema)
            if result.error_kind != "unsupported_format" or mode == FORMAT_MODES[-1]:
                return result
            self.endpoints.downgrade(f"{endpoint}|{request.model}", mode)

    async def _call_once(self, request: ChatRequest, schema: type[BaseModel] | None) -> ChatResult:
        backend = self.backend
        key = request_key(request, backend=backend.name, model=request.model or backend.model, schema=schema,
                          endpoint=await self._endpoint_identity())
        started = time.time()
        cacheable = self.use_cache and (request.cache if request.cache is not None
                                        else request.deterministic or self.cache_nondeterministic)
        if not cacheable:
            return await self._fresh(request, key, schema, started, cacheable=False)
        state = self._state()
        if (waiter := state.inflight.get(key)) is not None:
            return await self._served(request, key, await asyncio.shield(waiter), started)
        if (hit := self.cache.get(key)) is not None:
            result = self._result(key, hit, schema, attempts=0, latency=0.0, cost=0.0, cached=True)
            if result.ok:  # a stored reply that no longer validates (a changed schema) is asked again
                return await self._served(request, key, result, started)
        future = asyncio.get_running_loop().create_future()
        state.inflight[key] = future
        try:
            result = await self._shared(request, key, schema, started)
        except Exception as exc:  # twins waiting on this call get the failure too
            result = _internal_failure(key, exc)
        except BaseException:
            future.cancel()
            raise
        finally:
            del state.inflight[key]
        future.set_result(result)
        return result

    async def _shared(self, request: ChatRequest, key: str, schema: type[BaseModel] | None,
                      started: float) -> ChatResult:
        """A cache miss, asked under the request's cross-process lock: a process that asked the
        same request meanwhile has committed its answer by the time the lock is ours, and that
        answer is served instead of paying again (:mod:`medhall.llm.inflight`)."""
        await self._claim(key)
        try:
            if (hit := self.cache.get(key)) is not None:
                result = self._result(key, hit, schema, attempts=0, latency=0.0, cost=0.0, cached=True)
                if result.ok:
                    return await self._served(request, key, result, started)
            return await self._fresh(request, key, schema, started, cacheable=True)
        finally:
            self.inflight_locks.release(key)

    async def _claim(self, key: str) -> None:
        """Take ``key``'s cross-process lock once a concurrency slot is free, so that a process
        claims only what it is about to send: two processes asking the same batch share it out
        (each sends part, reads the rest) instead of the first claiming the whole batch at once.
        A key held elsewhere is polled without keeping the slot."""
        locks, delay = self.inflight_locks, self.inflight_locks.poll_s
        while True:
            async with self._state().semaphore:
                if locks.try_acquire(key):
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, locks.max_poll_s)

    async def _served(self, request: ChatRequest, key: str, result: ChatResult, started: float) -> ChatResult:
        """A result given without a call (cache hit or a twin in flight): cost 0, attempts 0."""
        result = result.model_copy(update={"cached": True, "attempts": 0, "cost_usd": 0.0, "latency_s": 0.0,
                                           "status": "cached" if result.ok else result.status})
        await self._record(request, result, started)
        return result

    async def _fresh(self, request: ChatRequest, key: str, schema: type[BaseModel] | None,
                     started: float, *, cacheable: bool) -> ChatResult:
        model = request.model or self.backend.model
        ticket = _Ticket(model, estimate_prompt_tokens(request) + request.max_tokens, request.max_tokens)
        t0 = time.perf_counter()
        try:
            response, attempts, error = await self._attempts(request, ticket)
        finally:
            self._reserved_usd -= ticket.reserved
        latency = time.perf_counter() - t0
        if response is None:
            budget = error is not None and error.kind == "budget"
            result = ChatResult(call_id=key, status="budget_exceeded" if budget else "failed", error=str(error),
                                error_kind=getattr(error, "kind", None), attempts=attempts, latency_s=latency)
            await self._record(request, result, started)
            return result
        self.limiter.refund(ticket.tokens - response.prompt_tokens - response.completion_tokens)
        cost = self.prices.cost(model, response.prompt_tokens, response.completion_tokens)
        self.spent_usd += cost
        result = self._result(key, response, schema, attempts=attempts, latency=latency, cost=cost, cached=False)
        store = cacheable and result.ok  # truncated or invalid replies are never served again
        await self._record(request, result, started, response if store else None)
        return result

    def _result(self, key: str, response: BackendResponse, schema: type[BaseModel] | None, *,
                attempts: int, latency: float, cost: float, cached: bool) -> ChatResult:
        """A response judged: truncated and invalid replies are failures that keep their raw text."""
        status, error, kind, parsed = ("cached" if cached else "ok"), None, None, None
        if response.finish_reason == "length":
            status, kind = "failed", "truncated"
            error = f"output truncated at max_tokens (finish_reason=length, {response.completion_tokens} tokens)"
        elif schema is not None:
            parsed, why = validate_output(response.text, schema)
            if why is not None:
                status, kind, error = "failed", "invalid_output", f"not a valid {schema.__name__}: {why}"
        return ChatResult(call_id=key, status=status, text=response.text, parsed=parsed, error=error,
                          error_kind=kind, finish_reason=response.finish_reason,
                          usage=Usage(prompt_tokens=response.prompt_tokens,
                                      completion_tokens=response.completion_tokens),
                          attempts=attempts, latency_s=latency, cost_usd=cost, cached=cached)

    def _reserve(self, ticket: _Ticket) -> None:
        """Reserve the call's worst-case cost before its first attempt, or raise a ``budget`` error."""
        ticket.checked = True
        if self.max_cost_usd is None:
            return
        if self.budget_error is None or self._refused_cap != self.max_cost_usd:
            worst = self.prices.cost(ticket.model, ticket.tokens - ticket.max_tokens, ticket.max_tokens)
            if self.spent_usd + self._reserved_usd + worst <= self.max_cost_usd:
                self._reserved_usd += worst
                ticket.reserved, self.budget_error = worst, None
                return
            self.budget_error = (
                f"budget cap of ${self.max_cost_usd:.4f} reached: ${self.spent_usd:.4f} spent and "
                f"${self._reserved_usd:.4f} in flight, and the next call could cost up to ${worst:.4f}; "
                "no further calls are sent (completed results are saved; raise max_cost_usd and re-run)")
            self._refused_cap = self.max_cost_usd
            log.warning(self.budget_error)
        raise BackendError(self.budget_error, kind="budget", retryable=False, sent=False)

    async def _attempts(self, request: ChatRequest,
                        ticket: _Ticket) -> tuple[BackendResponse | None, int, BackendError | None]:
        """Run attempts under tenacity; (response, attempts, None) or (None, attempts, last error)."""
        attempts = 0
        try:
            async for attempt in self._retrying.copy():
                with attempt:
                    attempts += 1
                    response = await self._attempt(request, ticket)
        except BackendError as exc:
            return None, attempts - (not exc.sent), exc
        return response, attempts, None

    async def _attempt(self, request: ChatRequest, ticket: _Ticket) -> BackendResponse:
        async with self._state().semaphore:
            if self.unreachable is not None:  # refused before sending: not an attempt
                raise BackendError(self.unreachable, kind="unreachable", retryable=False, sent=False)
            if not ticket.checked:  # in the slot, so only calls about to be sent hold reservations
                self._reserve(ticket)
            await self.limiter.acquire(ticket.tokens)
            try:
                if self.request_timeout_s is None:
                    response = await self.backend.complete(request)
                else:
                    async with asyncio.timeout(self.request_timeout_s):
                        response = await self.backend.complete(request)
                self._connection_failures = 0
                return response
            except TimeoutError:
                raise BackendError(f"no answer within {self.request_timeout_s:g}s", kind="timeout") from None
            except BackendError as exc:
                if exc.kind == "rate_limit":
                    self.limiter.pause(self._capped(exc.retry_after) if exc.retry_after is not None
                                       else self._default_pause)
                elif exc.kind == "connection":
                    self._connection_failures += 1
                    if self._connection_failures >= self.max_connection_failures:
                        if self.unreachable is None:
                            where = getattr(self.backend, "endpoint", None) or self.backend.name
                            self.unreachable = (f"cannot reach {where}: {self._connection_failures} connection "
                                                "attempts failed in a row (is the server running, and the URL right?)")
                            log.error(self.unreachable)
                        raise BackendError(self.unreachable, kind="unreachable", retryable=False) from None
                raise
            except Exception as exc:
                raise BackendError(f"{self.backend.name} backend error: {type(exc).__name__}: {exc}"[:300],
                                   kind="backend", retryable=False) from None

    def _capped(self, retry_after: float) -> float:
        if retry_after > self.max_retry_after_s:
            log.warning("the server asked to wait %.0f s before retrying; waiting %.0f s (max_retry_after_s)",
                        retry_after, self.max_retry_after_s)
            return self.max_retry_after_s
        return retry_after

    def _wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, at least the server's Retry-After (capped)."""
        exc = state.outcome.exception() if state.outcome else None
        retry_after = self._capped(getattr(exc, "retry_after", None) or 0.0)
        return max(self._backoff(state), retry_after)

    async def _record(self, request: ChatRequest, result: ChatResult, started: float,
                      response: BackendResponse | None = None) -> None:
        row = {
            "call_id": result.call_id, "run_id": self.run_id, "stage": request.stage,
            "backend": self.backend.name, "model": request.model or self.backend.model,
            "status": result.status, "error": result.error, "attempts": result.attempts,
            "prompt_tokens": result.usage.prompt_tokens, "completion_tokens": result.usage.completion_tokens,
            "latency_s": result.latency_s, "cost_usd": result.cost_usd, "finish_reason": result.finish_reason,
            "started_at": started,
        }
        try:
            await self.cache.arecord(row, response)
        except Exception as exc:  # the result is still returned; only its persistence failed
            log.error("could not persist LLM call %s: %s", result.call_id[:12], exc)


def _price_table(prices: PriceTable | Mapping[str, Any] | str | Path | None) -> PriceTable:
    if isinstance(prices, PriceTable):
        return prices
    if isinstance(prices, str | Path):
        return PriceTable.from_file(prices)
    return PriceTable(prices)


def _internal_failure(key: str, exc: Exception) -> ChatResult:
    log.exception("LLM call failed unexpectedly")
    return ChatResult(call_id=key, status="failed", error=f"internal error: {type(exc).__name__}: {exc}",
                      error_kind="internal")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.info("LLM attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc,
             state.next_action.sleep if state.next_action else 0.0)
