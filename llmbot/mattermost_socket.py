"""Mattermost's event websocket on plain aiohttp: one connection at a time, supervised by `run`.

Written here rather than taken from the driver's Websocket class: its loop reconnects forever,
even with a revoked token, and supervising it meant overriding its private methods.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .network import Proxy, tls_problem

log = logging.getLogger(__name__)

HEARTBEAT = 30.0  # seconds between websocket pings; a dead peer is noticed within 1.5x this
STABLE_AFTER = 60.0  # a connection that lived this long resets the reconnect backoff
# Close codes of a server that meant to close: normal closure, going away (a restart), service restart.
NORMAL_CLOSE = {1000: "normal closure", 1001: "going away", 1012: "service restart"}

FrameHandler = Callable[[str], Awaitable[None]]


def reconnect_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with jitter: half fixed, half random, so replicas don't reconnect in step."""
    ceiling = min(cap, base * 2.0**attempt)
    return ceiling / 2 + rng() * ceiling / 2


def _accepted(raw: str) -> bool:
    """The server's answer to our challenge: the `hello` event or the OK reply to seq 1."""
    try:
        frame = json.loads(raw)
    except ValueError:
        return False
    if not isinstance(frame, dict):
        return False
    return frame.get("event") == "hello" or (frame.get("seq_reply") == 1 and frame.get("status") == "OK")


class EventSocket:
    """The bot's event socket: `run` reads frames and reconnects; `send` sends client actions."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        reconnect_base: float = 1.0,
        reconnect_cap: float = 60.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self._url, self._token = url, token
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._proxy = proxy
        self._backoff = (reconnect_base, reconnect_cap, rng)
        self._clock = clock
        self._live: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._seq = itertools.count(2)  # seq 1 is the authentication challenge
        self._stop = asyncio.Event()  # set by close(): never reconnect again
        self.authenticated = False  # the current connection was accepted
        self.reconnects = 0  # connections lost (or not made) and tried again: llmbot_websocket_reconnects_total
        self._why = "not connected yet"  # why the socket is down, while it is

    @property
    def down(self) -> str | None:
        """None while a connection is up and accepted; else why not, in a few words (/healthz)."""
        return None if self._live is not None and self.authenticated else self._why

    async def run(self, on_frame: FrameHandler, check_token: Callable[[], Awaitable[None]]) -> None:
        """Connect, hand every text frame to `on_frame`, reconnect with jittered backoff, until
        cancelled or closed. A connection that ends before it was accepted asks `check_token`,
        which raises to end this loop (a refused token) or returns to go on.

        One line per reconnect, with its cause: INFO when the server closed the socket on purpose
        (a restart), WARNING when it failed; never a traceback for the network's failures."""
        base, cap, rng = self._backoff
        attempt = 0
        while not self._stop.is_set():
            opened = self._clock()
            reached = True  # a connection was made: the token may be what the server refused
            try:
                why, level = await self._connect_once(on_frame)
            except aiohttp.ClientConnectorError as exc:  # the server was not reached (refused, DNS, TLS)
                reached = False
                why, level = f"cannot connect to Mattermost ({_cause(exc)})", logging.WARNING
            except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
                why, level = f"lost ({_cause(exc)})", logging.WARNING
            if self._stop.is_set():
                return
            if not self.authenticated and reached:
                await check_token()
            elif self._clock() - opened >= STABLE_AFTER:
                attempt = 0
            delay = reconnect_delay(attempt, base, cap, rng)
            attempt += 1
            self.reconnects += 1
            self._why = f"{why}; reconnecting"
            log.log(level, "websocket %s; reconnecting in %.1fs", why, delay)
            await asyncio.sleep(delay)

    async def _connect_once(self, on_frame: FrameHandler) -> tuple[str, int]:
        """One connection, from the challenge to its end; returns why it ended, and the log level that deserves."""
        self.authenticated = False
        proxy = self._proxy
        # heartbeat: aiohttp pings and closes a connection whose peer stopped answering,
        # so a half-open TCP connection cannot silence the bot.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl)) as session, session.ws_connect(
            self._url, heartbeat=HEARTBEAT, proxy=proxy.url if proxy else None, proxy_headers=proxy.headers if proxy else None
        ) as ws:
            self._live = ws
            try:
                if self._stop.is_set():  # close() came while we were connecting
                    return "closed by us", logging.INFO
                challenge = {"seq": 1, "action": "authentication_challenge", "data": {"token": self._token}}
                await ws.send_str(json.dumps(challenge))
                async for msg in ws:  # ends on the server's close frame
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        if not self.authenticated:
                            self.authenticated = _accepted(msg.data)
                        await _deliver(on_frame, msg.data)
                    elif msg.type is aiohttp.WSMsgType.ERROR:  # e.g. no pong within the heartbeat
                        exc = ws.exception()
                        return (f"lost ({_cause(exc)})" if exc else "lost"), logging.WARNING
            finally:
                self._live = None
            code = ws.close_code
            if code in NORMAL_CLOSE:
                return f"closed by the server (code {code}, {NORMAL_CLOSE[code]})", logging.INFO
            return f"closed (code {code})", logging.WARNING

    async def send(self, action: str, data: dict[str, Any]) -> None:
        """One client action on the open socket; dropped (debug log) when the socket is down."""
        ws = self._live
        if ws is None or ws.closed:
            return
        frame = json.dumps({"action": action, "seq": next(self._seq), "data": data})
        try:
            async with self._send_lock:
                await ws.send_str(frame)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:  # closing under our feet
            log.debug("websocket action %s not sent: %s", action, exc)

    async def close(self) -> None:
        """End `run` for good: close the live connection and never reconnect."""
        self._stop.set()
        self._why = "closed"
        ws = self._live
        if ws is not None and not ws.closed:
            await ws.close()


def _cause(exc: BaseException) -> str:
    """A connection failure in a few words: a TLS problem says so and how to fix it."""
    problem = tls_problem(exc)
    if problem is not None:
        return problem
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _deliver(on_frame: FrameHandler, raw: str) -> None:
    """The one guard around the frame callback: a failing frame is logged and skipped, never
    allowed to drop the connection."""
    try:
        await on_frame(raw)
    except Exception:  # logged with its traceback; the next frame goes on
        log.exception("websocket frame handler failed; frame skipped")
