"""summarize: "tl;dr" (or "summarize") in a thread summarises that thread. One-shot: no conversation.
Built on the public plugin API alone, as any plugin author could write it."""

from __future__ import annotations

from datetime import UTC, datetime

from ..prompts import PROMPTS_DIR, load_prompt
from .api import Plugin, listen_to
from .message import Message

PROMPT = PROMPTS_DIR / "summarize.md"


class Summarize(Plugin):
    name = "summarize"

    def __init__(self) -> None:
        self.prompt = load_prompt(PROMPT)  # checked at start-up, not on the first user's turn

    @listen_to(r"^(summari[sz]e|tl;?dr)\b")
    async def summarize(self, message: Message, _word: str) -> None:
        people = [f"@{name}" for uid, name in message.names.items() if name != message.bot_name]
        system = self.prompt.render(
            bot_name=message.bot_name or "the bot",
            date=datetime.now(UTC).strftime("%A, %d %B %Y (UTC)"),
            channel="a direct message" if message.is_direct else "a channel",
            participants=", ".join(people) or "(none)",
        )
        # the call itself ("tl;dr") ends the context: the model reads it as the request it is
        await message.reply_stream(message.llm(message.context(system)))
