"""The reply writer: everything one turn posts into its thread, and how. Handlers write
through it and never call Mattermost themselves.

Pages of a long answer, idempotent creates (creates.py), throttled streaming edits, the one
closing post a turn may end with (a notice, a goodbye), the mark an interrupted answer gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from . import usage
from .creates import Create, IdempotentCreator, new_pending_id
from .errors import ChatError, ChatRateLimited, ContextTooLong, LLMError, TurnAborted
from .notices import llm_failed
from .ports import ChatAPI
from .rate_budget import edit_pace, streaming_edit
from .record import KIND_ANSWER, KIND_NOTICE, STATUS_LINE, checked_state, props_for
from .retry import ATTEMPTS, FINAL, RETRY_BASE, with_retries
from .streaming import EditThrottle, ReplyPages, defuse_broadcasts, read_into
from .typing_indicator import typing_shown

log = logging.getLogger(__name__)
T = TypeVar("T")

INTERRUPT_BUDGET = 2.0  # seconds a turn cut short by shutdown gets to say so in its post

INTERRUPTED_MARK = "⚠️ Interrupted: I was restarted before I could finish. Ask again to continue."
INTERRUPTED_NOTICE = "⚠️ I was restarted before I could answer this. Please ask again."


@dataclass(frozen=True, slots=True)
class Where:
    """The thread a turn writes into, and who the bot is there."""

    channel_id: str
    thread_id: str
    me_id: str
    handler: str
    conversation: str = ""


class ReplyWriter:
    """Posts of one turn. `answers` is the human post the turn answers (it may move to a newer
    post of the thread before anything is posted)."""

    def __init__(
        self,
        chat: ChatAPI,
        where: Where,
        answers: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        edit_interval: float = 1.0,
        deadline: float | None = None,
        retry_base: float = RETRY_BASE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.chat = chat
        self.where = where
        self.answers = answers
        self.clock = clock
        self.edit_interval = edit_interval
        self.deadline = deadline
        self.retry_base = retry_base
        self.sleep = sleep
        self.pages = ReplyPages()
        self.posted: list[tuple[str, str]] = []  # (post id, text it shows), one per page
        self._creates: list[Create] = []  # one per page
        # The one short post (message, kind) the turn ends with instead of an answer, once it is
        # on its way: a shutdown then finishes that post rather than adding another.
        self.closing: tuple[str, str, Create] | None = None
        self.closed = False  # the closing post was made
        self.turn: int | None = None  # which turn of its conversation this is, once the handler knows
        self.state: dict[str, Any] | None = None
        self._creator = IdempotentCreator(chat, where.channel_id, where.thread_id, where.me_id, clock)
        self._meter: usage.Meter | None = None  # of the answer stream() reads

    # ------------------------------------------------------------------ state
    @property
    def has_text(self) -> bool:
        return bool(self.pages.text.strip())

    @property
    def thread_id(self) -> str:
        return self.where.thread_id

    def fork(self) -> ReplyWriter:
        """A writer for one more post of the same turn (a plugin may reply several times)."""
        other = ReplyWriter(
            self.chat, self.where, self.answers, clock=self.clock, edit_interval=self.edit_interval,
            deadline=self.deadline, retry_base=self.retry_base, sleep=self.sleep,
        )
        other.turn = self.turn
        return other

    def remember(self, state: Mapping[str, Any] | None) -> None:
        """Keep `state` in the props of this turn's posts (StateError if it is not a JSON object of
        at most 32 KB); record.state_of reads it back next turn."""
        self.state = None if state is None else checked_state(state)

    def _props(self, kind: str, page: int | None = None) -> dict[str, Any]:
        w = self.where
        turn = self.turn if kind in (KIND_ANSWER, KIND_NOTICE) else None
        state = self.state if not page else None  # on the answer's first post (or its closing post)
        return props_for(w.handler, kind, self.answers, w.conversation, page, turn, state)

    async def retrying(self, call: Callable[[], Awaitable[T]], what: str, attempts: int = ATTEMPTS) -> T:
        """A Mattermost call retried within the turn's deadline."""
        return await with_retries(
            call, what, attempts=attempts, base=self.retry_base, deadline=self.deadline, clock=self.clock, sleep=self.sleep
        )

    # ------------------------------------------------------------------ closing posts
    async def post(self, message: str, kind: str, *, attempts: int = ATTEMPTS) -> None:
        """End the turn with one short post (a goodbye, a hint, a refusal), never made twice."""
        if self.closing is None or self.closing[:2] != (message, kind):
            self.closing = (message, kind, Create(new_pending_id(self.where.me_id)))
        create = self.closing[2]
        props = self._props(kind)
        try:
            what = f"thread {self.thread_id}: posting"
            await self.retrying(lambda: self._creator.create(message, props, create), what, attempts)
        except FINAL as exc:
            raise TurnAborted(f"thread {self.thread_id} is gone: {exc}") from exc
        self.closed = True
        log.info("thread %s: %s posted (answers post %s)", self.thread_id, kind, self.answers)

    async def notice(self, message: str, cause: str | None) -> None:
        """Best effort: a short notice in the thread, and a log line with its cause (None: logged
        already, where it happened). When a page's create went out and its answer never came back,
        the page may exist: found, it is brought up to date instead, and no notice stands beside it."""
        if cause is not None:
            log.warning("thread %s: notice (%s): %s", self.thread_id, cause, message)
        if await self._adopt_lost_pages() and await self.deliver():
            log.info("thread %s: the answer's posts were found after all; no notice needed", self.thread_id)
            return
        try:
            await self.post(message, KIND_NOTICE)
        except ChatError as exc:
            log.warning("thread %s: notice not posted: %s", self.thread_id, exc)

    async def _adopt_lost_pages(self) -> bool:
        """Find the posts of pages whose create went out unconfirmed; True if any was found."""
        if len(self._creates) <= len(self.posted):
            return False
        wanted = [self._props(KIND_ANSWER, page) for page in range(len(self.posted), len(self._creates))]
        try:
            found = await self.retrying(lambda: self._creator.find(wanted), f"thread {self.thread_id}: reading it", 2)
        except ChatError:
            return False
        self.posted.extend((post.id, post.message) for post in found)  # what they show; the next sync patches them
        return bool(found)

    async def fail(self, message: str, cause: str | None) -> None:
        """The answer can't be finished: say so under the partial text (one post, not two), or
        in a notice of its own when there is no text or it can't be posted. `cause` None: logged already."""
        if self.has_text:
            log.warning("thread %s: answer cut short after %d chars%s%s", self.thread_id, len(self.pages.text),
                        f" ({cause})" if cause is not None else "", usage.suffix(self._meter))
            self.pages.add(f"{STATUS_LINE}{message.removeprefix('⚠️ ')}_")
            if await self.deliver():
                return
        await self.notice(message, cause)

    # ------------------------------------------------------------------ answers
    async def stream(self, source: AsyncGenerator[str, None], stop_typing: Callable[[], None] = lambda: None) -> None:
        """Stream `source` into the thread as one answer (pages as needed), then deliver it.

        LLMErrors end the answer with their reason (under the partial text, or as a notice);
        ContextTooLong before any text is raised for the caller to trim and retry; any other
        exception is raised after the partial text is marked (the turn runner logs it).
        """
        throttle = EditThrottle(self.clock, self.edit_interval, edit_pace(self.chat))
        started = self.clock()
        # The source is read in a task of its own, so a slow Mattermost call never stalls it;
        # each post update then takes every delta that has arrived, which also spares a
        # quick answer its edits.
        deltas: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        with usage.metering(self.thread_id, self.answers, self.where.handler, started) as self._meter:  # the reader task's too
            reader = asyncio.create_task(read_into(source, deltas))
        try:
            finished = False
            while not finished:
                batch = [await deltas.get()]
                while not deltas.empty():
                    batch.append(deltas.get_nowait())
                for item in batch:
                    if isinstance(item, BaseException):
                        await self._failed(item)
                        return
                    if item is None:
                        finished = True
                    else:
                        self.pages.add(item)
                if finished or (not self.posted and not self.has_text):
                    continue  # the final update comes below; and never create an empty post
                if not self.posted or throttle.due():
                    stop_typing()
                    await self.try_sync(streaming=True)  # a failed update is retried at the next one
                    throttle.mark()
        finally:
            throttle.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if not self.has_text:
            await self.notice("⚠️ The language model returned an empty answer. Please rephrase or try again.", "empty answer")
            return
        # The answer is all there: its last update gets twice the tries (within the turn's deadline)
        # before a notice would have to stand beside a post that shows only part of it.
        if not await self.deliver(2 * ATTEMPTS):
            await self.notice(
                "⚠️ I could not post the whole answer: Mattermost returned an error. Please try again.", "delivery failed"
            )
            return
        took = self.clock() - started
        log.info(
            "thread %s: answered in %d post(s), %d chars, %.2fs%s", self.thread_id, len(self.posted),
            len(self.pages.text), took, usage.suffix(self._meter), extra=usage.answered(self._meter, took),
        )

    async def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, ContextTooLong) and not self.has_text:
            raise exc
        if isinstance(exc, LLMError):  # its cause is logged once: by the LLM adapter (naming the thread), else here
            await self.fail(llm_failed(exc), None if exc.logged else exc.reason)
        else:
            raise exc

    async def sync(self, *, streaming: bool = False) -> None:
        """Make the posts show the pages: patch changed ones (`streaming`: as edits that yield to
        other calls under the rate budget), create the missing ones."""
        for i, text in enumerate(self.pages.pages):
            if not text.strip():
                continue
            sent = defuse_broadcasts(text)
            if i < len(self.posted):
                post_id, shown = self.posted[i]
                if shown != text:
                    with streaming_edit(streaming):
                        await self.chat.patch_post(post_id, sent)
                    self.posted[i] = (post_id, text)
                continue
            while len(self._creates) <= i:
                self._creates.append(Create(new_pending_id(self.where.me_id)))
            post = await self._creator.create(sent, self._props(KIND_ANSWER, i), self._creates[i])
            self.posted.append((post.id, text))
            usage.shown(self._meter, self.clock())  # the first: llmbot_first_token_seconds

    async def try_sync(self, *, streaming: bool = False) -> bool:
        """sync once, where a passing Mattermost failure is logged (a 429 was, by the adapter) and reported as False."""
        try:
            await self.sync(streaming=streaming)
        except FINAL as exc:
            raise TurnAborted(f"thread {self.thread_id} cannot be answered: {exc}") from exc
        except ChatError as exc:
            if not isinstance(exc, ChatRateLimited):
                log.warning("thread %s: updating the answer failed: %s", self.thread_id, exc)
            return False
        return True

    async def deliver(self, attempts: int = ATTEMPTS) -> bool:
        """sync until it succeeds, with backoff (429s wait as asked); False when it gives up."""
        try:
            await self.retrying(self.sync, f"thread {self.thread_id}: posting the answer", attempts)
        except FINAL as exc:
            raise TurnAborted(f"thread {self.thread_id} cannot be answered: {exc}") from exc
        except ChatError:
            return False
        return True

    # ------------------------------------------------------------------ shutdown
    async def mark_interrupted(self) -> None:
        """Shutdown cut this turn short: leave a word in the thread, within a short budget."""
        try:
            async with asyncio.timeout(INTERRUPT_BUDGET):
                if self.closing is not None:  # a notice (or goodbye) was on its way: finish that one
                    if not self.closed:
                        await self.post(*self.closing[:2], attempts=1)
                elif self.posted or self._creates:  # (a create cut short may have made its post)
                    self.pages.add(f"{STATUS_LINE}{INTERRUPTED_MARK.removeprefix('⚠️ ')}_")
                    await self.sync()
                else:
                    log.warning("thread %s: notice (shutdown): %s", self.thread_id, INTERRUPTED_NOTICE)
                    await self.post(INTERRUPTED_NOTICE, KIND_NOTICE, attempts=1)
        except (ChatError, TurnAborted, TimeoutError) as exc:
            log.warning("thread %s: could not mark the answer as interrupted: %s", self.thread_id, exc)

    def typing(self) -> contextlib.AbstractAsyncContextManager[Callable[[], None]]:
        """Shows "typing..." until the returned stop() is called or the block ends."""
        return typing_shown(self.chat, self.where.channel_id, self.thread_id)

