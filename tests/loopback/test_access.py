"""Access lists, the DM policy, per-user limits and secrets, end to end."""

from __future__ import annotations

import io
import logging
import time

from llmbot.logs import RedactSecrets
from llmbot.record import KIND_REFUSAL, PROP_KIND


class TestAccessLists:
    async def test_a_denied_channel_gets_no_answer_and_no_llm_call(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_DENY_CHANNELS="~town-square")
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        other = mm.add_channel("dev", members=(mm.bot, world.alice))
        await run.settle(other, world.alice)
        assert run.replies(post["id"]) == [] and len(llm_server.requests) == 1  # the settle marker only

    async def test_an_allow_list_of_users_by_name_leaves_others_unanswered(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_ALLOW_USERS="@Bob")
        from_alice = await mm.post_as(world.alice, world.town, "gpt hello")
        from_bob = await mm.post_as(world.bob, world.town, "gpt hello")
        assert len(await run.wait_replies(from_bob["id"], 1)) == 1
        assert run.replies(from_alice["id"]) == []

    async def test_a_denied_user_does_not_drive_a_bound_thread(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_DENY_USERS="john")
        root = await mm.post_as(world.alice, world.town, "gpt hello")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.john, world.town, "answer me too", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 1

    async def test_teams_are_matched_by_name(self, start_bot, world, mm, llm_server):
        mm.add_team("t2", name="sales")
        sales = mm.add_channel("deals", team_id="t2", members=(mm.bot, world.alice))
        run = await start_bot(LLMBOT_DENY_TEAMS="sales")
        post = await mm.post_as(world.alice, sales, "gpt hello")
        await run.settle(world.town, world.bob)
        assert run.replies(post["id"]) == []


class TestDirectMessagePolicy:
    async def test_with_dms_off_the_user_is_told_once(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_DIRECT_MESSAGES="off")
        first = await mm.post_as(world.alice, world.dm, "hi")
        (refusal,) = await run.wait_dm_answers(first, 1)  # (a DM's answers are root posts)
        assert refusal["props"][PROP_KIND] == KIND_REFUSAL and "direct messages" in refusal["message"]
        second = await mm.post_as(world.alice, world.dm, "hello?")
        await run.settle(world.town, world.bob)
        assert run.dm_answers(second) == []
        assert len(llm_server.requests) == 1  # the settle marker only


class TestPerUserLimits:
    async def test_starts_per_minute_are_limited_and_the_user_told_once(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_STARTS_PER_MINUTE="2")
        for text in ("gpt one", "gpt two"):
            post = await mm.post_as(world.alice, world.town, text)
            await run.wait_replies(post["id"], 1)
        third = await mm.post_as(world.alice, world.town, "gpt three")
        (refusal,) = await run.wait_replies(third["id"], 1)
        assert refusal["props"][PROP_KIND] == KIND_REFUSAL and "last minute" in refusal["message"]
        fourth = await mm.post_as(world.alice, world.town, "gpt four")
        bobs = await mm.post_as(world.bob, world.town, "gpt bob is fine")  # other users are not limited
        assert len(await run.wait_replies(bobs["id"], 1)) == 1
        assert run.replies(fourth["id"]) == []
        assert await run.bot.store.get(third["id"]) is None  # a refusal binds nothing
        # (the window sliding open again is unit-tested with a fake clock: test_policy.py)

    async def test_over_the_open_conversation_cap_the_least_recent_one_ends_quietly(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_CONVERSATIONS_PER_USER="2")
        first = await mm.post_as(world.alice, world.town, "gpt one")
        await run.wait_replies(first["id"], 1)
        second = await mm.post_as(world.alice, world.town, "gpt two")
        await run.wait_replies(second["id"], 1)
        await mm.post_as(world.alice, world.town, "still there?", root_id=first["id"])  # `first` is now the most recent
        await run.wait_replies(first["id"], 2)
        third = await mm.post_as(world.alice, world.town, "gpt three")
        assert (await run.wait_replies(third["id"], 1))[0]["props"][PROP_KIND] == "answer"  # opened, not refused
        assert await run.bot.store.get(second["id"]) is None  # the least recently active one ended...
        assert await run.bot.store.get(first["id"]) is not None
        assert len(run.replies(second["id"])) == 1  # ...quietly: no post about it
        await mm.post_as(world.alice, world.town, "and now?", root_id=second["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(second["id"])) == 1

    async def test_fifteen_questions_in_a_few_minutes_get_fifteen_answers_with_default_limits(self, start_bot, world, mm, llm_server, clock):
        run = await start_bot()
        answered, offset = 0, [0.0]
        mm.clock = lambda: time.time() + offset[0]
        for i in range(15):
            post = await mm.post_as(world.alice, world.dm, f"question {i}")
            answered += len(await run.wait_dm_answers(post, 1))
            offset[0] += 12  # a question every 12 s: 15 in 3 minutes
        assert answered == 15
        assert all(p["props"][PROP_KIND] == "answer" for p in mm.posts_by(run.me))


class TestSecrets:
    async def test_secrets_echoed_by_failing_servers_reach_no_post_and_no_log_line(self, start_bot, world, mm, llm_server):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        root = logging.getLogger()
        run = await start_bot()
        handler.addFilter(RedactSecrets(run.bot.settings.secrets()))
        root.addHandler(handler)
        try:
            token, key = mm.bot_token, llm_server.api_key
            llm_server.enqueue([], status=400, error_body={"error": {"message": f"bad key {key} for token {token}", "type": "invalid_request_error"}})
            post = await mm.post_as(world.alice, world.town, "gpt hello")
            (notice,) = await run.wait_replies(post["id"], 1)
            mm.fail_next("GET", r"/thread$", 500, times=5, body={"id": "x", "message": f"proxy says {token}", "request_id": "r", "status_code": 500})
            await mm.post_as(world.alice, world.town, "again", root_id=post["id"])
            await run.wait_replies(post["id"], 2)
            llm_server.enqueue([f"the key is {key}"])  # even a model that learnt it cannot post it
            await mm.post_as(world.alice, world.town, "once more", root_id=post["id"])
            replies = await run.wait_replies(post["id"], 3)
        finally:
            root.removeHandler(handler)
        posted = " ".join(p["message"] for p in mm.posts.values())
        assert token not in posted and key not in posted
        assert "***" in replies[-1]["message"]
        logged = stream.getvalue()
        assert "proxy says" in logged  # the failure was logged...
        assert token not in logged and key not in logged  # ...without the secrets
