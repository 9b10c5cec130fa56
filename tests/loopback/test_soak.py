"""Soak: 200 human turns while a fifth of all calls fail and the socket keeps dropping.

Bounded in count (40 threads x 5 turns) and time (each turn waits at most 40 s; the whole
run takes some 20-40 s here). Every human turn must get exactly one post of the bot's (an
answer, or a clear notice); the figures are printed for the closing note (`pytest -s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from llmbot.app import Bot
from llmbot.conversations import MemoryStore
from llmbot.llm import OpenAIChat
from llmbot.mattermost import MattermostChat
from llmbot.prompts import load_system_prompt
from llmbot.thread import KIND_ANSWER, KIND_NOTICE, PROP_ANSWERS, PROP_KIND
from tests.fakes import settings_for

THREADS = 40
TURNS = 5
FAULT_RATE = 0.2
DROP_EVERY = 1.0  # seconds between socket closes
TURN_TIMEOUT = 40.0


async def short_sleep(seconds: float) -> None:
    """Backoff waits, compressed: the soak is about outcomes, not about waiting."""
    await asyncio.sleep(min(seconds, 0.05))


async def test_every_turn_gets_exactly_one_answer_or_notice_under_faults(mm, llm_server, world, caplog):
    caplog.set_level(logging.INFO, logger="llmbot.app")  # counts the turns taken up by a catch-up
    settings = settings_for(mm, llm_server, LLMBOT_LLM_RETRIES="3", LLMBOT_LLM_IDLE_TIMEOUT="5")
    chat = MattermostChat(settings, max_retries=3, reconnect_base=0.05, reconnect_cap=0.5)
    llm = OpenAIChat(settings, sleep=short_sleep)
    bot = Bot(settings, chat, llm, load_system_prompt(None), store=MemoryStore(settings.conversation_ttl), retry_base=0.05)
    llm_server.responder = lambda body: ["Answer", " number ", str(len(body["messages"]))]
    await bot.start()
    listener = asyncio.create_task(chat.listen(bot.on_frame))
    await mm.wait_for(lambda: mm.ws_clients == 1)
    mm.fail_rate(FAULT_RATE, seed=11)
    llm_server.fail_rate(FAULT_RATE, seed=12)
    drops = 0

    async def drop_sockets() -> None:
        nonlocal drops
        while True:
            await asyncio.sleep(DROP_EVERY)
            await mm.drop_websockets()
            drops += 1

    human_posts: list[dict] = []

    def bot_posts_for(post_id: str) -> list[dict]:
        return [p for p in mm.posts.values() if p["user_id"] == mm.bot["id"] and p["props"].get(PROP_ANSWERS) == post_id]

    async def conversation(i: int) -> None:
        user = (world.alice, world.bob, world.john, world.marc)[i % 4]
        root = await mm.post_as(user, world.town, f"gpt question {i}")
        human_posts.append(root)
        await mm.wait_for(lambda: bot_posts_for(root["id"]), timeout=TURN_TIMEOUT)
        for turn in range(1, TURNS):
            post = await mm.post_as(user, world.town, f"follow-up {turn} of {i}", root_id=root["id"])
            human_posts.append(post)
            await mm.wait_for(lambda: bot_posts_for(post["id"]), timeout=TURN_TIMEOUT)

    dropper = asyncio.create_task(drop_sockets())
    started = time.monotonic()
    try:
        results = await asyncio.gather(*(conversation(i) for i in range(THREADS)), return_exceptions=True)
    finally:
        dropper.cancel()
        mm_faults, llm_faults = mm.faults_injected, llm_server.faults_injected
        mm.fail_rate(0.0)
        llm_server.fail_rate(0.0, seed=0)
        await asyncio.sleep(0.5)  # late duplicates, if any, would land now
        await bot.idle()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener
        await chat.close()
        await llm.close()
    elapsed = time.monotonic() - started

    outcomes = Counter()
    duplicates = lost = 0
    for post in human_posts:
        mine = bot_posts_for(post["id"])
        if not mine:
            lost += 1
        elif len(mine) > 1:
            duplicates += len(mine) - 1
        for p in mine:
            outcomes[p["props"][PROP_KIND]] += 1
    caught_up = sum(1 for r in caplog.records if r.getMessage().endswith("(caught up)"))
    partial = sum(1 for p in mm.posts_by(mm.bot) if p["props"].get(PROP_KIND) == KIND_ANSWER and "_⚠️" in p["message"])
    print(
        f"\nsoak: {len(human_posts)} turns in {elapsed:.1f}s; faults injected: Mattermost {mm_faults}, "
        f"LLM {llm_faults}, socket closes {drops} ({caught_up} turns came in over the REST catch-up); answers {outcomes[KIND_ANSWER]} "
        f"(of which cut short with a status line {partial}), notices {outcomes[KIND_NOTICE]}, "
        f"duplicates {duplicates}, lost {lost}"
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert len(human_posts) == THREADS * TURNS
    assert mm_faults > 0 and llm_faults > 0 and drops >= 3 and caught_up > 0
    assert duplicates == 0 and lost == 0
    assert set(outcomes) <= {KIND_ANSWER, KIND_NOTICE}
