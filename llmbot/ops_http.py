"""The operator's endpoints, on LLMBOT_HTTP_HOST:LLMBOT_HTTP_PORT (off when the port is unset):

    GET /healthz   200 "ok" while the websocket is connected and a shared store (Redis) answers;
                   503 and the reason, in one line, otherwise (and while the bot stops)
    GET /metrics   the bot's metrics in the Prometheus text format (metrics.py)

Served with aiohttp, the library the websocket already runs on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from aiohttp import web

from .errors import ConfigError
from .store import MemoryStore

if TYPE_CHECKING:
    from .app import Bot

log = logging.getLogger(__name__)

STORE_TIMEOUT = 2.0  # seconds a shared store gets to answer /healthz
PROBE = "llmbot-healthz"  # the thread id /healthz looks up in a store without ping()


async def serve(bot: Bot) -> OpsServer | None:
    """Start the endpoints when LLMBOT_HTTP_PORT is set; ConfigError when that port can't be had."""
    port = bot.settings.http_port
    if port is None:
        return None
    server = OpsServer(bot, bot.settings.http_host, port)
    await server.start()
    return server


async def problem(bot: Bot) -> str | None:
    """Why the bot is not healthy, in one line; None when it is."""
    if bot.stopping.is_set():
        return "stopping"
    down = getattr(bot.chat, "socket_down", None)  # MattermostChat's; a chat without one is taken as connected
    if isinstance(down, str):
        return f"websocket down: {down}"
    if not isinstance(bot.store, MemoryStore):  # shared (Redis): the bot takes no turn while it does not answer
        ping = getattr(bot.store, "ping", None)
        try:
            async with asyncio.timeout(STORE_TIMEOUT):
                await (ping() if ping is not None else bot.store.get(PROBE))
        except TimeoutError:
            return f"store not answering: no answer within {STORE_TIMEOUT:g}s"
        except Exception as exc:  # noqa: BLE001 - whatever the store raised is the reason to show
            return f"store not answering: {type(exc).__name__}: {exc}"
    return None


class OpsServer:
    """/healthz and /metrics of one bot. `port` 0 takes any free one: `self.port` says which."""

    def __init__(self, bot: Bot, host: str, port: int) -> None:
        self.bot = bot
        self.host = host
        self.port = port
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self._runner.cleanup()
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # "Address already in use"
            raise ConfigError([
                f"LLMBOT_HTTP_PORT={self.port}: cannot listen on {self.host}:{self.port} ({why}); "
                "choose a free port (LLMBOT_HTTP_HOST for another address)"
            ]) from exc
        self.port = self._runner.addresses[0][1]
        log.info("operator endpoints: http://%s:%d/healthz and /metrics", self.host, self.port)

    async def close(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        why = await problem(self.bot)
        if why is None:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=" ".join(why.split()) + "\n")  # one line, whatever the cause said

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.bot.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})
