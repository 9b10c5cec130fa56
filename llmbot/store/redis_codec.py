"""Values to and from Redis for RedisStore: bindings as JSON lists, times in whole milliseconds, and
the errors that mean Redis is unavailable (raised as the one StoreUnavailable)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from redis import exceptions as redis_errors

from ..errors import StoreUnavailable
from .base import Binding

# unreachable, too slow, loading, or refusing writes (a read-only replica after a failover, out of memory)
UNAVAILABLE = (
    redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ReadOnlyError, redis_errors.OutOfMemoryError,
    TimeoutError, ConnectionError,
)

P = ParamSpec("P")
T = TypeVar("T")


def guarded(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Redis's connection errors and timeouts, as the one exception the dispatcher handles."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except UNAVAILABLE as e:
            raise StoreUnavailable(f"Redis is unavailable: {e}") from e

    return call




def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000 + 0.999))


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def encode(b: Binding) -> list[str]:
    return [b.handler, b.started_by, b.conversation, repr(float(b.last_activity)), "" if b.ttl is None else repr(float(b.ttl)),
            b.awaiting]


def binding(fields: list[str]) -> Binding:
    handler, started_by, conversation, last_activity, ttl, awaiting = fields
    return Binding(handler, started_by, conversation, float(last_activity), float(ttl) if ttl else None, awaiting)


def decode(raw: str | bytes | None) -> list[Binding]:
    return [binding(fields) for fields in json.loads(raw)] if raw else []
