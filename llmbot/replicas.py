"""Several replicas of one bot account on one Redis: who is alive, and who finishes a dead one's turns.

Every replica receives every event; the store's claim gives each post to one of them, and the
thread's lease (leases.py) lets one at a time run a thread's turns. What a replica has taken on
and not finished is tracked in the store with the post's frame. A replica beats every third of
LLMBOT_REDIS_LEASE; one that stops (SIGKILL, a frozen machine) is found by the others within a
lease, and one of them adopts its unfinished turns: they run again there as take-overs, which
mark the dead replica's partial answer and answer in full (takeover.py). A replica stopped with
SIGTERM finishes what it can, then leaves its unstarted turns to the others the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from . import tasks
from .errors import StoreUnavailable
from .events import Posted, parse_frame
from .settings import Settings
from .store.base import Store

log = logging.getLogger(__name__)

STORE_PROBE = 1.0  # seconds between tries of a store that does not answer


class Replicas:
    def __init__(
        self,
        store: Store,
        replica: str,
        lease: float,
        take_over: Callable[[Posted], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        counted: Callable[[int], None] = lambda _replicas: None,
    ) -> None:
        self.store = store
        self.replica = replica
        self.lease = lease
        self._take_over = take_over
        self._counted = counted  # how many replicas are alive (they share the Mattermost rate budget)
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._down = False  # the store did not answer the last beat (said once in the log)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._beat_forever())

    async def close(self) -> None:
        """Stop beating, and say so at once: the others adopt what this replica leaves unfinished."""
        await tasks.stop(self._task, f"replica {self.replica}'s beat")
        self._task = None
        with contextlib.suppress(StoreUnavailable):
            await self.store.heartbeat(self.replica, 0.0)

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:
                log.exception("replica %s: a beat failed", self.replica)
            await self._sleep(self.lease / 3)

    async def beat(self) -> int:
        """Say this replica is alive; adopt the unfinished turns of replicas that are not. How many."""
        try:
            await self.store.heartbeat(self.replica, self.lease)
            self._counted(await self.store.replicas_alive())
            frames = await self.store.adopt(self.replica)
        except StoreUnavailable as exc:
            if not self._down:
                log.error("replica %s: Redis does not answer (%s): no new turns until it does", self.replica, exc)
                self._down = True
            return 0
        if self._down:
            log.info("replica %s: Redis answers again", self.replica)
            self._down = False
        adopted = 0
        for frame in frames:
            event = parse_frame(frame)
            if isinstance(event, Posted):
                log.info("%s: a replica stopped before finishing it; replica %s takes it over", event, self.replica)
                await self._take_over(event)
                adopted += 1
        return adopted

    async def claim(self, event: Posted) -> bool:
        """The post for this replica, once among all of them, and tracked in the same breath: a stop
        between the two (SIGTERM cancels the dispatcher) would leave a post claimed and never answered."""
        return await asyncio.shield(self._claim_and_track(event))

    async def _claim_and_track(self, event: Posted) -> bool:
        from .events import frame_of  # (the hot path of ignored posts never gets here)

        if not await self.store.claim(event.post.id):
            return False
        await self.store.track(self.replica, event.post.id, frame_of(event))
        return True

    async def untrack(self, post_id: str) -> None:
        try:
            await self.store.untrack(self.replica, post_id)
        except StoreUnavailable:
            log.warning("replica %s: could not mark post %s finished (Redis does not answer); another replica "
                        "may take it over after this one stops", self.replica, post_id)


class StoreOutage:
    """Redis does not answer: take no turn (another replica might take the same one), keep the
    websocket, and once it answers again, read what was written meanwhile over REST (a catch-up
    from the first post it could not take)."""

    def __init__(self, store: Store, catch_up_from: Callable[[int], None], probe: float = STORE_PROBE) -> None:
        self.store = store
        self._catch_up_from = catch_up_from
        self._probe = probe
        self.since_ms: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def down(self) -> bool:
        return self.since_ms is not None

    def noticed(self, exc: StoreUnavailable, since_ms: int) -> None:
        if self.since_ms is not None:
            self.since_ms = min(self.since_ms, since_ms)
            return
        log.error("Redis does not answer (%s): no new turns until it does; what is written meanwhile is answered then", exc)
        self.since_ms = since_ms
        self._task = asyncio.create_task(self._until_it_answers())

    async def _until_it_answers(self) -> None:
        while True:
            await asyncio.sleep(self._probe)
            try:
                await self.store.look("")
            except StoreUnavailable:
                continue
            since, self.since_ms = self.since_ms or 0, None
            log.info("Redis answers again: catching up on what was written since it stopped answering")
            self._catch_up_from(since)
            return


async def replica_store(settings: Settings, bot_user_id: str) -> Store:
    """The store the replicas of one bot account share (LLMBOT_REDIS_URL), its keys under the
    account's id (several bots may share one Redis)."""
    from .store.redis import RedisStore  # (only replicas import redis)

    assert settings.redis_url is not None
    return RedisStore(settings.redis_url, bot_user_id, settings.conversation_ttl)
