"""One serial queue of jobs per thread, caps on concurrency, and the drain on shutdown.

Jobs of one thread run one after another in the order they came; jobs of different threads run
side by side, at most `max_concurrent` at once. The LLM gets a cap of its own (LimitedLLM), so a
burst of turns does not drown a local server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .context import ChatMessage
from .ports import LLMClient

if TYPE_CHECKING:
    from .leases import ThreadLeases

log = logging.getLogger(__name__)
J = TypeVar("J")


@dataclass(eq=False)
class _ThreadQueue(Generic[J]):
    """Jobs waiting for one thread; a single task drains it, so jobs never interleave."""

    pending: deque[tuple[J, bool]] = field(default_factory=deque)  # (job, coalesces)
    task: asyncio.Task[None] | None = None
    waiting: J | None = None  # taken from `pending`, waiting for a slot


class Scheduler(Generic[J]):
    """Runs `run(job)` for each submitted job, serially per thread."""

    def __init__(
        self, run: Callable[[J], Awaitable[None]], max_concurrent: int, leases: ThreadLeases | None = None
    ) -> None:
        self._run = run
        self.leases = leases  # with replicas: one at a time runs a thread's queue (leases.py)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._threads: dict[str, _ThreadQueue[J]] = {}
        self._stopping = False  # drain began: no queued job starts any more

    def __len__(self) -> int:
        """Threads with a job queued or running."""
        return len(self._threads)

    def stopping(self) -> bool:
        return self._stopping

    def submit(self, thread_id: str, job: J, *, coalesces: bool = False) -> None:
        """Queue `job` for its thread. A coalescing job right behind another coalescing one is
        dropped: the queued one reads the thread when it starts and so covers this one too."""
        queue = self._threads.get(thread_id)
        if queue is None:
            queue = self._threads[thread_id] = _ThreadQueue()
        if coalesces and queue.pending and queue.pending[-1][1]:
            return
        queue.pending.append((job, coalesces))
        if queue.task is None:
            queue.task = asyncio.create_task(self._drain_thread(thread_id, queue))

    async def _drain_thread(self, thread_id: str, queue: _ThreadQueue[J]) -> None:
        try:
            async with self.leases.holding(thread_id) if self.leases is not None else contextlib.nullcontext():
                await self._drain_held(thread_id, queue)
        finally:
            self._threads.pop(thread_id, None)

    async def _drain_held(self, thread_id: str, queue: _ThreadQueue[J]) -> None:
        while queue.pending and not self.stopping():
            job, _ = queue.pending.popleft()
            queue.waiting = job
            async with self._slots:
                if self.stopping():  # drain() began while this job waited for a slot
                    break  # drain reports it as unstarted
                queue.waiting = None
                try:
                    await self._run(job)
                except Exception:
                    log.exception("thread %s: a job failed", thread_id)

    async def idle(self) -> None:
        """Wait until no job is queued or running."""
        while self._threads:
            tasks = [q.task for q in list(self._threads.values()) if q.task]
            await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self, grace: float, unstarted: Callable[[J], Coroutine[Any, Any, None]], interrupt_grace: float) -> None:
        """Give running jobs `grace` seconds; then cancel them (each marks itself interrupted)
        and call `unstarted` for every queued job, all within `interrupt_grace` seconds."""
        self._stopping = True
        queues = list(self._threads.values())
        tasks = {q.task for q in queues if q.task}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        queued: list[J] = []
        for q in queues:
            queued.extend(([q.waiting] if q.waiting is not None else []) + [job for job, _ in q.pending])
            q.pending.clear()
        if not late and not queued:
            return
        log.warning("stopping: %d answer(s) cut short, %d queued turn(s) not answered", len(late), len(queued))
        for task in late:
            task.cancel()
        notices: set[asyncio.Task[None]] = {asyncio.create_task(unstarted(job)) for job in queued}
        await asyncio.wait(late | notices, timeout=interrupt_grace)


class LimitedLLM:
    """An LLM client that runs at most `max_concurrent` streams at once (LLMBOT_MAX_CONCURRENT_LLM)."""

    def __init__(self, llm: LLMClient, max_concurrent: int) -> None:
        self._llm = llm
        self._slots = asyncio.Semaphore(max_concurrent)

    async def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, *, near_limit: bool = False
    ) -> AsyncGenerator[str, None]:
        async with self._slots, contextlib.aclosing(self._llm.stream(messages, max_tokens, near_limit=near_limit)) as inner:
            async for delta in inner:
                yield delta

    async def close(self) -> None:
        await self._llm.close()
