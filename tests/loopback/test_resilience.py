"""Faults end to end: restarts, socket drops, lost responses, a refused token, shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmbot.errors import ChatAuthError
from llmbot.record import KIND_ANSWER, KIND_END, KIND_GOODBYE, KIND_NOTICE, PROP_ANSWERS, PROP_KIND
from tests.loopback.conftest import user_turns


def answers_to(run, root_id: str, post_id: str) -> list[dict]:
    return [p for p in run.replies(root_id) if p["props"].get(PROP_ANSWERS) == post_id]


class TestRestart:
    async def test_a_follow_up_after_a_restart_is_answered_with_the_whole_thread(self, start_bot, world, mm, llm_server):
        first = await start_bot()
        llm_server.enqueue(["Lima."])
        root = await mm.post_as(world.alice, world.town, "gpt capital of Peru?")
        await first.wait_replies(root["id"], 1)
        await first.stop()

        second = await start_bot()  # a new process: its binding cache starts empty
        assert await second.bot.store.get(root["id"]) is not None  # rebuilt from the thread's props
        llm_server.enqueue(["About 10 million."])
        follow = await mm.post_as(world.bob, world.town, "and its population?", root_id=root["id"])
        replies = await second.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "About 10 million."
        assert replies[-1]["props"][PROP_ANSWERS] == follow["id"]
        texts = [m["content"] for m in llm_server.requests[-1]["messages"]]
        assert any("capital of Peru" in t for t in texts) and "Lima." in texts

    async def test_a_follow_up_written_while_no_bot_ran_is_answered_once_at_start_up(self, start_bot, world, mm, llm_server):
        first = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hello")
        await first.wait_replies(root["id"], 1)
        await first.stop()
        missed = await mm.post_as(world.alice, world.town, "are you there?", root_id=root["id"])  # nobody listens

        second = await start_bot()
        replies = second.replies(root["id"])
        assert len(replies) == 2 and replies[-1]["props"][PROP_ANSWERS] == missed["id"]
        await second.stop()
        third = await start_bot()  # a second restart finds it answered: nothing twice
        assert len(third.replies(root["id"])) == 2
        assert len(llm_server.requests) == 2

    async def test_an_ended_or_expired_conversation_stays_closed_after_a_restart(self, start_bot, world, mm, llm_server):
        first = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        ended = await mm.post_as(world.alice, world.town, "gpt one")
        await first.wait_replies(ended["id"], 1)
        await mm.post_as(world.alice, world.town, "bye", root_id=ended["id"])
        await first.wait_replies(ended["id"], 2)
        expired = await mm.post_as(world.alice, world.town, "gpt two")
        await first.wait_replies(expired["id"], 1)
        await first.stop()
        for post in mm.thread(expired["id"]):  # the whole thread is two minutes old now
            for key in ("create_at", "update_at"):
                post[key] -= 120_000
            mm.posts[post["id"]].update(post)

        second = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        assert await second.bot.store.get(ended["id"]) is None
        assert await second.bot.store.get(expired["id"]) is None
        await mm.post_as(world.alice, world.town, "still there?", root_id=ended["id"])
        await mm.post_as(world.alice, world.town, "still there?", root_id=expired["id"])
        await second.settle(world.town, world.bob)
        assert [p["props"][PROP_KIND] for p in second.replies(ended["id"])] == [KIND_ANSWER, KIND_GOODBYE]
        assert len(second.replies(expired["id"])) == 1

    async def test_a_rebuilt_conversation_expires_when_it_would_have_without_the_restart(self, start_bot, world, mm, llm_server, clock):
        first = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        root = await mm.post_as(world.alice, world.town, "gpt one")
        await first.wait_replies(root["id"], 1)
        await first.stop()
        for post in mm.thread(root["id"]):  # 50 s of the 60 s TTL are gone
            for key in ("create_at", "update_at", "edit_at"):
                post[key] = post[key] - 50_000 if post[key] else 0
            mm.posts[post["id"]].update(post)
        second = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        assert await second.bot.store.get(root["id"]) is not None
        clock.advance(11)
        assert await second.bot.store.get(root["id"]) is None

    async def test_threads_the_bot_never_joined_cost_no_rest_call_after_start_up(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "lunch?")
        mm.reset_requests()
        for i in range(5):
            last = await mm.post_as(world.bob, world.town, f"reply {i}", root_id=root["id"])
        await mm.wait_for(lambda: run.bot.dispatcher.live_ms >= last["create_at"])  # the bot has seen them all
        await run.bot.idle()
        assert mm.requests == []


class TestSocketDrops:
    async def test_posts_written_while_the_socket_was_down_are_answered_exactly_once(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hello")
        await run.wait_replies(root["id"], 1)
        await mm.drop_websockets()
        gap_follow = await mm.post_as(world.bob, world.town, "what did I miss?", root_id=root["id"])
        gap_call = await mm.post_as(world.john, world.town, "gpt new question")
        gap_dm = await mm.post_as(world.alice, world.dm, "hi in private")
        await mm.wait_for(lambda: mm.ws_clients == 1, timeout=5)  # the bot reconnected
        for post, root_id in ((gap_follow, root["id"]), (gap_call, gap_call["id"])):
            await mm.wait_for(lambda root_id=root_id, post=post: answers_to(run, root_id, post["id"]), timeout=5)
        await run.wait_dm_answers(gap_dm, 1)  # (a DM's answers are root posts)
        assert len(run.replies(root["id"])) == 2
        assert len(run.replies(gap_call["id"])) == 1 and len(run.dm_answers(gap_dm)) == 1
        assert len(llm_server.requests) == 4
        # and the thread still follows the conversation afterwards
        await mm.post_as(world.bob, world.town, "thanks", root_id=root["id"])
        assert len(await run.wait_replies(root["id"], 3)) == 3

    async def test_a_drop_during_a_slow_catch_up_loses_neither_gap(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        first = await mm.post_as(world.alice, world.town, "gpt one")
        second = await mm.post_as(world.bob, world.town, "gpt two")
        await run.wait_replies(first["id"], 1)
        await run.wait_replies(second["id"], 1)
        await mm.drop_websockets()
        gap1 = await mm.post_as(world.alice, world.town, "first gap", root_id=first["id"])
        mm.slow_next("GET", r"/channels/.*/posts$", 3.0)  # the first catch-up reads the channel, then waits
        reads = len(mm.requests)
        await mm.wait_for(lambda: any(r[1].endswith("/posts") and r[0] == "GET" for r in mm.requests[reads:]), timeout=5)
        await mm.drop_websockets()  # while that catch-up still waits for its answer
        gap2 = await mm.post_as(world.bob, world.town, "second gap", root_id=second["id"])
        for post, root_id in ((gap1, first["id"]), (gap2, second["id"])):
            await mm.wait_for(lambda root_id=root_id, post=post: answers_to(run, root_id, post["id"]), timeout=10)
        await run.bot.idle()
        assert len(run.replies(first["id"])) == 2 and len(run.replies(second["id"])) == 2

    async def test_the_socket_reconnects_after_repeated_drops(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        for _ in range(3):
            await mm.drop_websockets()
            await mm.wait_for(lambda: mm.ws_clients == 1, timeout=5)
        post = await mm.post_as(world.alice, world.town, "gpt still alive?")
        assert len(await run.wait_replies(post["id"], 1)) == 1

    async def test_a_revoked_token_ends_listening_with_an_auth_error(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        listener = run.tasks[0]
        await mm.revoke(mm.bot)
        with pytest.raises(ChatAuthError):
            await asyncio.wait_for(listener, timeout=5)


class TestLostResponses:
    async def test_a_create_whose_response_was_lost_is_retried_without_a_second_post(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        mm.fail_next("POST", r"/api/v4/posts$", 500, after=True)  # created, but the bot sees a 500
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        await mm.wait_for(lambda: len(mm.pending_post_ids) >= 1)
        await run.bot.idle()
        creates = [r for r in mm.requests if r[0] == "POST" and r[1] == "/api/v4/posts"]
        assert len(creates) >= 2  # it was retried...
        assert [p["message"] for p in run.replies(post["id"])] == ["ok"]  # ...and shows once

    async def test_a_lost_create_retried_with_more_text_shows_the_whole_answer_once(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        mm.fail_next("POST", r"/api/v4/posts$", 500, after=True)  # the post shows "Hello"; the bot sees a 500
        llm_server.enqueue(["Hello", " there friend."], delay=0.2)  # the retry is the final update
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        await mm.wait_for(lambda: len(llm_server.requests) == 1)
        await run.bot.idle()
        assert [p["message"] for p in run.replies(post["id"])] == ["Hello there friend."]

    async def test_a_rate_limited_create_waits_and_posts_once(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        mm.fail_next("POST", r"/api/v4/posts$", 429, headers={"Retry-After": "1"})
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        started = time.monotonic()
        (reply,) = await run.wait_replies(post["id"], 1)
        assert reply["message"] == "ok"
        assert time.monotonic() - started >= 0.9  # Retry-After was honoured

    async def test_a_deleted_root_unbinds_once_without_a_retry_storm(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        reply = await mm.post_as(world.bob, world.town, "more", root_id=root["id"], broadcast=False)
        await mm.delete_post(root["id"])
        mm.reset_requests()
        event = {**reply, "root_id": root["id"]}
        mm.posts[reply["id"]]["delete_at"] = 0  # the event raced the deletion
        await mm._broadcast_posted(event)
        await mm.wait_for(lambda: any(r[1].endswith("/thread") for r in mm.requests))
        await run.bot.idle()
        assert await run.bot.store.get(root["id"]) is None
        assert len([r for r in mm.requests if r[1].endswith("/thread")]) == 1


class TestShutdown:
    async def test_stop_lets_a_short_answer_finish(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["Quick", " answer."], delay=0.1)
        post = await mm.post_as(world.alice, world.town, "gpt hi")
        await mm.wait_for(lambda: len(llm_server.requests) == 1)
        await run.bot.drain()
        assert [p["message"] for p in run.replies(post["id"])] == ["Quick answer."]

    async def test_stop_marks_a_long_answer_interrupted_and_tells_queued_turns(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_CONCURRENT_TURNS="1")
        run.bot.shutdown_grace = 0.5
        llm_server.enqueue(["Part one."] + [" more"] * 50, delay=0.2)
        long_post = await mm.post_as(world.alice, world.town, "gpt tell me a long story")
        queued = await mm.post_as(world.bob, world.town, "gpt and me?")
        await mm.wait_for(lambda: run.replies(long_post["id"]))
        started = time.monotonic()
        await run.bot.drain()
        assert time.monotonic() - started < 0.5 + 2.5 + 0.5
        (cut,) = run.replies(long_post["id"])
        assert cut["message"].startswith("Part one.") and "Interrupted" in cut["message"]
        (notice,) = run.replies(queued["id"])
        assert notice["props"][PROP_KIND] == KIND_NOTICE and "restarted" in notice["message"]
        # after the restart, the interrupted turn counts as answered: nothing twice
        await run.stop()
        again = await start_bot()
        assert len(again.replies(long_post["id"])) == 1 and len(again.replies(queued["id"])) == 1

    async def test_an_answer_whose_create_was_in_flight_at_shutdown_is_marked_not_doubled(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        run.bot.shutdown_grace = 0.3
        mm.slow_next("POST", r"/api/v4/posts$", 3.0)  # the answer's post exists; its response is late
        llm_server.enqueue(["Part one."] + [" more"] * 50, delay=0.2)
        post = await mm.post_as(world.alice, world.town, "gpt tell me a long story")
        await mm.wait_for(lambda: run.replies(post["id"]))
        await run.bot.drain()
        (reply,) = run.replies(post["id"])
        assert reply["message"].startswith("Part one.") and "Interrupted" in reply["message"]

    async def test_a_notice_in_flight_at_shutdown_is_finished_not_joined_by_another(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        run.bot.shutdown_grace = 0.3
        llm_server.enqueue([], status=500)
        mm.slow_next("POST", r"/api/v4/posts$", 3.0)  # the notice's post exists; its response is late
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        await mm.wait_for(lambda: run.replies(post["id"]))
        await run.bot.drain()
        (notice,) = run.replies(post["id"])
        assert notice["props"][PROP_KIND] == KIND_NOTICE and "HTTP 500" in notice["message"]

    async def test_after_drain_new_posts_are_not_taken(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        await run.bot.drain()
        post = await mm.post_as(world.alice, world.town, "gpt too late")
        await mm.wait_for(lambda: run.bot.dispatcher.live_ms >= post["create_at"])  # the bot has seen it...
        await run.bot.idle()
        assert run.replies(post["id"]) == [] and llm_server.requests == []  # ...and left it alone


class TestTurnCap:
    async def test_a_conversation_ends_politely_at_the_turn_cap(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_TURNS="2")
        root = await mm.post_as(world.alice, world.town, "gpt one")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "two", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        three = await mm.post_as(world.alice, world.town, "three", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 3)
        assert replies[-1]["props"][PROP_KIND] == KIND_END and "limit of 2 answers" in replies[-1]["message"]
        assert replies[-1]["props"][PROP_ANSWERS] == three["id"]
        assert len(llm_server.requests) == 2
        await mm.post_as(world.alice, world.town, "four", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 3
        assert len(user_turns(llm_server.requests[-1])) == 1  # (the settle marker)
