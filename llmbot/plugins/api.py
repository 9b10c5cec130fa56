"""The public plugin API: what a plugin author reads, top to bottom.

    from llmbot import Plugin, Message, listen_to, conversational_intent

    class FoodSelection(Plugin):
        name = "food"                    # unique; written into the props of every post it makes
        conversation_timeout = 300       # seconds; None = LLMBOT_CONVERSATION_TTL

        @listen_to(r"^food(selection)?\\s+(\\w+)", conversation=True)
        async def start(self, message: Message, _word: str, day: str) -> None:
            await message.reply("Tomorrow there are 3 options: ...", state={"step": "choose", "day": day})

        @conversational_intent(r"^(cancel|stop)\\W*$")
        async def cancel(self, message: Message) -> None:
            await message.end("Cancelled.")

        async def converse(self, message: Message) -> bool:
            ...  # every follow-up while the conversation is active; False declines it

A pattern is searched case-insensitively in the post's text; its groups are passed positionally.
A plugin keeps nothing between turns: what it must remember rides on its own posts (`state=`),
so a restart or a second machine continues a dialog where it was.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from .message import Message

F = TypeVar("F", bound=Callable[..., Any])
_LISTENER = "__llmbot_listener__"
_INTENT = "__llmbot_intent__"


@dataclass(frozen=True, slots=True)
class Listener:
    """A trigger of a plugin: `listen_to`'s arguments, bound to the method they decorate."""

    pattern: re.Pattern[str]
    method: str
    conversation: bool = False
    interrupt: bool = False
    passive: bool = False
    direct_only: bool = False
    needs_mention: bool = False
    allowed_users: frozenset[str] = field(default_factory=frozenset)
    allowed_channels: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Intent:
    """A follow-up handler, valid only while the plugin's conversation is active in the thread."""

    pattern: re.Pattern[str]
    method: str


def _compile(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    return pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.IGNORECASE)


def _names(values: Iterable[str]) -> frozenset[str]:
    return frozenset(v.strip().lstrip("@~").casefold() for v in values if v.strip().lstrip("@~"))


def listen_to(
    pattern: str | re.Pattern[str],
    *,
    conversation: bool = False,
    interrupt: bool = False,
    passive: bool = False,
    direct_only: bool = False,
    needs_mention: bool = False,
    allowed_users: Iterable[str] = (),
    allowed_channels: Iterable[str] = (),
) -> Callable[[F], F]:
    """Run the decorated method for posts whose text matches `pattern` (mmpy_bot's arguments, plus
    `conversation=True`: the thread is bound to the plugin after the method ran, unless it ended it)."""
    compiled = _compile(pattern)

    def mark(method: F) -> F:
        listener = Listener(
            compiled, method.__name__, conversation, interrupt, passive, direct_only, needs_mention,
            _names(allowed_users), _names(allowed_channels),
        )
        setattr(method, _LISTENER, listener)
        return method

    return mark


def listener(pattern: str | re.Pattern[str], method: str, **options: Any) -> Listener:
    """A trigger made at run time, for a plugin whose pattern comes from its configuration: set
    `self.listeners = (listener(pattern, "start", conversation=True),)` in `__init__`. The options
    are `listen_to`'s."""
    mark = listen_to(pattern, **options)

    def named() -> None: ...

    named.__name__ = method
    found: Listener = getattr(mark(named), _LISTENER)
    return found


def conversational_intent(pattern: str | re.Pattern[str]) -> Callable[[F], F]:
    """Run the decorated method for follow-ups matching `pattern` while the plugin's conversation
    is active in the thread; tried before `converse()`."""
    compiled = _compile(pattern)

    def mark(method: F) -> F:
        setattr(method, _INTENT, Intent(compiled, method.__name__))
        return method

    return mark


class Plugin:
    """Subclass it, give it a `name`, decorate methods with `listen_to` / `conversational_intent`,
    and override `converse` to take follow-ups that no intent matched."""

    name: ClassVar[str] = ""
    conversation_timeout: ClassVar[float | None] = None
    # Posted when the plugin's trigger comes with nothing after it ("gpt" alone); `{call}` is the
    # trigger word. None: such a post is called like any other.
    usage_hint: ClassVar[str | None] = None
    # Follow-ups that queue up while a turn of the thread runs are answered once, by the newest:
    # right for a plugin that answers the thread as a whole (a chat), wrong for a dialog.
    coalesce: ClassVar[bool] = False
    listeners: tuple[Listener, ...] = ()
    intents: tuple[Intent, ...] = ()
    _activator: Callable[[str, str, str], Awaitable[None]] | None = None  # set by the bot that runs it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, Listener | Intent] = {}
        for klass in reversed(cls.__mro__):  # a subclass's method replaces its base's
            for attr, value in vars(klass).items():
                mark = getattr(value, _LISTENER, None) or getattr(value, _INTENT, None)
                if isinstance(mark, (Listener, Intent)):
                    found[attr] = mark
        cls.listeners = tuple(m for m in found.values() if isinstance(m, Listener))
        cls.intents = tuple(m for m in found.values() if isinstance(m, Intent))

    async def converse(self, message: Message) -> bool:
        """Every follow-up in a thread where this plugin's conversation is active and no
        conversational intent matched. Return True if it took the post; False declines it."""
        return False

    async def on_activate(self, message: Message) -> None:
        """Its conversation just became active in `message`'s thread (after the listener that
        opened it ran). Keep nothing here between turns: state rides on the plugin's posts."""

    async def on_deactivate(self, thread_id: str, reason: str) -> None:
        """Its conversation in the thread is over: reason "ended" (end(), the end word, a one-shot
        turn, the turn cap), "expired" (quiet for its timeout; noticed within a minute) or
        "displaced" (a newer conversation of the plugin in the thread, or the user's open
        conversations over LLMBOT_MAX_CONVERSATIONS_PER_USER)."""

    async def activate(self, channel_id: str, thread_id: str) -> None:
        """Take the replies of a thread the plugin did not open by a trigger (its own post from a
        scheduled job, a webhook's alert it saw through a passive listener): the thread is bound
        to this plugin as if a user had called it there, and follow-ups go to converse()."""
        if self._activator is None:
            raise RuntimeError(f"plugin {self.name}: activate() works once the bot runs the plugin")
        await self._activator(self.name, channel_id, thread_id)

    def handler_of(self, method: str) -> Callable[..., Awaitable[None] | None]:
        """The bound method a Listener or Intent names."""
        function: Callable[..., Awaitable[None] | None] = getattr(self, method)
        return function
