"""Wiring: the adapters, the store and the steps of the flow, put together into a Bot.

frame -> dispatcher (route, access, limits) -> scheduler (one queue per thread) -> runner ->
handler -> reply writer -> Mattermost; the catch-up after every (re)connect; lifecycle.py for
serving and stopping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from urllib.parse import urlsplit

from . import lifecycle, metrics, ops_http, tasks
from .catchup import CatchUp
from .dispatcher import Dispatcher
from .events import Posted
from .handlers.base import Handler
from .hooks import Deactivations, open_conversation
from .leases import ThreadLeases, replica_id
from .limits import Limits
from .plugin_access import Activations, PluginAccess
from .plugins.api import Plugin
from .plugins.gpt import GptChat
from .plugins.host import PluginHandler
from .plugins.message import Tools
from .policy import AccessPolicy
from .ports import ChatAPI, LLMClient
from .prompts import PromptTemplate
from .replicas import Replicas, replica_store
from .retry import RETRY_BASE
from .router import Decision, Identity
from .runner import Job, TurnRunner
from .scheduler import LimitedLLM, Scheduler
from .settings import Settings
from .store import MemoryStore, Store
from .thread import Post
from .tokens import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

GPT_HANDLER = "gpt"
SWEEP_EVERY = 30.0  # seconds between looks for expired conversations (their plugins' on_deactivate)


def _version() -> str:
    try:
        return metadata.version("llmbot")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "(not installed)"


class Bot:
    def __init__(
        self,
        settings: Settings,
        chat: ChatAPI,
        llm: LLMClient,
        system_prompt: PromptTemplate,
        *,
        store: Store | None = None,
        tokenizer: Tokenizer | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        edit_interval: float = 1.0,
        retry_base: float = RETRY_BASE,
        shutdown_grace: float = lifecycle.SHUTDOWN_GRACE,
    ) -> None:
        self.settings = settings
        self.chat = chat
        self.llm = llm
        self.system_prompt = system_prompt
        self._store_given = store is not None  # (tests bring theirs; else Redis with LLMBOT_REDIS_URL, at start)
        if store is None:
            store = MemoryStore(settings.conversation_ttl, settings.max_bound_threads, clock)
        self.store: Store = store
        self.replica = replica_id()  # this process among the replicas sharing Redis
        self.replicas: Replicas | None = None
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings.model)
        self.clock = clock
        self.now = now
        self.edit_interval = edit_interval
        self.retry_base = retry_base
        self.shutdown_grace = shutdown_grace
        self.me: Identity | None = None
        self.handlers: dict[str, Handler] = {}
        self.deactivations = Deactivations(self.handlers)  # plugins' on_deactivate, in the background
        self.policy = AccessPolicy.from_settings(settings)
        self.plugin_access = PluginAccess.from_settings(settings)
        self.scheduler: Scheduler[Job] = Scheduler(self._run, settings.max_concurrent_turns)
        self.limits = self._limits()
        self.limited_llm = LimitedLLM(llm, settings.max_concurrent_llm)  # one cap for the chat and every plugin
        self.dispatcher: Dispatcher | None = None
        self.catch_up: CatchUp | None = None
        self.runner: TurnRunner | None = None
        self.stopping = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self.metrics = metrics.Metrics()  # this bot's registry (metrics.py), served at /metrics
        self.metrics.watch(lambda: self.store, chat)
        self.ops: ops_http.OpsServer | None = None  # /healthz and /metrics, with LLMBOT_HTTP_PORT

    async def start(self) -> Identity:
        """Log in (users/me) and set up the handlers and the flow, which need the bot's name. The
        calling task, and every task started from it from now on, reports to this bot's metrics."""
        metrics.report_to(self.metrics)
        self.ops = self.ops or await ops_http.serve(self)  # before the login: a port taken fails at once
        me = self.me = await self.chat.login()
        s = self.settings
        if s.redis_url and not self._store_given:  # replicas: the store, the thread leases, the beats
            self.store = await replica_store(s, me.user_id)
            self.limits = self._limits()
            self.scheduler.leases = ThreadLeases(self.store, self.replica, s.redis_lease)
            budget = getattr(self.chat, "rate_budget", None)  # (one Mattermost budget for all replicas)
            self.replicas = Replicas(self.store, self.replica, s.redis_lease, self._take_over,
                                     counted=budget.set_share if budget is not None else lambda _n: None)
        added_before = list(self.handlers.values())  # plugins, in LLMBOT_PLUGINS order without the chat
        self.handlers.clear()
        if GPT_HANDLER in s.plugins:  # the chat takes its place in LLMBOT_PLUGINS (first: it answers DMs and @mentions)
            added_before.insert(s.plugins.index(GPT_HANDLER), self._chat())
        for handler in added_before:
            self.handlers[handler.spec.name] = handler
            if isinstance(handler, PluginHandler):
                handler.bot_name = me.username
            if not self.plugin_access.may_converse(handler.spec.name):  # LLMBOT_CONVERSE_ALLOWED/DENIED: one-shot turns only
                handler.spec = replace(handler.spec, conversational=False)
        self.runner = TurnRunner(
            self.chat, self.handlers, self.store, me_id=me.user_id, answerable=self._answerable,
            deadline=s.turn_deadline, ttl=s.conversation_ttl, bot_name=me.username, clock=self.clock,
            edit_interval=self.edit_interval, retry_base=self.retry_base, admit=self._admit, notify=self.deactivations.notify,
        )
        self.dispatcher = Dispatcher(
            me=me, store=self.store, scheduler=self.scheduler, handlers=self.handlers, policy=self.policy,
            limits=self.limits, end_words=s.end_words, remember_name=self.chat.remember_name,
            teams=self.chat.teams, on_hello=self._on_hello, clock=self.clock, plugin_access=self.plugin_access,
            notify=self.deactivations.notify,
        )
        self.catch_up = CatchUp(
            self.chat, self.dispatcher, self.store, self.handlers, me_id=me.user_id, ttl=s.conversation_ttl,
            now=self.now, retry_base=self.retry_base,
        )
        self.dispatcher.replicas = self.replicas
        self.dispatcher.start()
        if self.replicas is not None:
            self.replicas.start()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())
        if self.policy.needs_team_names:
            await self.dispatcher.team_names.learn()
        self.metrics.expect(self.handlers)
        log.info(
            "llmbot %s started as @%s (%s): model %s at %s, trigger %s, TTL %gs, plugins %s; tokens counted with %s",
            _version(), me.username, me.user_id, s.model, urlsplit(s.openai_base_url or "https://api.openai.com/v1").netloc,
            s.trigger.pattern, s.conversation_ttl, ", ".join(self.handlers) or "none", self.tokenizer.name,
        )
        return me

    def _limits(self) -> Limits:
        s = self.settings
        return Limits(
            self.store, max_starts_per_minute=s.max_starts_per_minute, max_open=s.max_conversations_per_user,
            direct_messages=s.direct_messages, call_word=self._call_word, notify=self.deactivations.notify,
            activations=Activations.from_settings(self.store, s),
        )

    async def _take_over(self, event: Posted) -> None:
        """A turn a stopped replica had taken on: routed again here, and answered in full."""
        if self.dispatcher is not None:
            await self.dispatcher.dispatch(event, replayed=True, takeover=True)

    async def unstarted(self, job: Job) -> None:
        """A queued turn that shutdown leaves: with replicas another one takes it over, else it is
        marked interrupted in the thread."""
        if self.replicas is None and self.runner is not None:
            await self.runner.interrupted(job)

    def _chat(self) -> PluginHandler:
        """The built-in GPT chat ("gpt" in LLMBOT_PLUGINS): a plugin like any other."""
        chat = GptChat(self.settings.trigger, self.system_prompt, self.now)
        chat._activator = self._activate
        return PluginHandler(chat, self.tools())

    def tools(self) -> Tools:
        """What plugins get: the LLM behind the same cap as the chat, token counting, the budgets."""
        s = self.settings
        return Tools(self.limited_llm, self.tokenizer, s.max_context_tokens, s.max_reply_tokens, s.max_turns)

    def add_plugin(self, plugin: Plugin) -> None:
        """Run a plugin (plugins/api.py) as a handler; before start(), in LLMBOT_PLUGINS order."""
        plugin._activator = self._activate
        self.add_handler(PluginHandler(plugin, self.tools()))

    async def _activate(self, name: str, channel_id: str, thread_id: str) -> None:
        """Plugin.activate(): bind a thread to the plugin as if a user had called it there."""
        if self.me is None:
            raise RuntimeError(f"plugin {name}: activate() works once the bot has started")
        spec = self.handlers[name].spec
        if not spec.conversational:
            raise RuntimeError(f"plugin {name} holds no conversations (no conversation=True listener, or LLMBOT_CONVERSE_DENIED)")
        await open_conversation(self.store, thread_id, spec, self.me.user_id, thread_id, self.deactivations.notify)
        log.info("thread %s in channel %s: plugin %s activated its conversation there", thread_id, channel_id, name)

    async def sweep(self) -> None:
        """Tell plugins about conversations that expired (or a full store pushed out)."""
        for thread_id, binding, reason in await self.store.sweep():
            self.deactivations.notify(thread_id, (binding,), reason)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self.sweep()
            except Exception:
                log.exception("the sweep of expired conversations failed; trying again in %.0fs", SWEEP_EVERY)

    def add_handler(self, handler: Handler) -> None:
        """Register a handler (before start(): in LLMBOT_PLUGINS order); the first one also answers
        DMs and @mentions."""
        self.handlers[handler.spec.name] = handler
        if self.dispatcher is not None:
            self.dispatcher.handlers_changed()

    def _call_word(self, handler: str) -> str:
        found = self.handlers.get(handler)
        return found.call_word() if found is not None else "@" + (self.me.username if self.me else "")

    def _answerable(self, post: Post, names: Mapping[str, str]) -> bool:
        return self.policy.is_open or self.policy.user_refusal(post.user_id, names.get(post.user_id, "")) is None

    async def _admit(self, event: Posted, decision: Decision) -> Decision | None:
        assert self.dispatcher is not None  # turns run only after start()
        return await self.dispatcher.admit(event, decision)

    def _on_hello(self, live_ms: int) -> None:
        if self.catch_up is not None:
            self.catch_up.request(live_ms)

    async def _run(self, job: Job) -> None:
        assert self.runner is not None  # jobs come only from the dispatcher, made by start()
        await self.runner.run(job)
        if self.replicas is not None:  # finished: no other replica needs to take it over
            await self.replicas.untrack(job.event.post.id)

    async def on_frame(self, raw: str) -> None:
        """Everything the websocket delivers comes here (parsed and queued; never slow)."""
        if self.dispatcher is not None:
            await self.dispatcher.on_frame(raw)

    async def idle(self) -> None:
        """Wait until no frame, catch-up or turn is pending (tests and shutdown use it)."""
        while True:
            if self.dispatcher is not None:
                await self.dispatcher.idle()
            task = self.catch_up.task if self.catch_up is not None else None
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await self.scheduler.idle()
            await self.deactivations.idle()
            if (self.catch_up is None or self.catch_up.task is None) and not len(self.scheduler) and (
                self.dispatcher is None or self.dispatcher.queued == 0
            ):
                return

    def stop(self) -> None:
        """Ask run() to stop, as SIGTERM does."""
        self.stopping.set()

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT (or stop()), then drain. Raises ChatAuthError when
        Mattermost stops accepting the bot's token."""
        await lifecycle.run(self)

    async def drain(self) -> None:
        """Stop taking turns; let running answers finish or mark them interrupted. Bounded: ~10 s."""
        await lifecycle.drain(self)

    async def close(self) -> None:
        if self.ops is not None:
            await self.ops.close()
            self.ops = None
        await tasks.stop(self._sweeper, "the sweep of expired conversations")
        self._sweeper = None
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.replicas is not None:  # its unfinished turns go to the others at once
            await self.replicas.close()
        await self.chat.close()
        await self.llm.close()
        close_store = getattr(self.store, "close", None)
        if close_store is not None:
            await close_store()
