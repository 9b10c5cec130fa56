"""Logs an admin can read (issue 9, item 12, the core's part): the start-up line, names beside
ids, recovered conversations as one summary line, and the final "stopped"."""

from __future__ import annotations

import asyncio
import logging

from tests.fakes import bot_for, settings_for


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


class TestAdminLogs:
    async def test_the_start_up_line_says_what_runs(self, start_bot, world, mm, llm_server, caplog):
        with caplog.at_level(logging.INFO, logger="llmbot"):
            await start_bot(LLMBOT_CONVERSATION_TTL="900", LLMBOT_MODEL="tiny-model")
        (line,) = [m for m in lines(caplog) if " started as @llmbot" in m]
        host = f"127.0.0.1:{llm_server.port}"
        for part in ("llmbot ", "model tiny-model", f"at {host}", "trigger ^gpt", "TTL 900s", "plugins gpt"):
            assert part in line, (part, line)
        assert llm_server.api_key not in line

    async def test_routed_posts_name_the_author_and_the_channel(self, start_bot, world, mm, llm_server, caplog):
        run = await start_bot()
        with caplog.at_level(logging.INFO, logger="llmbot"):
            root = await mm.post_as(world.alice, world.town, "gpt hi")
            await run.wait_replies(root["id"], 1)
        routed = [m for m in lines(caplog) if f"post {root['id']}" in m and "step 5" in m]
        assert routed and "by @alice in ~town-square" in routed[0]

    async def test_recovered_conversations_are_one_summary_line(self, start_bot, world, mm, llm_server, caplog):
        first = await start_bot()
        for text in ("gpt one", "gpt two", "gpt three"):
            post = await mm.post_as(world.alice, world.town, text)
            await first.wait_replies(post["id"], 1)
        await first.stop()
        with caplog.at_level(logging.INFO, logger="llmbot"):
            await start_bot()
        summary = [m for m in lines(caplog) if m.startswith("caught up:")]
        assert any("3 conversation(s) recovered" in m for m in summary), summary
        assert not [m for m in lines(caplog) if "recovered from the thread" in m]  # the details are DEBUG

    async def test_a_stop_ends_with_stopped(self, mm, llm_server, caplog):
        bot = bot_for(settings_for(mm, llm_server))
        with caplog.at_level(logging.INFO, logger="llmbot"):
            running = asyncio.create_task(bot.run())
            await mm.wait_for(lambda: mm.ws_clients == 1, timeout=5)
            bot.stop()
            await asyncio.wait_for(running, 15)
        assert lines(caplog)[-1] == "stopped"
