"""The store shared by replicas: the Store protocol on Redis (redis-py's asyncio client).

Same semantics as MemoryStore (the contract tests run against both), with these differences:
- Stored times are the `timer`'s, wall-clock by default (time.time), so that replicas agree on a
  binding's last activity; a binding past its TTL is gone for active/look/touch even before Redis
  expires its key. Redis's own expiry only collects garbage.
- Claims, first notices, the start counters and the leases expire on Redis's clock (SET NX EX/PX):
  an injected timer does not move them.
- Nothing is ever "displaced": Redis has no maxsize (every key expires; cap Redis's memory with its
  own maxmemory). `maxsize` is accepted for MemoryStore's call shape and unused.
- An expired conversation's "expired" cue (look/take_quiet) lasts a day from its end, not from when
  the expiry was noticed.
- sweep() reports each expired conversation once across all replicas: its entry in the deadlines
  set is taken by one atomic script.
- Redis unreachable or too slow (2 s): every method raises StoreUnavailable; no retries here (a
  client passed in instead of a URL keeps its own timeouts and retries).
- Replicas' clocks should agree (NTP): a binding's end is its last activity on one replica's clock
  plus its TTL, read on another's.
- Three scripts (touch, opened_by, adopt) reach keys they name themselves: one Redis (or a primary
  with replicas), not Redis Cluster.

Key layout, all under `llmbot:<bot user id>:` (several bots may share one Redis), all expiring:
  t:<thread>   string, JSON stack of bindings; PX = its last expiry + a day (the "expired" cue)
  q:<thread>   string "ended|<until>": the cue after an unbind; PX a day (QUIET_TTL)
  d            zset, score = a binding's expiry, member = thread + binding: what sweep() reports;
               PX = the latest expiry + a day
  o:<user>     zset, the threads the user opened, score = order of activity; PX = their longest life
  c:<post>     string, a claim; EX 3 h (CLAIM_TTL)
  n:<window>:<key>  string, a notice; PX = the window
  s:<user>     zset, conversation starts by time; PX = max(window, 1 h) after the last one
  l:<thread>   string, the lease's holder; PX = the lease
  h:<replica>  string, the replica's heartbeat; PX = what it said (deleted when it stops)
  u:<replica>  hash, post id -> frame of the turns it took on and has not finished; PX 3 h, renewed
  r            set, the replicas with tracked turns; PX 3 h, renewed
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import redis_codec as codec
from . import redis_scripts as lua
from .base import Binding
from .memory import CLAIM_TTL, QUIET_TTL

SOCKET_TIMEOUT = 2.0  # seconds: a Redis slower than that counts as unavailable
STARTS_TTL = 3600.0  # as MemoryStore's start counters: a user's starts are kept an hour at least
SWEEP_BATCH = 1000

class RedisStore:
    """Bindings, claims, counters and leases of one bot account in a shared Redis."""

    def __init__(
        self, url_or_client: str | Redis, bot_user_id: str, ttl: float, maxsize: int | None = None,
        timer: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(url_or_client, str):
            # no retries: a failed call is the caller's to handle (StoreUnavailable), at once
            self._redis = Redis.from_url(
                url_or_client, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0), decode_responses=True,
            )
            self._owned = True
        else:
            self._redis = url_or_client
            self._owned = False
        self._counted = 0  # live conversations at the last sweep (len())
        self._ttl = ttl
        self._timer = timer
        self._prefix = f"llmbot:{bot_user_id}:"
        self._deadlines = self._prefix + "d"
        self._replicas = self._prefix + "r"
        script = self._redis.register_script
        self._bind, self._touch, self._unbind = script(lua.BIND), script(lua.TOUCH), script(lua.UNBIND)
        self._take_quiet, self._opened_by, self._sweep = script(lua.TAKE_QUIET), script(lua.OPENED_BY), script(lua.SWEEP)
        self._count_start = script(lua.COUNT_START)
        self._acquire, self._renew, self._release = script(lua.ACQUIRE), script(lua.RENEW), script(lua.RELEASE)
        self._adopt = script(lua.ADOPT)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    @codec.guarded
    async def ping(self) -> None:
        """Raises StoreUnavailable unless Redis answers (health checks)."""
        await self._redis.ping()

    @codec.guarded
    async def live_count(self) -> int:
        """How many conversations are live across all threads and replicas (for a gauge)."""
        self._counted = int(await self._redis.zcount(self._deadlines, f"({self._timer()!r}", "+inf"))
        return self._counted

    def __len__(self) -> int:
        """The live conversations as last counted (every sweep, so at most 30 s old): what the
        llmbot_active_conversations gauge reads, with no round trip at scrape time."""
        return self._counted

    async def close(self) -> None:
        """Close the connections, if this store opened them."""
        if self._owned:
            await self._redis.aclose()

    # ------------------------------------------------------------------------------ bindings
    def _live(self, raw: Any, now: float) -> list[Binding]:
        return [b for b in codec.decode(raw) if self._expiry(b) > now]

    def _expiry(self, binding: Binding) -> float:
        return binding.last_activity + (self._ttl if binding.ttl is None else binding.ttl)

    @codec.guarded
    async def get(self, thread_id: str) -> Binding | None:
        live = await self.active(thread_id)
        return live[0] if live else None

    @codec.guarded
    async def active(self, thread_id: str) -> list[Binding]:
        return self._live(await self._redis.get(self._key("t", thread_id)), self._timer())

    @codec.guarded
    async def look(self, thread_id: str) -> tuple[list[Binding], str | None]:
        raw, mark = await self._redis.mget(self._key("t", thread_id), self._key("q", thread_id))  # one round trip
        now = self._timer()
        stack = codec.decode(raw)
        live = [b for b in stack if self._expiry(b) > now]
        if live:
            return live, None
        if stack:  # all expired: the "expired" cue, for a day from the last end
            return [], "expired" if max(map(self._expiry, stack)) + QUIET_TTL > now else None
        if mark is None:
            return [], None
        reason, _, until = codec.text(mark).partition("|")
        return [], reason if float(until) > now else None

    @codec.guarded
    async def bind(
        self, thread_id: str, handler: str, started_by: str, conversation: str, idle: float = 0.0, ttl: float | None = None,
        awaiting: str = "",
    ) -> Binding:
        now = self._timer()
        binding = Binding(handler, started_by, conversation, now - idle, ttl, awaiting)
        await self._bind(
            keys=[self._key("t", thread_id), self._deadlines, self._key("o", started_by), self._key("q", thread_id)],
            args=[repr(now), repr(float(self._ttl)), thread_id, json.dumps(codec.encode(binding)), self._prefix + "t:"],
        )
        return binding

    @codec.guarded
    async def touch(self, thread_id: str, handler: str | None = None) -> Binding | None:
        now = self._timer()
        raw = await self._touch(
            keys=[self._key("t", thread_id), self._deadlines],
            args=[repr(now), repr(float(self._ttl)), thread_id, "1" if handler is None else "0", handler or "",
                  self._prefix + "o:"],
        )
        return codec.binding(json.loads(raw)) if raw else None

    @codec.guarded
    async def unbind(self, thread_id: str, handler: str | None = None) -> bool:
        now = self._timer()
        ended = await self._unbind(
            keys=[self._key("t", thread_id), self._deadlines, self._key("q", thread_id)],
            args=[repr(now), repr(float(self._ttl)), thread_id, "1" if handler is None else "0", handler or "",
                  f"ended|{now + QUIET_TTL!r}"],
        )
        return bool(ended)

    @codec.guarded
    async def take_quiet(self, thread_id: str) -> str | None:
        reason = await self._take_quiet(
            keys=[self._key("t", thread_id), self._key("q", thread_id)], args=[repr(self._timer()), repr(float(self._ttl))],
        )
        return codec.text(reason) if reason else None

    @codec.guarded
    async def opened_by(self, user_id: str) -> list[tuple[str, float]]:
        flat = await self._opened_by(
            keys=[self._key("o", user_id)], args=[repr(self._timer()), repr(float(self._ttl)), user_id, self._prefix + "t:"],
        )
        live = [(codec.text(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        live.sort(key=lambda item: item[1])  # stable: equal times keep the order of activity
        return live

    @codec.guarded
    async def sweep(self) -> list[tuple[str, Binding, str]]:
        """The conversations expired since any replica's last sweep, each reported by one replica.
        Never "displaced": Redis has no maxsize."""
        now = repr(self._timer())
        reports: list[tuple[str, Binding, str]] = []
        while True:
            due = await self._sweep(keys=[self._deadlines], args=[now, SWEEP_BATCH])
            for member in due:
                thread_id, *fields = json.loads(member)
                reports.append((thread_id, codec.binding(fields), "expired"))
            if len(due) < SWEEP_BATCH:
                await self.live_count()  # (for the gauge: one count per sweep)
                return reports

    # ------------------------------------------------------------------ claims, counters, notices
    @codec.guarded
    async def claim(self, post_id: str) -> bool:
        return bool(await self._redis.set(self._key("c", post_id), 1, nx=True, ex=int(CLAIM_TTL)))

    @codec.guarded
    async def count_start(self, user_id: str, at: float, window: float, limit: int) -> bool:
        keep = codec.ms(max(window, STARTS_TTL))
        recorded = await self._count_start(
            keys=[self._key("s", user_id)],
            args=[repr(float(at)), repr(float(window)), limit, f"({float(at) - window!r}", os.urandom(8).hex(), keep],
        )
        return bool(recorded)

    @codec.guarded
    async def first_notice(self, key: str, window: float) -> bool:
        return bool(await self._redis.set(self._key("n", f"{float(window)!r}:{key}"), 1, nx=True, px=codec.ms(window)))

    # ----------------------------------------------------------------------- replicas' turns
    @codec.guarded
    async def heartbeat(self, replica: str, seconds: float) -> None:
        key = self._key("h", replica)
        await (self._redis.set(key, 1, px=codec.ms(seconds)) if seconds > 0 else self._redis.delete(key))

    @codec.guarded
    async def replicas_alive(self) -> int:
        """The heartbeat keys alive now (a few: one per replica), found with SCAN."""
        return sum([1 async for _ in self._redis.scan_iter(match=self._key("h", "*"), count=100)]) or 1

    @codec.guarded
    async def track(self, replica: str, post_id: str, frame: str) -> None:
        turns, keep = self._key("u", replica), codec.ms(CLAIM_TTL)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(turns, post_id, frame)
            pipe.pexpire(turns, keep)
            pipe.sadd(self._replicas, replica)
            pipe.pexpire(self._replicas, keep)
            await pipe.execute()

    @codec.guarded
    async def untrack(self, replica: str, post_id: str) -> None:
        await self._redis.hdel(self._key("u", replica), post_id)

    @codec.guarded
    async def adopt(self, replica: str) -> list[str]:
        keys, keep = [self._replicas, self._key("u", replica)], codec.ms(CLAIM_TTL)
        frames = await self._adopt(keys=keys, args=[replica, self._prefix, keep])
        return [codec.text(frame) for frame in frames]

    # -------------------------------------------------------------------------------- the lease
    @codec.guarded
    async def acquire(self, thread_id: str, holder: str, seconds: float) -> bool:
        return bool(await self._acquire(keys=[self._key("l", thread_id)], args=[holder, codec.ms(seconds)]))

    @codec.guarded
    async def renew(self, thread_id: str, holder: str, seconds: float) -> bool:
        return bool(await self._renew(keys=[self._key("l", thread_id)], args=[holder, codec.ms(seconds)]))

    @codec.guarded
    async def release(self, thread_id: str, holder: str) -> None:
        await self._release(keys=[self._key("l", thread_id)], args=[holder])

