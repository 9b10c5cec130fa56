"""Stopping background tasks within a bound: a shutdown never hangs on one."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

STOP_WAIT = 2.0  # seconds a cancelled task gets to finish


async def stop(task: asyncio.Task[None] | None, what: str, wait: float = STOP_WAIT) -> None:
    """Cancel `task` and wait for it, at most `wait` seconds. A task still running then swallowed
    its cancellation (redis-py's asyncio client can, in a narrow window: redis/redis-py#2028,
    #2551): it is left behind with a log line rather than holding the process up."""
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=wait)
    if not done:
        log.warning("%s did not stop within %.0fs of being asked; leaving it", what, wait)
