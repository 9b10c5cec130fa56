"""Mattermost adapter over mattermostautodriver: with mattermost_errors.py, the only module that
imports the driver.

Every driver and transport exception is translated into errors.ChatError types
(mattermost_errors.translate); any other exception is a bug and propagates unchanged. The driver
never retries: llmbot/retry.py does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

import httpx
from cachetools import LRUCache
from httpx_aiohttp import AiohttpTransport
from mattermostautodriver import AsyncTypedDriver

from . import dm_flow, metrics
from .errors import ChatAuthError, ChatError, ChatRateLimited, ChatUnavailable
from .mattermost_errors import translate
from .mattermost_socket import EventSocket, reconnect_delay
from .network import proxy_for, ssl_context
from .ports import Channel  # the core's type; re-exported for old imports
from .rate_budget import RateBudget, WatchedTransport
from .router import Identity
from .settings import Settings
from .thread import Post, Thread, post_from_json, posts_from_post_list, text_or_empty, thread_from_posts
from .triggers import mention_pattern

__all__ = ["Channel", "MattermostChat", "reconnect_delay", "translate"]  # reconnect_delay: its old home

log = logging.getLogger(__name__)

THREAD_PAGE = 200  # the server's maximum perPage
MAX_THREAD_PAGES = 100  # 20,000 posts: far past any context budget; stops a runaway loop
SINCE_LIMIT = 1000  # the server returns at most this many posts for ?since=


class MattermostChat:
    """REST calls and the event socket, in the bot's terms."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        reconnect_base: float = 1.0,
        reconnect_cap: float = 60.0,
        rng: Callable[[], float] = random.random,
        rate_budget: RateBudget | None = None,
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
            # One retry layer, llmbot/retry.py's: driver retries under it multiplied the waits
            # (a dead server held a turn ~11 minutes). 0: a 429 is raised at once, with the
            # server's Retry-After in TooManyRequests.retry_after.
            "max_retries": 0,
        }
        # aiohttp under httpx: the driver's default httpcore pool costs several times more CPU
        # per request when hundreds of turns run at once (see bench/bench_concurrency.py).
        # The CA certificates and the proxy are network.py's, as for the websocket and the LLM:
        # httpx reads no proxy from the environment for a transport it is given.
        proxy = proxy_for(f"{url.scheme}://{url.host}:{url.port}")
        if transport is None:
            transport = AiohttpTransport(
                verify=ssl_context(), proxy=httpx.Proxy(proxy.url, headers=proxy.headers) if proxy else None
            )
        options["transport"] = metrics.CountedTransport(transport)  # llmbot_mattermost_requests_total
        if proxy is not None:
            log.info("Mattermost: through the proxy %s", proxy)
        # The rate budget (rate_budget.py): set, or learned from the server's X-RateLimit-* headers.
        self.rate_budget = rate_budget or RateBudget(settings.mattermost_rate, settings.mattermost_burst)
        options["transport"] = WatchedTransport(options["transport"], self.rate_budget)
        self._driver = AsyncTypedDriver(options)
        ws_url = f"{'wss' if url.scheme == 'https' else 'ws'}://{url.host}:{url.port}/api/v4/websocket"
        self._events = EventSocket(
            ws_url, settings.mattermost_token, reconnect_base=reconnect_base, reconnect_cap=reconnect_cap, rng=rng,
            ssl_context=ssl_context() if url.scheme == "https" else None, proxy=proxy_for(ws_url),
        )
        self._secrets = settings.secrets()
        self._names: LRUCache[str, str] = LRUCache(maxsize=50_000)
        self.me: Identity | None = None

    async def close(self) -> None:
        await self._events.close()
        await self._driver.close()

    @property
    def socket_down(self) -> str | None:
        """None while the event socket is connected; else why not (/healthz)."""
        return self._events.down

    @property
    def reconnects(self) -> int:
        """Times the event socket was lost and tried again (llmbot_websocket_reconnects_total)."""
        return self._events.reconnects

    async def _call(self, what: str, call: Coroutine[Any, Any, Any]) -> Any:
        if self.rate_budget.engaged:
            try:
                await self.rate_budget.spend()
            except BaseException:
                call.close()  # never started
                raise
        try:
            result = await call
        except Exception as exc:
            error = translate(exc)
            if error is None:
                raise  # a bug, not a flaky server: never retried, logged with its traceback upstream
            if isinstance(error, ChatRateLimited):
                self.rate_budget.limited(error.retry_after, what)
            raise error from exc
        if isinstance(result, httpx.Response):  # the driver hands back non-JSON responses raw
            content_type = result.headers.get("content-type")
            raise ChatUnavailable(f"{what}: unexpected {result.status_code} response of type {content_type!r}")
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
        return await self._read_thread(root_id, "down", lambda _replies: False)

    async def recent_roots(
        self, channel_id: str, enough: Callable[[Sequence[Post]], bool], began_after: Callable[[Post, Post], bool]
    ) -> Thread:
        """A DM's running conversation (dm_flow.py): the channel's root posts, newest first."""

        async def page_of(number: int) -> list[Post]:
            data = await self._call("channel posts", self._driver.posts.get_posts_for_channel(
                channel_id, page=number, per_page=dm_flow.PAGE,
            ))
            return posts_from_post_list(data)

        return await dm_flow.read_running(page_of, enough, began_after)

    async def recent_thread(self, root_id: str, enough: Callable[[Sequence[Post]], bool]) -> Thread:
        """The root and the newest posts of a thread, read newest first until `enough(replies)`
        (newest first) says so: a turn in a 2,000-post thread reads one page, not ten."""
        return await self._read_thread(root_id, "up", enough)

    async def _read_thread(self, root_id: str, direction: str, enough: Callable[[Sequence[Post]], bool]) -> Thread:
        """Pages of a thread in `direction` (the server's order within a page is none: sorted here)."""
        posts: list[Post] = []  # the root, wherever it came
        replies: list[Post] = []  # in reading order
        cursor: tuple[str, int] | None = None
        for _ in range(MAX_THREAD_PAGES):
            data = await self._call("thread", self._driver.posts.get_post_thread(
                root_id, perPage=THREAD_PAGE, fromPost=cursor[0] if cursor else None,
                fromCreateAt=cursor[1] if cursor else None, direction=direction,
            ))
            page = posts_from_post_list(data)
            if not posts:
                posts.extend(p for p in page if p.id == root_id)
            newest_first = direction == "up"
            batch = sorted((p for p in page if p.id != root_id), key=lambda p: (p.create_at, p.id), reverse=newest_first)
            replies.extend(batch)
            if not (isinstance(data, dict) and data.get("has_next") is True) or not batch or enough(replies):
                break
            if (batch[-1].id, batch[-1].create_at) == cursor:
                break  # no progress: never loop on a confused server
            cursor = (batch[-1].id, batch[-1].create_at)
        else:
            log.warning("thread %s has more than %d posts; reading only those", root_id, THREAD_PAGE * MAX_THREAD_PAGES)
        return thread_from_posts(root_id, posts + replies)

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
                    c["id"], text_or_empty(c.get("type")), text_or_empty(c.get("name")),
                    text_or_empty(c.get("display_name")), text_or_empty(c.get("team_id")),
                    last if isinstance(last, int) else 0,
                ))
        return channels

    async def teams(self) -> dict[str, str]:
        """Team names by id, for access lists written with names."""
        data = await self._call("my teams", self._driver.teams.get_teams_for_user("me"))
        teams = data if isinstance(data, list) else []
        return {t["id"]: text_or_empty(t.get("name")) for t in teams if isinstance(t, dict) and isinstance(t.get("id"), str)}

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

    async def add_reaction(self, post_id: str, emoji_name: str) -> None:
        """The bot's `emoji_name` reaction on a post (e.g. "eyes", "white_check_mark")."""
        if self.me is None:
            raise RuntimeError("add_reaction before login()")
        body = {"user_id": self.me.user_id, "post_id": post_id, "emoji_name": emoji_name}
        await self._call("add reaction", self._driver.reactions.save_reaction(options=body))

    async def send_typing(self, channel_id: str, parent_id: str) -> None:
        """Typing indicator over the open socket (no REST call); skipped when it is down."""
        await self._events.send("user_typing", {"channel_id": channel_id, "parent_id": parent_id})

    async def listen(self, on_frame: Callable[[str], Awaitable[None]]) -> None:
        """Feed every raw websocket text frame to `on_frame` until cancelled or closed,
        reconnecting with jittered exponential backoff. A frame whose `on_frame` raises is
        logged with its traceback and skipped. Raises ChatAuthError when the server refuses
        the bot's token: a revoked token or a deactivated bot must stop the process."""
        await self._events.run(on_frame, self._check_token)

    async def _check_token(self) -> None:
        """The socket closed before it was accepted: a refused token ends listen() (fatal),
        anything else (the server is down, a proxy) is retried; the socket's own line says why."""
        try:
            await self.check_account()
        except ChatAuthError:
            log.error("Mattermost refuses the bot's token (revoked, or the bot account was deactivated)")
            raise
        except ChatError as exc:
            log.debug("users/me after the websocket was refused: %s", exc)

