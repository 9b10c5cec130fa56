"""What the socket missed, read over REST after every (re)connect and replayed in order.

The first catch-up, at start-up, looks back the longest conversation timeout and so also rebuilds
the live conversations from the threads (record.py), every one of a thread's stacked ones. Later
ones look back from the newest post the socket delivered. Live posts are held by the dispatcher
meanwhile; each pass ends by releasing them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from . import metrics
from .dispatcher import Dispatcher
from .dm_flow import dm_threads
from .errors import ChatError
from .events import Posted
from .handlers.base import Handler
from .ports import Channel, ChatAPI
from .record import active_conversations, threads_of, waiting_posts
from .retry import RETRY_BASE, with_retries
from .store.base import Store
from .thread import Post, Thread

log = logging.getLogger(__name__)

CATCH_UP_MARGIN_MS = 5_000  # posts reach the socket slightly out of create_at order
CATCH_UP_FETCHES = 4  # channels read at once during a catch-up
ATTEMPTS = 3  # tries of each read of a pass; a failed pass is tried again with backoff


class CatchUp:
    def __init__(
        self,
        chat: ChatAPI,
        dispatcher: Dispatcher,
        store: Store,
        handlers: Mapping[str, Handler],
        *,
        me_id: str,
        ttl: float,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_base: float = RETRY_BASE,
    ) -> None:
        self.chat = chat
        self.dispatcher = dispatcher
        self.store = store
        self.handlers = handlers
        self.me_id = me_id
        self.ttl = ttl
        self.now = now
        self.retry_base = retry_base
        self._want_since: int | None = None  # a catch-up to run from this time
        self.task: asyncio.Task[None] | None = None
        self.recovered = 0  # conversations rebuilt from the threads by the current pass

    def request(self, live_ms: int) -> None:
        """A (re)connect: read from the newest post the socket delivered before it went down
        (posts of the gap are older than anything it delivers after), at most one TTL back."""
        now_ms = int(self.now().timestamp() * 1000)
        oldest = now_ms - int(self._longest_ttl() * 1000)  # older posts have nothing live
        since = max(oldest, live_ms - CATCH_UP_MARGIN_MS) if live_ms else oldest
        self._want(since)
        if self.task is None:
            self.task = asyncio.create_task(self._loop())

    def _timeout_in(self, thread_id: str) -> Callable[[str], float | None]:
        """The timeout of a handler's conversations, for record.active_conversations; None for a
        handler that holds none or is not loaded (any more)."""

        def timeout_for(name: str) -> float | None:
            handler = self.handlers.get(name)
            if handler is None:
                log.debug("thread %s: conversations of handler %r not recovered: no such handler", thread_id, name)
                return None
            if not handler.spec.conversational:
                return None
            own = handler.spec.conversation_timeout
            return self.ttl if own is None else own

        return timeout_for

    def _longest_ttl(self) -> float:
        """How far back a conversation can still be live: the longest of every handler's timeout."""
        own = [h.spec.conversation_timeout for h in self.handlers.values() if h.spec.conversation_timeout is not None]
        return max([self.ttl, *own])

    def _want(self, since: int) -> None:
        self._want_since = since if self._want_since is None else min(self._want_since, since)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _loop(self) -> None:
        """Passes one after another (a reconnect during one queues the next); a failed one is
        tried again with backoff, live events flowing meanwhile."""
        failures = 0
        try:
            while self._want_since is not None and self.dispatcher.accepting:
                since, self._want_since = self._want_since, None
                self.dispatcher.hold()
                try:
                    complete = await self._pass(since)
                except Exception:
                    log.exception("catch-up failed")
                    complete = False
                overflow, self.dispatcher.overflow_ms = self.dispatcher.overflow_ms, None
                if overflow is not None:  # live posts beyond what could be held: read them again
                    self._want(overflow - CATCH_UP_MARGIN_MS)
                if not complete:
                    self._want(since)
                    failures += 1
                if not complete or self._want_since is None:  # (else the next pass follows at once: keep holding)
                    await self.dispatcher.release()
                if not complete:
                    delay = min(60.0, self.retry_base * 4 * 2**failures)
                    log.warning("catch-up incomplete; trying again in %.1fs", delay)
                    await asyncio.sleep(delay)
        finally:
            self.task = None

    async def _pass(self, since_ms: int) -> bool:
        """One pass over every channel with posts since `since_ms`. True if nothing failed."""
        started = time.monotonic()
        self.recovered = 0
        now_ms = int(self.now().timestamp() * 1000)
        try:
            channels = await with_retries(
                self.chat.channels, "catch-up: listing the bot's channels", attempts=ATTEMPTS, base=self.retry_base
            )
        except ChatError:
            return False
        active = [c for c in channels if c.last_post_at > since_ms]
        fetches = asyncio.Semaphore(CATCH_UP_FETCHES)
        newest = 0

        async def catch_up(channel: Channel) -> int | None:
            nonlocal newest
            async with fetches:
                posts = await self._posts_since(channel, since_ms)
            if posts is None:
                return None
            if posts:
                newest = max(newest, posts[-1].create_at)
            return await self._replay(channel, posts, since_ms, now_ms)  # one channel at a time in memory

        results = await asyncio.gather(*(catch_up(c) for c in active))
        complete = None not in results
        if complete and self._want_since is None and newest > self.dispatcher.live_ms:
            # No reconnect during this pass, so everything up to its reads is covered: the next
            # catch-up needn't look further back than that.
            self.dispatcher.live_ms = newest
        log.info(
            "caught up: %d of %d channel(s) had posts since %s; %d conversation(s) recovered, %d post(s) taken up; %.2fs",
            len(active), len(channels), datetime.fromtimestamp(since_ms / 1000, UTC).strftime("%H:%M:%S"),
            self.recovered, sum(r for r in results if r), time.monotonic() - started,
        )
        return complete

    async def _posts_since(self, channel: Channel, since_ms: int) -> list[Post] | None:
        try:
            posts, truncated = await with_retries(
                lambda: self.chat.posts_since(channel.id, since_ms), f"catch-up: reading channel {channel.id}",
                attempts=ATTEMPTS, base=self.retry_base,
            )
        except ChatError:
            return None
        if truncated:
            log.warning("catch-up: channel %s had more posts than the server returns at once; older ones skipped", channel.id)
        return posts

    async def _replay(self, channel: Channel, posts: list[Post], since_ms: int, now_ms: int) -> int:
        """Rebuild the conversations found in `posts` and route the human posts still unanswered."""
        if not posts:
            return 0
        names = await self.chat.usernames({p.user_id for p in posts if p.user_id})
        taken = 0
        threads = threads_of(posts)
        if channel.type == "D":  # its root posts are one running conversation (dm_flow.py)
            threads = dm_threads(threads, channel.id)
        for key, thread in threads.items():
            if await self.store.get(key) is None:  # (else the store knows the thread: a reconnect)
                await self._recover(key, thread, now_ms)
            for post in waiting_posts(thread, self.me_id, since_ms):
                sender = names.get(post.user_id, "")
                event = Posted(post, channel.type, channel.name, channel.display_name, sender, channel.team_id)
                taken += await self.dispatcher.dispatch(event, replayed=True)
        metrics.caught_up(taken)  # llmbot_catch_up_posts_total
        return taken

    async def _recover(self, key: str, thread: Thread, now_ms: int) -> None:
        """Bind every conversation live in the thread (`key`: its root, or a DM), the least recently
        active first, so that the most recently active ends up on top (the store puts the newest first)."""
        found = active_conversations(thread, self.me_id, self._timeout_in(key), now_ms)
        for conversation in reversed(found):
            await self.store.bind(
                key, conversation.handler, conversation.started_by, conversation.conversation,
                idle=conversation.idle_seconds, ttl=self.handlers[conversation.handler].spec.conversation_timeout,
            )
            log.debug(
                "thread %s: conversation %s of %s recovered from the thread (idle %.0fs)",
                key, conversation.conversation, conversation.handler, conversation.idle_seconds,
            )
        self.recovered += len(found)
