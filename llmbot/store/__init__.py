"""Where everything per thread and per user lives: the protocol and its implementations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Binding, Store
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = ["Binding", "MemoryStore", "RedisStore", "Store"]


def __getattr__(name: str) -> Any:
    # RedisStore on first use only: a single instance (no LLMBOT_REDIS_URL) never imports redis-py
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
