"""The operator's view in numbers: one Prometheus registry per Bot, served at /metrics (ops_http.py).

prometheus-client writes the exposition. Each Bot has its own CollectorRegistry (never the
library's global one), so several bots in one process (the tests) keep their own counts.

The code doing the work reports through the module functions below (`turn_done`, `first_token`,
`answered`, `llm_tokens`, `llm_request`, `mattermost_request`, `caught_up`). They reach the Metrics
of the bot whose task calls them through a context variable, as usage.py's meter does: the Bot's
start() sets it in the task that starts it, so every task created from there on (the dispatcher,
the sweeper, the websocket's listener) and every task those create (turns, catch-ups, plugin
hooks) reports to that bot, with the LLM and Mattermost calls they make. Outside a bot's tasks (a
unit test of one step, `llmbot check`) they report nowhere.
Two values are read when Prometheus scrapes instead: the socket's reconnects and the live
conversations (`Metrics.watch`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sized
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .record import KIND_END, KIND_GOODBYE, KIND_REFUSAL, STATUS_LINE

if TYPE_CHECKING:
    from .reply import ReplyWriter

T = TypeVar("T")

# What a turn came to (llmbot_turns_total's outcome label).
ANSWERED, NOTICE, REFUSED, ENDED = "answered", "notice", "refused", "ended"
OUTCOMES = (ANSWERED, NOTICE, REFUSED, ENDED)
_BY_KIND = {KIND_REFUSAL: REFUSED, KIND_END: ENDED, KIND_GOODBYE: ENDED}  # other closing posts: a notice or hint

FIRST_TOKEN_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
ANSWER_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0)
NO_RESPONSE = "error"  # the status label of a request that got no HTTP response (refused, reset, timed out)

# The *_created series (a timestamp per counter) only clutter the exposition; process-wide in the library.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """The metrics of one bot, in a registry of its own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.turns = Counter(
            "llmbot_turns", "Turns finished, by handler and outcome (answered, notice, refused, ended)",
            ("handler", "outcome"), registry=r,
        )
        self.first_token = Histogram(
            "llmbot_first_token_seconds", "Seconds from an answer's LLM request to its first text shown in Mattermost",
            buckets=FIRST_TOKEN_BUCKETS, registry=r,
        )
        self.answer = Histogram(
            "llmbot_answer_seconds", "Seconds from an answer's LLM request to the whole answer posted",
            buckets=ANSWER_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "llmbot_llm_tokens", "LLM tokens, as the server reported them or else as counted", ("kind",), registry=r
        )
        self.mattermost_requests = Counter(
            "llmbot_mattermost_requests", f"Mattermost REST requests by method and HTTP status ({NO_RESPONSE}: none)",
            ("method", "status"), registry=r,
        )
        self.llm_requests = Counter(
            "llmbot_llm_requests", f"LLM requests by HTTP status ({NO_RESPONSE}: none)", ("status",), registry=r
        )
        self.catch_up_posts = Counter(
            "llmbot_catch_up_posts", "Posts the websocket missed that a catch-up over REST took up", registry=r
        )
        self.active_conversations = Gauge(
            "llmbot_active_conversations", "Threads with a live conversation in this process's store", registry=r
        )
        self.active_conversations.set_function(lambda: math.nan)  # until watch() says where to look
        self._reconnects = _Reconnects()
        r.register(self._reconnects)
        for kind in ("prompt", "completion"):
            self.tokens.labels(kind)

    def watch(self, store: Callable[[], object], socket: object) -> None:
        """Read at each scrape: the live conversations of the store `store()` returns (its len(): the
        memory store's costs O(1); a store without one shows NaN) and the socket's `reconnects`."""
        self.active_conversations.set_function(lambda: _size(store()))
        self._reconnects.socket = socket

    def expect(self, handlers: Iterable[str]) -> None:
        """Show every handler's turn counters from the start, at 0: an alert on a rate then sees a series."""
        for handler in handlers:
            for outcome in OUTCOMES:
                self.turns.labels(handler, outcome)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper's Accept header asks for, and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _size(store: object) -> float:
    return float(len(store)) if isinstance(store, Sized) else math.nan


class _Reconnects(Collector):
    """llmbot_websocket_reconnects_total: the count the event socket keeps itself."""

    socket: object = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        count = getattr(self.socket, "reconnects", 0)
        yield CounterMetricFamily(
            "llmbot_websocket_reconnects", "Times the Mattermost websocket was lost (or not reached) and is being reconnected",
            value=count if isinstance(count, int) else 0,
        )


_CURRENT: ContextVar[Metrics | None] = ContextVar("llmbot_metrics", default=None)


def report_to(metrics: Metrics) -> None:
    """The calling task, and every task created from it from now on (they copy its context), reports
    to `metrics` (the Bot's start() calls it)."""
    _CURRENT.set(metrics)


def current() -> Metrics | None:
    return _CURRENT.get()


# ---------------------------------------------------------------- what the code calls
def turn_done(handler: str, outcome: str | None) -> None:
    """A turn of `handler` ended with `outcome` (OUTCOMES; None: it posted nothing, not counted)."""
    m = _CURRENT.get()
    if m is not None and outcome is not None:
        m.turns.labels(handler, outcome).inc()


def outcome_of(writer: ReplyWriter) -> str | None:
    """What a turn's posts came to, read from its newest reply writer; None when it posted nothing.
    answered: a whole answer; notice: a notice or hint instead of one, or the reason an answer was
    cut short under its text; refused: a limit or the access lists said no; ended: a goodbye or an end."""
    if writer.closed and writer.closing is not None:
        return _BY_KIND.get(writer.closing[1], NOTICE)
    if writer.posted:
        return NOTICE if STATUS_LINE in writer.pages.text else ANSWERED
    return None


def first_token(seconds: float) -> None:
    m = _CURRENT.get()
    if m is not None:
        m.first_token.observe(seconds)


def answered(seconds: float) -> None:
    m = _CURRENT.get()
    if m is not None:
        m.answer.observe(seconds)


def llm_tokens(prompt: int, completion: int) -> None:
    m = _CURRENT.get()
    if m is not None:
        m.tokens.labels("prompt").inc(prompt)
        m.tokens.labels("completion").inc(completion)


def mattermost_request(method: str, status: int | str) -> None:
    m = _CURRENT.get()
    if m is not None:
        m.mattermost_requests.labels(method, str(status)).inc()


def llm_request(status: int | str) -> None:
    m = _CURRENT.get()
    if m is not None:
        m.llm_requests.labels(str(status)).inc()


def caught_up(posts: int) -> None:
    m = _CURRENT.get()
    if m is not None and posts:
        m.catch_up_posts.inc(posts)


async def llm_call(call: Awaitable[T]) -> T:
    """Await one LLM request, counted by the HTTP status of its response (the SDK's errors carry
    theirs; one without, a connection failure or a timeout, counts as NO_RESPONSE)."""
    try:
        result = await call
    except BaseException as exc:  # cancelled too (a timeout): no response came; re-raised
        status: Any = getattr(exc, "status_code", None)
        llm_request(status if isinstance(status, int) else NO_RESPONSE)
        raise
    status = getattr(getattr(result, "response", None), "status_code", None)
    llm_request(status if isinstance(status, int) else NO_RESPONSE)
    return result


class CountedTransport(httpx.AsyncBaseTransport):
    """Mattermost's HTTP transport, counting each request by method and status."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException:  # cancelled too (a timeout): no response came; re-raised
            mattermost_request(request.method, NO_RESPONSE)
            raise
        mattermost_request(request.method, response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
