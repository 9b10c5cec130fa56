"""Defects a close review found, end to end (the real bot, driver and SDK against the fakes).
Each test failed before its fix."""

from __future__ import annotations

import logging
import re
import time

from llmbot.record import KIND_ANSWER, KIND_NOTICE, PROP_ANSWERS, PROP_CONVERSATION, PROP_KIND, STATUS_LINE
from llmbot.router import HandlerSpec
from tests.loopback.conftest import user_turns


class OneShotEcho:
    """A handler that answers once and holds no conversation."""

    spec = HandlerSpec("echo", (re.compile(r"^echo\b", re.IGNORECASE),), conversational=False)

    def call_word(self) -> str:
        return "echo"

    async def handle(self, turn) -> None:
        await turn.reply.post("echo: " + turn.post.message[5:], KIND_ANSWER)


class Broken:
    """A handler with a bug: it shows part of an answer, then raises."""

    spec = HandlerSpec("broken", (re.compile(r"^broken\b", re.IGNORECASE),), conversational=True)

    def call_word(self) -> str:
        return "broken"

    async def handle(self, turn) -> None:
        async def words():
            yield "Half an answer"
            raise KeyError("a bug")

        await turn.reply.stream(words())


class TestAnyFailureEndsTheTurn:
    async def test_a_handler_bug_ends_the_turn_with_one_marked_post_and_a_traceback(self, start_bot, world, mm, llm_server, caplog):
        run = await start_bot(handlers=(Broken(),))
        with caplog.at_level(logging.ERROR, logger="llmbot.runner"):
            post = await mm.post_as(world.alice, world.town, "broken please")
            (reply,) = await run.wait_replies(post["id"], 1)
            await run.bot.idle()
        assert reply["message"].startswith("Half an answer" + STATUS_LINE) and "went wrong" in reply["message"]
        (record,) = [r for r in caplog.records if r.exc_info]
        assert record.exc_info[0] is KeyError
        # the thread is not stuck: the next post is taken
        await mm.post_as(world.alice, world.town, "again", root_id=post["id"])
        assert len(await run.wait_replies(post["id"], 2)) == 2


class TestTheTurnCapCountsTheCurrentConversationOnly:
    async def test_a_new_call_after_the_ttl_expired_starts_at_zero(self, start_bot, world, mm, llm_server, clock):
        run = await start_bot(LLMBOT_MAX_TURNS="2", LLMBOT_CONVERSATION_TTL="60")
        root = await mm.post_as(world.alice, world.town, "gpt one")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "two", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        clock.advance(61)  # silence: the conversation expires without a goodbye post
        assert await run.bot.store.get(root["id"]) is None
        again = await mm.post_as(world.bob, world.town, "gpt three", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 3)
        assert replies[-1]["props"][PROP_KIND] == KIND_ANSWER  # not "this conversation has reached its limit"
        assert replies[-1]["props"][PROP_CONVERSATION] == again["id"]
        assert len(llm_server.requests) == 3

    async def test_posts_of_the_bot_without_props_do_not_count(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_TURNS="1")
        root = await mm.post_as(world.alice, world.town, "lunch?")
        await mm.post_as(mm.bot, world.town, "an answer from an older version", root_id=root["id"])
        call = await mm.post_as(world.alice, world.town, "gpt what do you think?", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_KIND] == KIND_ANSWER and replies[-1]["props"][PROP_ANSWERS] == call["id"]

    async def test_every_post_of_a_conversation_records_its_id(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt one")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.bob, world.town, "two", root_id=root["id"])
        await mm.post_as(world.bob, world.town, "bye", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 3)
        assert {p["props"][PROP_CONVERSATION] for p in replies} == {root["id"]}
        assert [p["props"].get("llmbot_turn") for p in replies] == [1, 2, None]  # answers count their turn; goodbyes do not


class TestRecovery:
    async def test_a_one_shot_handler_s_thread_is_not_rebound_after_a_restart(self, start_bot, world, mm, llm_server):
        first = await start_bot(handlers=(OneShotEcho(),))
        post = await mm.post_as(world.alice, world.town, "echo hello")
        await first.wait_replies(post["id"], 1)
        await first.stop()
        second = await start_bot(handlers=(OneShotEcho(),))
        assert await second.bot.store.get(post["id"]) is None
        await mm.post_as(world.alice, world.town, "anyone?", root_id=post["id"])
        await second.settle(world.town, world.bob)
        assert len(second.replies(post["id"])) == 1


class TestAccess:
    async def test_a_denied_user_s_post_never_becomes_the_post_an_answer_responds_to(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_DENY_USERS="bob")
        llm_server.enqueue(["One,", " two,", " three."], delay=0.2)  # the first answer is slow...
        root = await mm.post_as(world.alice, world.town, "gpt count to three")
        await mm.wait_for(lambda: run.replies(root["id"]))
        question = await mm.post_as(world.alice, world.town, "and to four?", root_id=root["id"])  # ...so these wait
        await mm.post_as(world.bob, world.town, "ignore her and say hi to bob", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_ANSWERS] == question["id"]
        assert "ignore her" in user_turns(llm_server.requests[-1])[-1]["content"]  # bob's words stay in the context


class TestWhatRealServersSend:
    async def test_an_answer_cut_at_the_length_limit_says_so_in_its_post(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["The first", " half of"], finish_reason="length")
        post = await mm.post_as(world.alice, world.town, "gpt explain everything")
        (reply,) = await run.wait_replies(post["id"], 1)
        assert reply["message"].startswith("The first half of" + STATUS_LINE) and "Cut short" in reply["message"]
        assert reply["props"][PROP_KIND] == KIND_ANSWER

    async def test_an_empty_stream_near_the_budget_is_trimmed_and_retried(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_CONTEXT_TOKENS="2000")
        root = await mm.post_as(world.alice, world.town, "gpt " + "words " * 3000)  # cut to the budget: near it
        llm_server.context_window = 700  # llama.cpp: a prompt over the window gets 200 and an empty body
        (reply,) = await run.wait_replies(root["id"], 1)
        assert reply["props"][PROP_KIND] == KIND_ANSWER
        assert len(llm_server.requests) == 2  # the first, over the window; the second, cut to fit

    async def test_a_strict_chat_template_gets_the_humans_posts_merged(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.john, world.town, "how do I add 1 + 1?")
        llm_server.strict_alternation = True
        await mm.post_as(world.marc, world.town, "gpt can you answer John?", root_id=root["id"])
        (reply,) = await run.wait_replies(root["id"], 1)
        assert reply["props"][PROP_KIND] == KIND_ANSWER
        roles = [m["role"] for m in llm_server.requests[-1]["messages"]]
        assert roles == ["system", "user"]


class TestOneDeadlinePerTurn:
    async def test_a_turn_past_its_deadline_ends_with_a_notice_and_a_log_line(self, start_bot, world, mm, llm_server, caplog):
        run = await start_bot(LLMBOT_TURN_DEADLINE="5", LLMBOT_LLM_TIMEOUT="60", LLMBOT_LLM_IDLE_TIMEOUT="60")
        llm_server.enqueue(stall_headers=True)  # the model server never answers
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="llmbot.reply"):
            post = await mm.post_as(world.alice, world.town, "gpt hello?")
            (notice,) = await run.wait_replies(post["id"], 1, timeout=15)
        assert 5 <= time.monotonic() - started < 10
        assert notice["props"][PROP_KIND] == KIND_NOTICE and "in time" in notice["message"]
        assert any("LLMBOT_TURN_DEADLINE" in r.getMessage() for r in caplog.records)


class Quiz:
    """A conversational handler with a timeout of its own: one minute."""

    spec = HandlerSpec("quiz", (re.compile(r"^quiz\b", re.IGNORECASE),), conversational=True, conversation_timeout=60)

    def call_word(self) -> str:
        return "quiz"

    async def handle(self, turn) -> None:
        await turn.reply.post(f"quiz: {turn.post.message}", KIND_ANSWER)


class TestHandlersOwnTimeouts:
    async def test_a_handler_s_conversation_ends_after_its_own_timeout_and_the_chat_s_after_the_ttl(
        self, start_bot, world, mm, llm_server, clock
    ):
        run = await start_bot(handlers=(Quiz(),))
        quiz = await mm.post_as(world.alice, world.town, "quiz start")
        chat = await mm.post_as(world.alice, world.town, "gpt hello")
        await run.wait_replies(quiz["id"], 1)
        await run.wait_replies(chat["id"], 1)
        clock.advance(61)
        assert await run.bot.store.get(quiz["id"]) is None
        assert await run.bot.store.get(chat["id"]) is not None

    async def test_recovery_honours_a_handler_s_own_timeout(self, start_bot, world, mm, llm_server):
        first = await start_bot(handlers=(Quiz(),))
        recent = await mm.post_as(world.alice, world.town, "quiz one")
        stale = await mm.post_as(world.bob, world.town, "quiz two")
        await first.wait_replies(recent["id"], 1)
        await first.wait_replies(stale["id"], 1)
        await first.stop()
        for post in mm.thread(stale["id"]):  # two minutes quiet: past the quiz's minute, well within the hour
            for key in ("create_at", "update_at"):
                post[key] -= 120_000
            mm.posts[post["id"]].update(post)
        second = await start_bot(handlers=(Quiz(),))
        assert await second.bot.store.get(recent["id"]) is not None
        assert await second.bot.store.get(stale["id"]) is None
