"""The built-in chat handler: one turn = fetch the thread, build the context, stream the answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from .context import ChatMessage, Speaker, build_messages, participants
from .errors import ChatError, ChatForbidden, ChatNotFound, LLMError
from .events import Posted
from .ports import ChatAPI, LLMClient
from .prompts import PromptTemplate
from .router import Continue, Decision, End, HandlerSpec, Start, Usage
from .streaming import EditThrottle, ReplyPages, defuse_broadcasts
from .thread import (
    KIND_ANSWER,
    KIND_END,
    KIND_NOTICE,
    KIND_USAGE,
    PROP_ANSWERS,
    PROP_HANDLER,
    PROP_KIND,
    Post,
    Thread,
)
from .tokens import Tokenizer
from .triggers import trigger_word

log = logging.getLogger(__name__)

TYPING_EVERY = 4.0  # Mattermost shows "typing" for about 5 s after each signal
FINAL_RETRY_AFTER = 1.0  # seconds before the last attempt to post a finished answer


@dataclass(frozen=True, slots=True)
class Turn:
    """One event the router sent to a handler."""

    event: Posted

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


class TurnAborted(Exception):
    """The thread can no longer be answered (e.g. its root was deleted): unbind it."""


def newest_human_post(thread: Thread, me_id: str) -> Post | None:
    for post in reversed(thread.posts):
        if post.user_id and post.user_id != me_id and not (post.from_bot or post.from_webhook or post.is_system):
            return post
    return None


def already_answered(thread: Thread, post: Post, me_id: str) -> bool:
    """Did one of the bot's posts already take `post` (or something newer) into account?"""
    created = {p.id: p.create_at for p in thread.posts}
    for mine in thread.posts:
        if mine.user_id != me_id:
            continue
        answered = mine.props.get(PROP_ANSWERS)
        if isinstance(answered, str) and answered in created:
            if created[answered] >= post.create_at:
                return True
        elif mine.create_at > post.create_at and mine.llmbot_kind in (None, KIND_ANSWER):
            return True  # an answer written without the marker, after the post
    return False


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
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        edit_interval: float = 1.0,
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
        self.clock = clock
        self.now = now
        self.edit_interval = edit_interval

    async def handle(self, decision: Decision, turn: Turn) -> None:
        if isinstance(decision, (Start, Continue)):
            # A conversation opened by a new root post has a thread of exactly that post: the
            # event carries it, so this first turn needs no thread fetch.
            await self.answer(turn, known_thread=isinstance(decision, Start) and turn.post.is_root)
        elif isinstance(decision, End):
            await self._post(turn, self._goodbye(), KIND_END, answers=turn.post.id)
        elif isinstance(decision, Usage):
            await self._post(turn, self._usage(), KIND_USAGE, answers=turn.post.id)

    def _call_word(self) -> str:
        """How users call this handler: its trigger word, or the bot's @mention."""
        word = trigger_word(self.spec.triggers[0]) if self.spec.triggers else None
        return word or f"@{self.bot_name}"

    def _usage(self) -> str:
        call = self._call_word()
        return f"Ask me something after `{call}`, for example: `{call} how do I undo my last git commit?`"

    def _goodbye(self) -> str:
        return f"👋 Conversation ended. Start a new one with `{self._call_word()}` whenever you like."

    async def answer(self, turn: Turn, *, known_thread: bool = False) -> None:
        async with self._typing(turn) as stop_typing:
            try:
                thread = Thread(turn.thread_id, (turn.post,)) if known_thread else await self.chat.get_thread(turn.thread_id)
            except (ChatNotFound, ChatForbidden) as exc:
                raise TurnAborted(f"thread {turn.thread_id} cannot be read: {exc}") from exc
            except ChatError as exc:
                log.warning("thread %s: cannot read the thread: %s", turn.thread_id, exc)
                await self._notice(turn, "⚠️ I could not read this thread: Mattermost returned an error. Please try again.", turn.post.id)
                return
            newest = newest_human_post(thread, self.speaker.user_id)
            if newest is None or already_answered(thread, newest, self.speaker.user_id):
                log.info("thread %s: nothing new to answer", turn.thread_id)
                return
            names = await self.chat.usernames(thread.user_ids())
            messages = build_messages(
                thread,
                self._system_text(turn, thread, names),
                self.speaker,
                names,
                self.context_tokens,
                self.tokenizer,
            )
            await self._stream(turn, messages, newest.id, stop_typing)

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

    async def _stream(self, turn: Turn, messages: list[ChatMessage], answers: str, stop_typing: Callable[[], None]) -> None:
        props = {PROP_HANDLER: self.spec.name, PROP_KIND: KIND_ANSWER, PROP_ANSWERS: answers}
        pages = ReplyPages()
        posted: list[tuple[str, str]] = []  # (post id, text it shows)
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
                        await self._try_sync(turn, pages, posted, props)  # keep the partial answer
                        await self._notice(turn, f"⚠️ I could not finish this answer: {item.reason}. Please try again.", answers)
                        return
                    if item is None:
                        finished = True
                    else:
                        pages.add(item)
                if finished or (not posted and not pages.text.strip()):
                    continue  # the final update comes below; and never create an empty post
                if not posted or throttle.due():
                    stop_typing()
                    await self._try_sync(turn, pages, posted, props)  # a failed edit is retried next time
                    throttle.mark()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if not pages.text.strip():
            await self._notice(turn, "⚠️ The language model returned an empty answer. Please rephrase or try again.", answers)
            return
        if not await self._try_sync(turn, pages, posted, props):
            await asyncio.sleep(FINAL_RETRY_AFTER)
            if not await self._try_sync(turn, pages, posted, props):
                await self._notice(turn, "⚠️ I could not post the whole answer: Mattermost returned an error. Please try again.", answers)
                return
        log.info(
            "thread %s: answered in %d post(s), %d chars, %.2fs",
            turn.thread_id, len(posted), len(pages.text), self.clock() - started,
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

    async def _sync(self, turn: Turn, pages: ReplyPages, posted: list[tuple[str, str]], props: dict[str, Any]) -> None:
        """Make the posts show the pages: patch changed ones, create the missing ones."""
        for i, text in enumerate(pages.pages):
            if not text.strip():
                continue
            if i < len(posted):
                post_id, shown = posted[i]
                if shown != text:
                    await self.chat.patch_post(post_id, defuse_broadcasts(text))
                    posted[i] = (post_id, text)
            else:
                post = await self.chat.create_post(turn.channel_id, defuse_broadcasts(text), turn.thread_id, props)
                posted.append((post.id, text))

    async def _try_sync(self, turn: Turn, pages: ReplyPages, posted: list[tuple[str, str]], props: dict[str, Any]) -> bool:
        """_sync, where a passing Mattermost failure is logged and reported as False."""
        try:
            await self._sync(turn, pages, posted, props)
        except (ChatNotFound, ChatForbidden) as exc:
            raise TurnAborted(f"thread {turn.thread_id} cannot be answered: {exc}") from exc
        except ChatError as exc:
            log.warning("thread %s: updating the answer failed: %s", turn.thread_id, exc)
            return False
        return True

    async def _notice(self, turn: Turn, message: str, answers: str) -> None:
        """Best effort: a short notice in the thread; if even that fails, a log line."""
        try:
            await self._post(turn, message, KIND_NOTICE, answers=answers)
        except ChatError as exc:
            log.warning("thread %s: notice not posted (%s): %s", turn.thread_id, exc, message)

    async def _post(self, turn: Turn, message: str, kind: str, *, answers: str) -> None:
        props = {PROP_HANDLER: self.spec.name, PROP_KIND: kind, PROP_ANSWERS: answers}
        try:
            await self.chat.create_post(turn.channel_id, message, turn.thread_id, props)
        except ChatNotFound as exc:
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
