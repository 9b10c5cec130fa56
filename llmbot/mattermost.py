"""Mattermost adapter over mattermostautodriver: the only module that imports the driver.

Every driver and transport exception is translated into errors.ChatError types here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from cachetools import LRUCache
from httpx_aiohttp import AiohttpTransport
from mattermostautodriver import AsyncTypedDriver, Websocket
from mattermostautodriver import exceptions as mm

from .settings import Settings
from .errors import (
    ChatAuthError,
    ChatBadRequest,
    ChatError,
    ChatForbidden,
    ChatNotFound,
    ChatRateLimited,
    ChatUnavailable,
)
from .router import Identity
from .thread import Post, Thread, post_from_json, posts_from_post_list, thread_from_posts
from .triggers import mention_pattern

log = logging.getLogger(__name__)

THREAD_PAGE = 200  # the server's maximum perPage
MAX_THREAD_PAGES = 100  # 20,000 posts: far past any context budget; stops a runaway loop
SINCE_LIMIT = 1000  # the server returns at most this many posts for ?since=
HEARTBEAT = 30.0  # seconds between websocket pings; a dead peer is noticed within 1.5x this
STABLE_AFTER = 60.0  # a connection that lived this long resets the reconnect backoff


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel the bot is a member of, as the catch-up needs it."""

    id: str
    type: str
    name: str
    display_name: str
    team_id: str
    last_post_at: int


def reconnect_delay(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """Exponential backoff with jitter: half fixed, half random, so replicas don't reconnect in step."""
    ceiling = min(cap, base * 2**attempt)
    return ceiling / 2 + rng() * ceiling / 2


def translate(exc: BaseException) -> ChatError:
    """One place that maps driver and httpx failures to our error types."""
    if isinstance(exc, ChatError):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, mm.NoAccessTokenProvided):
        return ChatAuthError(f"Mattermost rejected the token: {message}")
    if isinstance(exc, mm.NotEnoughPermissions):
        return ChatForbidden(message)
    if isinstance(exc, mm.ResourceNotFound):
        return ChatNotFound(message)
    if isinstance(exc, mm.TooManyRequests):
        return ChatRateLimited(message, getattr(exc, "retry_after", None))
    if isinstance(exc, (mm.InvalidOrMissingParameters, mm.ContentTooLarge)):
        return ChatBadRequest(message)
    if isinstance(exc, mm.MattermostError):  # 5xx and the rarer 4xx (405, 501)
        status = exc.status_code
        error = ChatUnavailable if status >= 500 else ChatError
        return error(f"Mattermost answered {status}: {message}", status)
    if isinstance(exc, mm.InvalidMattermostError):  # an error without Mattermost's JSON body (proxy pages)
        return ChatUnavailable(f"Mattermost answered {exc.status_code} with an unreadable body", exc.status_code)
    if isinstance(exc, (httpx.HTTPError, OSError, asyncio.TimeoutError, ValueError)):
        return ChatUnavailable(f"Mattermost could not be reached: {message}")
    return ChatUnavailable(f"unexpected Mattermost client error: {type(exc).__name__}: {message}")


class _SupervisedSocket(Websocket):
    """The driver's websocket for ONE connection: `connect_once` returns or raises when it ends,
    and MattermostChat.listen decides whether and when to reconnect (the driver's own loop
    retries forever, even with a revoked token). Keeps the live socket to send actions on."""

    live: Any = None
    authenticated = False

    async def _authenticate_websocket(self, websocket: Any, event_handler: Any) -> bool:
        result = await super()._authenticate_websocket(websocket, event_handler)
        self.live = websocket
        self.authenticated = True
        return bool(result)

    async def connect_once(self, url: str, event_handler: Callable[[str], Awaitable[None]]) -> None:
        self._alive = True
        self.authenticated = False
        async with aiohttp.ClientSession() as session:
            # heartbeat: aiohttp pings and closes a connection whose peer stopped answering,
            # so a half-open TCP connection cannot silence the bot.
            async with session.ws_connect(url, heartbeat=HEARTBEAT, proxy=self.options.get("proxy")) as websocket:
                try:
                    await self._authenticate_websocket(websocket, event_handler)
                    await self._start_loop(websocket, event_handler)
                finally:
                    self.live = None


class MattermostChat:
    """REST calls and the event socket, in the bot's terms."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 3,
        reconnect_base: float = 1.0,
        reconnect_cap: float = 60.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        url = settings.mattermost_url
        options: dict[str, Any] = {
            "url": url.host,
            "scheme": url.scheme,
            "port": url.port,
            "token": settings.mattermost_token,
            "request_timeout": settings.request_timeout,
            "keepalive": True,
            "keepalive_delay": 5,
            "max_retries": max_retries,  # 429 on any call, 502-504 and transport errors on GET/PUT
        }
        # aiohttp under httpx: the driver's default httpcore pool costs several times more CPU
        # per request when hundreds of turns run at once (see bench/bench_concurrency.py).
        options["transport"] = transport if transport is not None else AiohttpTransport()
        self._driver = AsyncTypedDriver(options)
        self._ws_url = f"{'wss' if url.scheme == 'https' else 'ws'}://{url.host}:{url.port}/api/v4/websocket"
        self._secrets = settings.secrets()
        self._reconnect = (reconnect_base, reconnect_cap, rng)
        self._names: LRUCache[str, str] = LRUCache(maxsize=50_000)
        self._socket: _SupervisedSocket | None = None
        self._send_lock = asyncio.Lock()
        self._seq = itertools.count(2)  # seq 1 is the driver's authentication challenge
        self.me: Identity | None = None

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.disconnect()
        await self._driver.close()

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            result = await call
        except Exception as exc:  # noqa: BLE001 - translated, never leaked
            raise translate(exc) from exc
        if isinstance(result, httpx.Response):  # the driver hands back non-JSON responses raw
            raise ChatUnavailable(f"{what}: unexpected {result.status_code} response of type {result.headers.get('content-type')!r}")
        return result

    async def login(self) -> Identity:
        """users/me: who the bot is. Raises ChatAuthError for a bad or revoked token."""
        me = await self._call("users/me", self._driver.login())
        if not isinstance(me, dict) or not isinstance(me.get("id"), str) or not isinstance(me.get("username"), str):
            raise ChatUnavailable("users/me returned no user")
        self.me = Identity(me["id"], me["username"], mention_pattern(me["username"]))
        self._names[me["id"]] = me["username"]
        return self.me

    async def check_account(self) -> None:
        """users/me again: raises ChatAuthError when the token was revoked or the bot deactivated."""
        me = await self._call("users/me", self._driver.users.get_user("me"))
        if isinstance(me, dict) and isinstance(me.get("delete_at"), int) and me["delete_at"] > 0:
            raise ChatAuthError("the bot account is deactivated")

    async def get_thread(self, root_id: str) -> Thread:
        """The whole thread, paged explicitly (oldest first) and sorted by create_at."""
        posts: list[Post] = []
        from_post: str | None = None
        from_create_at: int | None = None
        for _ in range(MAX_THREAD_PAGES):
            data = await self._call(
                "thread",
                self._driver.posts.get_post_thread(
                    root_id, perPage=THREAD_PAGE, fromPost=from_post, fromCreateAt=from_create_at, direction="down"
                ),
            )
            page = posts_from_post_list(data)
            posts.extend(page)
            replies = [p for p in page if p.id != root_id]
            if not (isinstance(data, dict) and data.get("has_next") is True) or not replies:
                break
            last = max(replies, key=lambda p: (p.create_at, p.id))
            if (last.id, last.create_at) == (from_post, from_create_at):
                break  # no progress: never loop on a confused server
            from_post, from_create_at = last.id, last.create_at
        else:
            log.warning("thread %s has more than %d posts; reading only the first ones", root_id, THREAD_PAGE * MAX_THREAD_PAGES)
        return thread_from_posts(root_id, posts)

    def remember_name(self, user_id: str, username: str) -> None:
        if user_id and username:
            self._names[user_id] = username

    async def usernames(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Usernames by id, from the cache; unknown ids cost one users/ids call."""
        ids = set(user_ids)
        missing = [i for i in ids if i not in self._names]
        if missing:
            try:
                users = await self._call("users/ids", self._driver.users.get_users_by_ids(missing))
            except ChatError as exc:
                log.warning("cannot look up %d user name(s): %s", len(missing), exc)
                users = []
            for user in users if isinstance(users, list) else []:
                if isinstance(user, dict) and isinstance(user.get("id"), str) and isinstance(user.get("username"), str):
                    self._names[user["id"]] = user["username"]
        return {i: self._names[i] for i in ids if i in self._names}

    async def channels(self) -> list[Channel]:
        """Every channel the bot is a member of, across teams, DMs and group messages included."""
        data = await self._call("my channels", self._driver.channels.get_channels_for_user("me"))
        channels = []
        for c in data if isinstance(data, list) else []:
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                last = c.get("last_post_at")
                channels.append(Channel(
                    c["id"], _str(c.get("type")), _str(c.get("name")), _str(c.get("display_name")),
                    _str(c.get("team_id")), last if isinstance(last, int) else 0,
                ))
        return channels

    async def teams(self) -> dict[str, str]:
        """Team names by id, for access lists written with names."""
        data = await self._call("my teams", self._driver.teams.get_teams_for_user("me"))
        return {t["id"]: _str(t.get("name")) for t in data if isinstance(t, dict) and isinstance(t.get("id"), str)} if isinstance(data, list) else {}

    async def posts_since(self, channel_id: str, since_ms: int) -> tuple[list[Post], bool]:
        """Posts of a channel created after `since_ms`, oldest first, and whether the server's
        cap of 1000 cut the answer short (the catch-up then says so in the log)."""
        data = await self._call("posts since", self._driver.posts.get_posts_for_channel(channel_id, since=since_ms))
        order = data.get("order") if isinstance(data, dict) else None
        posts = [p for p in posts_from_post_list(data) if p.create_at > since_ms and not p.delete_at]
        posts.sort(key=lambda p: (p.create_at, p.id))
        return posts, isinstance(order, list) and len(order) >= SINCE_LIMIT

    async def create_post(
        self, channel_id: str, message: str, root_id: str, props: dict[str, Any], pending_id: str = ""
    ) -> Post:
        """One create. With `pending_id` (the same on every retry of one post) the server
        answers a repeat with the post it already made: a retry after a lost response
        never shows the reply twice."""
        body: dict[str, Any] = {"channel_id": channel_id, "message": self._redact(message), "props": props}
        if root_id:
            body["root_id"] = root_id
        if pending_id:
            body["pending_post_id"] = pending_id
        data = await self._call("create post", self._driver.client.post("/api/v4/posts", options=body))
        post = post_from_json(data)
        if post is None:
            raise ChatUnavailable("create post: the server returned no post")
        return post

    async def patch_post(self, post_id: str, message: str) -> None:
        await self._call("patch post", self._driver.posts.patch_post(post_id, message=self._redact(message)))

    def _redact(self, text: str) -> str:
        """A last guard: no secret of the bot's is ever posted, whatever produced the text."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    async def send_typing(self, channel_id: str, parent_id: str) -> None:
        """Typing indicator over the open socket (no REST call); skipped when it is down."""
        socket = self._socket.live if self._socket is not None else None
        if socket is None or socket.closed:
            return
        frame = json.dumps(
            {"action": "user_typing", "seq": next(self._seq), "data": {"channel_id": channel_id, "parent_id": parent_id}}
        )
        try:
            async with self._send_lock:
                await socket.send_str(frame)
        except Exception as exc:  # noqa: BLE001 - a typing indicator is never worth failing a turn
            log.debug("typing indicator not sent: %s", exc)

    async def listen(self, on_frame: Callable[[str], Awaitable[None]]) -> None:
        """Feed every websocket frame to `on_frame` until cancelled, reconnecting with jittered
        exponential backoff. Raises ChatAuthError when the server refuses the bot's token: a
        revoked token or a deactivated bot must stop the process, not retry forever."""

        async def guarded(raw: str) -> None:
            try:
                await on_frame(raw)
            except Exception:  # noqa: BLE001 - an exception here would drop the socket
                log.exception("websocket frame handler failed; frame skipped")

        base, cap, rng = self._reconnect
        socket = self._socket = _SupervisedSocket(self._driver.options, self._driver.client.token)
        attempt = 0
        while True:
            opened = time.monotonic()
            try:
                await socket.connect_once(self._ws_url, guarded)
                why = "closed"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, TypeError, ValueError) as exc:
                # TypeError: aiohttp's receive_str() on a CLOSE frame (WSMessageTypeError)
                why = f"lost ({type(exc).__name__}: {exc})" if str(exc) else f"lost ({type(exc).__name__})"
            if not socket.authenticated:
                await self._check_token()
            if socket.authenticated and time.monotonic() - opened >= STABLE_AFTER:
                attempt = 0
            delay = reconnect_delay(attempt, base, cap, rng)
            attempt += 1
            log.warning("websocket %s; reconnecting in %.1fs", why, delay)
            await asyncio.sleep(delay)

    async def _check_token(self) -> None:
        """The socket closed before it was accepted: a refused token ends listen() (fatal),
        anything else (the server is down, a proxy) is retried."""
        try:
            await self.check_account()
        except ChatAuthError:
            log.error("Mattermost refuses the bot's token (revoked, or the bot account was deactivated)")
            raise
        except ChatError as exc:
            log.warning("Mattermost is not reachable: %s", exc)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""
