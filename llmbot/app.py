"""Wiring and lifecycle: websocket frames -> router -> one serial queue of turns per thread."""

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

from .config import Settings
from .context import Speaker
from .conversations import ConversationStore, MemoryStore
from .errors import ChatError
from .events import Hello, Posted, parse_frame
from .handler import ChatHandler, Handler, Turn, TurnAborted
from .mattermost import MattermostChat
from .llm import OpenAIChat
from .prompts import PromptTemplate
from .router import Continue, Decision, End, HandlerSpec, Identity, Ignore, Start, route
from .tokens import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

GPT_HANDLER = "gpt"
SHUTDOWN_GRACE = 8.0  # seconds in-flight turns get to finish on SIGTERM


@dataclass
class _ThreadQueue:
    """Turns waiting for one thread; a single task drains it, so turns never interleave."""

    pending: deque[tuple[Decision, Turn]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


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
        self.me: Identity | None = None
        self.handlers: dict[str, Handler] = {}
        self._specs: tuple[HandlerSpec, ...] = ()
        self._threads: dict[str, _ThreadQueue] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_turns)
        self._acted: TTLCache[str, bool] = TTLCache(maxsize=100_000, ttl=3 * 3600, timer=clock)
        self._accepting = True

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
                clock=self.clock,
                now=self.now,
                edit_interval=self.edit_interval,
            )
        )
        log.info("logged in as @%s (%s); tokens counted with %s", me.username, me.user_id, self.tokenizer.name)
        return me

    def add_handler(self, handler: Handler) -> None:
        """Register a handler; the first one also answers DMs and @mentions."""
        self.handlers[handler.spec.name] = handler
        self._specs = tuple(h.spec for h in self.handlers.values())

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
            elif event.malformed:
                log.warning("websocket frame skipped: %s (%d chars)", event.reason, len(raw))
            return
        me = self.me
        if me is None or not self._accepting:
            return
        post = event.post
        binding = await self.store.get(post.root_id) if post.root_id else None
        decision = route(event, me, binding.handler if binding else None, self._specs, self.settings.end_words)
        if isinstance(decision, Ignore):
            return
        if post.id in self._acted:  # a replayed event: reconnects can deliver a post twice
            return
        self._acted[post.id] = True
        self.chat.remember_name(post.user_id, event.sender_name)
        thread_id = post.thread_id
        if isinstance(decision, Start) and self.handlers[decision.handler].spec.conversational:
            await self.store.bind(thread_id, decision.handler, post.user_id)
        elif isinstance(decision, Continue):
            await self.store.touch(thread_id)
        elif isinstance(decision, End):
            await self.store.unbind(thread_id)
        log.info("post %s in thread %s: %s", post.id, thread_id, type(decision).__name__.lower())
        self._submit(thread_id, decision, Turn(event))

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
                decision, turn = queue.pending.popleft()
                async with self._slots:
                    await self._run(thread_id, decision, turn)
        finally:
            self._threads.pop(thread_id, None)

    async def _run(self, thread_id: str, decision: Decision, turn: Turn) -> None:
        handler = self.handlers[decision.handler]  # type: ignore[union-attr]
        try:
            await handler.handle(decision, turn)
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
        """Wait until no turn is queued or running (tests and shutdown use it)."""
        while self._threads:
            await asyncio.gather(*(q.task for q in list(self._threads.values()) if q.task), return_exceptions=True)

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then let in-flight turns finish (bounded)."""
        try:
            await self.start()
            await self._serve()
        finally:
            await self.chat.close()
            await self.llm.close()

    async def _serve(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if sys.platform != "win32":  # asyncio has no signal handlers there; Ctrl-C still stops the bot
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(RuntimeError):  # not the main thread (embedded use): no handlers
                    loop.add_signal_handler(sig, stop.set)
        listener = asyncio.create_task(self.chat.listen(self.on_frame))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({listener, stopper}, return_when=asyncio.FIRST_COMPLETED)
        log.info("stopping: no new turns; waiting up to %.0fs for %d thread(s)", SHUTDOWN_GRACE, len(self._threads))
        self._accepting = False
        listener.cancel()
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
        try:
            await asyncio.wait_for(self.idle(), SHUTDOWN_GRACE)
        except asyncio.TimeoutError:
            log.warning("stopped with %d thread(s) still answering", len(self._threads))
