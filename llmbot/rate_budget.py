"""The bot's Mattermost rate budget: a token bucket kept under the server's rate limiter.

The budget is LLMBOT_MATTERMOST_RATE/_BURST when set; unset, it is learned from the X-RateLimit-*
headers the limiter puts on every response (rate_headers.py): the burst from Limit, the rate from
how Remaining and Reset move. Either way the bucket's level follows Remaining, which also counts
other clients at the bot's address. Without the headers there is no budget at all:
MattermostChat._call skips it (`engaged` is False). A 429 that comes anyway holds every call for
the time the server asked (and with_retries waits as much before its next try).

Spending goes by priority. Urgent calls (creates, thread reads, the final edit of an answer: all but
streaming edits) wait in line, first come first served. A streaming edit takes a token only above a
reserve of half the bucket, when no urgent call waits, and when its stream's turn came (EditPacer:
the streams share the rate): under pressure each stream makes fewer, bigger edits.

One process's bucket is TokenBucket. Replicas sharing Redis share one account's budget by splitting
it: each spends 1/N (set_share; N from the replicas' heartbeats, replicas.py) and follows the
server's count. (A Redis-backed bucket, one GCRA key moved by a Lua script, would share it exactly;
RateBudget awaits only in spend(), where an asynchronous take would go.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar

import httpx

from .rate_headers import DEFAULT_SECONDS_OF_BURST, LimitHeaders, RateEstimate
from .token_bucket import Ticket, TokenBucket

log = logging.getLogger(__name__)

MAX_HOLD = 30.0  # seconds a 429's Retry-After may hold the calls (retry.MAX_WAIT)
QUIET_429 = 60.0  # a 429 after this long without one is logged again

# Set around a streaming edit (ReplyWriter.sync): the call yields to urgent ones.
_streaming_edit: ContextVar[bool] = ContextVar("llmbot_streaming_edit", default=False)


@contextlib.contextmanager
def streaming_edit(on: bool = True) -> Iterator[None]:
    """Calls made inside are streaming edits: they only spend what urgent calls leave."""
    token = _streaming_edit.set(on)
    try:
        yield
    finally:
        _streaming_edit.reset(token)


def margin(burst: int) -> int:
    """Tokens kept unspent against the server's count: a request's way there takes its own time."""
    return max(0, min(burst - 1, max(1, burst // 20)))


class RateBudget:
    """When MattermostChat's calls may go (see the module docstring). `clock` and `sleep` tick together."""

    def __init__(
        self,
        rate: float | None = None,
        burst: int | None = None,
        *,
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock, self._sleep = clock, sleep
        self._enabled = enabled
        self._rate, self._burst = rate, burst  # as configured
        self._estimate = RateEstimate()
        self._bucket: TokenBucket | None = None
        self._reserve = 0.0  # tokens a streaming edit leaves: half the bucket
        self.share = 1.0  # of the budget this process may spend: 1/N with N replicas alive (set_share)
        if enabled and (rate is not None or burst is not None):
            burst = burst if burst is not None else max(1, math.ceil(rate or 1))
            self._start(rate or burst / DEFAULT_SECONDS_OF_BURST, burst, None)
        self._hold_until = -math.inf
        self._logged_429 = -math.inf
        self._line = asyncio.Lock()  # urgent calls waiting, in order
        self._waiting = 0
        self._corrections = 0.0
        self.engaged = self._bucket is not None  # MattermostChat._call spends only then
        self.limited_count = 0  # 429s seen
        self.streams = 0  # answers streaming (open EditPacers)

    @property
    def active(self) -> bool:
        return self._bucket is not None

    @property
    def rate(self) -> float | None:
        return self._bucket.rate if self._bucket else None

    @property
    def burst(self) -> float | None:
        return self._bucket.capacity if self._bucket else None

    def _start(self, rate: float, burst: int, remaining: int | None) -> None:
        capacity = max(1.0, (burst - margin(burst)) * self.share)
        tokens = capacity if remaining is None else min(capacity, (remaining - 1 - margin(burst)) * self.share)
        self._bucket = TokenBucket(rate * self.share, capacity, tokens, self._clock())
        self._reserve = capacity // 2

    def set_share(self, replicas: int) -> None:
        """Replicas sharing Redis share one account's budget: each spends 1/N of it (N counted from
        their heartbeats in Redis, replicas.py), and all follow the server's count of what is left."""
        share = 1.0 / max(1, replicas)
        if share == self.share:
            return
        log.info("Mattermost rate budget: %d replica(s) alive, this one spends 1/%d of it", replicas, max(1, replicas))
        old, self.share = self.share, share
        if self._bucket is not None:
            bucket, now = self._bucket, self._clock()
            bucket.adjust(0.0, now)
            bucket.rate *= share / old
            bucket.capacity = max(1.0, bucket.capacity * share / old)
            bucket.tokens = min(bucket.tokens, bucket.capacity)
            self._reserve = bucket.capacity // 2

    # ------------------------------------------------------------------ spending
    async def spend(self) -> None:
        """Wait until this call may go; a streaming edit (streaming_edit()) after any urgent call."""
        if _streaming_edit.get():
            while (wait := self._try(self._edit_floor())) > 0:
                await self._sleep(wait)
            return
        if not self._waiting and self._try(0.0) <= 0:
            if self._bucket is None:
                self.engaged = False  # a 429's hold is over, and there is no budget
            return
        self._waiting += 1
        try:
            async with self._line:
                while (wait := self._try(0.0)) > 0:
                    await self._sleep(wait)
        finally:
            self._waiting -= 1

    def pacer(self) -> EditPacer:
        """One stream's pace (EditThrottle's); close() it when the stream ends."""
        return EditPacer(self)

    def edit_gap(self) -> float:
        """Seconds between two edits of one stream so that every stream gets its turn: while the
        bucket could not give each stream an edit now, the streams share the rate."""
        if self._bucket is None or not self.streams:
            return 0.0
        if self._bucket.level(self._clock()) >= self._edit_floor() + self.streams:
            return 0.0
        return self.streams / self._bucket.rate

    def edit_wait(self) -> float:
        """Seconds before a streaming edit could go now (0: at once)."""
        if not self.engaged:
            return 0.0
        now = self._clock()
        if now < self._hold_until:
            return self._hold_until - now
        return self._bucket.wait(now, self._edit_floor()) if self._bucket else 0.0

    def _edit_floor(self) -> float:
        return self._reserve + self._waiting

    def _try(self, floor: float) -> float:
        now = self._clock()
        if now < self._hold_until:
            return self._hold_until - now
        return self._bucket.take(now, floor) if self._bucket else 0.0

    # ------------------------------------------------------------------ what the server says
    def ticket(self) -> Ticket | None:
        """Taken as a request leaves; observe() compares it with the server's count."""
        if self._bucket is None:
            return None
        return Ticket(self._bucket.level(self._clock()), self._corrections)

    def observe(self, status: int, headers: Mapping[str, str], ticket: Ticket | None) -> None:
        """A response arrived: learn the limit, or follow the server's count of what is left."""
        if not self._enabled:
            return
        limits = LimitHeaders.parse(headers)
        learning = self._rate is None and self._burst is None
        ok = 200 <= status < 300
        if limits is None:
            if learning and ok and self._bucket is not None:
                log.info("Mattermost sends no rate limit headers any more: the bot's rate budget is off")
                self._bucket, self._estimate, self.engaged = None, RateEstimate(), self._hold_until > self._clock()
            return
        if self._rate is None:
            self._estimate.observe(limits)
        burst = self._burst if self._burst is not None else limits.limit - 1
        rate = self._rate if self._rate is not None else self._estimate.rate(max(1, burst) / DEFAULT_SECONDS_OF_BURST)
        if self._bucket is None:
            if ok:
                self._start(rate, burst, limits.remaining)
                self.engaged = True
                log.info("Mattermost rate limit, from its headers: burst %d; the bot keeps within it", burst)
            return
        bucket, now = self._bucket, self._clock()
        bucket.rate = rate * self.share
        if self._burst is None:
            capacity = max(1.0, (burst - margin(burst)) * self.share)
            if capacity != bucket.capacity:
                bucket.adjust(0.0, now)  # settle the level under the old capacity
                bucket.capacity, self._reserve = capacity, capacity // 2
        if ticket is not None:  # (this replica's share of what is left)
            self._follow((limits.remaining - 1 - margin(burst)) * self.share, ticket, now)

    def _follow(self, expected: float, ticket: Ticket, now: float) -> None:
        """Bring our level to the server's: `expected` is what ours should have shown as the request
        left. Corrections made since it left are not made twice."""
        assert self._bucket is not None
        off = expected - ticket.level - (self._corrections - ticket.corrections)
        if abs(off) >= 1.0:
            self._bucket.adjust(off, now)
            self._corrections += off

    def limited(self, retry_after: float | None, what: str) -> None:
        """A call got a 429 anyway: hold every call for the time the server asked; logged once."""
        now = self._clock()
        self.limited_count += 1
        hold = min(MAX_HOLD, retry_after if retry_after is not None else 1.0)
        self._hold_until = max(self._hold_until, now + hold)
        if self._enabled:
            self.engaged = True
        if self._bucket is not None:
            self._bucket.adjust(-self._bucket.level(now), now)  # the server has none left
        quiet = now - self._logged_429 >= QUIET_429
        self._logged_429 = now
        if not self._enabled:
            doing = f"retrying after {hold:.1f} s (no rate budget)"
        elif self._bucket is not None:
            doing = f"holding calls {hold:.1f} s (budget {self._bucket.rate:.3g}/s, burst {self._bucket.capacity:g})"
        else:
            doing = f"holding calls {hold:.1f} s (no X-RateLimit-* headers seen: no budget)"
        (log.warning if quiet else log.debug)("Mattermost's rate limit answered %s with 429: %s", what, doing)


class EditPacer:
    """When one stream's next edit may go: when the bucket has a token for an edit (edit_wait) and
    the stream's turn came (edit_gap after its last edit). Counts as a stream until closed."""

    def __init__(self, budget: RateBudget) -> None:
        self._budget = budget
        self._last = budget._clock()  # the stream's start: its first post shows the first token
        self._open = True
        budget.streams += 1

    def __call__(self) -> float:
        budget = self._budget
        wait = budget.edit_wait()
        if wait <= 0:
            now = budget._clock()
            wait = self._last + budget.edit_gap() - now
            if wait <= 0:
                self._last = now  # the edit goes now
        return max(wait, 0.0)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._budget.streams -= 1


def edit_pace(chat: object) -> EditPacer | None:
    """A pacer for one stream of `chat`'s, for EditThrottle; None without a rate budget in force
    (none learned or set, or a chat without one: tests' fakes)."""
    budget = getattr(chat, "rate_budget", None)
    return budget.pacer() if isinstance(budget, RateBudget) and budget.active else None


class WatchedTransport(httpx.AsyncBaseTransport):
    """MattermostChat's transport: every response's headers reach the budget."""

    def __init__(self, inner: httpx.AsyncBaseTransport, budget: RateBudget) -> None:
        self._inner, self._budget = inner, budget

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        ticket = self._budget.ticket()
        response = await self._inner.handle_async_request(request)
        self._budget.observe(response.status_code, response.headers, ticket)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
