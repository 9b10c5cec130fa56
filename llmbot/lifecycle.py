"""Serving and stopping: signals, the drain that lets answers finish or marks them interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Bot

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 7.0  # seconds in-flight answers get to finish on SIGTERM...
INTERRUPT_GRACE = 2.5  # ...and then to mark themselves interrupted: 10 s in all, what systemd waits


async def run(bot: Bot) -> None:
    """Log in, serve until stopped, drain; always close both clients."""
    try:
        await bot.start()
        await _serve(bot)
    finally:
        await bot.close()
        log.info("stopped")


async def _serve(bot: Bot) -> None:
    loop = asyncio.get_running_loop()
    if sys.platform != "win32":  # asyncio has no signal handlers there; Ctrl-C still stops the bot
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(RuntimeError):  # not the main thread (embedded use): no handlers
                loop.add_signal_handler(sig, bot.stopping.set)
    listener = asyncio.create_task(bot.chat.listen(bot.on_frame))
    stopper = asyncio.create_task(bot.stopping.wait())
    await asyncio.wait({listener, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(listener, return_exceptions=True)
    await drain(bot)
    if listener.done() and not listener.cancelled():
        error = listener.exception()
        if error is not None:
            raise error  # a refused token: the process must fail


async def drain(bot: Bot) -> None:
    """Stop taking turns; give running answers `bot.shutdown_grace` seconds, then cut them short
    with a word in their posts (and a notice on queued ones). Bounded: ~10 s."""
    if bot.dispatcher is not None:
        bot.dispatcher.accepting = False
    if bot.catch_up is not None:
        bot.catch_up.cancel()
    runner = bot.runner
    log.info("stopping: no new turns; waiting up to %.0fs for %d thread(s)", bot.shutdown_grace, len(bot.scheduler))
    if runner is None:
        return
    await bot.scheduler.drain(bot.shutdown_grace, bot.unstarted, INTERRUPT_GRACE)
