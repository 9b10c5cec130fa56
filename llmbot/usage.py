"""Tokens per answer: what the LLM server reported (stream_options.include_usage), else what the
bot's tokenizer counts; the thread an LLM call belongs to, for the adapter's log lines; and the
answer's timings (llmbot_first_token_seconds, llmbot_answer_seconds).

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

from . import metrics
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
    """One answer being streamed into a thread: for the post `post_id`, by the plugin `plugin`,
    since `started` (the writer's clock)."""

    thread_id: str
    post_id: str = ""
    plugin: str = ""
    started: float = 0.0
    usage: Usage | None = None
    shown: bool = False  # its first text is in Mattermost

    @property
    def where(self) -> str:
        """The prefix of a log line about this answer."""
        return f"thread {self.thread_id}: "

    @property
    def fields(self) -> dict[str, object]:
        """The fields of a log line about this answer, for the JSON logs (logs.py)."""
        return {"thread_id": self.thread_id, "post_id": self.post_id, "plugin": self.plugin}


_METER: ContextVar[Meter | None] = ContextVar("llmbot_answer_meter", default=None)


def current() -> Meter | None:
    """The meter of the answer being streamed, if a reply writer opened one."""
    return _METER.get()


@contextlib.contextmanager
def metering(thread_id: str, post_id: str = "", plugin: str = "", started: float = 0.0) -> Iterator[Meter]:
    """A meter for tasks created inside this block (they copy the context when they start)."""
    meter = Meter(thread_id, post_id, plugin, started)
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def suffix(meter: Meter | None) -> str:
    """"; tokens: ..." for the end of a log line about the answer, once its usage is in; else ""."""
    return f"; {meter.usage}" if meter is not None and meter.usage is not None else ""


def shown(meter: Meter | None, now: float) -> None:
    """A post of the answer was created: the first one's time is llmbot_first_token_seconds."""
    if meter is not None and not meter.shown:
        meter.shown = True
        metrics.first_token(now - meter.started)


def answered(meter: Meter | None, seconds: float) -> dict[str, object]:
    """The answer is all posted, `seconds` after it started: llmbot_answer_seconds; and the fields of
    the "answered" log line."""
    metrics.answered(seconds)
    fields = {**(meter.fields if meter is not None else {}), "outcome": metrics.ANSWERED, "duration": round(seconds, 3)}
    if meter is not None and meter.usage is not None:
        used = meter.usage
        fields.update(prompt_tokens=used.prompt, completion_tokens=used.completion, tokens_reported=used.reported)
    return fields


def counted(contents: Sequence[str], answer: str, tokenizer: Tokenizer) -> Usage:
    """The tokens of a prompt of messages with `contents`, and of `answer`, as the bot counts them
    (the chat format's overheads included, as context.py counts the budget)."""
    prompt = sum(tokenizer.count_message(content) for content in contents) + REPLY_PRIMING
    return Usage(prompt, tokenizer.count(answer), reported=False)
