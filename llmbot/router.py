"""route(): one posted event -> what the bot does. Pure, first match wins.

Order: who wrote it (never ourselves, other bots, webhooks, system posts), then a conversation
already bound to the thread (its end word first, then its handler alone), then new calls
(trigger words, a DM root post, an @mention). Everything else is ignored at no cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .events import Posted
from .triggers import is_end_word, matches_any, strip_call


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What the router needs to know of a handler."""

    name: str
    triggers: tuple[re.Pattern[str], ...]
    conversational: bool = True
    conversation_timeout: float | None = None  # seconds of silence that end its conversations; None: LLMBOT_CONVERSATION_TTL
    hints_usage: bool = False  # called with nothing after its trigger ("gpt" alone): a usage hint, not a start
    interrupts: tuple[re.Pattern[str], ...] = ()  # triggers that win even in a thread bound to another handler


@dataclass(frozen=True, slots=True)
class Identity:
    """The bot account, as users/me reports it."""

    user_id: str
    username: str
    mention: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


@dataclass(frozen=True, slots=True)
class Start:
    """Open a conversation in the post's thread (or answer once, for a one-shot handler)."""

    handler: str


@dataclass(frozen=True, slots=True)
class Continue:
    """A follow-up in a bound thread."""

    handler: str


@dataclass(frozen=True, slots=True)
class End:
    """The end word in a bound thread."""

    handler: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Called with nothing to say ("gpt" alone): answer with a hint, bind nothing."""

    handler: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """A limit or a policy says no; `message` tells the user (the app decides this, not route())."""

    handler: str
    message: str


Decision = Ignore | Start | Continue | End | Usage | Refuse


def route(
    event: Posted,
    me: Identity,
    bound_handler: str | None,
    handlers: tuple[HandlerSpec, ...],
    end_words: tuple[str, ...],
) -> Decision:
    """Decide what to do with `event`. `bound_handler` is the thread's conversation, if any."""
    post = event.post
    if post.user_id == me.user_id:
        return Ignore("own post")
    if not post.user_id:
        return Ignore("post without author")
    if post.from_bot:
        return Ignore("post by a bot")
    if post.from_webhook:
        return Ignore("post by a webhook")
    if post.is_system:
        return Ignore("system post")

    text = post.message
    # "@llmbot food today" calls the plugin whose trigger is "food": the mention only addresses the bot
    called = text[lead.end() :].lstrip(" \t,:;") if text.startswith("@") and (lead := me.mention.match(text)) else text
    if bound_handler is not None and not post.is_root:
        if not any(h.name == bound_handler for h in handlers):
            return Ignore(f"thread bound to unknown handler {bound_handler!r}")
        if is_end_word(post.message, end_words, me.mention):
            return End(bound_handler)
        for handler in handlers:  # interrupts, like the end word, come before the conversation
            if handler.interrupts and matches_any(called, handler.interrupts):
                return Start(handler.name)
        return Continue(bound_handler)

    for handler in handlers:
        if matches_any(called, handler.triggers):
            return _start_or_usage(handler, text, me)
    default = handlers[0] if handlers else None
    if default is None:
        return Ignore("no handlers")
    if event.is_direct and post.is_root:
        return _start_or_usage(default, text, me, allow_files=post.file_count > 0)
    if "@" in text and me.mention.search(text):  # the cheap test first: most posts mention nobody
        return _start_or_usage(default, text, me, allow_files=post.file_count > 0)
    return Ignore("no trigger")


def _start_or_usage(handler: HandlerSpec, text: str, me: Identity, *, allow_files: bool = False) -> Decision:
    if handler.hints_usage and not allow_files and not strip_call(text, handler.triggers, me.mention):
        return Usage(handler.name)
    return Start(handler.name)
