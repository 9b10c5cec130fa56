"""Retrying Mattermost calls: which failures may pass, how long to wait, one loop for all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import ChatBadRequest, ChatError, ChatForbidden, ChatNotFound, ChatRateLimited

log = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5  # tries of one Mattermost call before giving up
RETRY_BASE = 0.5  # seconds before the 2nd try, doubling: 0.5 + 1 + 2 + 4 = 7.5 s in all
# Answers that another try cannot change: not a member (403), gone (404), refused as written (400).
FINAL = (ChatForbidden, ChatNotFound, ChatBadRequest)


def retry_wait(attempt: int, exc: ChatError, base: float) -> float:
    """Seconds before the next try: what a 429 asked for, else exponential backoff."""
    if isinstance(exc, ChatRateLimited) and exc.retry_after is not None:
        return min(exc.retry_after, 30.0)
    return base * 2**attempt


async def with_retries(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int = ATTEMPTS,
    base: float = RETRY_BASE,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """call() until it succeeds. A FINAL failure is raised at once, any other ChatError after
    `attempts` tries; each failed try is one warning naming `what`."""
    for attempt in range(attempts):
        try:
            return await call()
        except FINAL:
            raise
        except ChatError as exc:
            log.warning("%s failed (try %d of %d): %s", what, attempt + 1, attempts, exc)
            if attempt + 1 >= attempts:
                raise
            await sleep(retry_wait(attempt, exc, base))
    raise ValueError(f"attempts must be at least 1, not {attempts}")
