"""Websocket frames -> events -> routing, access and limits -> the per-thread scheduler.

Nothing slow runs on the socket reader: `on_frame` parses the frame and puts it on a bounded
queue; one consumer task takes events in the order the socket delivered them. While a catch-up
reads what the socket missed, live posts are held back (from the `hello` on, in order) and
routed after the gap, so the posts of a thread are always taken in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from . import router as routing
from . import tasks
from .errors import StoreUnavailable
from .events import Hello, Posted, parse_frame
from .handlers.base import Handler
from .hooks import ENDED, Notify, close_conversations, open_conversation, quiet
from .limits import Limits
from .plugin_access import PluginAccess
from .policy import AccessPolicy, TeamNames
from .replicas import Replicas, StoreOutage
from .router import Continue, Cue, Decision, End, HandlerSpec, Identity, Ignore, Passive, Start, Usage
from .runner import Job
from .scheduler import Scheduler
from .store.base import Store

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000  # frames waiting for the consumer; past that the socket reader waits
MAX_HELD = 10_000  # live posts held during a catch-up; past that they are read again over REST
CUE_ONCE_PER = 24 * 3600.0  # seconds: a thread refused by the access lists gets one cue a day


class _Release:
    """Queue marker: the catch-up pass is over, route what was held; `done` once it was."""

    def __init__(self) -> None:
        self.done = asyncio.Event()


class Dispatcher:
    def __init__(
        self,
        *,
        me: Identity,
        store: Store,
        scheduler: Scheduler[Job],
        handlers: Mapping[str, Handler],
        policy: AccessPolicy,
        limits: Limits,
        end_words: tuple[str, ...],
        remember_name: Callable[[str, str], None],
        teams: Callable[[], Awaitable[dict[str, str]]],
        on_hello: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
        plugin_access: PluginAccess | None = None,
        notify: Notify = quiet,
    ) -> None:
        self.me = me
        self.store = store
        self.scheduler = scheduler
        self.handlers = handlers
        self.policy = policy
        self.limits = limits
        self.end_words = end_words
        self._remember_name = remember_name
        self.team_names = TeamNames(policy, teams, clock)  # for access lists written with team names
        self._on_hello = on_hello
        self.notify = notify  # tells plugins their conversation is over (hooks.py)
        self.replicas: Replicas | None = None  # with Redis: this replica among the others
        self.outage = StoreOutage(store, on_hello)  # Redis does not answer: no turns, a catch-up after
        self.plugin_access = plugin_access if plugin_access is not None else PluginAccess()
        self._specs: tuple[HandlerSpec, ...] = ()
        self._table = routing.Table(())
        self._debug = False
        self._tables: dict[tuple[HandlerSpec, ...], routing.Table] = {}  # per set of plugins a post may reach
        self._queue: asyncio.Queue[Posted | Hello | _Release] = asyncio.Queue(QUEUE_SIZE)
        self._consumer: asyncio.Task[None] | None = None
        self.accepting = True
        self.live_ms = 0  # newest create_at of any post the websocket delivered
        self._holding = False
        self._held: list[Posted] = []
        self.overflow_ms: int | None = None  # oldest post dropped while holding: read again over REST

    @property
    def specs(self) -> tuple[HandlerSpec, ...]:
        return self._specs

    def handlers_changed(self) -> None:
        self._specs = tuple(h.spec for h in self.handlers.values())
        self._table = routing.Table(self._specs)
        self._tables = {}

    def start(self) -> None:
        self.handlers_changed()
        self._debug = log.isEnabledFor(logging.DEBUG)  # read once: the hot path logs "why not" only at DEBUG
        if self._consumer is None:
            self._consumer = asyncio.create_task(self._consume())

    async def close(self) -> None:
        await tasks.stop(self._consumer, "the dispatcher")
        self._consumer = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def idle(self) -> None:
        """Wait until every frame received so far was taken (tests and shutdown use it)."""
        await self._queue.join()

    # ------------------------------------------------------------------ the socket side
    async def on_frame(self, raw: str) -> None:
        """Everything the websocket delivers comes here: parsed and queued, nothing slower."""
        event = parse_frame(raw)
        if isinstance(event, (Posted, Hello)):
            if self._queue.full():
                await self._queue.put(event)  # the consumer is behind: the socket reader waits
            else:
                self._queue.put_nowait(event)
        elif event.malformed:
            log.warning("websocket frame skipped: %s (%d chars)", event.reason, len(raw))

    async def release(self) -> None:
        """Called by the catch-up after a pass: route the held posts, in order, behind what is
        queued; returns once they were, so a next pass cannot start holding before that."""
        marker = _Release()
        await self._queue.put(marker)
        await marker.done.wait()

    def hold(self) -> None:
        self._holding = True

    # ------------------------------------------------------------------ the consumer
    async def _consume(self) -> None:
        queue = self._queue
        while True:
            item = await queue.get() if queue.empty() else queue.get_nowait()
            try:
                if isinstance(item, Posted):  # the common case first
                    await self._live(item)
                elif isinstance(item, Hello):
                    log.info("websocket connected (%s)", item.connection_id)
                    if self.accepting:
                        self._holding = True  # from here on, posts wait for the gap to be read
                        self._on_hello(self.live_ms)
                else:
                    try:
                        await self._release()
                    finally:
                        item.done.set()
            except StoreUnavailable as exc:
                self.outage.noticed(exc, item.post.create_at if isinstance(item, Posted) else self.live_ms)
            except Exception:
                log.exception("event skipped after an unexpected error")
            finally:
                queue.task_done()

    async def _live(self, event: Posted) -> None:
        created = event.post.create_at
        self.live_ms = max(self.live_ms, created)  # (also while stopping: tests wait on it as a marker)
        if not self.accepting:
            return
        if not self._holding:
            await self.dispatch(event)
        elif self.overflow_ms is None and len(self._held) < MAX_HELD:
            self._held.append(event)
        else:  # too many to hold: all of them are read again over REST, in order, by the next pass
            if self.overflow_ms is None:
                self.overflow_ms = self._held[0].post.create_at if self._held else created
                self._held.clear()
            self.overflow_ms = min(self.overflow_ms, created)

    async def _release(self) -> None:
        self._holding = False
        held, self._held = self._held, []
        if not self.accepting:  # stopping: the next start-up's catch-up takes them
            return
        for event in held:
            await self.dispatch(event)

    # ------------------------------------------------------------------ routing
    async def dispatch(self, event: Posted, *, replayed: bool = False, takeover: bool = False) -> bool:
        """Route one post and queue what it asks for; True if a turn was queued. Cheap for the
        posts the bot ignores."""
        if not self.accepting:
            return False
        post = event.post
        # replies look up their thread, DM root posts the DM's running conversation (dm_flow.py)
        active, quiet = await self.store.look(event.place) if post.root_id or event.is_direct else ([], None)
        if active and any(b.awaiting for b in active):  # after a usage hint, only the caller's question continues
            active = [b for b in active if not b.awaiting or b.awaiting == post.user_id]
        table = self._table if self.plugin_access.is_open else self._table_for(event)
        routed = routing.plan(event, self.me, tuple(b.handler for b in active) if active else (), table, self.end_words)
        if routed is routing.NOTHING:  # most posts call nobody: the cheapest way out
            if quiet is not None:  # a reply in a thread whose conversation is over
                return await self._after_the_end(event)
            if self._debug:
                log.debug("%s: not answered: no trigger, no conversation here", event)
            return False
        decision = routed.decision
        if isinstance(decision, Ignore) and not routed.passive:
            if routed.step != 1 and self._debug:
                log.debug("%s: not answered, step %d: %s", event, routed.step, decision.reason)
            return False
        # seen twice (a replayed event, a catch-up overlapping the socket, another replica): once only;
        # a take-over is a post this replica was handed because its claimant stopped (replicas.py)
        if not takeover and not await (self.replicas.claim(event) if self.replicas else self.store.claim(post.id)):
            return False
        if self.policy.wants_team_name(event.team_id):  # a team joined since start-up
            await self.team_names.learn(event.team_id)
        refusal = None if self.policy.is_open else self.policy.refuses(event)
        thread_id = event.place  # the thread, or the DM of a DM root post: its bindings and queue
        cue: Cue | None = None  # left unanswered on purpose: the reaction that says so
        if refusal is not None:
            log.info("%s: not answered: %s", event, refusal)
            admitted = await self.limits.dm_refusal(event, decision)
            if admitted is None and not isinstance(decision, Ignore) and await self.store.first_notice(
                f"cue:{thread_id}", CUE_ONCE_PER
            ):
                cue = Cue(Cue.NOT_ALLOWED, refusal)
        else:
            for name in routed.passive:  # step 2: in addition to whatever takes the post
                log.info("%s: step 2 (passive) -> %s", event, name)
                self.scheduler.submit(thread_id, Job(Passive(name), event, "", replayed, step=2))
            admitted = decision if takeover else await self.admit(event, decision)
            if admitted is None and not isinstance(decision, Ignore):
                cue = Cue(Cue.OVER_A_LIMIT, "over a limit (told before)")  # on every such post: the catch-up skips it
        if admitted is None:
            if self.replicas is not None:  # nothing to take over: no turn
                await self.replicas.untrack(post.id)
            if cue is not None:
                log.debug("%s: not answered (%s); cue :%s:", event, cue.why, cue.emoji)
                self.scheduler.submit(thread_id, Job(cue, event, "", replayed))
            return cue is not None or (bool(routed.passive) and refusal is None)
        decision = admitted
        self._remember_name(post.user_id, event.sender_name)
        conversation = ""
        if isinstance(decision, Start):
            conversation = post.id  # a new call always opens a new conversation
            spec = self.handlers[decision.handler].spec
            if spec.conversational:
                await open_conversation(self.store, thread_id, spec, post.user_id, conversation, self.notify)
        elif isinstance(decision, Usage) and self.handlers[decision.handler].spec.conversational:
            # the hint asks for the question: the caller's next post in the thread is it
            spec = self.handlers[decision.handler].spec
            await self.store.bind(thread_id, spec.name, post.user_id, post.id, ttl=spec.conversation_timeout,
                                  awaiting=post.user_id)
        elif isinstance(decision, Continue):
            conversation = next(b.conversation for b in active if b.handler == decision.handler)
            await self.store.touch(thread_id, decision.handler)
        elif isinstance(decision, End):
            conversation = next(b.conversation for b in active if b.handler == decision.handler)
            # the end word ends every conversation of the thread
            await close_conversations(self.store, thread_id, None, ENDED, self.notify)
        caught = " (caught up)" if replayed else ""
        log.info(
            "%s: step %d (%s) -> %s, %s%s", event, routed.step, routing.STEPS[routed.step],
            decision.handler, type(decision).__name__.lower(), caught,  # type: ignore[union-attr]
        )
        job = Job(decision, event, conversation, replayed, step=routed.step, fallbacks=routed.fallbacks, takeover=takeover)
        coalesces = isinstance(decision, Continue) and self.handlers[decision.handler].spec.coalesces
        self.scheduler.submit(thread_id, job, coalesces=coalesces)
        return True

    def _table_for(self, event: Posted) -> routing.Table:
        """The routing table of the plugins this post may reach (LLMBOT_PLUGIN_* lists)."""
        specs = self.plugin_access.allowed(self._specs, event)
        table = self._tables.get(specs)
        if table is None:
            table = self._tables[specs] = routing.Table(specs)
        return table

    async def _after_the_end(self, event: Posted) -> bool:
        """A reply no conversation takes. If the thread's conversation with the bot ended or expired,
        its first such post gets a cue (:zzz:), so nobody waits for an answer that won't come."""
        post = event.post
        why = await self.store.take_quiet(event.place)
        if why is None or not await self.store.claim(post.id):
            return False
        log.debug("%s: not answered: the conversation here has %s; cue :%s:", event, why, Cue.QUIET)
        self.scheduler.submit(event.place, Job(Cue(Cue.QUIET, f"conversation {why}"), event))
        return True

    async def admit(self, event: Posted, decision: Decision) -> Decision | None:
        """A new call within the per-user limits: the call, a refusal to post, or None (silence).
        Anything else passes as it is."""
        if isinstance(decision, Ignore):
            return None
        return await self.limits.admit(event, decision) if isinstance(decision, Start) else decision
