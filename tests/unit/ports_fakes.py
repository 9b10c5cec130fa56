"""In-memory fakes of the ports (llmbot/ports.py) for unit tests: FakeChat, FakeLLM, FakeClock.

They keep what the core needs to be checked against and nothing more:

- FakeChat: posts in memory (ids, create_at counting up, from_bot on the bot's posts), the
  server's pending_post_id de-duplication for `pending_window` seconds of an injected clock, a
  create that "loses its response" (the post is made, then ChatUnavailable), scripted failures
  per method, and a record of every call that a test can wait on.
- FakeLLM: scripted replies (chunks, an error after n chunks, holds the test releases), the
  requests it was given and how many streams were ever open at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from llmbot.context import ChatMessage
from llmbot.dm_flow import read_running
from llmbot.errors import ChatBadRequest, ChatNotFound, ChatUnavailable
from llmbot.ports import Channel, ChatAPI, LLMClient
from llmbot.record import PROP_KIND
from llmbot.router import Identity
from llmbot.streaming import MAX_POST_RUNES
from llmbot.thread import Post, Thread, thread_from_posts
from llmbot.triggers import mention_pattern

from .payloads import ALICE_ID, BOT_ID, BOT_NAME, TOWN_SQUARE_ID, USERNAMES

T = TypeVar("T")

SAFETY_NET = 5.0  # seconds: only a hung test ever waits this long
PENDING_POST_TTL = 30.0  # the server's pendingPostIDsCacheTTL


async def within(awaitable: Awaitable[T], seconds: float = SAFETY_NET) -> T:
    """`await awaitable`, failing the test instead of hanging it when it never completes.

    Not asyncio.wait_for: when the cancelled awaitable ends some other way than by
    CancelledError (say, a bug's exception turned into a notice), wait_for returns its result
    as if nothing were late. Here being late always fails."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise AssertionError(f"still not done after {seconds:g} s")
    return task.result()


@dataclass
class FakeClock:
    """Monotonic seconds that move only when a test (or a sleep through `sleep`) moves them."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """A sleep that takes no real time: the clock jumps by what was asked."""
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class _Lose:
    """Script marker: the call does its work, then its response is lost."""


LOST = _Lose()


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    args: tuple[Any, ...]


class FakeChat:
    """ChatAPI in memory. The bot is `me_id`; posts made through create_post are the bot's."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        me_id: str = BOT_ID,
        username: str = BOT_NAME,
        pending_window: float = PENDING_POST_TTL,
        max_runes: int = MAX_POST_RUNES,
    ) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self.me_id = me_id
        self.username = username
        self.pending_window = pending_window
        self.max_runes = max_runes
        self.posts: dict[str, Post] = {}  # id -> post, in the order they were made
        self.names: dict[str, str] = dict(USERNAMES)
        self.team_names: dict[str, str] = {}
        self.channel_list: list[Channel] = []
        self.calls: list[Call] = []
        self.typing: list[tuple[str, str]] = []
        self.reactions: list[tuple[str, str]] = []  # (post id, emoji name)
        self.closed = False
        self._script: dict[str, deque[BaseException | _Lose]] = {}  # per method, in the order scripted
        self._pending: dict[str, tuple[str, float]] = {}  # pending_post_id -> (post id, when saved)
        self._ids = itertools.count(1)
        self._last_ms = 1_800_000_000_000
        self._changed = asyncio.Condition()
        self._frames: asyncio.Queue[str | None] = asyncio.Queue()

    # ------------------------------------------------------------------ scripting
    def fail_next(self, method: str, exc: BaseException, times: int = 1) -> None:
        """The next `times` calls of `method` raise `exc` (after being recorded). Scripted
        outcomes of a method (these and lost responses) come in the order they were scripted."""
        self._script.setdefault(method, deque()).extend([exc] * times)

    def lose_next_create(self, times: int = 1) -> None:
        """The next `times` creates make their post, then raise ChatUnavailable: the response was lost."""
        self._script.setdefault("create_post", deque()).extend([LOST] * times)

    def seed(self, message: str, *, user_id: str = ALICE_ID, root_id: str = "", channel_id: str = TOWN_SQUARE_ID,
             props: dict[str, Any] | None = None) -> Post:
        """A post somebody already wrote (not a call of the bot's)."""
        return self._save(channel_id, message, root_id, user_id, props or {})

    def push_frame(self, raw: str | None) -> None:
        """A websocket frame for `listen` to deliver (None ends it)."""
        self._frames.put_nowait(raw)

    # ------------------------------------------------------------------ looking
    def thread_posts(self, root_id: str) -> list[Post]:
        return [p for p in self.posts.values() if p.id == root_id or p.root_id == root_id]

    def bot_posts(self, root_id: str) -> list[Post]:
        """The bot's posts in a thread, oldest first."""
        return [p for p in self.thread_posts(root_id) if p.user_id == self.me_id]

    def notices(self, root_id: str) -> list[Post]:
        return [p for p in self.bot_posts(root_id) if p.props.get(PROP_KIND) == "notice"]

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def until(self, predicate: Callable[[], bool], seconds: float = SAFETY_NET) -> None:
        """Wait until `predicate()` holds; it is checked after every call the fake records."""
        async with asyncio.timeout(seconds), self._changed:
            await self._changed.wait_for(predicate)

    async def until_calls(self, method: str, count: int) -> None:
        await self.until(lambda: len(self.calls_of(method)) >= count)

    # ------------------------------------------------------------------ ChatAPI
    async def login(self) -> Identity:
        await self._enter("login")
        return Identity(self.me_id, self.username, mention_pattern(self.username))

    async def listen(self, on_frame: Callable[[str], Awaitable[None]]) -> None:
        await self._enter("listen")
        while (raw := await self._frames.get()) is not None:
            await on_frame(raw)

    async def close(self) -> None:
        self.closed = True
        self._frames.put_nowait(None)

    async def get_thread(self, root_id: str) -> Thread:
        await self._enter("get_thread", root_id)
        if root_id not in self.posts:
            raise ChatNotFound(f"post {root_id} not found")
        return thread_from_posts(root_id, self.thread_posts(root_id))

    async def recent_thread(self, root_id: str, enough: Callable[[Sequence[Post]], bool]) -> Thread:
        """The root and the newest replies, newest first until `enough` (all at once: no pages here)."""
        await self._enter("recent_thread", root_id)
        if root_id not in self.posts:
            raise ChatNotFound(f"post {root_id} not found")
        return thread_from_posts(root_id, self.thread_posts(root_id))

    async def recent_roots(
        self, channel_id: str, enough: Callable[[Sequence[Post]], bool], began_after: Callable[[Post, Post], bool]
    ) -> Thread:
        """A DM's running conversation, read as dm_flow reads it (one page holding everything)."""
        await self._enter("recent_roots", channel_id)
        posts = [p for p in self.posts.values() if p.channel_id == channel_id]

        async def page_of(number: int) -> list[Post]:
            return posts if number == 0 else []

        return await read_running(page_of, enough, began_after, page_size=len(posts) + 1)

    async def usernames(self, user_ids: Iterable[str]) -> dict[str, str]:
        ids = set(user_ids)
        await self._enter("usernames", ids)
        return {u: self.names[u] for u in ids if u in self.names}

    def remember_name(self, user_id: str, username: str) -> None:
        self.calls.append(Call("remember_name", (user_id, username)))
        if username:
            self.names[user_id] = username

    async def create_post(
        self, channel_id: str, message: str, root_id: str, props: dict[str, Any], pending_id: str = ""
    ) -> Post:
        lost = await self._enter("create_post", channel_id, message, root_id, dict(props), pending_id)
        now = self.clock()
        for stale in [p for p, (_, saved) in self._pending.items() if now - saved >= self.pending_window]:
            del self._pending[stale]
        if pending_id in self._pending:  # the server's deduplicateCreatePost: the same post again
            post = self.posts[self._pending[pending_id][0]]
        else:
            if len(message) > self.max_runes:
                raise ChatBadRequest(f"message is {len(message)} runes, over {self.max_runes}")
            if root_id and root_id not in self.posts:
                raise ChatBadRequest(f"invalid root id {root_id}")
            post = self._save(channel_id, message, root_id, self.me_id, {**props, "from_bot": "true"})
            if pending_id:
                self._pending[pending_id] = (post.id, now)
        if lost:
            raise ChatUnavailable("connection reset while reading the response")
        return post

    async def patch_post(self, post_id: str, message: str) -> None:
        await self._enter("patch_post", post_id, message)
        old = self.posts.get(post_id)
        if old is None:
            raise ChatNotFound(f"post {post_id} not found")
        if len(message) > self.max_runes:
            raise ChatBadRequest(f"message is {len(message)} runes, over {self.max_runes}")
        self._last_ms += 1
        self.posts[post_id] = old._replace(message=message, edit_at=self._last_ms)

    async def send_typing(self, channel_id: str, parent_id: str) -> None:
        await self._enter("send_typing", channel_id, parent_id)
        self.typing.append((channel_id, parent_id))

    async def add_reaction(self, post_id: str, emoji_name: str) -> None:
        await self._enter("add_reaction", post_id, emoji_name)
        if post_id not in self.posts:
            raise ChatNotFound(f"post {post_id} not found")
        self.reactions.append((post_id, emoji_name))

    async def channels(self) -> list[Channel]:
        await self._enter("channels")
        return list(self.channel_list)

    async def posts_since(self, channel_id: str, since_ms: int) -> tuple[list[Post], bool]:
        await self._enter("posts_since", channel_id, since_ms)
        found = [p for p in self.posts.values() if p.channel_id == channel_id and p.create_at > since_ms]
        return sorted(found, key=lambda p: p.create_at), False

    async def teams(self) -> dict[str, str]:
        await self._enter("teams")
        return dict(self.team_names)

    # ------------------------------------------------------------------ internals
    async def _enter(self, method: str, *args: Any) -> bool:
        """Record the call, wake whoever waits on calls, then raise a scripted failure if any.
        True if the call is to lose its response."""
        self.calls.append(Call(method, args))
        async with self._changed:
            self._changed.notify_all()
        script = self._script.get(method)
        outcome = script.popleft() if script else None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome is LOST

    def _save(self, channel_id: str, message: str, root_id: str, user_id: str, props: dict[str, Any]) -> Post:
        self._last_ms += 1
        post = Post(
            id=f"fake{next(self._ids):022d}", channel_id=channel_id, user_id=user_id, root_id=root_id,
            message=message, create_at=self._last_ms, props=props,
        )
        self.posts[post.id] = post
        return post


# ---------------------------------------------------------------------------------- the LLM
@dataclass(frozen=True, slots=True)
class Request:
    messages: list[ChatMessage]
    max_tokens: int
    near_limit: bool


@dataclass(eq=False)
class ScriptedReply:
    """One answer FakeLLM streams. Held at each of `hold_at` (a number of chunks already yielded)
    until the test calls release(); `holding` is set while it waits there."""

    chunks: list[str]
    raises: BaseException | None = None
    after: int | None = None  # chunks yielded before `raises` (None: all of them)
    hold_at: frozenset[int] = frozenset()
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    yielded: int = 0
    _go: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self) -> None:
        """Let a held stream go on (to its next hold, or its end)."""
        self.holding.clear()
        self._go.set()

    async def _hold(self) -> None:
        self.holding.set()
        await self._go.wait()
        self._go.clear()


class FakeLLM:
    """LLMClient with scripted replies, taken in the order the streams are asked for."""

    def __init__(self) -> None:
        self.replies: deque[ScriptedReply] = deque()
        self.requests: list[Request] = []
        self.open = 0  # streams open now
        self.max_open = 0  # most streams ever open at once
        self.closed = False

    def enqueue(
        self,
        chunks: Sequence[str] = (),
        *,
        raises: BaseException | None = None,
        after: int | None = None,
        hold_at: int | Iterable[int] = (),
    ) -> ScriptedReply:
        """Script the next reply: its chunks, an error after `after` chunks (default: all), and
        where it is held open until the test releases it."""
        holds = frozenset([hold_at] if isinstance(hold_at, int) else hold_at)
        reply = ScriptedReply(list(chunks), raises, after, holds)
        self.replies.append(reply)
        return reply

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, *, near_limit: bool = False
    ) -> AsyncGenerator[str, None]:
        self.requests.append(Request(list(messages), max_tokens, near_limit))
        reply = self.replies.popleft() if self.replies else None
        return self._play(reply)

    async def _play(self, reply: ScriptedReply | None) -> AsyncGenerator[str, None]:
        if reply is None:
            raise AssertionError("FakeLLM: a stream was asked for with no reply enqueued")
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        reply.opened.set()
        try:
            fail_at = len(reply.chunks) if reply.after is None else min(reply.after, len(reply.chunks))
            for i in range(len(reply.chunks) + 1):
                if i in reply.hold_at:
                    await reply._hold()
                if reply.raises is not None and i == fail_at:
                    raise reply.raises
                if i == len(reply.chunks):
                    break
                yield reply.chunks[i]
                reply.yielded += 1
        finally:
            self.open -= 1
            reply.closed.set()

    async def close(self) -> None:
        self.closed = True


def _implements_the_ports(chat: FakeChat, llm: FakeLLM) -> tuple[ChatAPI, LLMClient]:
    """For mypy: the fakes stand in for the ports as they are declared (a port gaining a method fails here)."""
    return chat, llm
