"""One turn, from the scheduler to a handler and back: the turn's reply writer and deadline,
and what every way a handler can fail means for the thread and the store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from . import metrics
from .errors import ChatError, ConversationOver, NothingOpened, TurnAborted
from .events import Posted
from .handlers.base import Handler, Turn
from .hooks import ENDED, Notify, close_conversations, open_conversation, quiet
from .ports import ChatAPI
from .reply import ReplyWriter, Where
from .retry import RETRY_BASE
from .router import Continue, Cue, Decision, Start
from .store.base import Store
from .thread import Post, Thread

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
    step: int = 0  # the routing table's row that chose it (router.py)
    fallbacks: tuple[tuple[int, Decision], ...] = ()  # tried in order if a follow-up is declined
    takeover: bool = False  # another replica took this post on and stopped before finishing it

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
        ttl: float = 3600.0,
        bot_name: str = "",
        admit: Callable[[Posted, Decision], Awaitable[Decision | None]] | None = None,
        notify: Notify = quiet,
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
        # a new call taken after declines passes the limits the dispatcher applies to new calls
        self.admit = admit
        self.notify = notify  # tells plugins their conversation is over (hooks.py)
        self.answerable = answerable
        self.deadline = deadline
        self.ttl = ttl  # LLMBOT_CONVERSATION_TTL: where a DM's running conversation began
        self.clock = clock
        self.edit_interval = edit_interval
        self.retry_base = retry_base
        self.sleep = sleep

    def _writer(self, job: Job) -> ReplyWriter:
        post = job.event.post
        thread = "" if job.event.in_dm_flow else post.thread_id  # in a DM's running conversation: root posts
        where = Where(post.channel_id, thread, self.me_id, job.handler, job.conversation)
        return ReplyWriter(
            self.chat, where, post.id, clock=self.clock, edit_interval=self.edit_interval,
            deadline=self.clock() + self.deadline, retry_base=self.retry_base, sleep=self.sleep,
        )

    async def run(self, job: Job) -> None:
        if isinstance(job.decision, Cue):
            await self._cue(job, job.decision)
            return
        shared: dict[str, Thread] = {}  # the thread read once, for every candidate asked
        if await self._run_one(job, shared) is False and isinstance(job.decision, Continue):
            await self._fall_through(job, shared)

    async def _fall_through(self, job: Job, shared: dict[str, Thread]) -> None:
        """A follow-up its conversation declined: the route's next candidates (router.plan), i.e.
        the thread's other conversations, most recent first, then the handler its triggers call
        (which may open a second conversation in the thread)."""
        post = job.event.post
        for step, decision in job.fallbacks:
            if isinstance(decision, Continue):
                binding = next((b for b in await self.store.active(job.event.place) if b.handler == decision.handler), None)
                if binding is None:  # ended while this post waited
                    continue
                offer = Job(decision, job.event, binding.conversation, job.replayed, step, takeover=job.takeover)
                if await self._run_one(offer, shared) is not False:
                    log.info("post %s in thread %s: declined before; step %d -> %s", post.id, post.thread_id, step,
                             decision.handler)
                    return
                continue
            admitted = await self.admit(job.event, decision) if self.admit is not None else decision
            if admitted is None:
                break
            if isinstance(admitted, Start) and self.handlers[admitted.handler].spec.conversational:
                spec = self.handlers[admitted.handler].spec
                await open_conversation(self.store, job.event.place, spec, post.user_id, post.id, self.notify)
            log.info("post %s in thread %s: declined before; step %d -> %s, %s", post.id, post.thread_id, step,
                     admitted.handler, type(admitted).__name__.lower())  # type: ignore[union-attr]
            conversation = post.id if isinstance(admitted, Start) else ""
            await self._run_one(Job(admitted, job.event, conversation, job.replayed, step, takeover=job.takeover), shared)
            return
        log.info("post %s in thread %s: declined by every conversation here, and no trigger", post.id, post.thread_id)

    async def _cue(self, job: Job, cue: Cue) -> None:
        """A reaction on a post left unanswered on purpose: best effort, never a notice."""
        post = job.event.post
        try:
            await self._writer(job).retrying(lambda: self.chat.add_reaction(post.id, cue.emoji), f"post {post.id}: cue")
        except ChatError as exc:
            log.warning("post %s in thread %s: the cue :%s: could not be added: %s", post.id, post.thread_id, cue.emoji, exc)

    async def _run_one(self, job: Job, shared: dict[str, Thread] | None = None) -> bool | None:
        """Run one handler on the job; False if it declined a follow-up."""
        handler = self.handlers.get(job.handler)
        thread_id = job.event.place  # the key of its bindings: the thread, or a DM's running conversation
        if handler is None:
            log.warning("thread %s: no handler %r any more; post %s not answered", thread_id, job.handler, job.event.post.id)
            return None
        writer = self._writer(job)
        timeout = handler.spec.conversation_timeout
        turn = Turn(
            job.decision, job.event, writer, job.conversation, job.replayed, self.chat, self.answerable, self.bot_name,
            {} if shared is None else shared, self.ttl if timeout is None else timeout, job.takeover,
        )
        started = self.clock()
        try:
            return await self._handle(job, turn, handler)
        finally:  # llmbot_turns_total, and one line with what the turn left in the thread (if anything)
            outcome = metrics.outcome_of(turn.reply)
            metrics.turn_done(job.handler, outcome)
            if outcome is not None and outcome != metrics.ANSWERED:  # (an answer has its "answered in" line)
                took = self.clock() - started
                log.info("thread %s: post %s, %s: %s (%.2fs)", thread_id, job.event.post.id, job.handler, outcome, took,
                         extra={"thread_id": thread_id, "post_id": job.event.post.id, "plugin": job.handler,
                                "outcome": outcome, "duration": round(took, 3)})

    async def _handle(self, job: Job, turn: Turn, handler: Handler) -> bool | None:
        thread_id = turn.thread_id
        writer = turn.reply
        taken: bool | None = None
        try:
            async with asyncio.timeout(self.deadline):
                taken = await handler.handle(turn)
        except ConversationOver as exc:
            notify = quiet if isinstance(exc, NothingOpened) else self.notify
            if await close_conversations(self.store, thread_id, job.handler, ENDED, notify):  # its own, not another's
                log.info("%s; conversation closed", exc)
            return None
        except TurnAborted as exc:
            log.warning("%s; conversation unbound", exc)
            await close_conversations(self.store, thread_id, None, ENDED, self.notify)
            return None
        except asyncio.CancelledError:
            await turn.reply.mark_interrupted()  # shutdown: say so in the thread, then stop
            raise
        except TimeoutError:
            writer = turn.reply  # the turn's newest post: a partial answer is marked, not doubled
            writer.deadline = self.clock() + LAST_WORD
            await writer.fail(TOO_SLOW, f"the turn took longer than LLMBOT_TURN_DEADLINE ({self.deadline:g}s)")
        except ChatError as exc:
            log.warning("thread %s: Mattermost refused a call: %s", thread_id, exc)
            writer = turn.reply
            if not writer.closed:
                writer.deadline = self.clock() + LAST_WORD
                await writer.fail(FAILED, None)  # (its cause is the line above)
        except Exception:
            log.exception("thread %s: handler %s failed on post %s", thread_id, job.handler, job.event.post.id)
            writer = turn.reply
            if not writer.closed:
                writer.deadline = self.clock() + LAST_WORD
                await writer.fail(FAILED, "handler failed (traceback above)")
        if taken is False:
            return False
        if isinstance(job.decision, (Start, Continue)):
            await self.store.touch(thread_id, job.handler)  # the TTL counts from the end of the answer
        return taken

    async def interrupted(self, job: Job) -> None:
        """A queued turn that shutdown left unanswered: say so, if it was to be answered."""
        if isinstance(job.decision, (Start, Continue)):
            await self._writer(job).mark_interrupted()
