"""The operator's view end to end: /healthz and /metrics served on a loopback port by the real bot
(real clients, the fakes as servers), scraped over HTTP and parsed with prometheus-client's own
parser; and the JSON log lines of a real turn."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmbot import usage
from llmbot.app import Bot
from llmbot.errors import ConfigError
from llmbot.llm import OpenAIChat
from llmbot.logs import configure_logging
from llmbot.mattermost import MattermostChat
from llmbot.prompts import load_system_prompt
from llmbot.store import MemoryStore
from tests.conftest import Running, make_settings
from tests.loopback.fake_openai import FakeOpenAI

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def ops_bot(mm, llm_server, clock) -> AsyncIterator[Callable[..., object]]:
    """`await ops_bot(**env)`: a Running bot serving /healthz and /metrics on a free loopback port
    (LLMBOT_HTTP_PORT=0 is no valid setting: the port is set past the settings' check), its socket
    reconnecting quickly."""
    running: list[Running] = []

    async def start(**overrides: str) -> Running:
        settings = make_settings(mm, llm_server, **overrides).model_copy(update={"http_port": 0})
        chat = MattermostChat(settings, reconnect_base=0.05, reconnect_cap=0.2)
        store = MemoryStore(settings.conversation_ttl, settings.max_bound_threads, timer=clock)
        bot = Bot(settings, chat, OpenAIChat(settings, retries=0), load_system_prompt(settings.system_prompt_file),
                  store=store, retry_base=0.02)
        await bot.start()
        run = Running(bot, mm, llm_server, clock, [asyncio.create_task(chat.listen(bot.on_frame))])
        running.append(run)
        await mm.wait_for(lambda: chat.socket_down is None, timeout=5)
        await bot.idle()  # the start-up catch-up
        return run

    yield start

    for run in running:
        for task in run.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await run.bot.idle()
        await run.bot.close()


async def get(bot: Bot, path: str) -> tuple[int, str, str]:
    assert bot.ops is not None
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{bot.ops.port}{path}") as response:
        return response.status, await response.text(), response.headers.get("Content-Type", "")


async def scrape(bot: Bot) -> Samples:
    status, body, content_type = await get(bot, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body) for s in family.samples
    }


def at(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll an async check until it returns something true."""
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


class TestHealthz:
    async def test_ok_while_connected_then_503_with_the_reason_while_mattermost_is_gone_then_ok_again(
        self, ops_bot, mm, world
    ) -> None:
        run = await ops_bot()
        assert run.bot.ops is not None and run.bot.ops.port > 0
        assert await get(run.bot, "/healthz") == (200, "ok\n", "text/plain; charset=utf-8")

        port = mm.port
        await mm.stop()  # the socket is closed and every reconnect refused

        async def unhealthy() -> bool:
            return (await get(run.bot, "/healthz"))[0] == 503

        await until(unhealthy)
        status, reason, _ = await get(run.bot, "/healthz")
        assert reason.startswith("websocket down: ") and reason.endswith("reconnecting\n")
        assert reason.count("\n") == 1  # one line

        async def refused() -> bool:  # the reason follows what happens: now the reconnects are refused
            return (await get(run.bot, "/healthz"))[1].startswith("websocket down: cannot connect to Mattermost (")

        await until(refused)

        # Written while the bot could not hear it: the catch-up after the reconnect takes it up.
        root = await mm.post_as(world.alice, world.town, "gpt are you there?")
        await mm.start(port=port)

        async def healthy() -> bool:
            return (await get(run.bot, "/healthz")) == (200, "ok\n", "text/plain; charset=utf-8")

        await until(healthy)
        await run.wait_replies(root["id"], 1)
        samples = await scrape(run.bot)
        assert at(samples, "llmbot_websocket_reconnects_total") >= 2  # the close, then at least one refused try
        assert at(samples, "llmbot_catch_up_posts_total") == 1

    async def test_503_while_the_bot_stops(self, ops_bot) -> None:
        run = await ops_bot()
        run.bot.stop()
        assert await get(run.bot, "/healthz") == (503, "stopping\n", "text/plain; charset=utf-8")

    async def test_a_shared_store_that_does_not_answer_is_unhealthy(self, ops_bot) -> None:
        run = await ops_bot()

        class Unreachable:  # a store of another kind than the process's own (Redis): /healthz asks it
            async def get(self, thread_id: str):
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

        answering = run.bot.store
        run.bot.store = Unreachable()
        assert await get(run.bot, "/healthz") == (
            503, "store not answering: ConnectionError: Error 111 connecting to 127.0.0.1:6379. Connection refused.\n",
            "text/plain; charset=utf-8",
        )
        run.bot.store = answering
        assert (await get(run.bot, "/healthz"))[0] == 200

    async def test_off_unless_a_port_is_set(self, start_bot) -> None:
        run = await start_bot()
        assert run.bot.ops is None

    async def test_a_port_taken_stops_the_start_naming_the_setting(self, ops_bot, mm, llm_server) -> None:
        first = await ops_bot()
        assert first.bot.ops is not None
        settings = make_settings(mm, llm_server, LLMBOT_HTTP_PORT=str(first.bot.ops.port))
        second = Bot(settings, MattermostChat(settings), OpenAIChat(settings), load_system_prompt(settings.system_prompt_file))
        try:
            with pytest.raises(ConfigError, match=rf"LLMBOT_HTTP_PORT={first.bot.ops.port}: cannot listen on 127.0.0.1:\d+ \(Address already in use\)"):
                await second.start()
        finally:
            await second.close()


class TestMetrics:
    async def test_one_answered_turn(self, ops_bot, mm, llm_server, world) -> None:
        run = await ops_bot()
        mm.reset_requests()
        before = await scrape(run.bot)
        mm.fail_next("POST", r"^/api/v4/posts$", 429, headers={"Retry-After": "0"})  # the first create: retried
        llm_server.enqueue(["Hello", " there", ", Alice."])
        root = await mm.post_as(world.alice, world.town, "gpt say hello")
        (reply,) = await run.wait_replies(root["id"], 1)
        assert reply["message"] == "Hello there, Alice."
        samples = await scrape(run.bot)

        def grew(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return samples.get(key, 0.0) - before.get(key, 0.0)

        assert at(samples, "llmbot_first_token_seconds_count") == 1
        assert at(samples, "llmbot_answer_seconds_count") == 1
        assert 0 < at(samples, "llmbot_first_token_seconds_sum") <= at(samples, "llmbot_answer_seconds_sum") < 10
        # the server's usage chunk: prompt words and one token per chunk, as the fake reports them
        assert at(samples, "llmbot_llm_tokens_total", kind="prompt") == FakeOpenAI._prompt_tokens(llm_server.requests[-1])
        assert at(samples, "llmbot_llm_tokens_total", kind="completion") == 3
        assert at(samples, "llmbot_llm_requests_total", status="200") == len(llm_server.requests) == 1
        # every REST call the fake saw, by method; the refused create as a 429
        seen = Counter(method for method, *_ in mm.requests)
        counted = Counter[str]()
        for name, labels in samples:
            if name == "llmbot_mattermost_requests_total":
                counted[dict(labels)["method"]] += int(grew(name, **dict(labels)))
        assert +counted == seen
        assert grew("llmbot_mattermost_requests_total", method="POST", status="429") == 1
        assert grew("llmbot_mattermost_requests_total", method="POST", status="201") >= 1
        assert at(samples, "llmbot_active_conversations") == 1
        assert at(samples, "llmbot_websocket_reconnects_total") == 0
        assert at(samples, "llmbot_catch_up_posts_total") == 0
        for outcome in ("answered", "notice", "refused", "ended"):  # every outcome has a series from the start
            assert ("llmbot_turns_total", (("handler", "gpt"), ("outcome", outcome))) in samples

    async def test_an_answered_turn_is_counted_by_handler_and_outcome(self, ops_bot, mm, llm_server, world) -> None:
        run = await ops_bot()
        root = await mm.post_as(world.alice, world.town, "gpt say hello")
        await run.wait_replies(root["id"], 1)
        samples = await scrape(run.bot)
        assert at(samples, "llmbot_turns_total", handler="gpt", outcome="answered") == 1
        assert at(samples, "llmbot_turns_total", handler="gpt", outcome="notice") == 0

    async def test_tokens_are_counted_when_the_server_reports_none(self, ops_bot, mm, llm_server, world) -> None:
        llm_server.send_usage = False
        run = await ops_bot()
        llm_server.enqueue(["Ahoy", " matey"])
        root = await mm.post_as(world.alice, world.town, "gpt say hello like a pirate")
        await run.wait_replies(root["id"], 1)
        samples = await scrape(run.bot)
        sent = [m["content"] for m in llm_server.requests[-1]["messages"]]
        expected = usage.counted(sent, "Ahoy matey", run.bot.tokenizer)
        assert at(samples, "llmbot_llm_tokens_total", kind="prompt") == expected.prompt
        assert at(samples, "llmbot_llm_tokens_total", kind="completion") == expected.completion > 0

    async def test_llm_failures_are_counted_by_status(self, ops_bot, mm, llm_server, world) -> None:
        run = await ops_bot()
        llm_server.enqueue(status=503)
        root = await mm.post_as(world.alice, world.town, "gpt hello?")
        (notice,) = await run.wait_replies(root["id"], 1)
        assert notice["message"].startswith("⚠️")
        samples = await scrape(run.bot)
        assert at(samples, "llmbot_llm_requests_total", status="503") == 1
        assert ("llmbot_llm_requests_total", (("status", "200"),)) not in samples
        assert at(samples, "llmbot_answer_seconds_count") == 0


@pytest.fixture
def json_stderr() -> Iterator[io.StringIO]:
    """LLMBOT_LOG_FORMAT=json as the CLI sets it up (the secrets the settings name), into a buffer."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()

    def configure(secrets: tuple[str, ...]) -> None:
        configure_logging("INFO", secrets, "json")
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]

    stream.configure = configure  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


class TestJsonLogs:
    async def test_every_line_is_json_and_the_answered_one_names_the_thread_and_post(
        self, ops_bot, mm, llm_server, world, json_stderr
    ) -> None:
        settings = make_settings(mm, llm_server)
        json_stderr.configure(settings.secrets())
        run = await ops_bot(LLMBOT_LOG_FORMAT="json")
        llm_server.enqueue(["Hi", "!"])
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        logging.getLogger("llmbot.test").warning("the token %s slipped", mm.bot_token, extra={"header": f"Bearer {llm_server.api_key}"})

        out = json_stderr.getvalue()
        lines = [json.loads(line) for line in out.splitlines()]  # every line parses
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        (answered,) = [line for line in lines if " answered in " in line["message"]]
        assert answered["thread"] == root["id"] and answered["post"] == root["id"]
        assert (answered["plugin"], answered["outcome"], answered["logger"]) == ("gpt", "answered", "llmbot.reply")
        assert isinstance(answered["duration"], float) and answered["completion_tokens"] == 2
        assert mm.bot_token not in out
        assert lines[-1]["message"] == "the token *** slipped" and lines[-1]["header"] == "Bearer ***"


class TestTurnOutcomeLines:
    async def test_a_turn_that_ends_without_an_answer_has_a_line_with_its_outcome(self, ops_bot, mm, llm_server, world,
                                                                                   caplog) -> None:
        run = await ops_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        with caplog.at_level(logging.INFO, logger="llmbot"):
            bye = await mm.post_as(world.alice, world.town, "bye", root_id=root["id"])
            await run.wait_replies(root["id"], 2)
        (line,) = [r for r in caplog.records if getattr(r, "outcome", None) == "ended"]
        assert (line.thread_id, line.post_id, line.plugin) == (root["id"], bye["id"], "gpt")  # type: ignore[attr-defined]
        assert isinstance(line.duration, float)  # type: ignore[attr-defined]
