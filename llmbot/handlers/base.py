"""What a handler is given for one turn, and what it must offer. Handlers never see the Bot."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..dm_flow import began_after
from ..errors import ChatError, TurnAborted
from ..events import Posted
from ..ports import ChatAPI
from ..reply import ReplyWriter
from ..retry import FINAL
from ..router import Decision, HandlerSpec
from ..thread import Post, Thread

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Turn:
    """One routed post on its way to a handler."""

    decision: Decision
    event: Posted
    reply: ReplyWriter
    conversation: str  # id of the post that opened the conversation ("" outside one)
    replayed: bool  # came from a catch-up over REST, not live from the websocket
    chat: ChatAPI
    # May the bot answer this post's author? (Access lists: their words stay in the context.)
    answerable: Callable[[Post, Mapping[str, str]], bool]
    bot_name: str = ""  # the bot's username, for handlers that strip its @mention
    # The thread as read at the start of the turn, shared by every handler the post is offered to
    # (a declined follow-up goes to the next candidate without a second read).
    shared: dict[str, Thread] = field(default_factory=dict)
    gap: float = 3600.0  # seconds of silence that began a DM's running conversation (its timeout)
    takeover: bool = False  # another replica took this post on and stopped before finishing it

    @property
    def post(self) -> Post:
        return self.event.post

    @property
    def thread_id(self) -> str:
        """The thread, or for a DM root post the DM itself (its running conversation: dm_flow.py)."""
        return self.event.place

    @property
    def channel_id(self) -> str:
        return self.event.post.channel_id

    async def read_thread(self, enough: Callable[[Sequence[Post]], bool] | None = None) -> Thread | None:
        """The thread, read again after passing failures; None (and a notice) when it can't be.
        With `enough`, only its root and newest posts: read newest first until enough(replies)."""

        def read() -> Awaitable[Thread]:
            if self.event.in_dm_flow:  # the DM's running conversation: its root posts (dm_flow.py)
                me, gap_ms = self.reply.where.me_id, int(self.gap * 1000)
                return self.chat.recent_roots(
                    self.channel_id, enough or _never, lambda older, newer: began_after(older, newer, me, gap_ms)
                )
            if enough is None:
                return self.chat.get_thread(self.thread_id)
            return self.chat.recent_thread(self.thread_id, enough)

        if enough is not None and "recent" in self.shared:
            return self.shared["recent"]
        try:
            thread = await self.reply.retrying(read, f"thread {self.thread_id}: reading it")
        except FINAL as exc:
            raise TurnAborted(f"thread {self.thread_id} cannot be read: {exc}") from exc
        except ChatError as exc:
            await self.reply.notice(
                "⚠️ I could not read this thread: Mattermost returned an error. Please try again.", f"thread read failed: {exc}"
            )
            return None
        if enough is not None:
            self.shared["recent"] = thread
        return thread

    async def usernames(self, user_ids: Iterable[str]) -> dict[str, str]:
        return await self.chat.usernames(user_ids)


def _never(_posts: Sequence[Post]) -> bool:
    return False


class Handler(Protocol):
    spec: HandlerSpec

    def call_word(self) -> str:
        """How users call this handler (a trigger word or the bot's @mention), for hints."""
        ...

    async def handle(self, turn: Turn) -> bool | None:
        """Answer the turn through turn.reply. Raise ConversationOver to end the conversation. For a
        follow-up, return False to decline it: it is then offered to the thread's other
        conversations, then to every handler's triggers."""
        ...
