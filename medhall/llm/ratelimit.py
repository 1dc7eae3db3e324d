"""Async token buckets for requests/min and tokens/min, with a shared pause for 429s.

Written by hand: nothing installed fits (aiolimiter has no pause or token refunds). A 429's
``Retry-After`` pauses the limiter for every caller, not only the one that got it.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """``rate_per_min`` units refill continuously; at most ``burst_s`` seconds' worth are stored."""

    def __init__(self, rate_per_min: float, burst_s: float = 1.0) -> None:
        if rate_per_min <= 0:
            raise ValueError("rate_per_min must be positive")
        self.rate = rate_per_min / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken (a request larger than the bucket waits for a full one)."""
        self._refill(now)
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Requests/min and tokens/min buckets (either may be None: unlimited) and a pause."""

    def __init__(self, requests_per_min: float | None = None, tokens_per_min: float | None = None,
                 burst_s: float = 1.0) -> None:
        self.requests = TokenBucket(requests_per_min, burst_s) if requests_per_min else None
        self.tokens = TokenBucket(tokens_per_min, burst_s) if tokens_per_min else None
        self.paused_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def limited(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def pause(self, seconds: float) -> None:
        """Stop everyone for ``seconds`` (a 429's Retry-After)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        return self._lock

    async def acquire(self, tokens: int = 0) -> None:
        """Wait until one request of ``tokens`` tokens may be sent; FIFO among waiters."""
        if not self.limited and self.paused_until <= time.monotonic():
            return
        async with self._get_lock():
            while (delay := self._delay(tokens)) > 0:
                await asyncio.sleep(delay)
            if self.requests:
                self.requests.take(1)
            if self.tokens:
                self.tokens.take(tokens)

    def _delay(self, tokens: int) -> float:
        now = time.monotonic()
        delay = self.paused_until - now
        if self.requests:
            delay = max(delay, self.requests.wait_time(1, now))
        if self.tokens:
            delay = max(delay, self.tokens.wait_time(tokens, now))
        return delay

    def refund(self, tokens: int) -> None:
        """Return tokens reserved by an estimate larger than what the call used."""
        if self.tokens and tokens > 0:
            self.tokens.give_back(tokens)
