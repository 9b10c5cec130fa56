"""metrics.py and the JSON logs: one registry per bot, the module functions reaching the bot of the
task that calls them (and nothing outside one), the turn outcomes read from a reply writer, the
timings of a streamed answer, the counted transports, JSON lines with their fields and no secret."""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
import math
from collections.abc import Iterator

import httpx
import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmbot import metrics, usage
from llmbot.errors import LLMError
from llmbot.logs import configure_logging
from llmbot.record import KIND_END, KIND_GOODBYE, KIND_NOTICE, KIND_REFUSAL, KIND_USAGE
from llmbot.reply import ReplyWriter, Where
from llmbot.store import MemoryStore
from llmbot.thread import Post

from .payloads import BOT_ID
from .ports_fakes import FakeChat, FakeClock, FakeLLM, within

METRIC_NAMES = (
    "llmbot_turns", "llmbot_first_token_seconds", "llmbot_answer_seconds", "llmbot_llm_tokens",
    "llmbot_mattermost_requests", "llmbot_llm_requests", "llmbot_websocket_reconnects",
    "llmbot_active_conversations", "llmbot_catch_up_posts",
)


def samples(m: metrics.Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, parsed back by prometheus-client's own parser."""
    body, content_type = m.exposition()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(m: metrics.Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def in_context(m: metrics.Metrics | None, fn, *args):
    """Run fn in a fresh context that reports to `m` (None: to no bot)."""
    def run():
        if m is not None:
            metrics.report_to(m)
        return fn(*args)
    return contextvars.Context().run(run)


class TestRegistry:
    def test_every_metric_is_exposed_before_anything_happened(self) -> None:
        m = metrics.Metrics()
        body = m.exposition()[0].decode()
        families = {f.name for f in text_string_to_metric_families(body)}
        assert families == set(METRIC_NAMES)
        assert "_created" not in body  # no timestamp series cluttering it

    def test_two_bots_in_one_process_keep_their_own_counts(self) -> None:
        first, second = metrics.Metrics(), metrics.Metrics()  # the global registry would refuse the second
        in_context(first, metrics.turn_done, "gpt", metrics.ANSWERED)
        in_context(first, metrics.turn_done, "gpt", metrics.ANSWERED)
        in_context(second, metrics.turn_done, "gpt", metrics.NOTICE)
        assert value(first, "llmbot_turns_total", handler="gpt", outcome="answered") == 2
        assert ("llmbot_turns_total", (("handler", "gpt"), ("outcome", "notice"))) not in samples(first)
        assert value(second, "llmbot_turns_total", handler="gpt", outcome="notice") == 1

    def test_outside_a_bot_nothing_is_recorded_and_nothing_fails(self) -> None:
        m = metrics.Metrics()
        in_context(None, metrics.turn_done, "gpt", metrics.ANSWERED)
        in_context(None, metrics.first_token, 1.0)
        in_context(None, metrics.mattermost_request, "GET", 200)
        assert value(m, "llmbot_first_token_seconds_count") == 0
        assert not any(name == "llmbot_turns_total" for name, _ in samples(m))

    def test_a_turn_that_posted_nothing_is_not_counted(self) -> None:
        m = metrics.Metrics()
        in_context(m, metrics.turn_done, "gpt", None)
        assert not any(name == "llmbot_turns_total" for name, _ in samples(m))

    def test_expected_handlers_show_every_outcome_at_zero(self) -> None:
        m = metrics.Metrics()
        m.expect(["gpt", "summarize"])
        for handler in ("gpt", "summarize"):
            for outcome in metrics.OUTCOMES:
                assert value(m, "llmbot_turns_total", handler=handler, outcome=outcome) == 0

    def test_the_scraper_may_ask_for_openmetrics(self) -> None:
        body, content_type = metrics.Metrics().exposition("application/openmetrics-text; version=1.0.0")
        assert content_type.startswith("application/openmetrics-text")
        assert body.decode().rstrip().endswith("# EOF")

    def test_each_call_adds_to_its_series(self) -> None:
        m = metrics.Metrics()
        in_context(m, metrics.llm_tokens, 120, 30)
        in_context(m, metrics.llm_tokens, 80, 10)
        in_context(m, metrics.llm_request, 429)
        in_context(m, metrics.mattermost_request, "PUT", 200)
        in_context(m, metrics.caught_up, 3)
        in_context(m, metrics.caught_up, 0)
        in_context(m, metrics.first_token, 0.7)
        in_context(m, metrics.answered, 4.0)
        assert value(m, "llmbot_llm_tokens_total", kind="prompt") == 200
        assert value(m, "llmbot_llm_tokens_total", kind="completion") == 40
        assert value(m, "llmbot_llm_requests_total", status="429") == 1
        assert value(m, "llmbot_mattermost_requests_total", method="PUT", status="200") == 1
        assert value(m, "llmbot_catch_up_posts_total") == 3
        assert value(m, "llmbot_first_token_seconds_count") == 1
        assert value(m, "llmbot_first_token_seconds_bucket", le="1.0") == 1
        assert value(m, "llmbot_first_token_seconds_bucket", le="0.5") == 0
        assert value(m, "llmbot_answer_seconds_sum") == 4.0


class TestPulledAtScrape:
    async def test_active_conversations_is_the_store_s_len_at_each_scrape(self) -> None:
        clock = FakeClock()
        store = MemoryStore(60.0, timer=clock)
        m = metrics.Metrics()
        m.watch(lambda: store, object())
        assert value(m, "llmbot_active_conversations") == 0
        await store.bind("t1", "gpt", "u1", "t1")
        await store.bind("t2", "gpt", "u1", "t2")
        await store.bind("t2", "summarize", "u1", "p9")  # stacked in one thread: the thread counts once
        assert value(m, "llmbot_active_conversations") == 2
        await store.unbind("t1")
        assert value(m, "llmbot_active_conversations") == 1
        clock.advance(61)  # expired: no sweep needed to leave the count
        assert value(m, "llmbot_active_conversations") == 0

    def test_a_store_without_len_shows_nan_rather_than_a_wrong_number(self) -> None:
        m = metrics.Metrics()
        m.watch(lambda: object(), object())
        assert math.isnan(value(m, "llmbot_active_conversations"))

    def test_the_store_is_looked_up_at_each_scrape(self) -> None:
        stores: list[object] = [[1, 2, 3]]
        m = metrics.Metrics()
        m.watch(lambda: stores[-1], object())
        assert value(m, "llmbot_active_conversations") == 3
        stores.append([1])  # (the Bot swaps its store for Redis at start)
        assert value(m, "llmbot_active_conversations") == 1

    def test_reconnects_are_the_socket_s_own_count(self) -> None:
        class Socket:
            reconnects = 0

        socket = Socket()
        m = metrics.Metrics()
        m.watch(lambda: None, socket)
        assert value(m, "llmbot_websocket_reconnects_total") == 0
        socket.reconnects = 4
        assert value(m, "llmbot_websocket_reconnects_total") == 4


@pytest.fixture
def chat(clock: FakeClock) -> FakeChat:
    return FakeChat(clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def root(chat: FakeChat) -> Post:
    return chat.seed("gpt what is the answer?")


@pytest.fixture
def writer(chat: FakeChat, clock: FakeClock, root: Post) -> ReplyWriter:
    return ReplyWriter(chat, Where(root.channel_id, root.id, BOT_ID, "gpt", root.id), root.id, clock=clock, sleep=clock.sleep)


class TestOutcomes:
    async def test_nothing_posted_is_no_outcome(self, writer: ReplyWriter) -> None:
        assert metrics.outcome_of(writer) is None

    async def test_a_whole_answer_is_answered(self, writer: ReplyWriter) -> None:
        llm = FakeLLM()
        llm.enqueue(["The answer ", "is 42."])
        await writer.stream(llm.stream([], 100))
        assert metrics.outcome_of(writer) == metrics.ANSWERED

    async def test_an_answer_cut_short_with_its_reason_is_a_notice(self, writer: ReplyWriter) -> None:
        llm = FakeLLM()
        llm.enqueue(["The answer "], raises=LLMError("the connection to the model dropped"))
        await writer.stream(llm.stream([], 100))
        assert metrics.outcome_of(writer) == metrics.NOTICE

    @pytest.mark.parametrize(("kind", "outcome"), [
        (KIND_NOTICE, metrics.NOTICE), (KIND_USAGE, metrics.NOTICE), (KIND_REFUSAL, metrics.REFUSED),
        (KIND_END, metrics.ENDED), (KIND_GOODBYE, metrics.ENDED),
    ])
    async def test_a_closing_post_says_by_its_kind(self, writer: ReplyWriter, kind: str, outcome: str) -> None:
        await writer.post("a short post", kind)
        assert metrics.outcome_of(writer) == outcome


class TestAnswerTimings:
    async def test_first_text_shown_and_whole_answer_posted_are_timed_from_the_llm_request(
        self, writer: ReplyWriter, chat: FakeChat, clock: FakeClock
    ) -> None:
        m = metrics.Metrics()
        metrics.report_to(m)  # this test's task (and the writer's reader task) report to m
        llm = FakeLLM()
        reply = llm.enqueue(["Hello", " world", "!"], hold_at=(0, 1))
        task = asyncio.create_task(writer.stream(llm.stream([], 100)))
        await within(reply.holding.wait())
        clock.advance(1.5)  # the model thinks...
        reply.release()  # "Hello": the post is created, the first text shown
        await chat.until_calls("create_post", 1)
        await within(reply.holding.wait())
        clock.advance(4.0)
        reply.release()
        await within(task)

        assert value(m, "llmbot_first_token_seconds_count") == 1
        assert value(m, "llmbot_first_token_seconds_sum") == 1.5
        assert value(m, "llmbot_answer_seconds_count") == 1
        assert value(m, "llmbot_answer_seconds_sum") == 5.5

    def test_the_answered_fields_name_the_turn_and_its_tokens(self) -> None:
        m = metrics.Metrics()

        def answered() -> dict[str, object]:
            with usage.metering("th1", "po1", "gpt", 10.0) as meter:
                meter.usage = usage.Usage(100, 20, reported=True)
                return usage.answered(meter, 2.34567)

        fields = in_context(m, answered)
        assert fields == {
            "thread_id": "th1", "post_id": "po1", "plugin": "gpt", "outcome": "answered", "duration": 2.346,
            "prompt_tokens": 100, "completion_tokens": 20, "tokens_reported": True,
        }
        assert value(m, "llmbot_answer_seconds_count") == 1


class TestCountedCalls:
    async def test_mattermost_requests_are_counted_by_method_and_status(self) -> None:
        def app(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/down":
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(429 if request.method == "PUT" else 200)

        m = metrics.Metrics()
        metrics.report_to(m)
        async with httpx.AsyncClient(transport=metrics.CountedTransport(httpx.MockTransport(app))) as client:
            await client.get("http://mm/api/v4/users/me")
            await client.get("http://mm/api/v4/users/me")
            await client.put("http://mm/api/v4/posts/x/patch")
            with pytest.raises(httpx.ConnectError):
                await client.post("http://mm/down")
        assert value(m, "llmbot_mattermost_requests_total", method="GET", status="200") == 2
        assert value(m, "llmbot_mattermost_requests_total", method="PUT", status="429") == 1
        assert value(m, "llmbot_mattermost_requests_total", method="POST", status="error") == 1

    async def test_llm_requests_are_counted_by_status(self) -> None:
        request = httpx2.Request("POST", "http://llm/v1/chat/completions")  # the openai SDK's httpx

        class Stream:
            response = httpx2.Response(200, request=request)

        async def opened() -> Stream:
            return Stream()

        async def refused() -> Stream:
            raise openai.RateLimitError("slow down", response=httpx2.Response(429, request=request), body=None)

        async def unreachable() -> Stream:
            raise openai.APIConnectionError(request=request)

        m = metrics.Metrics()
        metrics.report_to(m)
        assert isinstance(await metrics.llm_call(opened()), Stream)
        for call in (refused, unreachable):
            with pytest.raises(openai.APIError):
                await metrics.llm_call(call())
        assert value(m, "llmbot_llm_requests_total", status="200") == 1
        assert value(m, "llmbot_llm_requests_total", status="429") == 1
        assert value(m, "llmbot_llm_requests_total", status="error") == 1


TOKEN = "mm-token-4f9c2e7a1b"
API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The real set-up, LLMBOT_LOG_FORMAT=json, writing into a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    configure_logging("INFO", (TOKEN, API_KEY), "json")
    stream = io.StringIO()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestJsonLogs:
    def test_one_object_per_line_with_the_fields_given(self, json_logs: io.StringIO) -> None:
        log = logging.getLogger("llmbot.reply")
        log.info("thread %s: answered", "th1", extra={"thread_id": "th1", "post_id": "po1", "plugin": "gpt", "duration": 1.5})
        log.warning("a line\nwith a line break")
        first, second = lines(json_logs)
        assert first["message"] == "thread th1: answered"
        assert (first["level"], first["logger"]) == ("INFO", "llmbot.reply")
        assert (first["thread"], first["post"], first["plugin"], first["duration"]) == ("th1", "po1", "gpt", 1.5)
        assert first["time"].endswith("+00:00") and "T" in first["time"]
        assert second["message"] == "a line\nwith a line break" and "thread" not in second and "thread_id" not in second

    def test_secrets_are_masked_in_the_message_the_fields_and_the_traceback(self, json_logs: io.StringIO) -> None:
        log = logging.getLogger("llmbot.llm")
        try:
            raise RuntimeError(f"401 for key {API_KEY}")
        except RuntimeError:
            log.exception(
                "calling with %s", TOKEN,
                extra={"header": f"Bearer {TOKEN}", "request": {"auth": [f"key={API_KEY}", 3]}, "error": ValueError(API_KEY)},
            )
        out = json_logs.getvalue()
        assert TOKEN not in out and API_KEY not in out
        (line,) = lines(json_logs)
        assert line["message"] == "calling with ***"
        assert line["header"] == "Bearer ***"
        assert line["request"] == {"auth": ["key=***", 3]}
        assert line["error"] == "***"
        assert "401 for key ***" in line["exception"]

    def test_text_stays_the_default(self) -> None:
        root = logging.getLogger()
        saved, level = root.handlers[:], root.level
        try:
            configure_logging("INFO", (TOKEN,))
            stream = io.StringIO()
            root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
            logging.getLogger("llmbot.x").info("plain %s", TOKEN, extra={"thread_id": "th1"})
        finally:
            root.handlers[:] = saved
            root.setLevel(level)
        assert stream.getvalue().rstrip().endswith("INFO llmbot.x: plain ***")
