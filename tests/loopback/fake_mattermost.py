"""A loopback fake of the parts of the Mattermost server that llmbot talks to.

It follows /work/shared/reference/mattermost-api.md: exact ``application/json``
content type, 201 on create, the root-id rule, an UNSORTED thread endpoint with
the server's paging, ``posted`` events whose ``post`` is a JSON string,
``from_bot`` on bot posts, AppError bodies and the websocket auth handshake.
Tests build a world (users, channels, posts), drive the bot against it and
inspect what it did (``requests``, ``posts``, ``edits``, ``typing``). ``limit_rate`` turns on
Mattermost's rate limiter (off by default, as on the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import random
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

SERVER_VERSION = "10.11.0"
MAX_MESSAGE_RUNES = 16383
WS_PATH = "/api/v4/websocket"
WS_AUTH_TIMEOUT = 5.0
# The server forgets a pending_post_id this long after it saved the post (pendingPostIDsCacheTTL,
# server/channels/app/post.go): a create retried later makes a second post.
PENDING_POST_TTL = 30.0
_BAD_URL_PARAM = "Invalid or missing parameter in request URL."
EMOJI_NAME_MAX = 64  # model.EmojiNameMaxLength
_EMOJI_NAME = re.compile(r"^[a-zA-Z0-9\-+_]+$")  # Reaction.IsValid; every emoji name has this shape
# Mattermost ids are 26 chars of this base32 alphabet (all lowercase alnum).
_ID_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"

# Typed request-storage keys (aiohttp >= 3.12 warns about plain str keys).
_RequestKey = getattr(web, "RequestKey", None)
REQUEST_ID = _RequestKey("request_id", str) if _RequestKey else "request_id"
BODY = _RequestKey("body", object) if _RequestKey else "body"
USER_ID = _RequestKey("user_id", str) if _RequestKey else "user_id"
RATE_HEADERS = _RequestKey("rate_headers", dict) if _RequestKey else "rate_headers"
RATE_LIMITED = _RequestKey("rate_limited", bool) if _RequestKey else "rate_limited"


def new_id() -> str:
    return "".join(random.choices(_ID_ALPHABET, k=26))


def _valid_id(value: str) -> bool:
    """model.IsValidId: 26 letters and digits."""
    return len(value) == 26 and value.isascii() and value.isalnum()


def _id_of(obj: dict | str) -> str:
    return obj if isinstance(obj, str) else obj["id"]


def _json_response(data: Any, status: int = 200) -> web.Response:
    # NOT web.json_response: it appends "; charset=utf-8" and the driver then
    # returns the raw httpx.Response instead of parsed JSON.
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


class ApiError(Exception):
    """Raised inside handlers; turned into a Mattermost AppError response."""

    def __init__(self, status: int, error_id: str, message: str = "", detailed: str = ""):
        super().__init__(error_id)
        self.status, self.error_id = status, error_id
        self.message, self.detailed = message or error_id, detailed


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern
    status: int
    remaining: int
    body: Any
    headers: dict
    content_type: str
    after: bool = False  # the call takes effect, then the answer is an error (a lost response)


@dataclass
class _FaultRate:
    """Random REST faults for soak tests: a fraction of calls fail (seeded, reproducible)."""

    probability: float
    rng: random.Random
    statuses: tuple[int, ...]
    injected: int = 0


@dataclass
class _RateLimiter:
    """Mattermost's rate limiter (RateLimitSettings: PerSec, MaxBurst, VaryByRemoteAddr) as
    app/ratelimit.go builds it: throttled's GCRA (rate.go), times in integer nanoseconds as Go
    has them, one key per remote address, in front of every route (the websocket's too)."""

    per_sec: int
    max_burst: int
    clock: Callable[[], float]
    tats: dict[str, int] = field(default_factory=dict)  # key -> theoretical arrival time, ns
    limited: list[tuple[str, str, float]] = field(default_factory=list)  # (method, path, clock()) of each 429

    def check(self, key: str) -> tuple[bool, dict[str, str]]:
        """Whether this request is refused, and the headers the response carries either way."""
        period = 10**9 // self.per_sec  # throttled.PerSec(n): time.Second / n
        tolerance = period * (self.max_burst + 1)
        now = int(self.clock() * 10**9)
        tat = self.tats.get(key, now)
        new_tat = max(now, tat) + period
        allow_at = new_tat - tolerance
        limited = now < allow_at
        if limited:
            ttl = tat - now
        else:
            ttl = new_tat - now
            self.tats[key] = new_tat
        spare = tolerance - ttl
        headers = {
            "X-RateLimit-Limit": str(self.max_burst + 1),
            "X-RateLimit-Remaining": str(max(0, spare) // period),  # Go's division truncates toward zero
            "X-RateLimit-Reset": str(-(-ttl // 10**9)),  # whole seconds, rounded up
        }
        if limited:
            headers["Retry-After"] = str(-(-(allow_at - now) // 10**9))
        return limited, headers


@dataclass
class _WsConn:
    ws: web.WebSocketResponse
    connection_id: str = field(default_factory=new_id)
    user_id: str = ""  # empty until authenticated
    seq: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, payload: dict, *, with_seq: bool = True) -> None:
        # The lock keeps `seq` in the same order as frames on the wire when
        # several broadcasts race for one connection.
        async with self.lock:
            if self.ws.closed:
                return
            if with_seq:
                payload = {**payload, "seq": self.seq}
                self.seq += 1
            with contextlib.suppress(ConnectionError, RuntimeError):  # client went away; its handler cleans up
                await self.ws.send_str(json.dumps(payload))


class FakeMattermost:
    """In-process Mattermost server on 127.0.0.1 (random port)."""

    def __init__(self, clock: Callable[[], float] | None = None, dedupe_clock: Callable[[], float] | None = None):
        """`clock`: wall-clock seconds for create_at/update_at (tests freeze it). `dedupe_clock`:
        monotonic seconds for the pending_post_id window, separate so a test can move past the
        30 s without touching timestamps (default time.monotonic)."""
        self.clock = clock or time.time
        self.dedupe_clock = dedupe_clock or time.monotonic
        self.host = "127.0.0.1"
        self.users: dict[str, dict] = {}
        self.channels: dict[str, dict] = {}
        self.members: dict[str, list[str]] = {}  # channel id -> user ids
        self.posts: dict[str, dict] = {}
        self.tokens: dict[str, str] = {}  # token -> user id
        self.requests: list[tuple[str, str, dict, Any]] = []
        self.typing: list[tuple[str, str, str, str]] = []
        self.edits: list[tuple[str, str, float]] = []
        self._failures: list[_Failure] = []
        self._fault_rate: _FaultRate | None = None
        self._slow: list[list] = []  # [method, pattern, seconds, times left]
        self._limiter: _RateLimiter | None = None  # off, as on a default server (limit_rate)
        self.pending_post_ids: dict[str, str] = {}  # pending_post_id -> post id (the server's dedupe)
        self._pending_seen: dict[str, float] = {}  # pending_post_id -> dedupe_clock() when saved
        self.reactions: list[dict] = []
        self._conns: list[_WsConn] = []
        self._last_ms = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._scheme = "http"
        self.teams: dict[str, dict] = {}
        self.add_team("team1")
        self.bot_token = "bot-token-123"
        self.bot = self.add_user("llmbot", is_bot=True, token=self.bot_token)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, *, ssl_context: ssl.SSLContext | None = None, port: int = 0) -> None:
        """Serve on 127.0.0.1: HTTPS (and wss) with `ssl_context`; on `port` (0: any free one), e.g.
        the one it had before stop(), as a server restarting does."""
        self._scheme = "https" if ssl_context is not None else "http"
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._add_standard_headers)
        r = app.router
        r.add_get(WS_PATH, self._ws_handler)
        r.add_get("/api/v4/users/{user_id}", self._get_user)
        r.add_post("/api/v4/users/ids", self._get_users_by_ids)
        r.add_post("/api/v4/users/{user_id}/typing", self._publish_typing)
        r.add_get("/api/v4/channels/{channel_id}", self._get_channel)
        r.add_get("/api/v4/channels/{channel_id}/posts", self._get_channel_posts)
        r.add_get("/api/v4/users/{user_id}/channels", self._get_channels_for_user)
        r.add_get("/api/v4/users/{user_id}/teams", self._get_teams_for_user)
        r.add_post("/api/v4/posts", self._create_post)
        r.add_get("/api/v4/posts/{post_id}", self._get_post)
        r.add_delete("/api/v4/posts/{post_id}", self._delete_post_rest)
        r.add_put("/api/v4/posts/{post_id}/patch", self._patch_post)
        r.add_get("/api/v4/posts/{post_id}/thread", self._get_thread)
        r.add_post("/api/v4/reactions", self._save_reaction)
        # Short shutdown timeout: a test's stop() must not wait on slow handlers.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, ssl_context=ssl_context)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self.drop_websockets()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self._port}"

    # ------------------------------------------------------------- world building
    def _now_ms(self) -> int:
        # Strictly increasing so create_at ordering is total even with a frozen clock.
        self._last_ms = max(self._last_ms + 1, int(self.clock() * 1000))
        return self._last_ms

    def add_user(self, username: str, *, is_bot: bool = False, token: str | None = None,
                 first_name: str = "", last_name: str = "", nickname: str = "") -> dict:
        uid, now = new_id(), self._now_ms()
        user = {
            "id": uid, "create_at": now, "update_at": now, "delete_at": 0,
            "username": username, "first_name": first_name or username.capitalize(),
            "last_name": last_name, "nickname": nickname, "email": f"{username}@example.com",
            "auth_service": "", "roles": "system_user", "locale": "en", "is_bot": is_bot,
        }
        if is_bot:
            user["bot_description"] = ""
        self.users[uid] = user
        self.tokens[token or f"token-{uid}"] = uid
        return copy.deepcopy(user)

    def token_for(self, user: dict | str) -> str:
        uid = _id_of(user)
        return next(t for t, u in self.tokens.items() if u == uid)

    def add_channel(self, name: str, *, type: str = "O", team_id: str = "team1",
                    members: tuple | list = (), display_name: str | None = None) -> dict:
        cid, now = new_id(), self._now_ms()
        channel = {
            "id": cid, "create_at": now, "update_at": now, "delete_at": 0, "team_id": team_id,
            "type": type, "display_name": name if display_name is None else display_name,
            "name": name, "header": "", "purpose": "", "last_post_at": 0, "total_msg_count": 0,
            "creator_id": "",
        }
        self.channels[cid] = channel
        self.members[cid] = [_id_of(m) for m in members]
        return copy.deepcopy(channel)

    def add_team(self, team_id: str, name: str | None = None, display_name: str | None = None) -> dict:
        now = self._now_ms()
        team = {"id": team_id, "create_at": now, "update_at": now, "delete_at": 0, "name": name or team_id,
                "display_name": display_name or (name or team_id).capitalize(), "type": "O"}
        self.teams[team_id] = team
        return copy.deepcopy(team)

    async def revoke(self, user: dict | str) -> None:
        """Revoke every token of `user` (a deactivated bot, a deleted token) and drop its sockets."""
        uid = _id_of(user)
        for token in [t for t, u in self.tokens.items() if u == uid]:
            del self.tokens[token]
        conns = [c for c in self._conns if c.user_id == uid]
        await asyncio.gather(*(c.ws.close(code=1000, message=b"session revoked") for c in conns),
                             return_exceptions=True)

    def add_member(self, channel: dict | str, user: dict | str) -> None:
        members = self.members[_id_of(channel)]
        if _id_of(user) not in members:
            members.append(_id_of(user))

    def dm_channel(self, user_a: dict | str, user_b: dict | str) -> dict:
        a, b = sorted((_id_of(user_a), _id_of(user_b)))
        for ch in self.channels.values():
            if ch["type"] == "D" and ch["name"] == f"{a}__{b}":
                return copy.deepcopy(ch)
        return self.add_channel(f"{a}__{b}", type="D", team_id="", members=(a, b), display_name="")

    async def post_as(self, user: dict | str, channel: dict | str, message: str, *, root_id: str = "",
                      props: dict | None = None, file_ids: list | None = None, type: str = "",
                      broadcast: bool = True, check_root: bool = True) -> dict:
        """Create a post as `user` (same rules as REST) and broadcast `posted`.

        broadcast=False builds history silently (big threads); check_root=False
        lets a test simulate an event racing a root's deletion.
        """
        uid, cid = _id_of(user), _id_of(channel)
        if uid not in self.members.get(cid, []):
            raise ValueError(f"user {uid} is not a member of channel {cid}")
        if check_root:
            try:
                self._check_root(cid, root_id)
            except ApiError as e:
                raise ValueError(e.message) from None
        elif root_id not in self.posts:
            raise ValueError(f"no post {root_id}")
        post = self._store_post(uid, cid, message, root_id=root_id, props=props, file_ids=file_ids, type=type)
        if broadcast:
            await self._broadcast_posted(post)
        return copy.deepcopy(post)

    async def add_system_post(self, channel: dict | str, root_id: str = "", type: str = "system_join_channel",
                              message: str = "someone joined the channel.", *, user: dict | str | None = None) -> dict:
        """A `system_*` post; authored by `user` or the first non-bot member (as joins are)."""
        cid = _id_of(channel)
        if user is None:
            members = self.members[cid]
            humans = [m for m in members if not self.users[m]["is_bot"]]
            uid = (humans or members)[0]
        else:
            uid = _id_of(user)
        post = self._store_post(uid, cid, message, root_id=root_id, type=type, system=True)
        await self._broadcast_posted(post)
        return copy.deepcopy(post)

    async def edit_as(self, post_id: str, message: str) -> dict:
        post = self.posts[post_id]
        post["message"] = message
        post["edit_at"] = post["update_at"] = self._now_ms()
        await self._broadcast_post_event("post_edited", post)
        return copy.deepcopy(post)

    async def delete_post(self, post_id: str) -> None:
        """Soft-delete; deleting a root deletes its replies too (one event, as the server does)."""
        post = self.posts[post_id]
        now = self._now_ms()
        for p in self.posts.values():
            if p["id"] == post_id or (post["root_id"] == "" and p["root_id"] == post_id):
                p["delete_at"] = p["update_at"] = now
        if post["root_id"] and post["root_id"] in self.posts:
            root = self.posts[post["root_id"]]
            root["reply_count"] = max(0, root["reply_count"] - 1)
        await self._broadcast_post_event("post_deleted", post, extra={"delete_by": post["user_id"]})

    # -------------------------------------------------------------- observability
    def reset_requests(self) -> None:
        self.requests.clear()

    def thread(self, root_id: str) -> list[dict]:
        """Non-deleted posts of the thread (a reply's id works too), oldest first."""
        root = self.posts[root_id]["root_id"] or root_id
        posts = [p for p in self.posts.values()
                 if (p["id"] == root or p["root_id"] == root) and p["delete_at"] == 0]
        return sorted(posts, key=lambda p: (p["create_at"], p["id"]))

    def posts_by(self, user: dict | str) -> list[dict]:
        uid = _id_of(user)
        posts = [p for p in self.posts.values() if p["user_id"] == uid and p["delete_at"] == 0]
        return sorted(posts, key=lambda p: p["create_at"])

    @property
    def ws_clients(self) -> int:
        """Number of authenticated websocket connections."""
        return sum(1 for c in self._conns if c.user_id and not c.ws.closed)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, message: str = "") -> Any:
        """Poll `predicate` (sync or async) until truthy; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            if time.monotonic() >= deadline:
                what = message or getattr(predicate, "__name__", repr(predicate))
                raise AssertionError(f"condition not met within {timeout}s: {what}")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ fault injection
    def fail_next(self, method: str, path_regex: str, status: int, *, times: int = 1, body: Any = None,
                  headers: dict | None = None, content_type: str = "application/json", after: bool = False) -> None:
        """Make the next `times` REST calls matching method ("*" = any) and path fail.

        after=True: the call is carried out first and only its answer is the error, like a
        response lost on the way back (the post exists, the client saw a failure)."""
        self._failures.append(_Failure(method.upper(), re.compile(path_regex), status, times,
                                       body, dict(headers or {}), content_type, after))

    def slow_next(self, method: str, path_regex: str, seconds: float, *, times: int = 1) -> None:
        """Answer the next `times` matching REST calls `seconds` late, with what was true when the
        call arrived (a slow server: the world may move on meanwhile)."""
        self._slow.append([method.upper(), re.compile(path_regex), seconds, times])

    def limit_rate(self, per_sec: int | None, max_burst: int = 100, *, clock: Callable[[], float] | None = None) -> None:
        """Turn Mattermost's rate limiter on (per_sec None: off again): `per_sec` requests a second
        per remote address, `max_burst` + 1 at once (RateLimitSettings.PerSec/MaxBurst; the server's
        defaults once an admin enables it are 10 and 100). Every response then carries
        X-RateLimit-Limit/-Remaining/-Reset; a refused request gets 429, Retry-After and a plain-text
        body, never reaches the API (not in `requests`) and is counted in `rate_limited`."""
        self._limiter = None if per_sec is None else _RateLimiter(per_sec, max_burst, clock or time.monotonic)

    def spend_rate_limit(self, requests: int, address: str = "127.0.0.1") -> None:
        """`requests` of another client at `address` (the bot's, on loopback), counted by the limiter."""
        assert self._limiter is not None, "limit_rate() first"
        for _ in range(requests):
            self._limiter.check(address)

    @property
    def rate_limited(self) -> int:
        """429s the rate limiter returned."""
        return len(self._limiter.limited) if self._limiter else 0

    @property
    def rate_limited_calls(self) -> list[tuple[str, str, float]]:
        """(method, path, clock time) of each request the rate limiter refused."""
        return list(self._limiter.limited) if self._limiter else []

    def fail_rate(self, probability: float, *, seed: int = 0, statuses: tuple[int, ...] = (429, 500, 502, 503)) -> None:
        """From now on a `probability` share of REST calls fail with one of `statuses` (a POST
        /posts failing with 500 is sometimes carried out first: a lost response)."""
        self._fault_rate = _FaultRate(probability, random.Random(seed), statuses)

    @property
    def faults_injected(self) -> int:
        return self._fault_rate.injected if self._fault_rate else 0

    async def send_raw(self, text: str) -> None:
        """Send an arbitrary text frame to every authenticated websocket client."""
        for conn in list(self._conns):
            if conn.user_id:
                async with conn.lock:
                    if not conn.ws.closed:
                        with contextlib.suppress(ConnectionError, RuntimeError):
                            await conn.ws.send_str(text)

    async def drop_websockets(self) -> None:
        """Close every client socket from the server side (GOING_AWAY, like a restart)."""
        conns, self._conns = list(self._conns), []
        await asyncio.gather(*(c.ws.close(code=1001, message=b"server going away") for c in conns),
                             return_exceptions=True)

    # --------------------------------------------------------------- post storage
    def _check_root(self, channel_id: str, root_id: str) -> None:
        if not root_id:
            return
        root = self.posts.get(root_id)
        if root is None or root["delete_at"] or root["root_id"] or root["channel_id"] != channel_id:
            raise ApiError(400, "api.post.create_post.root_id.app_error", "Invalid RootId parameter.")

    def _store_post(self, user_id: str, channel_id: str, message: str, *, root_id: str = "",
                    props: dict | None = None, file_ids: list | None = None, type: str = "",
                    pending_post_id: str = "", system: bool = False) -> dict:
        now = self._now_ms()
        props = dict(props or {})
        if self.users[user_id]["is_bot"] and not system:
            props["from_bot"] = "true"  # the server adds this for every bot author
        post: dict[str, Any] = {
            "id": new_id(), "create_at": now, "update_at": now, "edit_at": 0, "delete_at": 0,
            "is_pinned": False, "user_id": user_id, "channel_id": channel_id, "root_id": root_id,
            "original_id": "", "message": message, "type": type, "props": props, "hashtags": "",
            "file_ids": list(file_ids or []), "pending_post_id": pending_post_id,
            "reply_count": 0, "last_reply_at": 0, "metadata": {},
        }
        if root_id:
            root = self.posts[root_id]
            root["reply_count"] += 1
            root["last_reply_at"] = now
            post["reply_count"] = root["reply_count"]
        self.posts[post["id"]] = post
        channel = self.channels[channel_id]
        channel["last_post_at"] = now
        channel["total_msg_count"] += 1
        return post

    # ------------------------------------------------------------------ websocket
    def _mentions_for(self, post: dict, channel: dict, receiver: str) -> bool:
        if receiver == post["user_id"]:
            return False
        if channel["type"] == "D":
            return True  # a DM always "mentions" the other member
        name = re.escape(self.users[receiver]["username"])
        # @name not inside an email, not a prefix of a longer name; trailing "." is punctuation.
        return re.search(rf"(?<![\w@])@{name}(?![\w\-]|\.[\w\-])", post["message"], re.I) is not None

    async def _broadcast(self, channel_id: str, event: str, data_for: Callable[[str], dict],
                         omit: str | None = None) -> None:
        members = set(self.members.get(channel_id, []))
        broadcast = {"omit_users": {omit: True} if omit else None, "user_id": "",
                     "channel_id": channel_id, "team_id": ""}
        targets = [c for c in list(self._conns) if c.user_id in members and c.user_id != omit]
        await asyncio.gather(*(c.send({"event": event, "data": data_for(c.user_id), "broadcast": broadcast})
                               for c in targets))

    async def _broadcast_posted(self, post: dict) -> None:
        channel = self.channels[post["channel_id"]]
        sender = self.users[post["user_id"]]["username"]
        base = {
            "channel_display_name": f"@{sender}" if channel["type"] == "D" else channel["display_name"],
            "channel_name": channel["name"], "channel_type": channel["type"],
            "post": json.dumps(post), "sender_name": f"@{sender}", "set_online": True,
            "team_id": channel["team_id"],
        }

        def data_for(receiver: str) -> dict:
            if self._mentions_for(post, channel, receiver):
                return {**base, "mentions": json.dumps([receiver])}
            return base

        await self._broadcast(post["channel_id"], "posted", data_for)

    async def _broadcast_post_event(self, event: str, post: dict, extra: dict | None = None) -> None:
        data = {"post": json.dumps(post), **(extra or {})}
        await self._broadcast(post["channel_id"], event, lambda _uid: data)

    async def _record_typing(self, user_id: str, channel_id: str, parent_id: str, via: str) -> None:
        self.typing.append((user_id, channel_id, parent_id, via))
        data = {"parent_id": parent_id, "user_id": user_id}
        await self._broadcast(channel_id, "typing", lambda _uid: data, omit=user_id)

    async def _ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        conn = _WsConn(ws)
        self._conns.append(conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WS_AUTH_TIMEOUT
        try:
            header_user = self._user_from_header(request.headers.get("Authorization", ""))
            if header_user:
                await self._ws_hello(conn, header_user)
            while not ws.closed:
                timeout = None if conn.user_id else max(0.001, deadline - loop.time())
                try:
                    msg = await ws.receive(timeout=timeout)
                except TimeoutError:
                    break  # no authentication within 5 s: the server closes
                if msg.type != WSMsgType.TEXT:
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    continue
                if not await self._ws_frame(conn, msg.data):
                    break
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            if not ws.closed:
                await ws.close()
        return ws

    async def _ws_hello(self, conn: _WsConn, user_id: str) -> None:
        conn.user_id = user_id
        await conn.send({
            "event": "hello",
            "data": {"connection_id": conn.connection_id, "server_version": SERVER_VERSION},
            "broadcast": {"user_id": user_id, "omit_users": None, "channel_id": "", "team_id": ""},
        })

    async def _ws_frame(self, conn: _WsConn, text: str) -> bool:
        """Handle one client frame; False means close the socket."""
        try:
            frame = json.loads(text)
        except ValueError:
            return True  # malformed frames are ignored, never fatal
        if not isinstance(frame, dict):
            return True
        action, seq = frame.get("action"), frame.get("seq")
        data = frame["data"] if isinstance(frame.get("data"), dict) else {}
        if action == "authentication_challenge" and not conn.user_id:
            user_id = self.tokens.get(str(data.get("token", "")))
            if user_id is None:
                return False  # bad token: the server closes the socket
            await self._ws_hello(conn, user_id)
            await conn.send({"status": "OK", "seq_reply": seq}, with_seq=False)
            return True
        if not conn.user_id:
            await conn.send({"status": "FAIL", "seq_reply": seq, "error": {
                "id": "api.web_socket_router.not_authenticated.app_error",
                "message": "Not authenticated"}}, with_seq=False)
            return True
        if action == "user_typing":
            channel_id = str(data.get("channel_id", ""))
            await self._record_typing(conn.user_id, channel_id, str(data.get("parent_id") or ""), "ws")
        await conn.send({"status": "OK", "seq_reply": seq}, with_seq=False)
        return True

    # ----------------------------------------------------------------- REST plumbing
    def _user_from_header(self, header: str) -> str | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        return self.tokens.get(token.strip())

    async def _add_standard_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(request.get(RATE_HEADERS) or {})
        if request.get(RATE_LIMITED):
            return  # refused in front of the router: no handler set the ids
        response.headers.setdefault("X-Request-Id", request.get(REQUEST_ID) or new_id())
        response.headers.setdefault("X-Version-Id", f"{SERVER_VERSION}.{SERVER_VERSION}.fake.false")

    def _app_error(self, request: web.Request, err: ApiError) -> web.Response:
        return _json_response({
            "id": err.error_id, "message": err.message, "detailed_error": err.detailed,
            "request_id": request[REQUEST_ID], "status_code": err.status,
        }, status=err.status)

    def _injected_failure(self, request: web.Request) -> _Failure | None:
        for failure in self._failures:
            if failure.method not in ("*", request.method) or not failure.pattern.search(request.path):
                continue
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            return failure
        rate = self._fault_rate
        if rate is not None and request.path != WS_PATH and rate.rng.random() < rate.probability:
            rate.injected += 1
            status = rate.rng.choice(rate.statuses)
            after = status == 500 and request.method == "POST" and rate.rng.random() < 0.5
            headers = {"Retry-After": "0"} if status == 429 else {}
            return _Failure(request.method, re.compile(""), status, 1, None, headers, "application/json", after)
        return None

    def _failure_response(self, request: web.Request, failure: _Failure) -> web.Response:
        headers, body, ctype = dict(failure.headers), failure.body, failure.content_type
        if failure.status == 429:
            # What the real rate limiter sends: plain text plus Retry-After.
            headers = {"Retry-After": "1", "X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0",
                       "X-RateLimit-Reset": "1", **headers}
            if body is None:
                body, ctype = "limit exceeded\n", "text/plain"
        if body is None:
            body = {"id": "fake.injected.app_error", "message": f"injected failure {failure.status}",
                    "detailed_error": "", "request_id": request[REQUEST_ID], "status_code": failure.status}
        raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        return web.Response(body=raw, status=failure.status, content_type=ctype, headers=headers)

    async def _maybe_slow(self, request: web.Request) -> None:
        for slow in self._slow:
            method, pattern, seconds, _ = slow
            if method in ("*", request.method) and pattern.search(request.path):
                slow[3] -= 1
                if slow[3] <= 0:
                    self._slow.remove(slow)
                await asyncio.sleep(seconds)
                return

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if self._limiter is not None:
            limited, request[RATE_HEADERS] = self._limiter.check(request.remote or "")
            if limited:  # http.Error(w, "limit exceeded", 429)
                request[RATE_LIMITED] = True
                self._limiter.limited.append((request.method, request.path, self._limiter.clock()))
                return web.Response(text="limit exceeded\n", status=429, content_type="text/plain", charset="utf-8",
                                    headers={"X-Content-Type-Options": "nosniff"})
        request[REQUEST_ID] = new_id()
        if request.path != WS_PATH:
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            request[BODY] = body
            self.requests.append((request.method, request.path, dict(request.query), body))
        failure = self._injected_failure(request)
        if failure is not None and not failure.after:
            return self._failure_response(request, failure)
        try:
            if request.path != WS_PATH:
                user_id = self._user_from_header(request.headers.get("Authorization", ""))
                if user_id is None:
                    raise ApiError(401, "api.context.session_expired.app_error",
                                   "Invalid or expired session, please login again.")
                request[USER_ID] = user_id
            response = await handler(request)
            await self._maybe_slow(request)
            return self._failure_response(request, failure) if failure is not None else response
        except ApiError as err:
            return self._app_error(request, err)
        except web.HTTPException as exc:  # router 404/405: Mattermost answers with an AppError
            return self._app_error(request, ApiError(exc.status, "api.context.404.app_error", exc.reason))

    def _body(self, request: web.Request, kind: type) -> Any:
        body = request.get(BODY)
        if not isinstance(body, kind):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid or missing body.")
        return body

    def _channel_for(self, request: web.Request, channel_id: str) -> dict:
        channel = self.channels.get(channel_id)
        if channel is None or request[USER_ID] not in self.members[channel_id]:
            raise ApiError(403, "api.context.permissions.app_error",
                           "You do not have the appropriate permissions.")
        return channel

    def _visible_post(self, request: web.Request, post_id: str) -> dict:
        post = self.posts.get(post_id)
        if post is None or post["delete_at"]:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        self._channel_for(request, post["channel_id"])
        return post

    # -------------------------------------------------------------- REST handlers
    async def _get_user(self, request: web.Request) -> web.Response:
        uid = request.match_info["user_id"]
        uid = request[USER_ID] if uid == "me" else uid
        if uid not in self.users:
            raise ApiError(404, "app.user.missing_account.const", "Unable to find the user.")
        return _json_response(self.users[uid])

    async def _get_users_by_ids(self, request: web.Request) -> web.Response:
        ids = self._body(request, list)
        return _json_response([self.users[i] for i in ids if isinstance(i, str) and i in self.users])

    async def _get_channel(self, request: web.Request) -> web.Response:
        cid = request.match_info["channel_id"]
        if cid not in self.channels:
            raise ApiError(404, "app.channel.get.existing.app_error", "Unable to find the existing channel.")
        return _json_response(self._channel_for(request, cid))

    async def _create_post(self, request: web.Request) -> web.Response:
        body = self._body(request, dict)
        channel = self._channel_for(request, str(body.get("channel_id") or ""))
        message, root_id = body.get("message", ""), body.get("root_id") or ""
        props = body.get("props") or {}
        if not isinstance(message, str) or not isinstance(root_id, str) or not isinstance(props, dict):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid or missing post in request body.")
        self._check_root(channel["id"], root_id)
        if len(message) > MAX_MESSAGE_RUNES:  # len() of a str counts code points = runes
            raise ApiError(400, "model.post.is_valid.message_length.app_error", "Invalid Message property.")
        pending = str(body.get("pending_post_id") or "")
        self._forget_stale_pending()
        if pending in self.pending_post_ids:  # the server's deduplicateCreatePost: the same post again
            return _json_response(self.posts[self.pending_post_ids[pending]], status=201)
        post = self._store_post(request[USER_ID], channel["id"], message, root_id=root_id, props=props,
                                file_ids=body.get("file_ids"), pending_post_id=pending)
        if pending:
            self.pending_post_ids[pending] = post["id"]
            self._pending_seen[pending] = self.dedupe_clock()
        await self._broadcast_posted(post)
        return _json_response(post, status=201)

    def _forget_stale_pending(self) -> None:
        """Drop pending ids saved PENDING_POST_TTL or more ago, as the server's cache expires them."""
        now = self.dedupe_clock()
        for pending in [p for p, seen in self._pending_seen.items() if now - seen >= PENDING_POST_TTL]:
            del self._pending_seen[pending], self.pending_post_ids[pending]

    async def _save_reaction(self, request: web.Request) -> web.Response:
        """POST /reactions as the server's saveReaction: checks in its order, then an upsert of
        (user, post, emoji); answers 200 (the handler writes no 201, whatever the API spec says)."""
        body = self._body(request, dict)
        user_id, post_id, name = (str(body.get(k) or "") for k in ("user_id", "post_id", "emoji_name"))
        if not _valid_id(user_id) or not _valid_id(post_id) or not name or len(name) > EMOJI_NAME_MAX:
            raise ApiError(400, "api.reaction.save_reaction.invalid.app_error", "Invalid or missing reaction.")
        if user_id != request[USER_ID]:
            raise ApiError(403, "api.reaction.save_reaction.user_id.app_error", "You can not save reaction for the other user.")
        post = self.posts.get(post_id)
        if post is None or request[USER_ID] not in self.members.get(post["channel_id"], []):
            raise ApiError(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        if post["delete_at"]:
            raise ApiError(404, "app.post.get.app_error", "Unable to get the post.")
        if not _EMOJI_NAME.match(name):  # no system or custom emoji is called that: the lookup fails
            raise ApiError(404, "app.emoji.get_by_name.no_result", "Unable to find the emoji.")
        now = self._now_ms()
        reaction = {"user_id": user_id, "post_id": post_id, "emoji_name": name, "create_at": now,
                    "update_at": now, "delete_at": 0, "remote_id": "", "channel_id": post["channel_id"]}
        self.reactions = [r for r in self.reactions if (r["user_id"], r["post_id"], r["emoji_name"]) != (user_id, post_id, name)]
        self.reactions.append(reaction)
        post["update_at"], post["has_reactions"] = now, True  # the store touches the post too
        # lists of posts carry them in metadata, as the server's PreparePostForClient fills it
        post["metadata"] = {**post.get("metadata", {}), "reactions": [r for r in self.reactions if r["post_id"] == post_id]}
        data = {"reaction": json.dumps(reaction)}
        await self._broadcast(post["channel_id"], "reaction_added", lambda _uid: data)
        return _json_response(reaction)

    async def _get_channels_for_user(self, request: web.Request) -> web.Response:
        uid = request.match_info["user_id"]
        uid = request[USER_ID] if uid == "me" else uid
        if uid != request[USER_ID]:
            raise ApiError(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        return _json_response([c for cid, c in self.channels.items() if uid in self.members[cid] and not c["delete_at"]])

    async def _get_teams_for_user(self, request: web.Request) -> web.Response:
        uid = request.match_info["user_id"]
        uid = request[USER_ID] if uid == "me" else uid
        team_ids = {self.channels[cid]["team_id"] for cid, m in self.members.items() if uid in m}
        return _json_response([t for tid, t in self.teams.items() if tid in team_ids])

    async def _get_channel_posts(self, request: web.Request) -> web.Response:
        """?since=ms as the server's GetPostsSince: every post UPDATED after `since` (deleted ones
        too), newest first, at most 1000, plus the roots of their threads; else a plain page."""
        channel = self._channel_for(request, request.match_info["channel_id"])
        rows = [p for p in self.posts.values() if p["channel_id"] == channel["id"]]
        try:
            since = int(request.query.get("since") or 0)
            page, per_page = int(request.query.get("page") or 0), int(request.query.get("per_page") or 60)
        except ValueError:
            raise ApiError(400, "api.context.invalid_url_param.app_error", _BAD_URL_PARAM) from None
        if since:
            rows = sorted((p for p in rows if p["update_at"] > since), key=lambda p: p["create_at"], reverse=True)[:1000]
        else:
            rows = sorted((p for p in rows if not p["delete_at"]), key=lambda p: p["create_at"], reverse=True)
            rows = rows[page * per_page:(page + 1) * per_page]
        posts = {p["id"]: p for p in rows}
        order = [p["id"] for p in rows]
        for p in rows:
            if p["root_id"] and p["root_id"] in self.posts:
                posts.setdefault(p["root_id"], self.posts[p["root_id"]])
        return _json_response({"order": order, "posts": posts, "next_post_id": "", "prev_post_id": "", "has_next": False})

    async def _get_post(self, request: web.Request) -> web.Response:
        return _json_response(self._visible_post(request, request.match_info["post_id"]))

    async def _delete_post_rest(self, request: web.Request) -> web.Response:
        post = self._visible_post(request, request.match_info["post_id"])
        if post["user_id"] != request[USER_ID]:
            raise ApiError(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        await self.delete_post(post["id"])
        return _json_response({"status": "OK"})

    async def _patch_post(self, request: web.Request) -> web.Response:
        post = self._visible_post(request, request.match_info["post_id"])
        body = self._body(request, dict)
        if post["user_id"] != request[USER_ID]:
            raise ApiError(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        message, props = body.get("message"), body.get("props")
        if (message is not None and not isinstance(message, str)) or (props is not None and not isinstance(props, dict)):
            raise ApiError(400, "api.context.invalid_body_param.app_error", "Invalid or missing post in request body.")
        if message is not None and len(message) > MAX_MESSAGE_RUNES:
            raise ApiError(400, "model.post.is_valid.message_length.app_error", "Invalid Message property.")
        now = self._now_ms()
        if message is not None and message != post["message"]:
            post["message"] = message
            post["edit_at"] = now
        if props is not None:
            post["props"] = dict(props)  # replaces the whole map...
            if self.users[post["user_id"]]["is_bot"]:
                post["props"]["from_bot"] = "true"  # ...but the server re-adds from_bot
        if isinstance(body.get("is_pinned"), bool):
            post["is_pinned"] = body["is_pinned"]
        if isinstance(body.get("file_ids"), list):
            post["file_ids"] = body["file_ids"]
        post["update_at"] = now
        self.edits.append((post["id"], post["message"], time.monotonic()))
        await self._broadcast_post_event("post_edited", post)
        return _json_response(post)

    async def _get_thread(self, request: web.Request) -> web.Response:
        requested = self._visible_post(request, request.match_info["post_id"])
        q = request.query
        try:
            per_page = int(q.get("perPage") or 0)
            from_create_at = int(q.get("fromCreateAt") or 0)
        except ValueError:
            raise ApiError(400, "api.context.invalid_url_param.app_error", _BAD_URL_PARAM) from None
        from_post, direction = q.get("fromPost", ""), q.get("direction", "")
        if direction not in ("", "up", "down") or per_page < 0:
            raise ApiError(400, "api.context.invalid_url_param.app_error", _BAD_URL_PARAM)
        return _json_response(self._thread_page(requested, per_page, from_post, from_create_at, direction))

    def _thread_page(self, requested: dict, per_page: int, from_post: str, from_create_at: int,
                     direction: str) -> dict:
        """The non-collapsed PostList exactly as the server's store query builds it."""
        root = requested["root_id"] or requested["id"]
        rows = [p for p in self.posts.values()
                if (p["id"] == root or p["root_id"] == root) and p["delete_at"] == 0]
        if direction:
            rows.sort(key=lambda p: (p["create_at"], p["id"]), reverse=direction == "up")
        else:
            random.shuffle(rows)  # the server uses no ORDER BY here
        if from_create_at:
            # The server's else-branch: anything but "down" pages upwards.
            if direction == "down":
                rows = [p for p in rows if p["create_at"] > from_create_at
                        or (from_post and p["create_at"] == from_create_at and p["id"] > from_post)]
            else:
                rows = [p for p in rows if p["create_at"] < from_create_at
                        or (from_post and p["create_at"] == from_create_at and p["id"] < from_post)]
        has_next = False
        if per_page:
            rows = rows[: per_page + 1]
            if len(rows) == per_page + 1:
                has_next = True
                rows = rows[:-1]
        order, posts = [requested["id"]], {requested["id"]: requested}
        for p in rows:
            if p["id"] != requested["id"]:  # already order[0]
                order.append(p["id"])
                posts[p["id"]] = p
        rest = order[1:]
        if not direction and len(rest) >= 2 and rest == sorted(rest, key=lambda i: (posts[i]["create_at"], i)):
            # Never sorted by luck: a client that forgets to sort must fail every time.
            order[1:] = rest[::-1]
        return {"order": order, "posts": posts, "next_post_id": "", "prev_post_id": "", "has_next": has_next}

    async def _publish_typing(self, request: web.Request) -> web.Response:
        uid = request.match_info["user_id"]
        if uid not in ("me", request[USER_ID]):
            raise ApiError(403, "api.context.permissions.app_error", "You do not have the appropriate permissions.")
        body = self._body(request, dict)
        channel = self._channel_for(request, str(body.get("channel_id") or ""))
        await self._record_typing(request[USER_ID], channel["id"], str(body.get("parent_id") or ""), "rest")
        return _json_response({"status": "OK"})
