"""Tokens per answer: what the LLM server reported (stream_options.include_usage), else what the
bot's tokenizer counts; and the thread an LLM call belongs to, for the adapter's log lines.

The reply writer opens a Meter around each answer it streams (`metering`); the LLM adapter, running
inside it, reads the thread from it and leaves the answer's Usage there for the writer's "answered"
line. A call made outside a reply writer (a plugin reading llm() itself) finds no meter: the
adapter then logs the tokens on a line of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from .tokens import REPLY_PRIMING, Tokenizer


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens of one answer: the prompt sent and the completion received."""

    prompt: int
    completion: int
    reported: bool  # by the server; else counted with the bot's tokenizer

    def __str__(self) -> str:
        how = "reported" if self.reported else "counted"
        return f"tokens: {self.prompt} prompt + {self.completion} completion ({how})"


@dataclass(slots=True)
class Meter:
    """One answer being streamed into a thread."""

    thread_id: str
    usage: Usage | None = None

    @property
    def where(self) -> str:
        """The prefix of a log line about this answer."""
        return f"thread {self.thread_id}: "


_METER: ContextVar[Meter | None] = ContextVar("llmbot_answer_meter", default=None)


def current() -> Meter | None:
    """The meter of the answer being streamed, if a reply writer opened one."""
    return _METER.get()


@contextlib.contextmanager
def metering(thread_id: str) -> Iterator[Meter]:
    """A meter for tasks created inside this block (they copy the context when they start)."""
    meter = Meter(thread_id)
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def suffix(meter: Meter | None) -> str:
    """"; tokens: ..." for the end of a log line about the answer, once its usage is in; else ""."""
    return f"; {meter.usage}" if meter is not None and meter.usage is not None else ""


def counted(contents: Sequence[str], answer: str, tokenizer: Tokenizer) -> Usage:
    """The tokens of a prompt of messages with `contents`, and of `answer`, as the bot counts them
    (the chat format's overheads included, as context.py counts the budget)."""
    prompt = sum(tokenizer.count_message(content) for content in contents) + REPLY_PRIMING
    return Usage(prompt, tokenizer.count(answer), reported=False)
