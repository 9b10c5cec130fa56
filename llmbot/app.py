"""Wiring and lifecycle: websocket frames -> router -> one serial queue of turns per thread.

Also what keeps promises across faults: the catch-up over REST after every (re)connect, which
rebuilds live conversations from the threads and answers what the socket missed, and the
shutdown that lets answers finish or marks them interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cachetools import TTLCache

from .settings import Settings
from .context import Speaker
from .conversations import ConversationStore, MemoryStore
from .errors import ChatError
from .events import Hello, Posted, parse_frame
from .handler import ChatHandler, ConversationOver, Handler, Turn, TurnAborted
from .llm import OpenAIChat
from .mattermost import Channel, MattermostChat
from .policy import AccessPolicy, OncePer, StartLimiter
from .prompts import PromptTemplate
from .recovery import conversation_state, threads_of, waiting_posts
from .retry import RETRY_BASE, with_retries
from .router import Continue, Decision, End, HandlerSpec, Identity, Ignore, Refuse, Start, Usage, route
from .thread import Post
from .tokens import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

GPT_HANDLER = "gpt"
SHUTDOWN_GRACE = 7.0  # seconds in-flight answers get to finish on SIGTERM...
INTERRUPT_GRACE = 2.5  # ...and then to mark themselves interrupted: 10 s in all, what systemd waits
CATCH_UP_MARGIN_MS = 5_000  # posts reach the socket slightly out of create_at order
CATCH_UP_FETCHES = 4  # channels read at once during a catch-up
MAX_HELD = 10_000  # live posts kept back while a catch-up runs; past that they go straight on
TELL_ONCE_PER = 600.0  # a user hears about a limit once per 10 minutes, not on every message


@dataclass
class _ThreadQueue:
    """Turns waiting for one thread; a single task drains it, so turns never interleave."""

    pending: deque[tuple[Decision, Turn]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    waiting: tuple[Decision, Turn] | None = None  # taken from `pending`, waiting for a slot


class Bot:
    def __init__(
        self,
        settings: Settings,
        chat: MattermostChat,
        llm: OpenAIChat,
        system_prompt: PromptTemplate,
        *,
        store: ConversationStore | None = None,
        tokenizer: Tokenizer | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        edit_interval: float = 1.0,
        retry_base: float = RETRY_BASE,
        shutdown_grace: float = SHUTDOWN_GRACE,
    ) -> None:
        self.settings = settings
        self.chat = chat
        self.llm = llm
        self.system_prompt = system_prompt
        # `is None`, not `or`: an empty MemoryStore has len() 0 and is falsy
        self.store: ConversationStore = (
            store if store is not None else MemoryStore(settings.conversation_ttl, settings.max_bound_threads, clock)
        )
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings.model)
        self.clock = clock
        self.now = now
        self.edit_interval = edit_interval
        self.retry_base = retry_base
        self.shutdown_grace = shutdown_grace
        self.me: Identity | None = None
        self.handlers: dict[str, Handler] = {}
        self._specs: tuple[HandlerSpec, ...] = ()
        self._threads: dict[str, _ThreadQueue] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_turns)
        self._acted: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=3 * 3600, timer=clock)
        self._accepting = True
        self._stop = asyncio.Event()
        # access control and limits
        self.policy = AccessPolicy.from_settings(settings)
        self._starts = StartLimiter(settings.max_starts_per_minute, clock)
        self._told = OncePer(TELL_ONCE_PER, clock)
        self._opened_by: dict[str, set[str]] = {}  # user id -> threads whose conversation they opened
        # catch-up state
        self._live_ms = 0  # newest create_at of any post the websocket delivered
        self._want_since: int | None = None  # a catch-up to run from this time
        self._catch_up: asyncio.Task[None] | None = None
        self._holding = False
        self._held: list[Posted] = []  # live posts kept back while a catch-up reads the gap

    async def start(self) -> Identity:
        """Log in (users/me) and set up the handlers, which need to know the bot's name."""
        me = await self.chat.login()
        self.me = me
        gpt = HandlerSpec(GPT_HANDLER, (self.settings.trigger,), conversational=True)
        speaker = Speaker(me.user_id, me.mention, (self.settings.trigger,))
        self.add_handler(
            ChatHandler(
                gpt,
                chat=self.chat,
                llm=self.llm,
                tokenizer=self.tokenizer,
                system_prompt=self.system_prompt,
                speaker=speaker,
                bot_name=me.username,
                context_tokens=self.settings.max_context_tokens,
                reply_tokens=self.settings.max_reply_tokens,
                max_turns=self.settings.max_turns,
                clock=self.clock,
                now=self.now,
                edit_interval=self.edit_interval,
                retry_base=self.retry_base,
            )
        )
        if self.policy.needs_team_names:
            await self._learn_team_names()
        log.info("logged in as @%s (%s); tokens counted with %s", me.username, me.user_id, self.tokenizer.name)
        return me

    async def _learn_team_names(self) -> None:
        try:
            teams = await self.chat.teams()
        except ChatError as exc:
            log.error("cannot read the bot's teams, so team names in the access lists match nothing yet: %s", exc)
            return
        for team_id, name in teams.items():
            self.policy.learn_team(team_id, name)

    def add_handler(self, handler: Handler) -> None:
        """Register a handler; the first one also answers DMs and @mentions."""
        self.handlers[handler.spec.name] = handler
        self._specs = tuple(h.spec for h in self.handlers.values())

    # ------------------------------------------------------------------ events
    async def on_frame(self, raw: str) -> None:
        """Everything the websocket delivers comes here. Never raises."""
        try:
            await self._on_frame(raw)
        except Exception:  # noqa: BLE001 - one bad frame must not stop the bot
            log.exception("frame skipped after an unexpected error")

    async def _on_frame(self, raw: str) -> None:
        event = parse_frame(raw)
        if not isinstance(event, Posted):
            if isinstance(event, Hello):
                log.info("websocket connected (%s)", event.connection_id)
                self._start_catch_up()
            elif event.malformed:
                log.warning("websocket frame skipped: %s (%d chars)", event.reason, len(raw))
            return
        if self.me is None or not self._accepting:
            return
        if event.post.create_at > self._live_ms:
            self._live_ms = event.post.create_at
        if self._holding and len(self._held) < MAX_HELD:
            self._held.append(event)  # answered after the catch-up, so a thread's posts stay in order
            return
        await self._route(event)

    async def _route(self, event: Posted, *, replayed: bool = False) -> None:
        me = self.me
        if me is None or not self._accepting:
            return
        post = event.post
        binding = await self.store.get(post.root_id) if post.root_id else None
        decision = route(event, me, binding.handler if binding else None, self._specs, self.settings.end_words)
        if isinstance(decision, Ignore):
            return
        if post.id in self._acted:  # seen twice: a replayed event, or a catch-up overlapping the socket
            return
        self._acted[post.id] = True
        if self.policy.wants_team_name(event.team_id):  # a team joined since start-up
            await self._learn_team_names()
        refusal = None if self.policy.is_open else self.policy.refuses(event)
        if refusal is not None:
            log.info("post %s in thread %s not answered: %s", post.id, post.thread_id, refusal)
            decision = self._dm_refusal(event, decision)
        elif isinstance(decision, Start):
            decision = await self._within_limits(event, decision)
        if decision is None:
            return
        self.chat.remember_name(post.user_id, event.sender_name)
        thread_id = post.thread_id
        if isinstance(decision, Start) and self.handlers[decision.handler].spec.conversational:
            await self.store.bind(thread_id, decision.handler, post.user_id)
            self._opened_by.setdefault(post.user_id, set()).add(thread_id)
        elif isinstance(decision, Continue):
            await self.store.touch(thread_id)
        elif isinstance(decision, End):
            await self.store.unbind(thread_id)
        log.info("post %s in thread %s: %s%s", post.id, thread_id, type(decision).__name__.lower(), " (caught up)" if replayed else "")
        self._submit(thread_id, decision, Turn(event, replayed))

    def _dm_refusal(self, event: Posted, decision: Decision) -> Decision | None:
        """With DMs off, a user who writes to the bot hears why it stays silent, once."""
        if event.is_direct and not self.settings.direct_messages and isinstance(decision, (Start, Usage)):
            if self._told.first(("dm", event.post.user_id)):
                call = self._call_word(decision.handler)
                return Refuse(decision.handler, f"I don't answer direct messages here. Call me in a channel with `{call}`.")
        return None

    async def _within_limits(self, event: Posted, decision: Start) -> Decision | None:
        """The per-user limits on opening conversations. Over one, the user is told once."""
        user = event.post.user_id
        limit = self.settings.max_conversations_per_user
        if limit and await self._open_conversations(user) >= limit:
            log.info("user %s is at %d open conversations: not starting another", user, limit)
            if self._told.first(("open", user)):
                ttl = _duration(self.settings.conversation_ttl)
                end = self.settings.end_words[0]
                return Refuse(
                    decision.handler,
                    f"You already have {_conversations(limit)} open with me. End one with `{end}` "
                    f"(or leave it quiet for {ttl}) before starting another.",
                )
            return None
        if not self._starts.allow(user):
            log.info("user %s started %d conversations within a minute: not starting another", user, self.settings.max_starts_per_minute)
            if self._told.first(("rate", user)):
                return Refuse(
                    decision.handler,
                    f"You have started {_conversations(self.settings.max_starts_per_minute)} in the last minute. "
                    "Please wait a moment before starting another.",
                )
            return None
        return decision

    async def _open_conversations(self, user: str) -> int:
        threads = self._opened_by.get(user)
        if not threads:
            return 0
        for thread_id in list(threads):
            binding = await self.store.get(thread_id)
            if binding is None or binding.started_by != user:
                threads.discard(thread_id)  # ended or expired since
        if not threads:
            del self._opened_by[user]
        return len(threads)

    def _call_word(self, handler: str) -> str:
        h = self.handlers.get(handler)
        return h.call_word() if isinstance(h, ChatHandler) else "@" + (self.me.username if self.me else "")

    # ------------------------------------------------------------------ catch-up
    def _start_catch_up(self) -> None:
        """After every (re)connect: read what the socket could not deliver. The first one, at
        start-up, looks back one TTL and so also rebuilds the live conversations."""
        if self.me is None or not self._accepting:
            return
        now_ms = int(self.now().timestamp() * 1000)
        oldest = now_ms - int(self.settings.conversation_ttl * 1000)  # older posts have nothing live
        # From the newest post the socket delivered before it went down: posts of the gap are
        # older than anything it delivers after the reconnect.
        since = max(oldest, self._live_ms - CATCH_UP_MARGIN_MS) if self._live_ms else oldest
        self._want_since = since if self._want_since is None else min(self._want_since, since)
        if self._catch_up is None:
            self._catch_up = asyncio.create_task(self._catch_up_loop())

    async def _catch_up_loop(self) -> None:
        """Catch-ups one after another (a reconnect during one queues the next); a failed one
        is tried again with backoff, live events flowing meanwhile."""
        failures = 0
        try:
            while self._want_since is not None and self._accepting:
                since, self._want_since = self._want_since, None
                self._holding = True
                try:
                    complete = await self._catch_up_once(since)
                except Exception:  # noqa: BLE001 - a failed catch-up must not stop live events
                    log.exception("catch-up failed")
                    complete = False
                finally:
                    self._holding = False
                    await self._release_held()
                if not complete:
                    self._want_since = since if self._want_since is None else min(self._want_since, since)
                    failures += 1
                    delay = min(60.0, self.retry_base * 4 * 2**failures)
                    log.warning("catch-up incomplete; trying again in %.1fs", delay)
                    await asyncio.sleep(delay)
        finally:
            self._catch_up = None

    async def _release_held(self) -> None:
        if not self._accepting:  # stopping: the next start-up's catch-up takes them
            self._held.clear()
            return
        while self._held:
            held, self._held = self._held, []
            for event in held:
                await self._route(event)

    async def _catch_up_once(self, since_ms: int) -> bool:
        """One pass over every channel with posts since `since_ms`. True if nothing failed."""
        started = time.monotonic()
        now_ms = int(self.now().timestamp() * 1000)
        channels = await self._channels()
        if channels is None:
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
        if complete and self._want_since is None and newest > self._live_ms:
            # No reconnect during this pass, so everything up to its reads is covered: the next
            # catch-up needn't look further back than that.
            self._live_ms = newest
        log.info(
            "caught up: %d of %d channel(s) had posts since %s; %d post(s) taken up; %.2fs",
            len(active), len(channels), datetime.fromtimestamp(since_ms / 1000, timezone.utc).strftime("%H:%M:%S"),
            sum(r for r in results if r), time.monotonic() - started,
        )
        return complete

    async def _channels(self) -> list[Channel] | None:
        try:
            return await with_retries(self.chat.channels, "catch-up: listing the bot's channels", attempts=3, base=self.retry_base)
        except ChatError:
            return None

    async def _posts_since(self, channel: Channel, since_ms: int) -> list[Post] | None:
        try:
            posts, truncated = await with_retries(
                lambda: self.chat.posts_since(channel.id, since_ms), f"catch-up: reading channel {channel.id}",
                attempts=3, base=self.retry_base,
            )
        except ChatError:
            return None
        if truncated:
            log.warning("catch-up: channel %s had more posts than the server returns at once; older ones skipped", channel.id)
        return posts

    async def _replay(self, channel: Channel, posts: list[Post], since_ms: int, now_ms: int) -> int:
        """Rebuild the conversations found in `posts` and route the human posts still unanswered."""
        me = self.me
        assert me is not None
        if not posts:
            return 0
        names = await self.chat.usernames({p.user_id for p in posts if p.user_id})
        taken = 0
        for thread in threads_of(posts).values():
            state = conversation_state(thread, me.user_id, now_ms, self.settings.conversation_ttl)
            if state is not None and state.handler in self.handlers and await self.store.get(thread.root_id) is None:
                await self.store.bind(thread.root_id, state.handler, state.started_by, idle=state.idle_seconds)
                self._opened_by.setdefault(state.started_by, set()).add(thread.root_id)
                log.info("thread %s: conversation recovered from the thread (idle %.0fs)", thread.root_id, state.idle_seconds)
            for post in waiting_posts(thread, me.user_id, since_ms):
                if post.id in self._acted:
                    continue
                event = Posted(post, channel.type, channel.name, channel.display_name, names.get(post.user_id, ""), channel.team_id)
                await self._route(event, replayed=True)
                taken += post.id in self._acted
        return taken

    # ------------------------------------------------------------------ turns
    def _submit(self, thread_id: str, decision: Decision, turn: Turn) -> None:
        queue = self._threads.get(thread_id)
        if queue is None:
            queue = self._threads[thread_id] = _ThreadQueue()
        if isinstance(decision, Continue) and queue.pending and isinstance(queue.pending[-1][0], Continue):
            return  # the queued answer reads the thread when it starts, and so sees this post too
        queue.pending.append((decision, turn))
        if queue.task is None:
            queue.task = asyncio.create_task(self._drain(thread_id, queue))

    async def _drain(self, thread_id: str, queue: _ThreadQueue) -> None:
        try:
            while queue.pending:
                decision, turn = queue.waiting = queue.pending.popleft()
                async with self._slots:
                    queue.waiting = None
                    await self._run(thread_id, decision, turn)
        finally:
            self._threads.pop(thread_id, None)

    async def _run(self, thread_id: str, decision: Decision, turn: Turn) -> None:
        handler = self.handlers[decision.handler]  # type: ignore[union-attr]
        try:
            await handler.handle(decision, turn)
        except ConversationOver as exc:
            log.info("%s; conversation closed", exc)
            await self.store.unbind(thread_id)
            return
        except TurnAborted as exc:
            log.warning("%s; conversation unbound", exc)
            await self.store.unbind(thread_id)
            return
        except ChatError as exc:
            log.warning("thread %s: Mattermost refused a call: %s", thread_id, exc)
        except Exception:  # noqa: BLE001 - a handler bug costs one turn, not the bot
            log.exception("thread %s: handler %s failed", thread_id, handler.spec.name)
        if isinstance(decision, (Start, Continue)):
            await self.store.touch(thread_id)  # the TTL counts from the end of the answer

    async def idle(self) -> None:
        """Wait until no turn is queued or running and no catch-up runs (tests and shutdown use it)."""
        while self._threads or self._catch_up is not None:
            tasks = [q.task for q in list(self._threads.values()) if q.task]
            if self._catch_up is not None:
                tasks.append(self._catch_up)
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask run() to stop, as SIGTERM does."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or stop()), then drain. Raises ChatAuthError when
        Mattermost stops accepting the bot's token."""
        try:
            await self.start()
            await self._serve()
        finally:
            await self.chat.close()
            await self.llm.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        if sys.platform != "win32":  # asyncio has no signal handlers there; Ctrl-C still stops the bot
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(RuntimeError):  # not the main thread (embedded use): no handlers
                    loop.add_signal_handler(sig, self._stop.set)
        listener = asyncio.create_task(self.chat.listen(self.on_frame))
        stopper = asyncio.create_task(self._stop.wait())
        await asyncio.wait({listener, stopper}, return_when=asyncio.FIRST_COMPLETED)
        self._accepting = False
        stopper.cancel()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(listener, return_exceptions=True)
        await self.drain()
        if listener.done() and not listener.cancelled() and listener.exception() is not None:
            raise listener.exception()  # type: ignore[misc]  # a refused token: the process must fail

    async def drain(self) -> None:
        """Stop taking turns; give running answers `shutdown_grace` seconds, then cut them
        short with a word in their posts (and a notice on queued ones). Bounded: ~10 s."""
        self._accepting = False
        if self._catch_up is not None:
            self._catch_up.cancel()
        queues = list(self._threads.values())
        log.info("stopping: no new turns; waiting up to %.0fs for %d thread(s)", self.shutdown_grace, len(queues))
        tasks = {q.task for q in queues if q.task}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.shutdown_grace)
        if not late:
            return
        queued = [(d, t) for q in queues if q.task in late for d, t in ([q.waiting] if q.waiting else []) + list(q.pending)]
        for q in queues:
            q.pending.clear()
        log.warning("stopping: %d answer(s) cut short, %d queued turn(s) not answered", len(late), len(queued))
        for task in late:
            task.cancel()  # each running answer marks its post interrupted (handler.answer)
        notices = [
            asyncio.create_task(interrupted(turn))
            for decision, turn in queued
            if isinstance(decision, (Start, Continue))
            and (interrupted := getattr(self.handlers[decision.handler], "interrupted", None)) is not None
        ]
        await asyncio.wait(late | set(notices), timeout=INTERRUPT_GRACE)


def _conversations(n: int) -> str:
    return f"{n} conversation" if n == 1 else f"{n} conversations"


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds >= 60:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds)} s"
