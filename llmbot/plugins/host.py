"""PluginHandler: a Plugin (plugins/api.py) run as a handler of the core.

A new call goes to the first of the plugin's listeners that matches (and whose filters pass);
a follow-up in its conversation goes to its conversational intents, then to `converse()`.
Async methods run on the event loop; sync ones in a worker thread, with a Message whose methods
block until done, so one that blocks never stalls other threads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import ConversationOver, NothingOpened
from ..handlers.base import Turn
from ..record import KIND_END, KIND_GOODBYE, KIND_REFUSAL, KIND_USAGE, PROP_HANDLER, already_answered, turns_in_conversation
from ..router import Continue, End, HandlerSpec, Passive, Refuse, Start, Usage
from ..takeover import mark_abandoned
from ..thread import Thread
from ..triggers import trigger_word
from .api import Listener, Plugin
from .message import BlockingMessage, Message, Tools, enough_for

log = logging.getLogger(__name__)


class PluginHandler:
    def __init__(self, plugin: Plugin, tools: Tools) -> None:
        if not plugin.name or not re.fullmatch(r"[a-z0-9_.-]+", plugin.name):
            raise ValueError(f"plugin {type(plugin).__name__} needs a name of lowercase letters, digits, _ . or -")
        self.plugin = plugin
        triggers = tuple(listener.pattern for listener in plugin.listeners if not listener.passive)
        self.spec = HandlerSpec(
            plugin.name, triggers, conversational=any(listener.conversation for listener in plugin.listeners),
            conversation_timeout=plugin.conversation_timeout,
            interrupts=tuple(listener.pattern for listener in plugin.listeners if listener.interrupt),
            passive=tuple(listener.pattern for listener in plugin.listeners if listener.passive),
            hints_usage=plugin.usage_hint is not None, coalesces=plugin.coalesce,
        )
        self.bot_name = ""  # set by the app once logged in: the @mention is the call word of last resort
        self._tools = tools
        self._enough = enough_for(tools.context_tokens, tools.tokenizer.count_message)

    def call_word(self) -> str:
        word = trigger_word(self.spec.triggers[0]) if self.spec.triggers else None
        return word or (f"@{self.bot_name}" if self.bot_name else self.plugin.name)

    async def handle(self, turn: Turn) -> bool | None:
        decision = turn.decision
        if isinstance(decision, End):  # the end word: one goodbye for every conversation of the thread
            goodbye = f"👋 Conversation ended. Start a new one with `{self.call_word()}` whenever you like."
            await turn.reply.post(goodbye, KIND_GOODBYE)
            return None
        if isinstance(decision, Refuse):
            await turn.reply.post(decision.message, KIND_REFUSAL)
            return None
        if isinstance(decision, Usage) and self.plugin.usage_hint is not None:
            await turn.reply.post(self.plugin.usage_hint.replace("{call}", self.call_word()), KIND_USAGE)
            return None
        # A conversation opened by a live root post has a thread of exactly that post: no read.
        known = isinstance(decision, Start) and turn.post.is_root and not turn.replayed
        thread = Thread(turn.thread_id, (turn.post,)) if known else await turn.read_thread(self._enough)
        if thread is None:
            return None
        if turn.takeover:  # a replica died writing this answer: its partial post says so, a full one follows
            await mark_abandoned(turn, thread)
        elif not known and not isinstance(decision, Passive) and self._answered(thread, turn):
            log.info("thread %s: post %s was answered already; nothing new for %s", turn.thread_id, turn.post.id,
                     self.plugin.name)
            return None
        names = await turn.usernames(thread.user_ids())
        message = Message(turn, self.plugin.name, thread, names, self._tools, self.spec.triggers)
        turns = turns_in_conversation(thread, turn.reply.where.me_id, turn.conversation) if turn.conversation else 0
        turn.reply.turn = turns + 1
        cap = self._tools.max_turns
        if isinstance(decision, Continue) and cap and turns >= cap:  # LLMBOT_MAX_TURNS holds for every plugin
            await turn.reply.post(
                f"This conversation has reached its limit of {cap} answers, so I'm leaving it here. "
                f"Start a new one with `{self.call_word()}` whenever you like.",
                KIND_END,
            )
            raise ConversationOver(f"thread {turn.thread_id} reached {cap} turns")
        taken: bool | None = None
        if isinstance(decision, Passive):
            await self._passive(turn, message)
            return None
        if isinstance(decision, (Start, Usage)):
            await self._start(turn, message)
        elif isinstance(decision, Continue):
            taken = await self._follow_up(turn, message)
        if message.ended:
            raise ConversationOver(f"thread {turn.thread_id}: plugin {self.plugin.name} ended its conversation")
        return taken

    def _answered(self, thread: Thread, turn: Turn) -> bool:
        """Did this plugin already answer the post, or a newer one (a replayed post; a follow-up
        its previous turn answered with the thread)? Other plugins' posts don't count."""
        me = turn.reply.where.me_id
        posts = tuple(p for p in thread.posts if p.user_id != me or p.props.get(PROP_HANDLER) == self.plugin.name)
        return already_answered(Thread(thread.root_id, posts), turn.post, me)

    async def _start(self, turn: Turn, message: Message) -> None:
        for listener in self.plugin.listeners:
            match = listener.pattern.search(message.text)
            if match is None or listener.passive or not _passes(listener, turn, message):
                continue
            log.info("thread %s: plugin %s takes post %s (%s)", turn.thread_id, self.plugin.name, message.post_id,
                     listener.method)
            if not (listener.conversation and self.spec.conversational):  # one-shot: its posts open no conversation
                turn.reply.where = replace(turn.reply.where, conversation="")
            await self._call(self.plugin.handler_of(listener.method), message, *match.groups())
            if not (listener.conversation and self.spec.conversational) and not message.ended:
                raise NothingOpened(f"thread {turn.thread_id}: {self.plugin.name}.{listener.method} holds no conversation")
            if not message.ended:
                await self._call(self.plugin.on_activate, message)
            return
        # Step 6 (a DM or an @mention without a trigger) calls the first conversational plugin:
        # no listener matches, so its converse() is asked, as for a follow-up.
        if self.spec.conversational and await self._call(self.plugin.converse, message):
            if not message.ended:
                await self._call(self.plugin.on_activate, message)
            return
        log.info("thread %s: no listener of plugin %s takes post %s", turn.thread_id, self.plugin.name, message.post_id)
        if self.spec.conversational:
            raise NothingOpened(f"thread {turn.thread_id}: plugin {self.plugin.name} opened nothing")

    async def _passive(self, turn: Turn, message: Message) -> None:
        """Step 2: every passive listener that matches runs; none takes the post or binds anything."""
        for listener in self.plugin.listeners:
            match = listener.pattern.search(message.text) if listener.passive else None
            if match is not None and _passes(listener, turn, message):
                log.info("thread %s: plugin %s sees post %s (%s, passive)", turn.thread_id, self.plugin.name,
                         message.post_id, listener.method)
                await self._call(self.plugin.handler_of(listener.method), message, *match.groups())

    async def _follow_up(self, turn: Turn, message: Message) -> bool:
        for intent in self.plugin.intents:
            match = intent.pattern.search(message.text)
            if match is not None:
                log.info("thread %s: plugin %s intent %s takes post %s", turn.thread_id, self.plugin.name, intent.method,
                         message.post_id)
                await self._call(self.plugin.handler_of(intent.method), message)  # (intents take the message only)
                return True
        taken = bool(await self._call(self.plugin.converse, message))
        if not taken:
            log.info("thread %s: plugin %s declined post %s", turn.thread_id, self.plugin.name, message.post_id)
        return taken

    async def deactivated(self, thread_id: str, reason: str) -> None:
        """The plugin's on_deactivate (hooks.py calls it, in a task of its own)."""
        hook: Callable[..., Any] = self.plugin.on_deactivate  # a sync override runs in a worker thread
        if inspect.iscoroutinefunction(hook):
            await hook(thread_id, reason)
        else:
            await asyncio.to_thread(hook, thread_id, reason)

    async def _call(self, function: Callable[..., Any], message: Message, *groups: str | None) -> Any:
        """An async method on the loop; a sync one in a worker thread (its Message methods block)."""
        if inspect.iscoroutinefunction(function):
            return await function(message, *groups)
        blocking = BlockingMessage(message, asyncio.get_running_loop())
        return await asyncio.to_thread(function, blocking, *groups)


def _passes(listener: Listener, turn: Turn, message: Message) -> bool:
    """mmpy_bot's filters: direct messages only, an @mention needed, allowed users and channels."""
    if listener.direct_only and not message.is_direct:
        return False
    if listener.needs_mention and message.text == message.raw_text.strip():
        return False  # no leading @mention was stripped
    if listener.allowed_users and not ({message.user_id.casefold(), message.username.casefold()} & listener.allowed_users):
        return False
    event = turn.event
    channels = {message.channel_id.casefold(), event.channel_name.casefold()}
    return not (listener.allowed_channels and not (channels & listener.allowed_channels))
