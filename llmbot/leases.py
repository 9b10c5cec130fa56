"""One replica at a time runs a thread's turns: a lease per thread in the shared store.

The replica that runs a thread's queue holds the thread's lease and renews it while it works (every
third of the lease); a replica that dies stops renewing, so its lease expires after
LLMBOT_REDIS_LEASE seconds and another replica may take the thread. Without Redis the store's
lease is always the instance's own, and this costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from . import tasks
from .errors import StoreUnavailable
from .store.base import Store

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between tries while another replica holds the thread


def replica_id() -> str:
    """This process among the replicas (in leases and claims)."""
    return uuid.uuid4().hex[:12]


class ThreadLeases:
    def __init__(
        self, store: Store, holder: str, seconds: float, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        self.store = store
        self.holder = holder
        self.seconds = seconds
        self._sleep = sleep

    @contextlib.asynccontextmanager
    async def holding(self, thread_id: str) -> AsyncIterator[None]:
        """Wait until this replica holds the thread, keep it while the block runs, then give it up."""
        waited = False
        while not await self._acquire(thread_id):
            if not waited:
                log.debug("thread %s: another replica is answering there; waiting for it", thread_id)
                waited = True
            await self._sleep(POLL)
        renewer = asyncio.create_task(self._renew(thread_id))
        try:
            yield
        finally:
            await tasks.stop(renewer, f"thread {thread_id}: the lease's renewal")
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(thread_id, self.holder)

    async def _acquire(self, thread_id: str) -> bool:
        try:
            return await self.store.acquire(thread_id, self.holder, self.seconds)
        except StoreUnavailable:
            return False  # the store is down: nobody may run the thread (no double answers)

    async def _renew(self, thread_id: str) -> None:
        while True:
            await self._sleep(self.seconds / 3)
            try:
                kept = await self.store.renew(thread_id, self.holder, self.seconds)
            except StoreUnavailable:
                kept = False
            if not kept:
                log.warning("thread %s: this replica lost the thread's lease (Redis unreachable, or this process "
                            "stalled for over LLMBOT_REDIS_LEASE); another replica may take the thread over", thread_id)
                return
