"""Per-user limits on opening conversations, and what users are told about them.

- Starts per minute (LLMBOT_MAX_STARTS_PER_MINUTE): over it the start is refused, and the user
  is told once per TELL_ONCE_PER. Posts count by their create_at, so a replayed post counts when
  it was written, not when the catch-up reads it.
- Open conversations (LLMBOT_MAX_CONVERSATIONS_PER_USER): over it the user's least recently
  active conversation ends quietly and the new one opens (what the OVOS active list does).
- Activations per plugin (LLMBOT_MAX_ACTIVATIONS_PER_MINUTE), all users together: over it the
  post is refused, and the user is told once per TELL_ONCE_PER.
- With DMs off, a user who writes to the bot hears why it stays silent, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .events import Posted
from .hooks import DISPLACED, Notify, close_conversations, quiet
from .plugin_access import Activations
from .router import Decision, Refuse, Start, Usage
from .store.base import Store

log = logging.getLogger(__name__)

START_WINDOW = 60.0  # seconds of the sliding window of LLMBOT_MAX_STARTS_PER_MINUTE
TELL_ONCE_PER = 600.0  # a user hears about a limit once per 10 minutes, not on every message


class Limits:
    def __init__(
        self,
        store: Store,
        *,
        max_starts_per_minute: int,
        max_open: int,
        direct_messages: bool,
        call_word: Callable[[str], str],
        notify: Notify = quiet,
        activations: Activations | None = None,
    ) -> None:
        self.store = store
        self.max_starts = max_starts_per_minute
        self.max_open = max_open
        self.direct_messages = direct_messages
        self.call_word = call_word  # handler name -> how users call it
        self.notify = notify  # tells plugins their conversation is over (hooks.py)
        self.activations = activations  # LLMBOT_MAX_ACTIVATIONS_PER_MINUTE, per plugin

    async def _plugin_admits(self, event: Posted, decision: Start) -> bool:
        activations = self.activations
        if activations is None or activations.is_open or await activations.admit(decision.handler, event.post.create_at / 1000):
            return True
        log.info("plugin %s opened %d conversations within a minute (LLMBOT_MAX_ACTIVATIONS_PER_MINUTE): post %s not taken",
                 decision.handler, activations.limit(decision.handler), event.post.id)
        return False

    async def dm_refusal(self, event: Posted, decision: Decision) -> Decision | None:
        """With DMs off: a refusal for the first DM in a while, else nothing."""
        if not (event.is_direct and not self.direct_messages and isinstance(decision, (Start, Usage))):
            return None
        if not await self.store.first_notice(f"dm:{event.post.user_id}", TELL_ONCE_PER):
            return None
        call = self.call_word(decision.handler)
        return Refuse(decision.handler, f"I don't answer direct messages here. Call me in a channel with `{call}`.")

    async def admit(self, event: Posted, decision: Start) -> Decision | None:
        """The start if the user is within the limits, a refusal to tell them, or None (silence)."""
        user = event.post.user_id
        if self.max_starts and not await self.store.count_start(
            user, event.post.create_at / 1000, START_WINDOW, self.max_starts
        ):
            log.info("user %s started %d conversations within a minute: not starting another", user, self.max_starts)
            if await self.store.first_notice(f"rate:{user}", TELL_ONCE_PER):
                return Refuse(
                    decision.handler,
                    f"You have started {_conversations(self.max_starts)} in the last minute. "
                    "Please wait a moment before starting another.",
                )
            return None
        if not await self._plugin_admits(event, decision):
            return (
                Refuse(decision.handler, f"`{self.call_word(decision.handler)}` is busy right now. Please try again in a minute.")
                if await self.store.first_notice(f"plugin-rate:{decision.handler}:{user}", TELL_ONCE_PER) else None
            )
        if self.max_open:
            opened = await self.store.opened_by(user)
            for thread_id, _ in opened[: max(0, len(opened) - self.max_open + 1)]:  # least recent first
                for binding in await self.store.active(thread_id):  # this user's, not a stacked one of another's
                    if binding.started_by == user:
                        await close_conversations(self.store, thread_id, binding.handler, DISPLACED, self.notify)
                log.info("user %s is at %d open conversations: thread %s ended quietly", user, self.max_open, thread_id)
        return decision


def _conversations(n: int) -> str:
    return f"{n} conversation" if n == 1 else f"{n} conversations"
