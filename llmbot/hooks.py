"""Opening and closing conversations, and telling the plugins (the OVOS activate/deactivate hooks).

A conversation stops being active for one of three reasons, which its plugin hears through
`on_deactivate(thread_id, reason)`:
- ended: the plugin ended it (`message.end()`, a one-shot turn, the turn cap), the end word
  ended every conversation of the thread, or the thread became unreadable;
- expired: quiet for its timeout; noticed by the store's sweep (app.py: every SWEEP_EVERY);
- displaced: pushed out by a newer one - the same plugin opened a new conversation in the thread,
  or the user opened one more than LLMBOT_MAX_CONVERSATIONS_PER_USER allows.
Hooks run in tasks of their own, so a slow one never holds up routing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from .router import HandlerSpec
from .store.base import Binding, Store

log = logging.getLogger(__name__)

ENDED = "ended"
EXPIRED = "expired"
DISPLACED = "displaced"

Notify = Callable[[str, Iterable[Binding], str], None]


def quiet(_thread_id: str, _bindings: Iterable[Binding], _reason: str) -> None:
    """The notifier of parts built without hooks (unit tests of one step)."""


class _Hooked(Protocol):
    def deactivated(self, thread_id: str, reason: str) -> Awaitable[None]: ...


class Deactivations:
    """Tells each conversation's plugin that it is over, in the background."""

    def __init__(self, handlers: Mapping[str, object]) -> None:
        self.handlers = handlers
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, thread_id: str, bindings: Iterable[Binding], reason: str) -> None:
        for binding in bindings:
            log.info("thread %s: conversation %s of %s is over (%s)", thread_id, binding.conversation, binding.handler, reason)
            handler = self.handlers.get(binding.handler)
            hook: Callable[[str, str], Awaitable[None]] | None = getattr(handler, "deactivated", None)
            if hook is not None:
                task = asyncio.create_task(self._run(hook, binding.handler, thread_id, reason))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run(hook: Callable[[str, str], Awaitable[None]], name: str, thread_id: str, reason: str) -> None:
        try:
            await hook(thread_id, reason)
        except Exception:
            log.exception("thread %s: on_deactivate of plugin %s failed", thread_id, name)

    async def idle(self) -> None:
        """Wait until every hook started so far has run (tests and shutdown use it)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def open_conversation(
    store: Store, thread_id: str, spec: HandlerSpec, started_by: str, conversation: str, notify: Notify
) -> None:
    """Bind the thread to a new conversation of `spec`'s handler; its older one there is displaced."""
    older = [b for b in await store.active(thread_id) if b.handler == spec.name and b.conversation != conversation]
    await store.bind(thread_id, spec.name, started_by, conversation, ttl=spec.conversation_timeout)
    if older:
        notify(thread_id, older, DISPLACED)


async def close_conversations(store: Store, thread_id: str, handler: str | None, reason: str, notify: Notify) -> bool:
    """End `handler`'s conversation in the thread (all of them with None); False if none was active."""
    closing = [b for b in await store.active(thread_id) if handler is None or b.handler == handler]
    if not closing:
        return False
    await store.unbind(thread_id, handler)
    notify(thread_id, closing, reason)
    return True
