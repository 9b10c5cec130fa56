"""A soak run: many conversations at once while Mattermost and the LLM fail at random, the socket
keeps dropping and the bot may be restarted. Used by tests/loopback/test_soak.py (bounded, asserts)
and bench/bench_faults.py (bigger, prints figures).

Each conversation posts its next turn only when the previous one got its reply, as people do; a
turn is counted answered when one of the bot's posts names it in `llmbot_answers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from llmbot.app import Bot
from llmbot.llm import OpenAIChat
from llmbot.mattermost import MattermostChat
from llmbot.prompts import load_system_prompt
from llmbot.record import KIND_ANSWER, KIND_NOTICE, PROP_ANSWERS, PROP_KIND
from llmbot.store import MemoryStore
from tests.fakes import settings_for
from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI


@dataclass
class SoakReport:
    turns: int = 0
    seconds: float = 0.0
    mattermost_faults: int = 0
    llm_faults: int = 0
    socket_closes: int = 0
    restarts: int = 0
    caught_up: int = 0  # turns that reached the bot over the REST catch-up, not the socket
    outcomes: Counter[str] = field(default_factory=Counter)  # bot posts by kind
    cut_short: int = 0  # answers ending in a status line (LLM failed mid-answer, or a restart)
    duplicates: int = 0  # bot posts beyond the first for one human turn
    lost: int = 0  # human turns with no bot post at all
    errors: list[BaseException] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds from a turn to its reply

    def summary(self) -> str:
        p50 = statistics.median(self.latencies) if self.latencies else 0.0
        p95 = statistics.quantiles(self.latencies, n=20)[-1] if len(self.latencies) >= 20 else 0.0
        return (
            f"{self.turns} turns in {self.seconds:.1f}s; faults injected: Mattermost {self.mattermost_faults}, "
            f"LLM {self.llm_faults}, socket closes {self.socket_closes}, restarts {self.restarts} "
            f"({self.caught_up} turns came in over the REST catch-up); answers {self.outcomes[KIND_ANSWER]} "
            f"(cut short with a status line {self.cut_short}), notices {self.outcomes[KIND_NOTICE]}, "
            f"duplicates {self.duplicates}, lost {self.lost}; reply after {p50:.2f}s median, {p95:.2f}s p95"
        )


class _CountCatchUps(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith("(caught up)"):
            self.count += 1


async def _short_sleep(seconds: float) -> None:
    """Backoff waits, compressed: a soak is about outcomes, not about waiting."""
    await asyncio.sleep(min(seconds, 0.05))


def _new_bot(mm: FakeMattermost, llm_server: FakeOpenAI) -> Bot:
    settings = settings_for(mm, llm_server, LLMBOT_LLM_RETRIES="3", LLMBOT_LLM_IDLE_TIMEOUT="5")
    chat = MattermostChat(settings, reconnect_base=0.05, reconnect_cap=0.5)
    llm = OpenAIChat(settings, sleep=_short_sleep)
    return Bot(settings, chat, llm, load_system_prompt(None), store=MemoryStore(settings.conversation_ttl),
               retry_base=0.05, shutdown_grace=1.0)


async def run_soak(
    mm: FakeMattermost,
    llm_server: FakeOpenAI,
    *,
    threads: int,
    turns: int,
    fault_rate: float,
    drop_every: float,
    restart_every: float = 0.0,
    turn_timeout: float = 40.0,
    pause: float = 0.4,
    seed: int = 11,
) -> SoakReport:
    report = SoakReport()
    users = [mm.add_user(f"soaker{i}") for i in range(threads)]  # one person per conversation: no per-user limit hit
    channel = mm.add_channel("soak", members=(mm.bot, *users))
    llm_server.responder = lambda body: ["Answer", " number ", str(len(body["messages"]))]
    counter = _CountCatchUps()
    app_log = logging.getLogger("llmbot.dispatcher")
    app_log.addHandler(counter)
    old_level, old_propagate = app_log.level, app_log.propagate
    app_log.setLevel(logging.INFO)
    app_log.propagate = logging.getLogger("llmbot").getEffectiveLevel() <= logging.INFO  # a quiet caller stays quiet

    async def start_bot() -> tuple[Bot, asyncio.Task[None]]:
        bot = _new_bot(mm, llm_server)
        while True:  # users/me fails at the fault rate too: a supervisor would simply start again
            try:
                await bot.start()
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.05)
        return bot, asyncio.create_task(bot.chat.listen(bot.on_frame))

    async def stop_bot(bot: Bot, listener: asyncio.Task[None]) -> None:
        await bot.drain()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
        await bot.close()

    running = [await start_bot()]
    await mm.wait_for(lambda: mm.ws_clients == 1)
    mm.fail_rate(fault_rate, seed=seed)
    llm_server.fail_rate(fault_rate, seed=seed + 1)

    async def drop_sockets() -> None:
        while True:
            await asyncio.sleep(drop_every)
            await mm.drop_websockets()
            report.socket_closes += 1

    async def restart() -> None:
        while True:
            await asyncio.sleep(restart_every)
            await stop_bot(*running[-1])
            await asyncio.sleep(0.2)  # a moment with no bot at all: posts pile up unanswered
            running.append(await start_bot())
            report.restarts += 1

    human_posts: list[dict] = []
    bot_id = mm.bot["id"]

    def replies_to(post_id: str) -> list[dict]:
        return [p for p in mm.posts.values() if p["user_id"] == bot_id and p["props"].get(PROP_ANSWERS) == post_id]

    async def turn(user: dict, text: str, root_id: str = "") -> dict:
        post = await mm.post_as(user, channel, text, root_id=root_id)
        human_posts.append(post)
        sent = time.monotonic()
        await mm.wait_for(lambda: replies_to(post["id"]), timeout=turn_timeout)
        report.latencies.append(time.monotonic() - sent)
        return post

    async def conversation(i: int) -> None:
        user = users[i]
        root = await turn(user, f"gpt question {i}")
        for n in range(1, turns):
            await asyncio.sleep(pause)  # people read the answer first: the run spans several drops and restarts
            await turn(user, f"follow-up {n} of {i}", root["id"])

    background = [asyncio.create_task(drop_sockets())]
    if restart_every:
        background.append(asyncio.create_task(restart()))
    started = time.monotonic()
    try:
        results = await asyncio.gather(*(conversation(i) for i in range(threads)), return_exceptions=True)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        report.mattermost_faults, report.llm_faults = mm.faults_injected, llm_server.faults_injected
        mm.fail_rate(0.0)
        llm_server.fail_rate(0.0, seed=0)
        report.seconds = time.monotonic() - started
        await asyncio.sleep(0.5)  # late duplicates, if any, would land now
        await running[-1][0].idle()
        await stop_bot(*running[-1])
        app_log.removeHandler(counter)
        app_log.setLevel(old_level)
        app_log.propagate = old_propagate

    report.errors = [r for r in results if isinstance(r, BaseException)]
    report.turns = len(human_posts)
    report.caught_up = counter.count
    for post in human_posts:
        mine = replies_to(post["id"])
        report.lost += not mine
        report.duplicates += max(0, len(mine) - 1)
        for p in mine:
            report.outcomes[p["props"][PROP_KIND]] += 1
            report.cut_short += p["props"][PROP_KIND] == KIND_ANSWER and "\n\n_⚠️" in p["message"]
    return report
