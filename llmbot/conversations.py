"""Which threads are bound to a conversation: the bot's only local state.

Keys are root post ids (Mattermost ids are globally unique, so the channel adds nothing).
The store is a cache, not a record: every binding can be rebuilt from the props the bot
writes into the thread, so losing it loses no conversation data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache


@dataclass(frozen=True, slots=True)
class Binding:
    handler: str
    started_by: str  # user id of whoever opened the conversation
    last_activity: float  # store clock, seconds


class ConversationStore(Protocol):
    """Async so that a shared store (e.g. Redis) can stand in for the memory one."""

    async def get(self, thread_id: str) -> Binding | None: ...

    async def bind(self, thread_id: str, handler: str, started_by: str, idle: float = 0.0) -> Binding: ...

    async def touch(self, thread_id: str) -> Binding | None: ...

    async def unbind(self, thread_id: str) -> bool: ...


class MemoryStore:
    """A TTL cache: a thread with no activity for `ttl` seconds is unbound by expiry.

    Each binding expires `ttl` after its own last activity, so one rebuilt from a thread after a
    restart (already idle for a while) ends when it would have ended without the restart."""

    def __init__(self, ttl: float, maxsize: int = 200_000, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        self._cache: TLRUCache[str, Binding] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, binding, _now: binding.last_activity + ttl, timer=timer
        )

    def __len__(self) -> int:
        return len(self._cache)

    async def get(self, thread_id: str) -> Binding | None:
        return self._cache.get(thread_id)

    async def bind(self, thread_id: str, handler: str, started_by: str, idle: float = 0.0) -> Binding:
        """Bind a thread; `idle` says how long ago its last activity was (0 for a new one)."""
        binding = Binding(handler=handler, started_by=started_by, last_activity=self._timer() - idle)
        self._cache[thread_id] = binding
        return binding

    async def touch(self, thread_id: str) -> Binding | None:
        """Restart the thread's TTL; None if it is no longer bound."""
        old = self._cache.get(thread_id)
        if old is None:
            return None
        new = Binding(old.handler, old.started_by, self._timer())
        self._cache[thread_id] = new  # re-setting an item restarts its TTL
        return new

    async def unbind(self, thread_id: str) -> bool:
        return self._cache.pop(thread_id, None) is not None
