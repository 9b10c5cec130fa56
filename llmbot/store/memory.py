"""The in-memory store of a single instance: TTL caches with an injected timer, all bounded."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from cachetools import TLRUCache, TTLCache

from .base import Binding

CLAIM_TTL = 3 * 3600.0  # a post is not replayed to the bot after hours: forget its claim then
MAX_CLAIMS = 100_000
MAX_USERS = 100_000


class MemoryStore:
    """Each binding expires `ttl` after its own last activity, so one rebuilt from a thread after
    a restart (already idle for a while) ends when it would have ended without the restart.
    The per-user index of opened conversations expires with them."""

    def __init__(self, ttl: float, maxsize: int = 200_000, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        self._ttl = ttl
        self._bindings: TLRUCache[str, Binding] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, binding, _now: binding.last_activity + ttl, timer=timer
        )
        # user id -> {thread id: None}; an entry lives as long as the user's newest conversation could
        self._opened: TTLCache[str, dict[str, None]] = TTLCache(maxsize=MAX_USERS, ttl=ttl, timer=timer)
        self._claims: TTLCache[str, bool] = TTLCache(maxsize=MAX_CLAIMS, ttl=CLAIM_TTL, timer=timer)
        self._starts: TTLCache[str, list[float]] = TTLCache(maxsize=MAX_USERS, ttl=3600.0, timer=timer)
        self._notices: dict[float, TTLCache[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._bindings)

    async def get(self, thread_id: str) -> Binding | None:
        return self._bindings.get(thread_id)

    async def bind(self, thread_id: str, handler: str, started_by: str, conversation: str, idle: float = 0.0) -> Binding:
        binding = Binding(handler, started_by, conversation, self._timer() - idle)
        self._bindings[thread_id] = binding
        threads = self._opened.get(started_by) or {}
        threads.pop(thread_id, None)
        threads[thread_id] = None
        self._opened[started_by] = threads  # re-setting restarts the entry's TTL
        return binding

    async def touch(self, thread_id: str) -> Binding | None:
        old = self._bindings.get(thread_id)
        if old is None:
            return None
        new = Binding(old.handler, old.started_by, old.conversation, self._timer())
        self._bindings[thread_id] = new  # re-setting an item restarts its TTL
        threads = self._opened.get(old.started_by)
        if threads is not None:
            threads.pop(thread_id, None)
            threads[thread_id] = None  # most recent last: the order ties are broken by
            self._opened[old.started_by] = threads
        return new

    async def unbind(self, thread_id: str) -> bool:
        return self._bindings.pop(thread_id, None) is not None

    async def opened_by(self, user_id: str) -> list[tuple[str, float]]:
        threads = self._opened.get(user_id)
        if not threads:
            return []
        live: list[tuple[str, float]] = []
        for thread_id in list(threads):
            binding = self._bindings.get(thread_id)
            if binding is None or binding.started_by != user_id:
                del threads[thread_id]  # ended or expired since
            else:
                live.append((thread_id, binding.last_activity))
        if not threads:
            self._opened.pop(user_id, None)
        live.sort(key=lambda item: item[1])  # stable: equal times keep the order of activity
        return live

    async def claim(self, post_id: str) -> bool:
        if post_id in self._claims:
            return False
        self._claims[post_id] = True
        return True

    async def count_start(self, user_id: str, at: float, window: float, limit: int) -> bool:
        starts = self._starts.get(user_id) or []
        newest = max(starts[-1] if starts else at, at)
        del starts[: bisect.bisect_right(starts, newest - window)]  # too old to matter for any post
        if sum(1 for t in starts if at - window < t <= at) >= limit:
            return False
        bisect.insort(starts, at)  # replayed posts arrive out of order: keep the times sorted
        self._starts[user_id] = starts
        return True

    async def first_notice(self, key: str, window: float) -> bool:
        seen = self._notices.get(window)
        if seen is None:
            seen = self._notices[window] = TTLCache(maxsize=MAX_USERS, ttl=window, timer=self._timer)
        if key in seen:
            return False
        seen[key] = True
        return True
