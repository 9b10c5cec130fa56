"""plan(): one posted event -> what the bot tries, in order. Pure; the README's routing table.

1. Not a human post (the bot itself, other bots, webhooks, system posts) -> ignored.
2. Passive listeners that match run too (in addition to what follows; they never take the post).
3. In a thread with active conversations: the end word ends them all (one goodbye); then the
   handlers' interrupt triggers, in handler order.
4. The thread's active conversations, most recently active first: the first that accepts takes it.
   A post that @mentions someone else and not the bot is not for the bot: ignored.
5. If none accepts (or none is active): every handler's triggers in order; the first match wins.
6. A DM root post or an @mention with no trigger -> the first conversational handler.
7. Nothing matched -> ignored at no cost.

Steps 4-6 are a list of candidates: the runner offers the post to each in turn until one accepts
(a conversation may decline a follow-up), so which one took it is known only after the turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from .events import Posted
from .triggers import addressed_to_others, is_end_word, matches_any, strip_call


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """What the router needs to know of a handler."""

    name: str
    triggers: tuple[re.Pattern[str], ...]
    conversational: bool = True
    conversation_timeout: float | None = None  # seconds of silence that end its conversations; None: LLMBOT_CONVERSATION_TTL
    hints_usage: bool = False  # called with nothing after its trigger ("gpt" alone): a usage hint, not a start
    interrupts: tuple[re.Pattern[str], ...] = ()  # triggers that win even in a thread bound to another handler
    passive: tuple[re.Pattern[str], ...] = ()  # listeners that run on every matching post, taking nothing
    coalesces: bool = False  # follow-ups queued behind a turn are answered once, by the newest (a chat)


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
class Passive:
    """Run the handler's passive listeners that match; it takes nothing and binds nothing."""

    handler: str


@dataclass(frozen=True, slots=True)
class Cue:
    """Leave the post unanswered on purpose, with a reaction on it that says why (and tells a
    catch-up after a restart that this post was decided on)."""

    emoji: str
    why: str
    handler: str = ""

    QUIET: ClassVar[str] = "zzz"  # the first post after a thread's conversation ended or expired
    NOT_ALLOWED: ClassVar[str] = "no_entry_sign"  # the access lists (or DMs off) say no
    OVER_A_LIMIT: ClassVar[str] = "hourglass_flowing_sand"  # over a limit the user was told about already


@dataclass(frozen=True, slots=True)
class Refuse:
    """A limit or a policy says no; `message` tells the user (the app decides this, not route())."""

    handler: str
    message: str


Decision = Ignore | Start | Continue | End | Usage | Refuse | Passive | Cue

STEPS = {
    1: "not a human post",
    3: "interrupt",
    4: "active conversation",
    5: "trigger",
    6: "direct message or mention",
    7: "nothing matched",
}


@dataclass(frozen=True, slots=True)
class Route:
    """What the bot tries for one post: `candidates` in order (step, decision) until one accepts,
    and the handlers whose passive listeners match."""

    candidates: tuple[tuple[int, Decision], ...]
    passive: tuple[str, ...] = ()

    @property
    def decision(self) -> Decision:
        return self.candidates[0][1]

    @property
    def step(self) -> int:
        return self.candidates[0][0]

    @property
    def fallbacks(self) -> tuple[tuple[int, Decision], ...]:
        return self.candidates[1:]


def _ignore(step: int, reason: str, passive: tuple[str, ...] = ()) -> Route:
    return Route(((step, Ignore(reason)),), passive)


NOTHING = _ignore(7, "no trigger")  # the common outcome, made once: most posts call nobody


class Table:
    """What plan() needs of a handler list, worked out once per list (not per post)."""

    __slots__ = ("handlers", "names", "default", "passive", "interrupts", "triggers")

    def __init__(self, handlers: tuple[HandlerSpec, ...]) -> None:
        self.handlers = handlers
        self.names = frozenset(h.name for h in handlers)
        self.default = next((h for h in handlers if h.conversational), None)  # step 6
        self.passive = tuple((h.name, h.passive) for h in handlers if h.passive)
        self.interrupts = tuple((h.name, h.interrupts) for h in handlers if h.interrupts)
        self.triggers = tuple((h, h.triggers) for h in handlers if h.triggers)


_last_table = Table(())


def _table_of(handlers: tuple[HandlerSpec, ...]) -> Table:
    """The Table of a handler list given as a tuple, remembered while the same tuple comes again."""
    global _last_table
    if _last_table.handlers is not handlers:
        _last_table = Table(handlers)
    return _last_table


def plan(
    event: Posted,
    me: Identity,
    active: tuple[str, ...],
    handlers: tuple[HandlerSpec, ...] | Table,
    end_words: tuple[str, ...],
) -> Route:
    """What to try for `event`; `active` names the thread's live conversations, newest first."""
    table = handlers if isinstance(handlers, Table) else _table_of(handlers)
    post = event.post
    if post.user_id == me.user_id:
        return _ignore(1, "own post")
    if not post.user_id:
        return _ignore(1, "post without author")
    if post.props:  # most posts have none: then neither flag can be set
        if post.from_bot:
            return _ignore(1, "post by a bot")
        if post.from_webhook:
            return _ignore(1, "post by a webhook")
    if post.type:
        return _ignore(1, "system post")

    text = post.message
    # "@llmbot food today" calls the plugin whose trigger is "food": the mention only addresses the bot
    called = text[lead.end() :].lstrip(" \t,:;") if text.startswith("@") and (lead := me.mention.match(text)) else text
    passive = tuple(name for name, patterns in table.passive if matches_any(called, patterns)) if table.passive else ()
    root = not post.root_id
    if not root and "@" in text and addressed_to_others(text, me.mention):  # "@marc what do you think?"
        return _ignore(4, "addressed to someone else", passive)
    # a DM root post continues the DM's running conversation (dm_flow.py); elsewhere a root post opens
    live = tuple(name for name in active if name in table.names) if active and (not root or event.is_direct) else ()
    if live:
        if is_end_word(text, end_words, me.mention):
            return Route(((3, End(live[0])),), passive)
        for name, patterns in table.interrupts:  # interrupts, like the end word, come before the conversations
            if matches_any(called, patterns):
                return Route(((3, Start(name)),), passive)
    new: tuple[int, Decision] | None = None
    for handler, triggers in table.triggers:  # step 5 (a loop, not any(): this runs for every post)
        for trigger in triggers:
            if trigger.search(called):
                new = 5, _start_or_usage(handler, text, me)
                break
        if new is not None:
            break
    else:
        new = _default_call(event, me, text, table)
    if not live:
        if new is None:
            return Route(NOTHING.candidates, passive) if passive else NOTHING
        return Route((new,), passive)
    candidates: list[tuple[int, Decision]] = [(4, Continue(name)) for name in live]
    if new is not None:
        candidates.append(new)
    return Route(tuple(candidates), passive)


def _default_call(event: Posted, me: Identity, text: str, table: Table) -> tuple[int, Decision] | None:
    """Step 6: a DM root post or an @mention, for the first conversational handler."""
    default = table.default
    if default is None:
        return None
    post = event.post
    if event.is_direct and post.is_root:
        return 6, _start_or_usage(default, text, me, allow_files=post.file_count > 0)
    if "@" in text and me.mention.search(text):  # the cheap test first: most posts mention nobody
        return 6, _start_or_usage(default, text, me, allow_files=post.file_count > 0)
    return None


def route(
    event: Posted,
    me: Identity,
    bound_handler: str | None,
    handlers: tuple[HandlerSpec, ...],
    end_words: tuple[str, ...],
) -> Decision:
    """The first thing plan() would try, for a thread with at most one conversation."""
    return plan(event, me, (bound_handler,) if bound_handler else (), handlers, end_words).decision


def _start_or_usage(handler: HandlerSpec, text: str, me: Identity, *, allow_files: bool = False) -> Decision:
    if handler.hints_usage and not allow_files and not strip_call(text, handler.triggers, me.mention):
        return Usage(handler.name)
    return Start(handler.name)
