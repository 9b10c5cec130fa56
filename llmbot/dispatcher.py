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

from .errors import ChatError
from .events import Hello, Posted, parse_frame
from .handlers.base import Handler
from .hooks import ENDED, Notify, close_conversations, open_conversation, quiet
from .limits import Limits
from .plugin_access import Activations, PluginAccess
from .policy import AccessPolicy
from .router import STEPS, Continue, Decision, End, HandlerSpec, Identity, Ignore, Passive, Refuse, Start, plan
from .runner import Job
from .scheduler import Scheduler
from .store.base import Store

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000  # frames waiting for the consumer; past that the socket reader waits
MAX_HELD = 10_000  # live posts held during a catch-up; past that they are read again over REST
TEAM_RETRY = 60.0  # seconds between attempts to learn team names after a failure
BUSY_NOTICE_EVERY = 600.0  # seconds: a plugin over its activation limit tells each user once per this


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
        activations: Activations | None = None,
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
        self._teams = teams
        self._on_hello = on_hello
        self._clock = clock
        self.notify = notify  # tells plugins their conversation is over (hooks.py)
        self.plugin_access = plugin_access if plugin_access is not None else PluginAccess()
        self.activations = activations if activations is not None else Activations(store, {})
        self._specs: tuple[HandlerSpec, ...] = ()
        self._queue: asyncio.Queue[Posted | Hello | _Release] = asyncio.Queue(QUEUE_SIZE)
        self._consumer: asyncio.Task[None] | None = None
        self.accepting = True
        self.live_ms = 0  # newest create_at of any post the websocket delivered
        self._holding = False
        self._held: list[Posted] = []
        self.overflow_ms: int | None = None  # oldest post dropped while holding: read again over REST
        self._teams_asked: dict[str, float] = {}  # team id -> when its name was last looked up

    @property
    def specs(self) -> tuple[HandlerSpec, ...]:
        return self._specs

    def handlers_changed(self) -> None:
        self._specs = tuple(h.spec for h in self.handlers.values())

    def start(self) -> None:
        self.handlers_changed()
        if self._consumer is None:
            self._consumer = asyncio.create_task(self._consume())

    async def close(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
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
    async def dispatch(self, event: Posted, *, replayed: bool = False) -> bool:
        """Route one post and queue what it asks for; True if a turn was queued. Cheap for the
        posts the bot ignores."""
        if not self.accepting:
            return False
        post = event.post
        active = await self.store.active(post.root_id) if post.root_id else []
        specs = self._specs if self.plugin_access.is_open else self._allowed(event)
        routed = plan(event, self.me, tuple(b.handler for b in active), specs, self.end_words)
        decision = routed.decision
        if isinstance(decision, Ignore) and not routed.passive:
            if routed.step != 1 and active:
                log.debug("post %s in thread %s: step 7, nothing takes it", post.id, post.thread_id)
            return False
        if not await self.store.claim(post.id):  # seen twice: a replayed event, or a catch-up overlapping the socket
            return False
        if self.policy.wants_team_name(event.team_id):  # a team joined since start-up
            await self.learn_team_names(event.team_id)
        refusal = None if self.policy.is_open else self.policy.refuses(event)
        thread_id = post.thread_id
        if refusal is not None:
            log.info("post %s in thread %s not answered: %s", post.id, thread_id, refusal)
            admitted = await self.limits.dm_refusal(event, decision)
        else:
            for name in routed.passive:  # step 2: in addition to whatever takes the post
                log.info("post %s in thread %s: step 2 (passive) -> %s", post.id, thread_id, name)
                self.scheduler.submit(thread_id, Job(Passive(name), event, "", replayed, step=2))
            admitted = await self.admit(event, decision)
        if admitted is None:
            return bool(routed.passive) and refusal is None
        decision = admitted
        self._remember_name(post.user_id, event.sender_name)
        conversation = ""
        if isinstance(decision, Start):
            conversation = post.id  # a new call always opens a new conversation
            spec = self.handlers[decision.handler].spec
            if spec.conversational:
                await open_conversation(self.store, thread_id, spec, post.user_id, conversation, self.notify)
        elif isinstance(decision, Continue):
            conversation = next(b.conversation for b in active if b.handler == decision.handler)
            await self.store.touch(thread_id, decision.handler)
        elif isinstance(decision, End):
            conversation = next(b.conversation for b in active if b.handler == decision.handler)
            # the end word ends every conversation of the thread
            await close_conversations(self.store, thread_id, None, ENDED, self.notify)
        caught = " (caught up)" if replayed else ""
        log.info(
            "post %s in thread %s: step %d (%s) -> %s, %s%s", post.id, thread_id, routed.step, STEPS[routed.step],
            decision.handler, type(decision).__name__.lower(), caught,  # type: ignore[union-attr]
        )
        job = Job(decision, event, conversation, replayed, step=routed.step, fallbacks=routed.fallbacks)
        coalesces = isinstance(decision, Continue) and self.handlers[decision.handler].spec.coalesces
        self.scheduler.submit(thread_id, job, coalesces=coalesces)
        return True

    async def admit(self, event: Posted, decision: Decision) -> Decision | None:
        """A new call within the per-user limits: the call, a refusal to post, or None (silence).
        Anything else passes as it is."""
        if isinstance(decision, Ignore):
            return None
        if not isinstance(decision, Start):
            return decision
        admitted = await self.limits.admit(event, decision)
        if not isinstance(admitted, Start) or self.activations.is_open:
            return admitted
        if await self.activations.admit(decision.handler, event.post.create_at / 1000):
            return admitted
        plugin, user = decision.handler, event.post.user_id
        log.info("plugin %s opened %d conversations within a minute (LLMBOT_MAX_ACTIVATIONS_PER_MINUTE): post %s not taken",
                 plugin, self.activations.limit(plugin), event.post.id)
        if await self.store.first_notice(f"plugin-rate:{plugin}:{user}", BUSY_NOTICE_EVERY):
            return Refuse(plugin, f"`{self.handlers[plugin].call_word()}` is busy right now. Please try again in a minute.")
        return None

    def _allowed(self, event: Posted) -> tuple[HandlerSpec, ...]:
        """The handlers this post may reach under the per-plugin access lists (LLMBOT_PLUGIN_ALLOWED_CHANNELS and the like)."""
        allowed = []
        for spec in self._specs:
            reason = self.plugin_access.refuses(spec.name, event)
            if reason is None:
                allowed.append(spec)
            else:
                log.debug("post %s: plugin %s left out: %s", event.post.id, spec.name, reason)
        return tuple(allowed)

    async def learn_team_names(self, team_id: str = "") -> None:
        """Team names for access lists written with names. A team still unknown after a look-up
        (or a failed look-up) is asked about again only after TEAM_RETRY, not on every post."""
        now = self._clock()
        if team_id and now - self._teams_asked.get(team_id, float("-inf")) < TEAM_RETRY:
            return
        if team_id:
            self._teams_asked[team_id] = now
        try:
            teams = await self._teams()
        except ChatError as exc:
            log.error("cannot read the bot's teams, so team names in the access lists match nothing yet: %s", exc)
            return
        for known_id, name in teams.items():
            self.policy.learn_team(known_id, name)
