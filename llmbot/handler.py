"""The built-in chat handler: one turn = fetch the thread, build the context, stream the answer."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from .context import ChatMessage, Speaker, build_messages, participants
from .errors import ChatError, ContextTooLong, LLMError
from .events import Posted
from .policy import turns_in_conversation
from .ports import ChatAPI, LLMClient
from .prompts import PromptTemplate
from .recovery import already_answered, newest_human_post
from .retry import ATTEMPTS, FINAL, RETRY_BASE, with_retries
from .router import Continue, Decision, End, HandlerSpec, Refuse, Start, Usage
from .streaming import EditThrottle, ReplyPages, defuse_broadcasts
from .thread import (
    KIND_ANSWER,
    KIND_END,
    KIND_NOTICE,
    KIND_REFUSAL,
    KIND_USAGE,
    PROP_ANSWERS,
    PROP_HANDLER,
    PROP_KIND,
    STATUS_LINE,
    Post,
    Thread,
)
from .tokens import Tokenizer
from .triggers import trigger_word

log = logging.getLogger(__name__)
T = TypeVar("T")

TYPING_EVERY = 4.0  # Mattermost shows "typing" for about 5 s after each signal
INTERRUPT_BUDGET = 2.0  # seconds a turn cut short by shutdown gets to say so in its post

INTERRUPTED_MARK = "⚠️ Interrupted: I was restarted before I could finish. Ask again to continue."
INTERRUPTED_NOTICE = "⚠️ I was restarted before I could answer this. Please ask again."


@dataclass(frozen=True, slots=True)
class Turn:
    """One event the router sent to a handler."""

    event: Posted
    replayed: bool = False  # came from a catch-up over REST, not live from the websocket

    @property
    def post(self) -> Post:
        return self.event.post

    @property
    def thread_id(self) -> str:
        return self.event.post.thread_id

    @property
    def channel_id(self) -> str:
        return self.event.post.channel_id


class Handler(Protocol):
    spec: HandlerSpec

    async def handle(self, decision: Decision, turn: Turn) -> None: ...

    async def interrupted(self, turn: Turn) -> None: ...


class TurnAborted(Exception):
    """The thread can no longer be answered (e.g. its root was deleted): unbind it."""


class ConversationOver(TurnAborted):
    """The handler closed the conversation itself (e.g. the turn cap) and said so in the thread."""


_pending_ids = itertools.count()


def new_pending_id(me_id: str) -> str:
    """A pending_post_id as Mattermost's own clients make them ("<user id>:<time>"), unique here."""
    return f"{me_id}:{time.time_ns() // 1000}{next(_pending_ids)}"


@dataclass
class _Reply:
    """One answer on its way into the thread: its text in pages, and the posts showing them."""

    turn: Turn
    props: dict[str, Any]
    pages: ReplyPages = field(default_factory=ReplyPages)
    posted: list[tuple[str, str]] = field(default_factory=list)  # (post id, text it shows)
    # One pending_post_id per page, the same on every retry: Mattermost then answers a
    # repeated create with the post it already made, so a lost response never doubles a post.
    pending: list[str] = field(default_factory=list)
    # The one short post (message, kind, pending id) the turn ends with instead of an answer, once
    # it is on its way: a shutdown then finishes that post rather than adding another.
    closing: tuple[str, str, str] | None = None

    def pending_id(self, page: int, me_id: str) -> str:
        while len(self.pending) <= page:
            self.pending.append(new_pending_id(me_id))
        return self.pending[page]

    @property
    def has_text(self) -> bool:
        return bool(self.pages.text.strip())


class ChatHandler:
    """Answers with the LLM, streaming into the thread. Conversational: follows up without a prefix."""

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        chat: ChatAPI,
        llm: LLMClient,
        tokenizer: Tokenizer,
        system_prompt: PromptTemplate,
        speaker: Speaker,
        bot_name: str,
        context_tokens: int,
        reply_tokens: int,
        max_turns: int = 0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        edit_interval: float = 1.0,
        retry_base: float = RETRY_BASE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.spec = spec
        self.chat = chat
        self.llm = llm
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.speaker = speaker
        self.bot_name = bot_name
        self.context_tokens = context_tokens
        self.reply_tokens = reply_tokens
        self.max_turns = max_turns
        self.clock = clock
        self.now = now
        self.edit_interval = edit_interval
        self.retry_base = retry_base
        self.sleep = sleep

    async def handle(self, decision: Decision, turn: Turn) -> None:
        if isinstance(decision, (Start, Continue)):
            # A conversation opened by a new root post has a thread of exactly that post: the
            # event carries it, so this first turn needs no thread fetch. A replayed post may
            # have been answered already: its thread is read to find out.
            known = isinstance(decision, Start) and turn.post.is_root and not turn.replayed
            await self.answer(turn, known_thread=known)
        elif isinstance(decision, End):
            await self._post(turn, self._goodbye(), KIND_END, answers=turn.post.id)
        elif isinstance(decision, Usage):
            await self._post(turn, self._usage(), KIND_USAGE, answers=turn.post.id)
        elif isinstance(decision, Refuse):
            await self._post(turn, decision.message, KIND_REFUSAL, answers=turn.post.id)

    def call_word(self) -> str:
        """How users call this handler: its trigger word, or the bot's @mention."""
        word = trigger_word(self.spec.triggers[0]) if self.spec.triggers else None
        return word or f"@{self.bot_name}"

    def _usage(self) -> str:
        call = self.call_word()
        return f"Ask me something after `{call}`, for example: `{call} how do I undo my last git commit?`"

    def _goodbye(self) -> str:
        return f"👋 Conversation ended. Start a new one with `{self.call_word()}` whenever you like."

    async def answer(self, turn: Turn, *, known_thread: bool = False) -> None:
        reply = _Reply(turn, {PROP_HANDLER: self.spec.name, PROP_KIND: KIND_ANSWER, PROP_ANSWERS: turn.post.id})
        try:
            async with self._typing(turn) as stop_typing:
                thread = Thread(turn.thread_id, (turn.post,)) if known_thread else await self._read_thread(reply)
                if thread is None:
                    return
                newest = newest_human_post(thread, self.speaker.user_id)
                if newest is None or already_answered(thread, newest, self.speaker.user_id):
                    log.info("thread %s: nothing new to answer", turn.thread_id)
                    return
                reply.props[PROP_ANSWERS] = newest.id
                if self.max_turns and turns_in_conversation(thread, self.speaker.user_id) >= self.max_turns:
                    await self._close(reply, self._turn_cap(), KIND_END)
                    raise ConversationOver(f"thread {turn.thread_id} reached {self.max_turns} turns")
                names = await self.chat.usernames(thread.user_ids())
                system = self._system_text(turn, thread, names)
                budget = self.context_tokens
                while True:
                    messages = build_messages(thread, system, self.speaker, names, budget, self.tokenizer)
                    try:
                        await self._stream(reply, messages, stop_typing)
                        return
                    except ContextTooLong:  # raised only while nothing was shown yet
                        if budget <= self.context_tokens // 4:
                            await self._notice(reply, "⚠️ This conversation is too long for the language model. Please start a new one.")
                            return
                        budget //= 4  # the server's limit is below ours: cut hard, once
                        log.info("thread %s: context too long for the model; retrying with %d tokens", turn.thread_id, budget)
        except asyncio.CancelledError:
            await self._mark_interrupted(reply)
            raise

    def _turn_cap(self) -> str:
        return (
            f"This conversation has reached its limit of {self.max_turns} answers, so I'm leaving it here. "
            f"Start a new one with `{self.call_word()}` whenever you like."
        )

    async def _read_thread(self, reply: _Reply) -> Thread | None:
        """The thread, read again after passing failures; None (and a notice) when it can't be."""
        turn = reply.turn
        try:
            return await self._retrying(lambda: self.chat.get_thread(turn.thread_id), f"thread {turn.thread_id}: reading it")
        except FINAL as exc:
            raise TurnAborted(f"thread {turn.thread_id} cannot be read: {exc}") from exc
        except ChatError:
            await self._notice(reply, "⚠️ I could not read this thread: Mattermost returned an error. Please try again.")
            return None

    async def _retrying(self, call: Callable[[], Awaitable[T]], what: str, attempts: int = ATTEMPTS) -> T:
        return await with_retries(call, what, attempts=attempts, base=self.retry_base, sleep=self.sleep)

    def _system_text(self, turn: Turn, thread: Thread, names: dict[str, str]) -> str:
        people = participants(thread, self.speaker, names)
        event = turn.event
        if event.is_direct:
            where = f"a direct message with @{people[0]}" if people else "a direct message"
        else:
            where = f"the channel ~{event.channel_display_name or event.channel_name or 'unknown'}"
        return self.system_prompt.render(
            bot_name=self.bot_name,
            date=self.now().strftime("%A, %d %B %Y (UTC)"),
            channel=where,
            participants=", ".join(f"@{p}" for p in people) or "(none yet)",
        )

    async def _stream(self, reply: _Reply, messages: list[ChatMessage], stop_typing: Callable[[], None]) -> None:
        turn = reply.turn
        throttle = EditThrottle(self.clock, self.edit_interval)
        started = self.clock()
        # The LLM is read in a task of its own, so a slow Mattermost call never stalls the stream;
        # each post update then takes every delta that has arrived, which also spares a
        # quick answer its edits.
        deltas: asyncio.Queue[str | LLMError | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(messages, deltas))
        try:
            finished = False
            while not finished:
                batch = [await deltas.get()]
                while not deltas.empty():
                    batch.append(deltas.get_nowait())
                for item in batch:
                    if isinstance(item, LLMError):
                        if isinstance(item, ContextTooLong) and not reply.has_text:
                            raise item
                        await self._fail(reply, f"⚠️ I could not finish this answer: {item.reason}. Please try again.")
                        return
                    if item is None:
                        finished = True
                    else:
                        reply.pages.add(item)
                if finished or (not reply.posted and not reply.has_text):
                    continue  # the final update comes below; and never create an empty post
                if not reply.posted or throttle.due():
                    stop_typing()
                    await self._try_sync(reply)  # a failed update is retried at the next one
                    throttle.mark()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if not reply.has_text:
            await self._notice(reply, "⚠️ The language model returned an empty answer. Please rephrase or try again.")
            return
        if not await self._deliver(reply):
            await self._notice(reply, "⚠️ I could not post the whole answer: Mattermost returned an error. Please try again.")
            return
        log.info(
            "thread %s: answered in %d post(s), %d chars, %.2fs",
            turn.thread_id, len(reply.posted), len(reply.pages.text), self.clock() - started,
        )

    async def _read(self, messages: list[ChatMessage], out: asyncio.Queue[str | LLMError | None]) -> None:
        """Put the LLM's deltas on `out`, then None when it is done, or the LLMError that ended it."""
        try:
            async with contextlib.aclosing(self.llm.stream(messages, self.reply_tokens)) as stream:
                async for delta in stream:
                    out.put_nowait(delta)
        except LLMError as exc:
            out.put_nowait(exc)
            return
        out.put_nowait(None)

    async def _fail(self, reply: _Reply, message: str) -> None:
        """The answer can't be finished: say so under the partial text (one post, not two), or
        in a notice of its own when there is no text or it can't be posted."""
        if reply.has_text:
            reply.pages.add(f"{STATUS_LINE}{message.removeprefix('⚠️ ')}_")
            if await self._deliver(reply):
                return
        await self._notice(reply, message)

    async def _mark_interrupted(self, reply: _Reply) -> None:
        """Shutdown cut this turn short: leave a word in the thread, within a short budget."""
        try:
            async with asyncio.timeout(INTERRUPT_BUDGET):
                if reply.closing is not None:  # a notice (or goodbye) was on its way: finish that one
                    await self._close(reply, *reply.closing[:2], attempts=1)
                elif reply.posted or reply.pending:  # (a create cut short may have made its post: see _sync)
                    reply.pages.add(f"{STATUS_LINE}{INTERRUPTED_MARK.removeprefix('⚠️ ')}_")
                    await self._sync(reply)
                else:
                    await self._close(reply, INTERRUPTED_NOTICE, KIND_NOTICE, attempts=1)
        except (ChatError, TurnAborted, TimeoutError) as exc:
            log.warning("thread %s: could not mark the answer as interrupted: %s", reply.turn.thread_id, exc)

    async def interrupted(self, turn: Turn) -> None:
        """A queued turn that shutdown left unanswered."""
        await self._mark_interrupted(_Reply(turn, {PROP_ANSWERS: turn.post.id}))

    async def _sync(self, reply: _Reply) -> None:
        """Make the posts show the pages: patch changed ones, create the missing ones."""
        for i, text in enumerate(reply.pages.pages):
            if not text.strip():
                continue
            if i < len(reply.posted):
                post_id, shown = reply.posted[i]
                if shown != text:
                    await self.chat.patch_post(post_id, defuse_broadcasts(text))
                    reply.posted[i] = (post_id, text)
            else:
                sent = defuse_broadcasts(text)
                post = await self.chat.create_post(
                    reply.turn.channel_id, sent, reply.turn.thread_id, reply.props, reply.pending_id(i, self.speaker.user_id)
                )
                if post.message != sent:
                    # Mattermost answered a repeated pending_post_id with the post an earlier, lost
                    # try made: it shows the text of back then, so bring it up to date.
                    await self.chat.patch_post(post.id, sent)
                reply.posted.append((post.id, text))

    async def _try_sync(self, reply: _Reply) -> bool:
        """_sync once, where a passing Mattermost failure is logged and reported as False."""
        try:
            await self._sync(reply)
        except FINAL as exc:
            raise TurnAborted(f"thread {reply.turn.thread_id} cannot be answered: {exc}") from exc
        except ChatError as exc:
            log.warning("thread %s: updating the answer failed: %s", reply.turn.thread_id, exc)
            return False
        return True

    async def _deliver(self, reply: _Reply) -> bool:
        """_sync until it succeeds, with backoff (429s wait as asked); False after ATTEMPTS."""
        try:
            await self._retrying(lambda: self._sync(reply), f"thread {reply.turn.thread_id}: posting the answer")
        except FINAL as exc:
            raise TurnAborted(f"thread {reply.turn.thread_id} cannot be answered: {exc}") from exc
        except ChatError:
            return False
        return True

    async def _notice(self, reply: _Reply, message: str) -> None:
        """Best effort: a short notice in the thread; if even that fails, a log line."""
        try:
            await self._close(reply, message, KIND_NOTICE)
        except ChatError as exc:
            log.warning("thread %s: notice not posted (%s): %s", reply.turn.thread_id, exc, message)

    async def _close(self, reply: _Reply, message: str, kind: str, *, attempts: int = ATTEMPTS) -> None:
        """End the turn with one short post, remembered so that it is never made twice."""
        if reply.closing is None or reply.closing[:2] != (message, kind):
            reply.closing = (message, kind, new_pending_id(self.speaker.user_id))
        await self._post(reply.turn, message, kind, answers=reply.props[PROP_ANSWERS], attempts=attempts, pending=reply.closing[2])

    async def _post(
        self, turn: Turn, message: str, kind: str, *, answers: str, attempts: int = ATTEMPTS, pending: str = ""
    ) -> None:
        """One short post of the bot's, retried like an answer (and just as never doubled)."""
        props = {PROP_HANDLER: self.spec.name, PROP_KIND: kind, PROP_ANSWERS: answers}
        pending = pending or new_pending_id(self.speaker.user_id)
        try:
            await self._retrying(
                lambda: self.chat.create_post(turn.channel_id, message, turn.thread_id, props, pending),
                f"thread {turn.thread_id}: posting",
                attempts,
            )
        except FINAL as exc:
            raise TurnAborted(f"thread {turn.thread_id} is gone: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _typing(self, turn: Turn) -> AsyncIterator[Callable[[], None]]:
        """Shows "typing..." until the returned stop() is called or the block ends."""

        async def keep_typing() -> None:
            while True:
                await self.chat.send_typing(turn.channel_id, turn.thread_id)
                await asyncio.sleep(TYPING_EVERY)

        task = asyncio.create_task(keep_typing())

        def stop() -> None:
            task.cancel()

        try:
            yield stop
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
