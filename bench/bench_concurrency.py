"""200 conversations opened at once, with an LLM that takes 1 s per answer.

The fakes run in a process of their own (bench/_fake_servers.py), which creates the 200 root posts
and broadcasts them back to back. Wall time runs from that command until every thread holds the
bot's complete answer; the bot's CPU time is this process's.

The fake LLM serves any number of streams at once (as OpenAI does), so the bot's own cap on LLM
calls (LLMBOT_MAX_CONCURRENT_LLM, default 4, for local model servers) is raised to the turn cap:
with 4 at a time, 200 one-second answers take 50 s whatever the bot's own work. Set
LLMBOT_MAX_CONCURRENT_LLM in the environment to run with another cap.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _harness import Row, report, run

from llmbot.settings import load_settings
from llmbot.store import MemoryStore
from tests.fakes import bot_for

CONVERSATIONS = 200
LLM_SECONDS = 1.0
TARGET_S = 1.5
LLM_CAP = os.environ.get("LLMBOT_MAX_CONCURRENT_LLM", "256")  # 256: the default turn cap
DEADLINE_S = 40.0


class Fakes:
    """The fake servers' process and its line protocol."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("_fake_servers.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(LLM_SECONDS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.world = self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        return json.loads(self.proc.stdout.readline())

    async def ask(self, command: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return await asyncio.to_thread(self._read)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


async def main() -> None:
    fakes = Fakes()
    w = fakes.world
    settings = load_settings(
        {
            "MATTERMOST_URL": w["mm_url"],
            "MATTERMOST_TOKEN": w["bot_token"],
            "OPENAI_API_KEY": w["api_key"],
            "OPENAI_BASE_URL": w["llm_url"],
            "LLMBOT_LOG_LEVEL": "WARNING",
            "LLMBOT_MAX_CONCURRENT_LLM": LLM_CAP,
        }
    )
    bot = bot_for(settings)
    store = bot.store
    assert isinstance(store, MemoryStore), "the bot's default store"
    await bot.start()
    listener = asyncio.create_task(bot.chat.listen(bot.on_frame))
    await asyncio.sleep(0.5)  # the socket connects and authenticates
    try:
        cpu0, t0 = time.process_time(), time.monotonic()
        burst = await fakes.ask(f"burst {CONVERSATIONS}")
        # every root post claimed by the dispatcher (routed to a turn), then every turn done
        while len(store._claims) < CONVERSATIONS and time.monotonic() - t0 < DEADLINE_S:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        await asyncio.wait_for(bot.idle(), DEADLINE_S)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        status = await fakes.ask("status")
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        await bot.chat.close()
        await bot.llm.close()
        fakes.close()

    report(
        f"concurrency: {CONVERSATIONS} conversations opened at once, LLM takes {LLM_SECONDS:.1f} s per answer",
        [
            Row("wall time, burst -> all answers complete", f"{wall:.3f} s", f"<= {TARGET_S} s", wall <= TARGET_S),
            Row("  the fake took to create and broadcast the posts", f"{burst['burst_seconds']:.3f} s"),
            Row("bot CPU time during the run", f"{cpu:.3f} s"),
            Row("bot CPU per conversation", f"{cpu / CONVERSATIONS * 1000:.1f} ms"),
            Row("the fakes' CPU time (their own process)", f"{status['fakes_cpu_seconds']:.3f} s"),
            Row("threads with the complete answer", f"{status['complete']} / {CONVERSATIONS}"),
            Row("LLM calls", str(status["llm_calls"])),
            Row("Mattermost REST calls by the bot", str(status["rest_calls"])),
        ],
        [
            "the fakes run in their own process; both processes share this machine's cores.",
            f"the floor is the LLM's {LLM_SECONDS:.1f} s; the rest is event delivery and the bot's own work.",
            f"LLMBOT_MAX_CONCURRENT_LLM={settings.max_concurrent_llm} (LLM calls at once), "
            f"LLMBOT_MAX_CONCURRENT_TURNS={settings.max_concurrent_turns}.",
        ],
    )


if __name__ == "__main__":
    run(main())
