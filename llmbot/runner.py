"""One turn, from the scheduler to a handler and back: the turn's reply writer and deadline,
and what every way a handler can fail means for the thread and the store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from .errors import ChatError, ConversationOver, TurnAborted
from .events import Posted
from .handlers.base import Handler, Turn
from .ports import ChatAPI
from .reply import ReplyWriter, Where
from .retry import RETRY_BASE
from .router import Continue, Decision, Start
from .store.base import Store
from .thread import Post

log = logging.getLogger(__name__)

FAILED = "⚠️ Something went wrong on my side while answering. Please try again."
TOO_SLOW = "⚠️ I could not finish this in time. Please try again."
LAST_WORD = 10.0  # seconds a turn past its deadline still gets to say so


@dataclass(frozen=True, slots=True)
class Job:
    """What the dispatcher hands the scheduler: a routed post."""

    decision: Decision
    event: Posted
    conversation: str = ""  # id of the post that opened the conversation ("" outside one)
    replayed: bool = False

    @property
    def handler(self) -> str:
        return self.decision.handler  # type: ignore[union-attr]  # Ignore never becomes a job


class TurnRunner:
    """Runs jobs through their handlers. Every failure ends the turn with one word in the
    thread and a log line; nothing a handler raises stops the bot or hangs the thread."""

    def __init__(
        self,
        chat: ChatAPI,
        handlers: Mapping[str, Handler],
        store: Store,
        *,
        me_id: str,
        answerable: Callable[[Post, Mapping[str, str]], bool],
        deadline: float,
        bot_name: str = "",
        clock: Callable[[], float] = time.monotonic,
        edit_interval: float = 1.0,
        retry_base: float = RETRY_BASE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.chat = chat
        self.handlers = handlers
        self.store = store
        self.me_id = me_id
        self.bot_name = bot_name
        self.answerable = answerable
        self.deadline = deadline
        self.clock = clock
        self.edit_interval = edit_interval
        self.retry_base = retry_base
        self.sleep = sleep

    def _writer(self, job: Job) -> ReplyWriter:
        post = job.event.post
        where = Where(post.channel_id, post.thread_id, self.me_id, job.handler, job.conversation)
        return ReplyWriter(
            self.chat, where, post.id, clock=self.clock, edit_interval=self.edit_interval,
            deadline=self.clock() + self.deadline, retry_base=self.retry_base, sleep=self.sleep,
        )

    async def run(self, job: Job) -> None:
        handler = self.handlers.get(job.handler)
        thread_id = job.event.post.thread_id
        if handler is None:
            log.warning("thread %s: no handler %r any more; post %s not answered", thread_id, job.handler, job.event.post.id)
            return
        writer = self._writer(job)
        turn = Turn(job.decision, job.event, writer, job.conversation, job.replayed, self.chat, self.answerable, self.bot_name)
        try:
            async with asyncio.timeout(self.deadline):
                await handler.handle(turn)
        except ConversationOver as exc:
            binding = await self.store.get(thread_id)
            if binding is not None and binding.handler == job.handler:  # (not another handler's conversation)
                await self.store.unbind(thread_id)
                log.info("%s; conversation closed", exc)
            return
        except TurnAborted as exc:
            log.warning("%s; conversation unbound", exc)
            await self.store.unbind(thread_id)
            return
        except asyncio.CancelledError:
            await writer.mark_interrupted()  # shutdown: say so in the thread, then stop
            raise
        except TimeoutError:
            writer.deadline = self.clock() + LAST_WORD
            await writer.fail(TOO_SLOW, f"the turn took longer than LLMBOT_TURN_DEADLINE ({self.deadline:g}s)")
        except ChatError as exc:
            log.warning("thread %s: Mattermost refused a call: %s", thread_id, exc)
            if not writer.closed:
                writer.deadline = self.clock() + LAST_WORD
                await writer.fail(FAILED, f"Mattermost refused a call: {exc}")
        except Exception:
            log.exception("thread %s: handler %s failed on post %s", thread_id, job.handler, job.event.post.id)
            if not writer.closed:
                writer.deadline = self.clock() + LAST_WORD
                await writer.fail(FAILED, "handler failed (traceback above)")
        if isinstance(job.decision, (Start, Continue)):
            await self.store.touch(thread_id)  # the TTL counts from the end of the answer

    async def interrupted(self, job: Job) -> None:
        """A queued turn that shutdown left unanswered: say so, if it was to be answered."""
        if isinstance(job.decision, (Start, Continue)):
            await self._writer(job).mark_interrupted()
