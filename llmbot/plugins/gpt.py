"""gpt: the built-in chat, written on the public plugin API like any other plugin.

`gpt ...` (LLMBOT_TRIGGER), a DM or an @mention opens a conversation in the post's thread; from
then on every follow-up there is answered by the LLM, with the thread as its context.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from ..prompts import PromptTemplate
from .api import Plugin, listener
from .message import Message


class GptChat(Plugin):
    name = "gpt"
    usage_hint = "Ask me something after `{call}`, for example: `{call} how do I undo my last git commit?`"
    coalesce = True  # it answers the thread as a whole: a burst of follow-ups gets one answer

    def __init__(
        self,
        trigger: re.Pattern[str],
        system_prompt: PromptTemplate,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.listeners = (listener(trigger, "start", conversation=True),)
        self.system_prompt = system_prompt
        self.now = now

    async def start(self, message: Message, *_groups: str | None) -> None:
        await self.answer(message)

    async def converse(self, message: Message) -> bool:
        await self.answer(message)
        return True  # the chat takes every follow-up of its conversation

    async def answer(self, message: Message) -> None:
        people = message.people
        if message.is_direct:
            where = f"a direct message with @{people[0]}" if people else "a direct message"
        else:
            where = f"the channel ~{message.channel_name or 'unknown'}"
        system = self.system_prompt.render(
            bot_name=message.bot_name,
            date=self.now().strftime("%A, %d %B %Y (UTC)"),
            channel=where,
            participants=", ".join(f"@{p}" for p in people) or "(none yet)",
        )
        await message.reply_llm(system)
