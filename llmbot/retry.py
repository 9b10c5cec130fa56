"""Retrying Mattermost calls: which failures may pass, how long to wait, one loop for all.

This is the ONLY retry layer for Mattermost (the driver runs with max_retries=0). tenacity runs
the loop: counting tries, the retry predicate, re-raising the last error. Two rules are ours,
because tenacity cannot express them: the wait (its jittered waits draw from the global `random`
and never read a 429's Retry-After) and the deadline (its time limits count from a start taken
on time.monotonic; ours is an absolute time on an injectable clock, and bounds each try too).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from .errors import ChatBadRequest, ChatError, ChatForbidden, ChatNotFound, ChatRateLimited, ChatTLSError, ChatUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5  # tries of one Mattermost call before giving up
RETRY_BASE = 0.5  # the 2nd try comes after 0.25-0.5 s, each later wait doubles: at most 7.5 s in all
MAX_WAIT = 30.0  # no single wait is longer, whatever a 429 asked for
# Answers that another try cannot change: not a member (403), gone (404), refused as written (400).
FINAL = (ChatForbidden, ChatNotFound, ChatBadRequest)


def retry_wait(attempt: int, exc: BaseException, base: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after failed try number `attempt` (0-based): what a 429 asked
    for, else exponential backoff, half fixed and half random so many turns don't retry in step."""
    if isinstance(exc, ChatRateLimited) and exc.retry_after is not None:
        return min(exc.retry_after, MAX_WAIT)
    ceiling = min(MAX_WAIT, base * 2.0**attempt)
    return ceiling / 2 + rng() * ceiling / 2


def _log_of(exc: BaseException) -> Callable[..., None]:
    """A failed try's log level: a 429 is logged once, where it happened (rate_budget.py), not per try."""
    return log.debug if isinstance(exc, ChatRateLimited) else log.warning


def _passing(exc: BaseException) -> bool:
    """A failure another try may cure; anything not a ChatError is a bug and is raised at once, and
    an untrusted certificate stays untrusted: an admin must fix it, not the next try."""
    return isinstance(exc, ChatError) and not isinstance(exc, (*FINAL, ChatTLSError))


class _NoTimeLeft(stop_base):
    """Stop when the next wait would end at or after the deadline: it leaves no time for a try."""

    def __init__(self, deadline: float | None, clock: Callable[[], float]) -> None:
        self.deadline, self.clock = deadline, clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.deadline is not None and self.clock() + retry_state.upcoming_sleep >= self.deadline


def _failure(state: RetryCallState) -> BaseException:
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc if exc is not None else RuntimeError("no failure recorded")


async def with_retries(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int = ATTEMPTS,
    base: float = RETRY_BASE,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """call() until it succeeds. A FINAL failure or a non-ChatError is raised at once, any other
    ChatError after `attempts` tries; each failed try is one warning naming `what`, with its cause
    unless the try before failed the same way.

    `deadline` is an absolute clock() time: no wait ends past it, and each try gets only the time
    left (then ChatUnavailable says the deadline passed). `clock` must tick like the event loop's
    clock, as the per-try bound is an asyncio.timeout."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    # Nearly every call succeeds at once: that try costs no tenacity machinery (a loop object
    # per call is tens of microseconds, on every post of every turn).
    try:
        return await _one_try(call, what, deadline, clock)
    except Exception as exc:
        if not _passing(exc):
            raise
        first = exc
    _log_of(first)("%s failed (try 1 of %d): %s", what, attempts, first)
    said = [str(first)]  # the cause last logged: a repeat says "again" instead
    pause = retry_wait(0, first, base, rng)
    if attempts == 1 or (deadline is not None and clock() + pause >= deadline):
        raise first
    await sleep(pause)

    def wait(state: RetryCallState) -> float:
        return retry_wait(state.attempt_number, _failure(state), base, rng)

    def log_failure(state: RetryCallState) -> None:
        failure = _failure(state)
        cause = str(failure)
        shown = "the same again" if cause == said[0] else cause
        said[0] = cause
        _log_of(failure)("%s failed (try %d of %d): %s", what, state.attempt_number + 1, attempts, shown)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts - 1) | _NoTimeLeft(deadline, clock),
        wait=wait,
        retry=retry_if_exception(_passing),
        after=log_failure,
        sleep=sleep,
        reraise=True,
    )
    result: T = await retrying(_one_try, call, what, deadline, clock)
    return result


async def _one_try(call: Callable[[], Awaitable[T]], what: str, deadline: float | None, clock: Callable[[], float]) -> T:
    """One call, cut off when the deadline comes."""
    if deadline is None:
        return await call()
    left = deadline - clock()
    if left <= 0:
        raise ChatUnavailable(f"{what}: the deadline passed before the call was made")
    timeout = asyncio.timeout(left)
    try:
        async with timeout:
            return await call()
    except TimeoutError:
        if not timeout.expired():
            raise  # not our cut-off: the call's own business
        raise ChatUnavailable(f"{what}: no answer within the {left:.1f} s left before the deadline") from None
