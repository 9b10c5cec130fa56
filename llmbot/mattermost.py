"""Mattermost adapter over mattermostautodriver: the only module that imports the driver.

Every driver and transport exception is translated into errors.ChatError types here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
from cachetools import LRUCache
from httpx_aiohttp import AiohttpTransport
from mattermostautodriver import AsyncTypedDriver, Websocket
from mattermostautodriver import exceptions as mm

from .config import Settings
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
        return ChatRateLimited(message)
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


class _SocketWithSend(Websocket):
    """The driver's websocket, keeping hold of the live socket so we can send actions on it."""

    live: Any = None

    async def _authenticate_websocket(self, websocket: Any, event_handler: Any) -> bool:
        result = await super()._authenticate_websocket(websocket, event_handler)
        self.live = websocket
        return bool(result)


class MattermostChat:
    """REST calls and the event socket, in the bot's terms."""

    def __init__(
        self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, max_retries: int = 3
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
        self._names: LRUCache[str, str] = LRUCache(maxsize=50_000)
        self._socket: _SocketWithSend | None = None
        self._send_lock = asyncio.Lock()
        self._seq = itertools.count(2)  # seq 1 is the driver's authentication challenge
        self.me: Identity | None = None
        self.last_frame_at = 0.0

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

    async def create_post(self, channel_id: str, message: str, root_id: str, props: dict[str, Any]) -> Post:
        data = await self._call(
            "create post",
            self._driver.posts.create_post(channel_id=channel_id, message=message, root_id=root_id or None, props=props),
        )
        post = post_from_json(data)
        if post is None:
            raise ChatUnavailable("create post: the server returned no post")
        return post

    async def patch_post(self, post_id: str, message: str) -> None:
        await self._call("patch post", self._driver.posts.patch_post(post_id, message=message))

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
        """Feed every websocket frame to `on_frame` until cancelled. The driver reconnects."""

        async def guarded(raw: str) -> None:
            self.last_frame_at = time.monotonic()
            try:
                await on_frame(raw)
            except Exception:  # noqa: BLE001 - an exception here would make the driver drop the socket
                log.exception("websocket frame handler failed; frame skipped")

        connect = self._driver.init_websocket(guarded, websocket_cls=_SocketWithSend)
        self._socket = self._driver.websocket
        await connect
