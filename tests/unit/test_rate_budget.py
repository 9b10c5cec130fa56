"""The rate budget's logic on virtual time: the bucket, the headers, learning the server's limit,
spending by priority, the pace of streaming edits, 429s - and, against the fake server's own GCRA
(Mattermost's limiter), no request ever refused."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random

import pytest

from llmbot.rate_budget import RateBudget, TokenBucket, edit_pace, margin, streaming_edit
from llmbot.rate_headers import LimitHeaders, RateEstimate
from llmbot.streaming import EditThrottle
from tests.loopback.fake_mattermost import _RateLimiter


class Timeline:
    """Virtual seconds for many coroutines at once: sleep() waits until run() moves time past it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._wakers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._wakers, (self.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def run(self, *tasks: asyncio.Task[object], until: float | None = None) -> None:
        """Let the tasks run, jumping to each next wake-up, until they are done (or `until`)."""
        while True:
            for _ in range(5):
                await asyncio.sleep(0)
            if all(t.done() for t in tasks) or not self._wakers:
                return
            when, _, future = heapq.heappop(self._wakers)
            if until is not None and when > until:
                heapq.heappush(self._wakers, (when, next(self._seq), future))
                self.now = until
                return
            self.now = max(self.now, when)
            future.set_result(None)


def headers(limit: int, remaining: int, reset: int | None = None) -> dict[str, str]:
    h = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining)}
    if reset is not None:
        h["x-ratelimit-reset"] = str(reset)
    return h


# ---------------------------------------------------------------------------------------- the bucket
def test_the_bucket_gives_its_capacity_at_once_then_its_rate():
    bucket = TokenBucket(rate=10, capacity=3, tokens=3, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)  # nothing taken: the wait for the next token
    assert bucket.take(0.1) == 0.0 and bucket.take(0.1) > 0
    assert bucket.level(100.0) == 3  # never more than the capacity


def test_a_floor_keeps_tokens_back_and_adjust_follows_the_server():
    bucket = TokenBucket(rate=2, capacity=10, tokens=5, stamp=0.0)
    assert bucket.take(0.0, floor=4) == 0.0  # leaves 4
    assert bucket.take(0.0, floor=4) == pytest.approx(0.5)  # would leave 3: wait one token's time
    bucket.adjust(-6, 0.0)  # the server says 6 fewer: a debt of 2
    assert bucket.level(0.0) == -2 and bucket.wait(0.0) == pytest.approx(1.5)
    bucket.adjust(100, 0.0)
    assert bucket.level(0.0) == 10


# --------------------------------------------------------------------------------------- the headers
def test_headers_are_read_as_mattermost_writes_them():
    assert LimitHeaders.parse(headers(101, 100, 1)) == LimitHeaders(101, 100, 1)
    assert LimitHeaders.parse(headers(101, 7)) == LimitHeaders(101, 7, None)
    assert LimitHeaders.parse({"x-ratelimit-limit": "101, 101", "x-ratelimit-remaining": "40, 12"}) == LimitHeaders(101, 12, None)
    for bad in ({}, {"x-ratelimit-limit": "101"}, headers(0, 0), {"x-ratelimit-limit": "many", "x-ratelimit-remaining": "1"},
                {"x-ratelimit-limit": "10", "x-ratelimit-remaining": "-1"}):
        assert LimitHeaders.parse(bad) is None, bad


@pytest.mark.parametrize(("per_sec", "burst"), [(10, 100), (1, 20), (50, 10), (3, 300)])
def test_the_rate_learned_from_gcra_headers_is_never_faster(per_sec, burst):
    clock = [0.0]
    limiter = _RateLimiter(per_sec, burst, lambda: clock[0])
    estimate = RateEstimate()
    rng = random.Random(per_sec)
    for _ in range(400):  # requests at about twice the rate the server allows
        clock[0] += rng.uniform(0, 1 / per_sec)
        _, h = limiter.check("me")
        parsed = LimitHeaders.parse({k.lower(): v for k, v in h.items()})
        assert parsed is not None
        estimate.observe(parsed)
        assert estimate.low <= per_sec <= estimate.high
    if burst / per_sec >= 2:  # close, when the bucket takes some seconds to fill
        assert 0.9 * per_sec <= estimate.rate(guess=1000) <= per_sec
    else:  # Reset counts whole seconds: a bucket full within one says "at least a burst a second"
        assert estimate.rate(guess=1000) == burst


def test_a_full_bucket_says_little_so_the_default_ratio_is_guessed():
    estimate = RateEstimate()
    estimate.observe(LimitHeaders(101, 100, 1))
    assert estimate.rate(guess=10.0) == 10.0
    estimate.observe(LimitHeaders(101, 50, 2))  # 51 used in at most 2 s: over 25/s
    assert estimate.rate(guess=10.0) == pytest.approx(25.0)
    estimate.observe(LimitHeaders(11, 0, 11))  # the server's settings changed: start over
    assert estimate.low == pytest.approx(10 / 11)


# ------------------------------------------------------------------------- on, off, learned, set
def test_without_settings_or_headers_there_is_no_budget():
    budget = RateBudget()
    for _ in range(3):
        budget.observe(200, {}, budget.ticket())
    assert not budget.active and not budget.engaged and budget.ticket() is None
    assert budget.edit_wait() == 0.0 and edit_pace(type("Chat", (), {"rate_budget": budget})()) is None


def test_the_headers_of_a_success_turn_it_on_and_their_absence_off(caplog):
    clock = Timeline()
    budget = RateBudget(clock=clock, sleep=clock.sleep)
    caplog.set_level(logging.INFO, logger="llmbot.rate_budget")
    budget.observe(200, headers(101, 100, 1), None)
    assert budget.active and budget.engaged and budget.burst == 100 - margin(100)
    assert budget.rate == 10.0  # burst / 10 until the headers say more
    budget.observe(200, {}, budget.ticket())
    assert not budget.active and not budget.engaged
    budget.observe(429, headers(101, 0, 11), None)  # a 429 alone does not turn it on...
    assert not budget.active
    budget.observe(200, headers(101, 90, 2), None)
    assert budget.rate == pytest.approx(100 / 11)  # ...but what it said counts
    budget.observe(200, {}, budget.ticket())
    assert not budget.active and not budget.engaged
    assert [r.getMessage() for r in caplog.records] == [
        "Mattermost rate limit, from its headers: burst 100; the bot keeps within it",
        "Mattermost sends no rate limit headers any more: the bot's rate budget is off",
    ] * 2


def test_set_values_hold_whatever_the_headers_say():
    budget = RateBudget(5.0, 40)
    assert budget.active and budget.rate == 5.0 and budget.burst == 40 - margin(40)
    budget.observe(200, headers(101, 100, 1), budget.ticket())
    budget.observe(200, {}, budget.ticket())  # no headers: still on
    assert budget.active and budget.rate == 5.0 and budget.burst == 38
    assert RateBudget(rate=3.0).burst == 3 - margin(3)  # one second's worth
    assert RateBudget(burst=50).rate == 5.0  # Mattermost's ratio
    assert not RateBudget(5.0, 40, enabled=False).engaged


def test_the_level_follows_the_servers_count_once_per_difference():
    budget = RateBudget(10.0, 100, clock=lambda: 0.0)
    level = budget._bucket.level  # type: ignore[union-attr]
    first, second = budget.ticket(), budget.ticket()  # two requests on their way at 95 tokens
    assert first is not None and second is not None and level(0.0) == 95
    # another client at our address spent 30: after ours the server has 101 - 1 - 30 left
    budget.observe(200, headers(101, 70), first)
    assert level(0.0) == pytest.approx(95 - 31)  # ours shows 1 + margin less than the server's
    budget.observe(200, headers(101, 70), second)  # the same news again: not subtracted twice
    assert level(0.0) == pytest.approx(95 - 31)


# ------------------------------------------------------------------------------------- spending
async def test_urgent_calls_wait_in_line_at_the_rate():
    clock = Timeline()
    budget = RateBudget(10.0, 20, clock=clock, sleep=clock.sleep)  # 19 at once, then 10/s
    done: list[tuple[int, float]] = []

    async def call(i: int) -> None:
        await budget.spend()
        done.append((i, clock.now - 1000.0))

    tasks = [asyncio.create_task(call(i)) for i in range(29)]
    await clock.run(*tasks)
    assert [i for i, _ in done] == list(range(29))  # first come, first served
    assert [round(t, 2) for _, t in done[18:]] == [0.0] + [round(0.1 * k, 2) for k in range(1, 11)]


async def test_streaming_edits_yield_to_urgent_calls_and_keep_the_reserve():
    clock = Timeline()
    budget = RateBudget(10.0, 20, clock=clock, sleep=clock.sleep)  # capacity 19, reserve 9
    for _ in range(9):
        await budget.spend()
    assert budget.edit_wait() == 0.0  # 10 left: an edit may take one
    with streaming_edit():
        await budget.spend()
    assert budget.edit_wait() == pytest.approx(0.1)  # 9 left: the reserve is the urgent calls'
    await budget.spend()  # an urgent call still goes at once
    urgent = [asyncio.create_task(budget.spend()) for _ in range(9)]  # 8 go, 1 waits
    for _ in range(5):
        await asyncio.sleep(0)
    assert budget._waiting == 1 and budget.edit_wait() == pytest.approx(1.1)  # behind the reserve and the waiter
    await clock.run(*urgent)
    assert clock.now - 1000.0 == pytest.approx(0.1)


async def test_each_stream_gets_its_turn_under_pressure():
    clock = Timeline()
    budget = RateBudget(10.0, 20, clock=clock, sleep=clock.sleep)
    pacers = [budget.pacer() for _ in range(40)]
    assert budget.streams == 40 and budget.edit_gap() == pytest.approx(4.0)  # 40 streams share 10/s
    edits = [0] * len(pacers)
    for step in range(200):  # 20 s, every stream asking every 0.1 s
        clock.now = 1000.0 + step * 0.1
        for i, pace in enumerate(pacers):
            if pace() == 0.0:
                with streaming_edit():
                    await budget.spend()
                edits[i] += 1
    assert budget._bucket is not None and budget._bucket.level(clock.now) >= budget._reserve  # the reserve kept
    assert min(edits) >= 4 and max(edits) <= 6, edits  # about one per 4 s each, nobody starved
    for pace in pacers:
        pace.close()
        pace.close()  # twice is once
    assert budget.streams == 0 and budget.edit_gap() == 0.0


def test_the_throttle_stretches_with_the_pace():
    clock = Timeline()
    asked: list[float] = []

    class Pace:
        wait = 0.0

        def __call__(self) -> float:
            asked.append(clock.now)
            return self.wait

        def close(self) -> None:
            asked.append(-1)

    pace = Pace()
    throttle = EditThrottle(clock, 1.0, pace)
    assert throttle.due()
    throttle.mark()
    clock.now += 0.5
    assert not throttle.due() and len(asked) == 1  # within the interval: the budget is not asked
    clock.now += 0.5
    pace.wait = 3.0
    assert not throttle.due()
    clock.now += 2.0
    assert not throttle.due() and len(asked) == 2  # still within the wait it was given
    clock.now += 1.0
    pace.wait = 0.0
    assert throttle.due()
    throttle.close()
    assert asked[-1] == -1


# ------------------------------------------------------------------------------------------ 429s
async def test_a_429_holds_every_call_for_what_the_server_asked_and_is_logged_once(caplog):
    clock = Timeline()
    budget = RateBudget(clock=clock, sleep=clock.sleep)  # no headers seen: no budget, but a 429 holds
    caplog.set_level(logging.DEBUG, logger="llmbot.rate_budget")
    budget.limited(2.0, "create post")
    budget.limited(2.0, "patch post")
    assert budget.engaged and budget.edit_wait() == pytest.approx(2.0) and budget.limited_count == 2
    task = asyncio.create_task(budget.spend())
    await clock.run(task)
    assert clock.now == pytest.approx(1002.0)
    assert [r.levelname for r in caplog.records] == ["WARNING", "DEBUG"]
    assert "create post with 429: holding calls 2.0 s" in caplog.records[0].getMessage()
    budget.limited(500.0, "thread")  # never longer than retry.MAX_WAIT
    assert budget.edit_wait() == pytest.approx(30.0)
    clock.now += 100
    budget.limited(1.0, "thread")
    assert [r.levelname for r in caplog.records][-1] == "WARNING"  # a new episode


def test_without_a_budget_a_429_holds_nothing():
    budget = RateBudget(enabled=False)
    budget.limited(5.0, "create post")
    assert not budget.engaged


async def test_the_budget_keeps_a_gcra_server_from_ever_refusing():
    """Urgent calls and streaming edits at four times the server's rate, each request reaching
    the server 0-80 ms after it left, its answer as late: the server never answers 429."""
    clock = Timeline()
    limiter = _RateLimiter(10, 100, clock)
    budget = RateBudget(clock=clock, sleep=clock.sleep)
    budget.observe(200, {k.lower(): v for k, v in limiter.check("me")[1].items()}, None)  # login
    rng = random.Random(7)
    refused = 0

    async def request() -> None:
        nonlocal refused
        ticket = budget.ticket()
        await clock.sleep(rng.uniform(0, 0.08))
        limited, h = limiter.check("me")
        refused += limited
        await clock.sleep(rng.uniform(0, 0.08))
        budget.observe(429 if limited else 200, {k.lower(): v for k, v in h.items()}, ticket)

    async def client(edits: bool) -> None:
        for _ in range(30):
            with streaming_edit(edits):
                await budget.spend()
            await request()
            await clock.sleep(rng.uniform(0, 2.0))

    tasks = [asyncio.create_task(client(i % 3 == 0)) for i in range(120)]
    await clock.run(*tasks)
    assert all(t.done() for t in tasks)
    assert refused == 0
    ideal = (120 * 30 - 101) / 10  # the burst at once, then 10/s
    assert clock.now - 1000.0 < ideal * 1.05  # and it used what the server gives


class TestReplicasShareTheBudget:
    """Replicas of one account share its Mattermost budget: each spends 1/N (N from their heartbeats)."""

    def test_a_configured_budget_is_split_between_the_replicas_alive(self) -> None:
        budget = RateBudget(10, 100, clock=lambda: 0.0)
        whole_rate, whole_burst = budget.rate, budget.burst
        assert whole_rate is not None and whole_burst is not None
        budget.set_share(2)
        assert budget.rate == pytest.approx(whole_rate / 2) and budget.burst == pytest.approx(whole_burst / 2)
        budget.set_share(1)  # the other replica stopped
        assert budget.rate == pytest.approx(whole_rate) and budget.burst == pytest.approx(whole_burst)

    def test_a_learned_budget_is_split_too(self) -> None:
        budget = RateBudget(clock=lambda: 0.0)
        budget.set_share(4)
        headers = {"x-ratelimit-limit": "101", "x-ratelimit-remaining": "100", "x-ratelimit-reset": "1"}  # (httpx: lower case)
        budget.observe(200, headers, None)
        assert budget.burst is not None and budget.burst <= 101 / 4
