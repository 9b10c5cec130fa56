"""Shared fixtures: a clean environment, settings, and the bot wired to loopback fakes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import pytest

from llmbot.app import Bot
from llmbot.store import MemoryStore
from tests.fakes import FakeClock, bot_for, settings_for
from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI

_OWN_PREFIXES = ("MATTERMOST_", "OPENAI_", "LLMBOT_", "TIKTOKEN_", "DATA_GYM_", "SSL_CERT_")
# the machine's proxies stay out too: loopback traffic must not go through them
_NETWORK = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never depend on the machine's settings; tiktoken's cache starts empty per session."""
    for name in list(os.environ):
        if name.startswith(_OWN_PREFIXES) or name.upper() in _NETWORK:
            monkeypatch.delenv(name)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(_session_cache(tmp_path_factory)))


_cache_dir: list[str] = []


def _session_cache(factory: pytest.TempPathFactory) -> str:
    if not _cache_dir:
        _cache_dir.append(str(factory.mktemp("tiktoken-cache")))
    return _cache_dir[0]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mm() -> AsyncIterator[FakeMattermost]:
    server = FakeMattermost()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def llm_server() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


make_settings = settings_for  # the name the tests use


@dataclass
class Running:
    """A bot connected to the fakes, plus the handles tests need."""

    bot: Bot
    mm: FakeMattermost
    llm: FakeOpenAI
    clock: FakeClock
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def me(self) -> dict:
        return self.mm.bot

    async def stop(self) -> None:
        """Stop this bot like a crash would: no drain, no goodbye (restart tests)."""
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.tasks.clear()
        await self.bot.close()
        await self.mm.wait_for(lambda: self.mm.ws_clients == 0, timeout=5)

    def replies(self, root_id: str) -> list[dict]:
        """The bot's posts in a thread, oldest first."""
        return [p for p in self.mm.thread(root_id) if p["user_id"] == self.mm.bot["id"]]

    async def wait_replies(self, root_id: str, count: int, timeout: float = 5.0) -> list[dict]:
        await self.mm.wait_for(lambda: len(self.replies(root_id)) >= count, timeout=timeout)
        await self.bot.idle()
        return self.replies(root_id)

    def dm_answers(self, after: dict) -> list[dict]:
        """The bot's root posts in a DM after `after` (a DM is one running conversation: the bot
        answers its root posts with root posts), oldest first."""
        posts = [p for p in self.mm.posts.values()
                 if p["channel_id"] == after["channel_id"] and p["user_id"] == self.mm.bot["id"] and not p["root_id"]
                 and not p["delete_at"] and p["create_at"] >= after["create_at"] and p["id"] != after["id"]]
        return sorted(posts, key=lambda p: (p["create_at"], p["id"]))

    async def wait_dm_answers(self, after: dict, count: int, timeout: float = 5.0) -> list[dict]:
        await self.mm.wait_for(lambda: len(self.dm_answers(after)) >= count, timeout=timeout)
        await self.bot.idle()
        return self.dm_answers(after)

    async def settle(self, channel: dict, user: dict) -> None:
        """Wait until every event sent so far was processed: a marker call in its own thread
        is answered only after the events before it went through the (ordered) socket."""
        before = len(self.llm.requests)
        marker = await self.mm.post_as(user, channel, "gpt marker, please answer")
        await self.wait_replies(marker["id"], 1)
        assert len(self.llm.requests) == before + 1


@pytest.fixture
async def start_bot(mm: FakeMattermost, llm_server: FakeOpenAI, clock: FakeClock) -> AsyncIterator[Callable[..., object]]:
    """`await start_bot(**env_overrides)` -> a Running bot; stopped after the test."""
    running: list[Running] = []

    async def start(
        *, edit_interval: float = 1.0, handlers: tuple[object, ...] = (), plugins: tuple[object, ...] = (), **overrides: str
    ) -> Running:
        settings = make_settings(mm, llm_server, **overrides)
        store = MemoryStore(settings.conversation_ttl, settings.max_bound_threads, timer=clock)
        bot = bot_for(settings, store=store, edit_interval=edit_interval)
        for handler in handlers:  # more handlers, there before the start-up catch-up
            bot.add_handler(handler)  # type: ignore[arg-type]
        for plugin in plugins:
            bot.add_plugin(plugin)  # type: ignore[arg-type]
        await bot.start()
        run = Running(bot, mm, llm_server, clock)
        running.append(run)
        run.tasks.append(asyncio.create_task(bot.chat.listen(bot.on_frame)))
        await mm.wait_for(lambda: mm.ws_clients >= sum(1 for r in running if r.tasks), timeout=5)
        await asyncio.sleep(0.05)  # let the hello/OK frames through before the test posts
        await bot.idle()  # the start-up catch-up
        return run

    yield start

    for run in running:
        if not run.tasks:
            continue  # stopped by the test
        for task in run.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await run.bot.idle()
        await run.bot.close()


# ------------------------------------------------------------------------------------------- Redis
class RedisServer:
    """A real redis-server (Debian's package) on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int = 0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: the store tests need a real one "
                        "(apt-get install -y redis-server; .ci/run installs it)", pytrace=False)
        for _ in range(5):  # a free port may be taken by someone else before the server binds it
            self.port = port or _free_port()
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while self.process.poll() is None and time.monotonic() < deadline:
                if _answers_ping(self.port):
                    return self
                time.sleep(0.02)
            self.stop()
            if port:
                break
        pytest.fail(f"redis-server did not answer PING on 127.0.0.1:{self.port}", pytrace=False)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The URL of a redis-server started for the session (fails, never skips, without one). Tests
    share it: each keeps to keys of its own (a RedisStore with a bot id of its own)."""
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_servers() -> Iterator[Callable[..., RedisServer]]:
    """`redis_servers()` starts another redis-server for the test (e.g. to stop it); all stopped after."""
    started: list[RedisServer] = []

    def start(port: int = 0) -> RedisServer:
        started.append(RedisServer().start(port))
        return started[-1]

    yield start
    for server in started:
        server.stop()
