"""The GPT chat: one turn = read the thread, build the context, stream the answer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from ..context import Speaker, build_messages, participants
from ..errors import ContextTooLong, ConversationOver
from ..ports import LLMClient
from ..prompts import PromptTemplate
from ..record import KIND_END, KIND_REFUSAL, KIND_USAGE, already_answered, newest_human_post, turns_in_conversation
from ..router import Continue, End, HandlerSpec, Refuse, Start, Usage
from ..thread import Post, Thread
from ..tokens import Tokenizer
from ..triggers import trigger_word
from .base import Turn

log = logging.getLogger(__name__)

NEAR_LIMIT = 0.9  # a prompt this close to the budget may be over the server's window


class ChatHandler:
    """Answers with the LLM, streaming into the thread. Conversational: follows up without a prefix."""

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        llm: LLMClient,
        tokenizer: Tokenizer,
        system_prompt: PromptTemplate,
        speaker: Speaker,
        bot_name: str,
        context_tokens: int,
        reply_tokens: int,
        max_turns: int = 0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.spec = spec
        self.llm = llm
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.speaker = speaker
        self.bot_name = bot_name
        self.context_tokens = context_tokens
        self.reply_tokens = reply_tokens
        self.max_turns = max_turns
        self.now = now

    def call_word(self) -> str:
        word = trigger_word(self.spec.triggers[0]) if self.spec.triggers else None
        return word or f"@{self.bot_name}"

    async def handle(self, turn: Turn) -> None:
        decision = turn.decision
        if isinstance(decision, (Start, Continue)):
            # A conversation opened by a new root post has a thread of exactly that post: the
            # event carries it, so this first turn needs no thread fetch. A replayed post may
            # have been answered already: its thread is read to find out.
            known = isinstance(decision, Start) and turn.post.is_root and not turn.replayed
            await self.answer(turn, known_thread=known)
        elif isinstance(decision, End):
            goodbye = f"👋 Conversation ended. Start a new one with `{self.call_word()}` whenever you like."
            await turn.reply.post(goodbye, KIND_END)
        elif isinstance(decision, Usage):
            call = self.call_word()
            hint = f"Ask me something after `{call}`, for example: `{call} how do I undo my last git commit?`"
            await turn.reply.post(hint, KIND_USAGE)
        elif isinstance(decision, Refuse):
            await turn.reply.post(decision.message, KIND_REFUSAL)

    async def answer(self, turn: Turn, *, known_thread: bool = False) -> None:
        reply = turn.reply
        async with reply.typing() as stop_typing:
            thread = Thread(turn.thread_id, (turn.post,)) if known_thread else await turn.read_thread(self._enough)
            if thread is None:
                return
            names = await turn.usernames(thread.user_ids())
            newest = newest_human_post(thread, self.speaker.user_id, lambda post: turn.answerable(post, names))
            if newest is None or already_answered(thread, newest, self.speaker.user_id):
                log.info("thread %s: nothing new to answer", turn.thread_id)
                return
            reply.answers = newest.id
            taken = turns_in_conversation(thread, self.speaker.user_id, turn.conversation)
            reply.turn = taken + 1
            if self.max_turns and taken >= self.max_turns:
                await reply.post(
                    f"This conversation has reached its limit of {self.max_turns} answers, so I'm leaving it here. "
                    f"Start a new one with `{self.call_word()}` whenever you like.",
                    KIND_END,
                )
                raise ConversationOver(f"thread {turn.thread_id} reached {self.max_turns} turns")
            system = self._system_text(turn, thread, names)
            budget = self.context_tokens
            while True:
                messages = build_messages(thread, system, self.speaker, names, budget, self.tokenizer)
                size = sum(self.tokenizer.count_message(m.content) for m in messages)
                try:
                    stream = self.llm.stream(messages, self.reply_tokens, near_limit=size >= budget * NEAR_LIMIT)
                    await reply.stream(stream, stop_typing)
                    return
                except ContextTooLong:  # raised only while nothing was shown yet
                    if budget <= self.context_tokens // 4:
                        await reply.notice(
                            "⚠️ This conversation is too long for the language model. Please start a new one.",
                            f"context too long even at {budget} tokens (LLMBOT_MAX_CONTEXT_TOKENS)",
                        )
                        return
                    budget //= 4  # the server's limit is below ours: cut hard, once
                    log.info("thread %s: context too long for the model; retrying with %d tokens", turn.thread_id, budget)

    def _enough(self, replies: Sequence[Post]) -> bool:
        """Newest posts enough to fill the context budget (the root is always read too)."""
        return sum(self.tokenizer.count_message(p.message) for p in replies) >= self.context_tokens

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
