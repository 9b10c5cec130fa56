"""Message: one post as a plugin sees it, and what the plugin can do about it in the thread."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..context import ChatMessage, Speaker, fit_to_budget, participants, recent_turns
from ..errors import ContextTooLong, LlmbotError
from ..handlers.base import Turn
from ..ports import LLMClient
from ..record import KIND_END, STATUS_LINE, newest_human_post, state_of
from ..reply import ReplyWriter
from ..thread import Post, Thread
from ..tokens import Tokenizer
from ..triggers import mention_pattern

NEAR_LIMIT = 0.9  # a prompt this close to the budget may be over the server's window
CUT_NOTE = "Your message was too long for me: I read its beginning and its end; about {n:,} tokens in the middle were left out."
TOO_LONG = "⚠️ This conversation is too long for the language model. Please start a new one."

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tools:
    """What the bot lends its plugins: the configured LLM (behind the LLM cap) and token counting."""

    llm: LLMClient
    tokenizer: Tokenizer
    context_tokens: int  # LLMBOT_MAX_CONTEXT_TOKENS
    reply_tokens: int  # LLMBOT_MAX_REPLY_TOKENS
    max_turns: int = 0  # LLMBOT_MAX_TURNS: answers per conversation, for every plugin (0: no cap)


class Message:
    """The post a plugin is asked about. `thread` is the thread as it stood at the start of this
    turn (its root and newest posts, read once and shared); `state` is the newest state this
    plugin stored in the current conversation of this thread, or None."""

    def __init__(
        self, turn: Turn, plugin: str, thread: Thread, names: Mapping[str, str], tools: Tools,
        triggers: tuple[re.Pattern[str], ...] = (),
    ) -> None:
        self._turn = turn
        self._plugin = plugin
        self._tools = tools
        self._triggers = triggers  # the plugin's own, dropped from people's posts in context()
        self.thread = thread
        self.names = dict(names)  # user id -> username, for the people in `thread`
        self.ended = False  # end() was called: the conversation is over
        post = turn.post
        self.raw_text = post.message
        self.text = _without_mention(post.message, turn.bot_name)
        self.post_id = post.id
        self.user_id = post.user_id
        self.username = names.get(post.user_id, "")
        self.channel_id = post.channel_id
        self.thread_id = turn.thread_id  # (a DM root post: the DM, whose root posts are its conversation)
        self.is_direct = turn.event.is_direct
        event = turn.event
        self.channel_name = event.channel_display_name or event.channel_name  # "" when Mattermost did not say
        self.bot_name = turn.bot_name
        self.state: dict[str, Any] | None = state_of(thread, turn.reply.where.me_id, plugin, turn.conversation)

    @property
    def people(self) -> list[str]:
        """The usernames of the people in `thread`, in the order they first wrote."""
        return participants(self.thread, self._speaker(), self.names)

    def _speaker(self) -> Speaker:
        return Speaker(self._turn.reply.where.me_id, mention_pattern(self._turn.bot_name or "-"), self._triggers)

    def _writer(self) -> ReplyWriter:
        """The turn's writer for its first post, a new one for each further post. The runner
        finishes the newest (marks it cut short) when the turn fails or is stopped."""
        current = self._turn.reply
        if current.posted or current.closing is not None:
            current = self._turn.reply = current.fork()
        return current

    async def whole_thread(self) -> Thread:
        """Every post of the thread (read over REST now: for plugins that need all of it)."""
        whole = await self._turn.read_thread()
        return whole if whole is not None else self.thread

    async def reply(self, text: str, *, state: Mapping[str, Any] | None = None) -> None:
        """A post in the thread, never doubled by retries; long text is split like answers.
        `state` (a JSON object of at most 32 KB) is kept in the post for the next turns."""
        if not text.strip():
            raise LlmbotError(f"plugin {self._plugin}: reply() needs some text")
        writer = self._writer()
        writer.remember(state)
        writer.pages.add(text)
        if await writer.deliver():
            log.info("thread %s: plugin %s replied to post %s", self.thread_id, self._plugin, self.post_id)
        else:
            await writer.notice(
                "⚠️ I could not post my answer: Mattermost returned an error. Please try again.", "delivery failed"
            )
        if state is not None:
            self.state = writer.state

    def context(self, system: str, *, budget: int | None = None) -> list[ChatMessage]:
        """`thread` as chat messages for the LLM within `budget` tokens (LLMBOT_MAX_CONTEXT_TOKENS):
        `system` first, the bot's answers as assistant, each person's posts as user."""
        return self._fitted(system, budget or self._tools.context_tokens)[0]

    def _fitted(self, system: str, budget: int) -> tuple[list[ChatMessage], int]:
        """The context, and how many tokens of the newest message were cut out of its middle."""
        tools = self._tools
        turns = recent_turns(self.thread, self._speaker(), self.names, budget, tools.tokenizer)
        messages = fit_to_budget(system, turns, budget, tools.tokenizer)
        cut = 0
        if turns and turns[-1].role == "user" and messages[-1].content != turns[-1].content:
            cut = tools.tokenizer.count(turns[-1].content) - tools.tokenizer.count(messages[-1].content)
        return messages, max(cut, 0)

    def llm(self, messages: Sequence[ChatMessage], *, max_tokens: int | None = None) -> AsyncGenerator[str, None]:
        """The configured LLM's answer to `messages`, as it streams (for reply_stream)."""
        return self._stream(messages, max_tokens, self._tools.context_tokens)

    def _stream(self, messages: Sequence[ChatMessage], max_tokens: int | None, budget: int) -> AsyncGenerator[str, None]:
        size = sum(self._tools.tokenizer.count_message(m.content) for m in messages)
        return self._tools.llm.stream(messages, max_tokens or self._tools.reply_tokens, near_limit=size >= budget * NEAR_LIMIT)

    async def reply_stream(self, deltas: AsyncGenerator[str, None], *, state: Mapping[str, Any] | None = None) -> None:
        """Stream text into one reply as it comes (an LLM answer), split and marked like the chat's.
        ContextTooLong (the server found the prompt too long, before any text) is raised to the caller."""
        writer = self._writer()
        writer.remember(state)
        async with writer.typing() as stop_typing:
            await writer.stream(deltas, stop_typing)

    async def reply_llm(self, system: str, *, state: Mapping[str, Any] | None = None) -> None:
        """The chat's turn in one call: `thread` as the model's context within the budget, `system`
        first, and its answer streamed into one reply. The reply answers the thread's newest post
        (posts that queued up meanwhile are answered with it). If the server finds the context too
        long, it is cut to a quarter once; still too long, the thread gets a short notice."""
        me = self._turn.reply.where.me_id
        newest = newest_human_post(self.thread, me, lambda post: self._turn.answerable(post, self.names))
        budget = self._tools.context_tokens
        while True:
            writer = self._writer()
            writer.answers = newest.id if newest is not None else self.post_id
            messages, cut = self._fitted(system, budget)
            try:
                await self.reply_stream(self._stream(messages, None, budget), state=state)
                if cut and writer.posted:
                    await self._say_cut(writer, cut)
                return
            except ContextTooLong:  # raised only while nothing was shown yet
                if budget <= self._tools.context_tokens // 4:
                    await writer.notice(TOO_LONG, f"context too long even at {budget} tokens (LLMBOT_MAX_CONTEXT_TOKENS)")
                    return
                budget //= 4  # the server's limit is below ours: cut hard, once
                log.info("thread %s: context too long for the model; retrying with %d tokens", self.thread_id, budget)

    async def _say_cut(self, writer: ReplyWriter, cut: int) -> None:
        """The newest message did not fit the budget: its middle was left out. The answer says so."""
        log.warning("thread %s: the newest message was cut to fit LLMBOT_MAX_CONTEXT_TOKENS: %d tokens of its middle "
                    "left out", self.thread_id, cut)
        writer.pages.add(f"{STATUS_LINE}{CUT_NOTE.format(n=cut)}_")
        if not await writer.deliver():
            log.warning("thread %s: the note on the cut message could not be added to the answer", self.thread_id)

    async def end(self, text: str | None = None) -> None:
        """End this plugin's conversation in the thread; `text`, if any, is its goodbye."""
        self.ended = True
        if text:
            await self._writer().post(text, KIND_END)


class BlockingMessage:
    """The same Message for a sync handler in a worker thread: its methods block until done."""

    def __init__(self, message: Message, loop: asyncio.AbstractEventLoop) -> None:
        self._message = message
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._message, name)

    def _run(self, call: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def whole_thread(self) -> Thread:
        result: Thread = self._run(self._message.whole_thread)
        return result

    def reply(self, text: str, *, state: Mapping[str, Any] | None = None) -> None:
        self._run(lambda: self._message.reply(text, state=state))

    def reply_stream(self, deltas: AsyncGenerator[str, None], *, state: Mapping[str, Any] | None = None) -> None:
        self._run(lambda: self._message.reply_stream(deltas, state=state))

    def reply_llm(self, system: str, *, state: Mapping[str, Any] | None = None) -> None:
        self._run(lambda: self._message.reply_llm(system, state=state))

    def end(self, text: str | None = None) -> None:
        self._run(lambda: self._message.end(text))


def _without_mention(text: str, bot_name: str) -> str:
    """The text without a leading @mention of the bot (and the punctuation after it)."""
    stripped = text.strip()
    if bot_name:
        lead = mention_pattern(bot_name).match(stripped)
        if lead:
            stripped = stripped[lead.end() :].lstrip(" \t,:;")
    return stripped


def enough_for(budget: int, count: Callable[[str], int]) -> Callable[[Sequence[Post]], bool]:
    """A thread read stops once the newest posts fill `budget` tokens."""
    return lambda replies: sum(count(p.message) for p in replies) >= budget

