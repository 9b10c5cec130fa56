"""with_retries: passing Mattermost failures are retried with jittered backoff, final ones and
bugs are not, a 429 waits as asked, and nothing waits or runs past the deadline (fake clock)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmbot.errors import ChatBadRequest, ChatForbidden, ChatNotFound, ChatRateLimited, ChatUnavailable
from llmbot.retry import MAX_WAIT, retry_wait, with_retries


class Script:
    """A call that fails with the given errors, then returns "ok". Its clock moves only when
    with_retries sleeps (recorded, not slept) or a try `takes` time."""

    def __init__(self, *errors: BaseException, takes: float = 0.0) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.slept: list[float] = []
        self.now = 100.0
        self.takes = takes

    async def __call__(self) -> str:
        self.calls += 1
        self.now += self.takes
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def down(n: int) -> list[BaseException]:
    return [ChatUnavailable(f"down {i}") for i in range(n)]


@pytest.mark.parametrize(("rng", "waits"), [(0.0, [0.25, 0.5, 1.0]), (1.0, [0.5, 1.0, 2.0]), (0.5, [0.375, 0.75, 1.5])])
async def test_passing_failures_are_retried_with_doubling_jittered_waits(rng: float, waits: list[float]) -> None:
    call = Script(*down(3))
    assert await with_retries(call, "x", base=0.5, sleep=call.sleep, rng=lambda: rng) == "ok"
    assert call.calls == 4 and call.slept == waits


async def test_a_429_waits_as_long_as_it_asked_without_jitter() -> None:
    call = Script(ChatRateLimited("slow down", 3.0))
    assert await with_retries(call, "x", sleep=call.sleep, rng=lambda: 0.0) == "ok"
    assert call.slept == [3.0]


@pytest.mark.parametrize("error", [ChatForbidden("no"), ChatNotFound("gone"), ChatBadRequest("bad root")])
async def test_final_failures_are_raised_at_once(error: Exception) -> None:
    call = Script(error)
    with pytest.raises(type(error)):
        await with_retries(call, "x", sleep=call.sleep)
    assert call.calls == 1 and call.slept == []


@pytest.mark.parametrize("bug", [KeyError("post"), TypeError("unhashable"), AttributeError("nope")])
async def test_a_bug_is_raised_unchanged_at_once_not_retried_as_a_flaky_server(bug: Exception) -> None:
    call = Script(bug)
    with pytest.raises(type(bug)) as info:
        await with_retries(call, "x", sleep=call.sleep)
    assert info.value is bug and call.calls == 1 and call.slept == []


async def test_the_last_failure_is_raised_after_all_attempts() -> None:
    call = Script(*down(5))
    with pytest.raises(ChatUnavailable, match="down 2"):
        await with_retries(call, "x", attempts=3, base=1.0, sleep=call.sleep, rng=lambda: 1.0)
    assert call.calls == 3 and call.slept == [1.0, 2.0]


async def test_no_wait_ends_past_the_deadline() -> None:
    call = Script(*down(5))
    with pytest.raises(ChatUnavailable, match="down 1"):
        # tries at 100 and 101; the next wait (2 s) would end at 103, past the deadline at 102.5
        await with_retries(call, "x", base=1.0, deadline=102.5, clock=call.clock, sleep=call.sleep, rng=lambda: 1.0)
    assert call.calls == 2 and call.slept == [1.0]
    assert call.now <= 102.5


async def test_a_429_asking_for_longer_than_the_deadline_allows_is_raised_without_waiting() -> None:
    call = Script(ChatRateLimited("slow down", 20.0))
    with pytest.raises(ChatRateLimited):
        await with_retries(call, "x", deadline=110.0, clock=call.clock, sleep=call.sleep)
    assert call.calls == 1 and call.slept == []


async def test_slow_tries_use_up_the_deadline_and_count_against_it() -> None:
    call = Script(*down(5), takes=4.0)
    with pytest.raises(ChatUnavailable, match="down 1"):
        # 100 -> fails at 104, waits 1 -> 105, fails at 109, a 2 s wait would end at 111 > 110
        await with_retries(call, "x", base=1.0, deadline=110.0, clock=call.clock, sleep=call.sleep, rng=lambda: 1.0)
    assert call.calls == 2 and call.slept == [1.0]


async def test_a_deadline_already_passed_makes_no_call() -> None:
    call = Script()
    with pytest.raises(ChatUnavailable, match="deadline passed"):
        await with_retries(call, "thread", deadline=99.0, clock=call.clock, sleep=call.sleep)
    assert call.calls == 0 and call.slept == []


async def test_each_try_is_cut_off_when_the_deadline_comes() -> None:
    calls = 0

    async def never_answers() -> str:
        nonlocal calls
        calls += 1
        await asyncio.Event().wait()
        return "never"

    started = time.monotonic()
    with pytest.raises(ChatUnavailable, match="before the deadline"):
        await with_retries(never_answers, "thread", deadline=started + 0.2)
    assert calls == 1
    assert time.monotonic() - started < 2.0  # the try itself would have waited forever


async def test_a_timeout_the_call_raises_itself_is_not_taken_for_the_deadline() -> None:
    call = Script(TimeoutError("the call's own"))
    with pytest.raises(TimeoutError, match="the call's own"):
        await with_retries(call, "x", deadline=time.monotonic() + 60.0)
    assert call.calls == 1


def test_retry_wait_caps_what_a_429_asks_and_backs_off_with_jitter_otherwise() -> None:
    assert retry_wait(0, ChatRateLimited("slow down", 300.0), 0.5) == MAX_WAIT == 30.0
    assert retry_wait(2, ChatRateLimited("slow down"), 0.5, lambda: 1.0) == 2.0  # no Retry-After: backoff
    assert retry_wait(3, ChatUnavailable("down"), 0.5, lambda: 0.0) == 2.0
    assert retry_wait(3, ChatUnavailable("down"), 0.5, lambda: 1.0) == 4.0
    assert retry_wait(20, ChatUnavailable("down"), 0.5, lambda: 1.0) == MAX_WAIT


async def test_attempts_below_one_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await with_retries(Script(), "x", attempts=0)
