"""The typing indicator a turn shows while the bot thinks, as a context manager."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from .ports import ChatAPI

TYPING_EVERY = 4.0  # Mattermost shows "typing" for about 5 s after each signal


@contextlib.asynccontextmanager
async def typing_shown(chat: ChatAPI, channel_id: str, thread_id: str) -> AsyncIterator[Callable[[], None]]:
    """Shows "typing..." in the thread until the yielded stop() is called or the block ends."""

    async def keep_typing() -> None:
        while True:
            await chat.send_typing(channel_id, thread_id)
            await asyncio.sleep(TYPING_EVERY)

    task = asyncio.create_task(keep_typing())

    def stop() -> None:
        task.cancel()

    try:
        yield stop
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
