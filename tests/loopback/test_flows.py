"""End to end: the real bot, driver and SDK against loopback fakes of Mattermost and OpenAI."""

from __future__ import annotations

import itertools
import json

from llmbot.record import KIND_GOODBYE, KIND_NOTICE, KIND_USAGE, PROP_HANDLER, PROP_KIND
from llmbot.retry import ATTEMPTS
from tests.loopback.conftest import user_turns


class TestOpeningAConversation:
    async def test_gpt_prefix_answers_in_the_thread_of_that_post_streaming(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["Lima", " is the capital", " of Peru."], delay=0.01)
        post = await mm.post_as(world.alice, world.town, "gpt what is the capital of Peru?")
        (reply,) = await run.wait_replies(post["id"], 1)
        assert reply["root_id"] == post["id"]
        assert reply["message"] == "Lima is the capital of Peru."
        assert reply["props"][PROP_HANDLER] == "gpt"
        request = llm_server.requests[-1]
        assert request["stream"] is True
        assert user_turns(request)[-1]["content"] == "@alice: what is the capital of Peru?"
        assert user_turns(request)[-1]["name"] == "alice"

    async def test_follow_up_without_prefix_is_answered_with_the_whole_thread(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["Lima."])
        root = await mm.post_as(world.alice, world.town, "gpt what is the capital of Peru?")
        await run.wait_replies(root["id"], 1)
        llm_server.enqueue(["About 10 million."])
        await mm.post_as(world.bob, world.town, "and its population?", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "About 10 million."
        roles = [(m["role"], m["content"]) for m in llm_server.requests[-1]["messages"][1:]]
        assert roles == [
            ("user", "@alice: what is the capital of Peru?"),
            ("assistant", "Lima."),
            ("user", "@bob: and its population?"),
        ]

    async def test_gpt_in_a_reply_brings_the_question_above_into_context(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.john, world.town, "Hi everyone, how can I add 1 + 1?")
        llm_server.enqueue(["11, by concatenation."])
        await mm.post_as(world.marc, world.town, "gpt can you answer John's question above?", root_id=root["id"])
        await run.wait_replies(root["id"], 1)
        contents = [m["content"] for m in user_turns(llm_server.requests[-1])]
        assert contents == ["@john: Hi everyone, how can I add 1 + 1?", "@marc: can you answer John's question above?"]
        llm_server.enqueue(["2."])
        await mm.post_as(world.marc, world.town, "please interpret the + as mathematical addition.", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "2."

    async def test_a_dm_root_post_needs_no_prefix(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["Hello Alice!"])
        post = await mm.post_as(world.alice, world.dm, "hello there")
        (reply,) = await run.wait_dm_answers(post, 1)
        assert reply["message"] == "Hello Alice!"
        assert "a direct message with @alice" in llm_server.requests[-1]["messages"][0]["content"]

    async def test_an_at_mention_in_a_root_post_opens_a_conversation(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["Sure."])
        post = await mm.post_as(world.bob, world.town, "@llmbot can you summarise RFC 2119?")
        await run.wait_replies(post["id"], 1)
        assert user_turns(llm_server.requests[-1])[-1]["content"] == "@bob: can you summarise RFC 2119?"
        llm_server.enqueue(["It defines MUST and SHOULD."])
        await mm.post_as(world.bob, world.town, "in one line", root_id=post["id"])
        assert (await run.wait_replies(post["id"], 2))[-1]["message"] == "It defines MUST and SHOULD."


class TestEndingAConversation:
    async def test_bye_acknowledges_and_unbinds_the_thread(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "Bye!", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_KIND] == KIND_GOODBYE
        calls = len(llm_server.requests)
        await mm.post_as(world.alice, world.town, "are you still there?", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 2
        assert len(llm_server.requests) == calls + 1  # only the settle marker

    async def test_silence_longer_than_the_ttl_unbinds_the_thread(self, start_bot, world, mm, llm_server, clock):
        run = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        clock.advance(59)
        await mm.post_as(world.alice, world.town, "still here", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        clock.advance(61)
        await mm.post_as(world.alice, world.town, "and now?", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 2


class TestWhatTheBotIgnores:
    async def test_a_thread_the_bot_was_never_called_into_costs_nothing(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "lunch at noon?")
        mm.reset_requests()
        await mm.post_as(world.bob, world.town, "yes, gpt sounds good", root_id=root["id"])
        await mm.post_as(world.john, world.town, "count me in")
        await mm.post_as(world.john, world.town, "me too", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert run.replies(root["id"]) == []
        rest_calls = [r for r in mm.requests if root["id"] in r[1]]
        assert rest_calls == []
        assert len(llm_server.requests) == 1  # the settle marker only

    async def test_own_posts_other_bots_webhooks_system_posts_and_edits_are_not_turns(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.other_bot, world.town, "beep", root_id=root["id"])
        await mm.post_as(world.alice, world.town, "from a hook", root_id=root["id"], props={"from_webhook": "true"})
        await mm.add_system_post(world.town, root_id=root["id"])
        await mm.post_as(world.other_bot, world.town, "gpt are you a bot?")
        await mm.edit_as(root["id"], "gpt hi (edited)")
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 1
        assert len(llm_server.requests) == 2  # the first answer and the settle marker


class TestBadInput:
    async def test_gpt_alone_gets_a_usage_hint_without_an_llm_call(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        post = await mm.post_as(world.alice, world.town, "gpt")
        (hint,) = await run.wait_replies(post["id"], 1)
        assert hint["props"][PROP_KIND] == KIND_USAGE
        assert "`gpt" in hint["message"]
        assert llm_server.requests == []

    async def test_a_50000_character_message_is_cut_to_the_budget_and_answered(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_CONTEXT_TOKENS="2000")
        text = "gpt summarise: " + ("lorem ipsum dolor sit amet " * 1900)[:49_985]
        post = await mm.post_as(world.alice, world.town, text)
        await run.wait_replies(post["id"], 1)
        content = user_turns(llm_server.requests[-1])[-1]["content"]
        assert "tokens cut" in content
        assert content.startswith("@alice: summarise: lorem ipsum")
        assert content.rstrip().endswith(text.rstrip()[-20:])
        assert run.bot.tokenizer.count(json.dumps(llm_server.requests[-1]["messages"])) < 2600

    async def test_a_thread_of_2000_posts_is_read_newest_first_in_one_page_and_fits_the_budget(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_CONTEXT_TOKENS="3000")
        root = await mm.post_as(world.john, world.town, "the first question: what is a monad?")
        for i in range(1998):
            text = f"message number {i}: the build broke again after the last merge, can someone look at it?"
            await mm.post_as(world.bob if i % 2 else world.john, world.town, text, root_id=root["id"], broadcast=False)
        mm.reset_requests()
        await mm.post_as(world.marc, world.town, "gpt what was the first question?", root_id=root["id"])
        await run.wait_replies(root["id"], 1, timeout=15)
        thread_calls = [r for r in mm.requests if r[1].endswith("/thread")]
        assert len(thread_calls) == 1  # the newest 200 fill the budget: no need to read the rest
        assert thread_calls[0][2].get("perPage") == "200" and thread_calls[0][2].get("direction") == "up"
        # (the names of people the socket never showed the bot cost one users/ids call, then are cached)
        calls = [r[:2] for r in mm.requests if r[0] != "PUT" and r[1] != "/api/v4/users/ids"]
        assert calls == [("GET", f"/api/v4/posts/{root['id']}/thread"), ("POST", "/api/v4/posts")]
        turns = user_turns(llm_server.requests[-1])
        assert turns[0]["content"] == "@john: the first question: what is a monad?"
        assert turns[-1]["content"] == "@marc: what was the first question?"
        assert turns[-2]["content"].startswith(("@john: message number 1997:", "@bob: message number 1997:"))
        assert len(turns) < 2000

    async def test_unicode_emoji_rtl_and_code_blocks_reach_the_model_intact(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        text = "مرحبا بالعالم 👋🏽 ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u202eRTL\u202c\n```python\nprint('hi')\n```"
        post = await mm.post_as(world.alice, world.dm, text)
        await run.wait_dm_answers(post, 1)
        assert user_turns(llm_server.requests[-1])[-1]["content"] == "@alice: " + text

    async def test_a_post_with_only_files_is_described_to_the_model(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt look at this")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "", root_id=root["id"], file_ids=["file1", "file2"])
        await run.wait_replies(root["id"], 2)
        assert "2 attached files" in user_turns(llm_server.requests[-1])[-1]["content"]

    async def test_a_root_deleted_mid_conversation_ends_it_quietly(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        reply = await mm.post_as(world.alice, world.town, "one more", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        await mm.delete_post(root["id"])
        mm.posts[reply["id"]]["delete_at"] = 0  # a reply event that raced the deletion
        await mm.post_as(world.bob, world.town, "hello?", root_id=root["id"], check_root=False)
        await run.settle(world.town, world.bob)
        assert len(llm_server.requests) == 3  # two answers and the marker; nothing for the deleted thread
        assert await run.bot.store.get(root["id"]) is None

    async def test_a_malformed_websocket_frame_is_logged_and_skipped(self, start_bot, world, mm, llm_server, caplog):
        run = await start_bot()
        for garbage in ("not json", "[1,2]", '{"event":"posted","data":{"post":"{broken"}}', '{"event":"posted"}', "\x00\xff"):
            await mm.send_raw(garbage)
        post = await mm.post_as(world.alice, world.town, "gpt still alive?")
        assert (await run.wait_replies(post["id"], 1))[0]["message"] == "ok"
        assert caplog.text.count("websocket frame skipped") == 5

    async def test_an_llm_error_mid_stream_keeps_the_partial_text_and_says_so_in_the_same_post(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["The answer", " is forty"], fail_after=2, delay=0.05)
        post = await mm.post_as(world.alice, world.town, "gpt what is six times seven?")
        (partial,) = await run.wait_replies(post["id"], 1)
        await mm.wait_for(lambda: "⚠️" in run.replies(post["id"])[0]["message"])
        partial = run.replies(post["id"])[0]
        assert partial["message"].startswith("The answer is forty\n\n_⚠️ I could not finish this answer: ")
        assert "Traceback" not in partial["message"]
        assert len(run.replies(post["id"])) == 1  # one post for the turn, not an answer plus a notice
        llm_server.enqueue(["42."])
        await mm.post_as(world.alice, world.town, "try again", root_id=post["id"])
        assert (await run.wait_replies(post["id"], 2))[-1]["message"] == "42."
        # the status line is not part of the conversation the model sees
        assert all("⚠️" not in m["content"] for m in llm_server.requests[-1]["messages"])

    async def test_an_llm_error_before_any_text_posts_only_a_notice(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue([], status=500)
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        (notice,) = await run.wait_replies(post["id"], 1)
        assert notice["props"][PROP_KIND] == KIND_NOTICE
        assert "HTTP 500" in notice["message"]


class TestStreaming:
    async def test_a_reply_is_created_at_the_first_token_and_patched_at_most_once_a_second(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue([f"word{i} " for i in range(26)], delay=0.1)  # ~2.5 s of streaming
        post = await mm.post_as(world.alice, world.town, "gpt talk slowly")
        await mm.wait_for(lambda: len(run.replies(post["id"])) == 1)
        first = run.replies(post["id"])[0]
        assert first["message"].startswith("word0")
        assert len(first["message"]) < 60  # created early, not at the end
        await run.bot.idle()
        edits = [e for e in mm.edits if e[0] == first["id"]]
        assert 2 <= len(edits) <= 4
        gaps = [b[2] - a[2] for a, b in itertools.pairwise(edits[:-1])]
        assert all(g >= 0.9 for g in gaps)
        assert run.replies(post["id"])[0]["message"] == "".join(f"word{i} " for i in range(26))

    async def test_typing_is_shown_over_the_websocket_until_the_first_token(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["done"], first_delay=0.3)
        post = await mm.post_as(world.alice, world.town, "gpt think first")
        await run.wait_replies(post["id"], 1)
        assert (mm.bot["id"], world.town["id"], post["id"], "ws") in mm.typing

    async def test_an_answer_longer_than_a_post_is_split_without_breaking_code_fences(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        code = "\n".join(f"print({i})  # line {i}" for i in range(1500))
        llm_server.enqueue(["Here you go:\n\n```python\n", code[:15000], code[15000:], "\n```\nDone."])
        post = await mm.post_as(world.alice, world.town, "gpt write a long script")
        await mm.wait_for(lambda: any("Done." in p["message"] for p in run.replies(post["id"])), timeout=10)
        await run.bot.idle()
        pages = [p["message"] for p in run.replies(post["id"])]
        assert len(pages) >= 2
        assert all(len(p) <= 16383 for p in pages)
        assert all(p.count("```") % 2 == 0 for p in pages)
        assert pages[1].startswith("```python\n")

    async def test_a_conversation_opened_by_a_root_post_starts_without_a_thread_fetch(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        mm.reset_requests()
        post = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(post["id"], 1)
        calls = [(r[0], r[1]) for r in mm.requests if not r[1].endswith("/patch")]
        assert calls == [("POST", "/api/v4/posts")]

    async def test_a_follow_up_turn_makes_exactly_two_rest_calls_besides_edits(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.bob, world.town, "hello from bob", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        mm.reset_requests()
        await mm.post_as(world.alice, world.town, "and again", root_id=root["id"])
        await run.wait_replies(root["id"], 3)
        calls = [(r[0], r[1]) for r in mm.requests if not r[1].endswith("/patch")]
        assert calls == [("GET", f"/api/v4/posts/{root['id']}/thread"), ("POST", "/api/v4/posts")]


class TestOneTurnAtATime:
    async def test_quick_follow_ups_never_interleave_or_duplicate_answers(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        llm_server.enqueue(["first answer"], first_delay=0.3)
        llm_server.enqueue(["second answer"], first_delay=0.3)
        llm_server.enqueue(["third answer"], first_delay=0.3)
        for text in ("one", "two", "three"):
            await mm.post_as(world.bob, world.town, text, root_id=root["id"])
        await mm.wait_for(lambda: len(run.replies(root["id"])) >= 2, timeout=5)
        await run.bot.idle()
        answers = [p["message"] for p in run.replies(root["id"])][1:]
        assert answers in (["first answer"], ["first answer", "second answer"])
        last_request = [m["content"] for m in user_turns(llm_server.requests[-1])]
        assert last_request[-1] == "@bob: three"


class TestMattermostFaults:
    async def test_a_reply_that_failed_to_post_is_retried_once_and_posted_once(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        mm.fail_next("POST", r"/api/v4/posts$", 500)
        llm_server.enqueue(["Hello", " there"], delay=0.05)
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        (reply,) = await run.wait_replies(post["id"], 1)
        assert reply["message"] == "Hello there"
        assert reply["props"][PROP_KIND] != KIND_NOTICE

    async def test_a_reply_that_cannot_be_posted_gets_a_notice_instead(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        mm.fail_next("POST", r"/api/v4/posts$", 500, times=1 + 2 * ATTEMPTS)  # the first show, then every final try
        post = await mm.post_as(world.alice, world.town, "gpt hello")
        (notice,) = await run.wait_replies(post["id"], 1, timeout=30)  # ten tries, backing off
        assert notice["props"][PROP_KIND] == KIND_NOTICE
        assert "Mattermost returned an error" in notice["message"]

    async def test_a_thread_read_that_fails_once_is_read_again(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hello")
        await run.wait_replies(root["id"], 1)
        mm.fail_next("GET", r"/thread$", 500)  # the driver retries only 502-504; the handler retries
        await mm.post_as(world.alice, world.town, "and then?", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "ok" and replies[-1]["props"][PROP_KIND] == "answer"

    async def test_an_unreadable_thread_gets_a_notice_and_the_bot_keeps_going(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hello")
        await run.wait_replies(root["id"], 1)
        mm.fail_next("GET", r"/thread$", 500, times=ATTEMPTS)
        await mm.post_as(world.alice, world.town, "and then?", root_id=root["id"])
        notice = (await run.wait_replies(root["id"], 2))[-1]
        assert "could not read this thread" in notice["message"]
        assert len(llm_server.requests) == 1
        await mm.post_as(world.alice, world.town, "try again", root_id=root["id"])
        assert (await run.wait_replies(root["id"], 3))[-1]["message"] == "ok"

    async def test_a_forbidden_thread_is_dropped_without_retrying(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        mm.fail_next("GET", r"/thread$", 403)
        mm.reset_requests()
        await mm.post_as(world.alice, world.town, "more", root_id=root["id"])
        await mm.wait_for(lambda: any(r[1].endswith("/thread") for r in mm.requests))
        await run.bot.idle()
        assert await run.bot.store.get(root["id"]) is None
        assert len(run.replies(root["id"])) == 1


class EchoHandler:
    """A one-shot handler, to show routing is not hard-wired to the GPT chat."""

    def __init__(self, chat) -> None:
        import re

        from llmbot.router import HandlerSpec

        self.spec = HandlerSpec("echo", (re.compile(r"^echo\b", re.IGNORECASE),), conversational=False)
        self.chat = chat

    def call_word(self) -> str:
        return "echo"

    async def handle(self, turn) -> None:
        await turn.reply.post("echo: " + turn.post.message[5:], "answer")


class TestHandlersAreGeneric:
    async def test_a_second_handler_answers_its_trigger_once_without_binding(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        run.bot.add_handler(EchoHandler(run.bot.chat))
        post = await mm.post_as(world.alice, world.town, "echo hello")
        (reply,) = await run.wait_replies(post["id"], 1)
        assert reply["message"] == "echo: hello"
        assert await run.bot.store.get(post["id"]) is None
        await mm.post_as(world.alice, world.town, "anyone?", root_id=post["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(post["id"])) == 1
        assert len(llm_server.requests) == 1  # the settle marker only

    async def test_in_a_bound_thread_only_the_bound_handler_runs(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        run.bot.add_handler(EchoHandler(run.bot.chat))
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        llm_server.enqueue(["the gpt handler answered"])
        await mm.post_as(world.alice, world.town, "echo this please", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "the gpt handler answered"
        assert replies[-1]["props"][PROP_HANDLER] == "gpt"


class TestSafety:
    async def test_an_answer_cannot_notify_the_whole_channel(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        llm_server.enqueue(["Sure! @channel, @all and @here: lunch is ready."])
        post = await mm.post_as(world.alice, world.town, "gpt announce lunch to @channel")
        (reply,) = await run.wait_replies(post["id"], 1)
        assert "@channel" not in reply["message"] and "@all" not in reply["message"] and "@here" not in reply["message"]
        assert reply["message"] == "Sure! @\u200bchannel, @\u200ball and @\u200bhere: lunch is ready."
