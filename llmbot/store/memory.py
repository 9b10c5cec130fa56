"""The in-memory store of a single instance: TTL caches with an injected timer, all bounded."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from typing import Any

from cachetools import Cache, TLRUCache, TTLCache

from .base import Binding

MAX_DROPPED = 100_000  # conversations the caches dropped, waiting for the next sweep to report them
QUIET_TTL = 24 * 3600.0  # a thread whose conversation is over gets its cue within a day, not after
CLAIM_TTL = 3 * 3600.0  # a post is not replayed to the bot after hours: forget its claim then
MAX_CLAIMS = 100_000
MAX_USERS = 100_000


Dropped = list[tuple[str, Binding, str]]  # (thread id, binding, "expired" | "displaced")


class _Bindings(TLRUCache[str, Binding | tuple[Binding, ...]]):
    """The bindings cache, remembering what it drops by itself (expiry, overflow) for sweep()."""

    def __init__(self, dropped: Dropped, quiet: Quiet, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dropped = dropped
        self.quiet = quiet

    def _record(self, key: str, value: Binding | tuple[Binding, ...], reason: str) -> None:
        if len(self.dropped) < MAX_DROPPED:
            self.dropped.extend((key, binding, reason) for binding in _all(value))

    def expire(self, time: float | None = None) -> list[tuple[str, Binding | tuple[Binding, ...]]]:
        gone = list(super().expire(time))
        for key, value in gone:
            self._record(key, value, "expired")
            self.quiet.mark(key, "expired")
        return gone

    def popitem(self) -> tuple[str, Binding | tuple[Binding, ...]]:
        key, value = super().popitem()  # the least recently used: the store is full
        self._record(key, value, "displaced")
        return key, value


class Quiet:
    """Threads whose last conversation is over, and why, for QUIET_TTL: a plain dict (read on
    every ignored reply, so the cheapest look-up there is), oldest first, trimmed as it grows."""

    def __init__(self, maxsize: int, timer: Callable[[], float]) -> None:
        self._marks: dict[str, tuple[str, float]] = {}  # thread id -> (reason, until)
        self._maxsize = maxsize
        self._timer = timer

    def mark(self, thread_id: str, reason: str) -> None:
        marks = self._marks
        marks.pop(thread_id, None)  # re-inserted: the newest last
        marks[thread_id] = (reason, self._timer() + QUIET_TTL)
        if len(marks) > self._maxsize:
            del marks[next(iter(marks))]

    def peek(self, thread_id: str) -> str | None:
        mark = self._marks.get(thread_id)
        if mark is None:
            return None
        if mark[1] <= self._timer():
            del self._marks[thread_id]
            return None
        return mark[0]

    def take(self, thread_id: str) -> str | None:
        reason = self.peek(thread_id)
        self._marks.pop(thread_id, None)
        return reason

    def forget(self, thread_id: str) -> None:
        self._marks.pop(thread_id, None)


class MemoryStore:
    """Each binding expires `ttl` after its own last activity, so one rebuilt from a thread after
    a restart (already idle for a while) ends when it would have ended without the restart.
    The per-user index of opened conversations expires with them."""

    def __init__(self, ttl: float, maxsize: int = 200_000, timer: Callable[[], float] = time.monotonic) -> None:
        self._timer = timer
        self._ttl = ttl
        # thread id -> its conversation, or (rarely) several stacked ones, newest first; the entry
        # lives as long as the longest-lived of them
        self._dropped: Dropped = []
        self._quiet = Quiet(maxsize, timer)
        self._bindings = _Bindings(
            self._dropped, self._quiet, maxsize=maxsize, ttu=lambda _key, value, _now: max(self._expiry(b) for b in _all(value)),
            timer=timer,
        )
        self._stacked: set[str] = set()  # threads with several conversations: one may expire alone
        # user id -> thread ids they opened, least recently active first. A plain dict of short lists
        # (a TTLCache costs 3x the bytes): ended threads leave it when read, expired ones in a sweep
        # once it has grown by as many entries as it held, so it stays within twice the live ones.
        self._opened: dict[str, list[str]] = {}
        self._opened_entries = 0
        self._sweep_at = 1024
        self._claims: TTLCache[str, bool] = TTLCache(maxsize=MAX_CLAIMS, ttl=CLAIM_TTL, timer=timer)
        self._starts: TTLCache[str, list[float]] = TTLCache(maxsize=MAX_USERS, ttl=3600.0, timer=timer)
        self._notices: dict[float, TTLCache[str, bool]] = {}

    def __len__(self) -> int:
        return len(self._bindings)

    def _expiry(self, binding: Binding) -> float:
        return binding.last_activity + (self._ttl if binding.ttl is None else binding.ttl)

    def _live(self, thread_id: str) -> list[Binding]:
        value = self._bindings.get(thread_id)
        if value is None:
            if Cache.__contains__(self._bindings, thread_id):  # there, but expired: noticed now
                self._bindings.expire()
            return []
        now = self._timer()
        return [b for b in _all(value) if self._expiry(b) > now]

    def _set(self, thread_id: str, bindings: list[Binding]) -> None:
        old = self._bindings.get(thread_id)
        if isinstance(old, tuple):  # one of the stack expired on its own: the sweep reports it
            now = self._timer()
            self._dropped.extend((thread_id, b, "expired") for b in old if self._expiry(b) <= now and b not in bindings)
        if not bindings:
            self._bindings.pop(thread_id, None)
        else:
            self._bindings[thread_id] = bindings[0] if len(bindings) == 1 else tuple(bindings)
        if len(bindings) > 1:
            self._stacked.add(thread_id)
        else:
            self._stacked.discard(thread_id)

    async def sweep(self) -> list[tuple[str, Binding, str]]:
        for thread_id in list(self._stacked):
            live = self._live(thread_id)
            value = self._bindings.get(thread_id)
            if value is None or len(live) < len(_all(value)):
                self._set(thread_id, live)
        self._bindings.expire()
        dropped = self._dropped[:]
        self._dropped.clear()
        return dropped

    async def get(self, thread_id: str) -> Binding | None:
        live = self._live(thread_id)
        return live[0] if live else None

    async def active(self, thread_id: str) -> list[Binding]:
        return self._live(thread_id)

    async def bind(
        self, thread_id: str, handler: str, started_by: str, conversation: str, idle: float = 0.0, ttl: float | None = None,
        awaiting: str = "",
    ) -> Binding:
        binding = Binding(handler, started_by, conversation, self._timer() - idle, ttl, awaiting)
        self._quiet.forget(thread_id)
        others = [b for b in self._live(thread_id) if b.handler != handler]
        self._set(thread_id, [binding, *others])  # newest first: it is tried first
        threads = self._opened.setdefault(started_by, [])
        if thread_id in threads:
            threads.remove(thread_id)
        else:
            self._opened_entries += 1
        threads.append(thread_id)
        if self._opened_entries >= self._sweep_at:
            self._sweep()
        return binding

    def _sweep(self) -> None:
        """Drop index entries whose conversation ended or expired."""
        for user in list(self._opened):
            threads = [t for t in self._opened[user] if any(b.started_by == user for b in self._live(t))]
            if threads:
                self._opened[user] = threads
            else:
                del self._opened[user]
        self._opened_entries = sum(len(t) for t in self._opened.values())
        self._sweep_at = max(1024, 2 * self._opened_entries)

    async def touch(self, thread_id: str, handler: str | None = None) -> Binding | None:
        live = self._live(thread_id)
        old = next((b for b in live if handler is None or b.handler == handler), None)
        if old is None:
            return None
        new = Binding(old.handler, old.started_by, old.conversation, self._timer(), old.ttl)
        self._set(thread_id, [new, *(b for b in live if b is not old)])  # the most recently active first
        threads = self._opened.get(old.started_by)
        if threads is not None and thread_id in threads:
            threads.remove(thread_id)  # (a few items: at most the user's open conversations)
            threads.append(thread_id)  # most recent last: the order equal times keep
        return new

    async def unbind(self, thread_id: str, handler: str | None = None) -> bool:
        live = self._live(thread_id)
        rest = [] if handler is None else [b for b in live if b.handler != handler]
        self._set(thread_id, rest)
        if live and not rest:
            self._quiet.mark(thread_id, "ended")
        return len(rest) < len(live)

    async def look(self, thread_id: str) -> tuple[list[Binding], str | None]:
        live = self._live(thread_id)
        return live, None if live else self._quiet.peek(thread_id)

    async def take_quiet(self, thread_id: str) -> str | None:
        self._live(thread_id)  # an expiry not noticed yet counts
        return self._quiet.take(thread_id)

    async def opened_by(self, user_id: str) -> list[tuple[str, float]]:
        threads = self._opened.get(user_id)
        if not threads:
            return []
        live: list[tuple[str, float]] = []
        for thread_id in threads:
            binding = next((b for b in self._live(thread_id) if b.started_by == user_id), None)
            if binding is not None:
                live.append((thread_id, binding.last_activity))
        self._opened_entries -= len(threads) - len(live)  # ended or expired since: forgotten
        if live:
            self._opened[user_id] = [t for t, _ in live]
        else:
            del self._opened[user_id]
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

    # One instance runs every turn itself (the scheduler keeps a thread's turns in order): the
    # lease is always its own.
    async def acquire(self, thread_id: str, holder: str, seconds: float) -> bool:
        return True

    async def renew(self, thread_id: str, holder: str, seconds: float) -> bool:
        return True

    async def release(self, thread_id: str, holder: str) -> None:
        return None

    # A single instance has nobody to hand its turns to: after a crash, the catch-up takes them.
    async def heartbeat(self, replica: str, seconds: float) -> None:
        return None

    async def replicas_alive(self) -> int:
        return 1

    async def track(self, replica: str, post_id: str, frame: str) -> None:
        return None

    async def untrack(self, replica: str, post_id: str) -> None:
        return None

    async def adopt(self, replica: str) -> list[str]:
        return []

    async def first_notice(self, key: str, window: float) -> bool:
        seen = self._notices.get(window)
        if seen is None:
            seen = self._notices[window] = TTLCache(maxsize=MAX_USERS, ttl=window, timer=self._timer)
        if key in seen:
            return False
        seen[key] = True
        return True


def _all(value: Binding | tuple[Binding, ...]) -> tuple[Binding, ...]:
    return value if isinstance(value, tuple) else (value,)
