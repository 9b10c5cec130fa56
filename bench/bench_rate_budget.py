"""Answers streaming at once against Mattermost's rate limiter, with and without the bot's budget.

The fake Mattermost runs the server's limiter (FakeMattermost.limit_rate: throttled's GCRA, per
address) at 10 requests/s, burst 100 - what an admin gets by turning rate limiting on - and counts
the 429s it returned. 100 questions are posted back to back; each answer streams for 10 s (the fake
LLM's delay between chunks). Each mode starts a fresh bot and fresh fakes:

  none     no budget (RateBudget(enabled=False)): the bot as it was, retrying 429s as asked
  learned  the budget learned from the X-RateLimit-* headers (LLMBOT_MATTERMOST_RATE/_BURST unset)
  set      LLMBOT_MATTERMOST_RATE=10, LLMBOT_MATTERMOST_BURST=100

Run: .venv/bin/python bench/bench_rate_budget.py [--streams 100] [--seconds 10] [--modes none,learned,set]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from _harness import Row, report, run, settings_for

from llmbot.app import Bot
from llmbot.llm import OpenAIChat
from llmbot.mattermost import MattermostChat
from llmbot.prompts import load_system_prompt
from llmbot.rate_budget import RateBudget
from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI
from tests.loopback.test_rate_budget import Figures, crowd, streams_at_once

PER_SEC, MAX_BURST = 10, 100
TARGET_FIRST_TOKEN = 5.0  # seconds: "within a few seconds"


async def one_run(mode: str, streams: int, seconds: float) -> tuple[Figures, float]:
    mm, llm = FakeMattermost(), FakeOpenAI()
    await mm.start()
    await llm.start()
    mm.limit_rate(PER_SEC, MAX_BURST)
    channel, users = crowd(mm, streams)
    env = {"LLMBOT_MAX_CONCURRENT_LLM": str(max(4, streams)), "LLMBOT_LLM_TIMEOUT": str(seconds * 6)}
    if mode == "set":
        env.update(LLMBOT_MATTERMOST_RATE=str(PER_SEC), LLMBOT_MATTERMOST_BURST=str(MAX_BURST))
    settings = settings_for(mm, llm, **env)
    chat = MattermostChat(settings, rate_budget=RateBudget(enabled=False) if mode == "none" else None)
    bot = Bot(settings, chat, OpenAIChat(settings, retries=0), load_system_prompt(settings.system_prompt_file))
    listener: asyncio.Task[None] | None = None
    try:
        await bot.start()
        listener = asyncio.create_task(bot.chat.listen(bot.on_frame))
        await mm.wait_for(lambda: mm.ws_clients >= 1, timeout=10, message="the bot's websocket to connect")
        await asyncio.sleep(1.0)  # the limiter refills what starting took, as on a bot running a while
        cpu = time.process_time()
        figures = await streams_at_once(mm, llm, bot, channel, users, streams=streams, seconds=seconds)
        return figures, time.process_time() - cpu
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        with contextlib.suppress(Exception):
            await bot.chat.close()
        with contextlib.suppress(Exception):
            await bot.llm.close()
        await mm.stop()
        await llm.stop()


async def main(streams: int, seconds: float, modes: list[str]) -> None:
    for mode in modes:
        figures, cpu = await one_run(mode, streams, seconds)
        first = max(figures.first_token, default=float("inf"))
        rows = [
            Row("429s the server returned", str(figures.rate_limited), "0", figures.rate_limited == 0),
            Row("answers complete", f"{figures.complete} / {streams}", f"{streams}", figures.complete == streams),
            Row("slowest first token", f"{first:.2f} s", f"< {TARGET_FIRST_TOKEN:g} s", first < TARGET_FIRST_TOKEN),
            Row("bot CPU during the run", f"{cpu:.2f} s"),
        ]
        report(f"rate budget: {streams} answers of {seconds:g} s at once, limiter {PER_SEC}/s burst {MAX_BURST}, "
               f"budget: {mode}", rows, figures.lines())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", default="none,learned,set")
    args = parser.parse_args()
    run(main(args.streams, args.seconds, args.modes.split(",")))
