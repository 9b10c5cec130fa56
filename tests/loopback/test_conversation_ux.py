"""Conversations as people hold them (issue 9, items 3-5 and 8), end to end through the real
clients: posts addressed to someone else, natural goodbyes, the question after a usage hint, and a
message too long for the budget."""

from __future__ import annotations

from llmbot.plugins.message import CUT_NOTE
from llmbot.record import KIND_ANSWER, KIND_GOODBYE, KIND_USAGE, PROP_KIND, STATUS_LINE
from tests.loopback.conftest import user_turns


def reactions(mm, post: dict) -> list[str]:
    """The bot's reactions on a post."""
    return [r["emoji_name"] for r in mm.reactions if r["post_id"] == post["id"] and r["user_id"] == mm.bot["id"]]


class TestPostsAddressedToSomeoneElse:
    async def test_no_answer_but_it_stays_in_the_context(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt which database should we pick?")
        await run.wait_replies(root["id"], 1)
        aside = await mm.post_as(world.alice, world.town, "@marc what do you think?", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 1
        assert reactions(mm, aside) == []  # no cue either: it simply was not for the bot
        await mm.post_as(world.marc, world.town, "postgres, and you?", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        users = [m["content"] for m in user_turns(llm_server.requests[-1])]
        assert "@alice: @marc what do you think?" in users


class TestNaturalGoodbyes:
    async def test_thanks_bye_ends_and_a_sentence_with_the_word_does_not(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt how do I rename the API?")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "so I say bye to the old API?", root_id=root["id"])
        assert (await run.wait_replies(root["id"], 2))[-1]["props"][PROP_KIND] == KIND_ANSWER
        await mm.post_as(world.alice, world.town, "thanks, bye", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 3)
        assert replies[-1]["props"][PROP_KIND] == KIND_GOODBYE
        assert await run.bot.store.active(root["id"]) == []


class TestTheQuestionAfterAUsageHint:
    async def test_the_caller_s_next_post_is_the_question(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt")
        (hint,) = await run.wait_replies(root["id"], 1)
        assert hint["props"][PROP_KIND] == KIND_USAGE
        await mm.post_as(world.bob, world.town, "me too", root_id=root["id"])  # someone else: not the question
        await run.settle(world.town, world.john)
        assert len(run.replies(root["id"])) == 1
        await mm.post_as(world.alice, world.town, "how do I undo my last commit?", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_KIND] == KIND_ANSWER
        assert user_turns(llm_server.requests[-1])[-1]["content"] == "@alice: how do I undo my last commit?"
        await mm.post_as(world.bob, world.town, "and how do I redo it?", root_id=root["id"])  # now a conversation
        assert len(await run.wait_replies(root["id"], 3)) == 3


class TestAMessageTooLongForTheBudget:
    async def test_the_answer_says_its_middle_was_left_out(self, start_bot, world, mm, llm_server, caplog):
        run = await start_bot(LLMBOT_MAX_CONTEXT_TOKENS="300")
        llm_server.enqueue(["Here is my reading."])
        long = "gpt summarise this: " + " ".join(f"line {i} of the log says nothing new." for i in range(400))
        with caplog.at_level("WARNING", logger="llmbot"):
            root = await mm.post_as(world.alice, world.town, long)
            (answer,) = await run.wait_replies(root["id"], 1)
        assert answer["message"].startswith("Here is my reading.")
        assert STATUS_LINE in answer["message"] and "in the middle were left out" in answer["message"]
        assert any("tokens of its middle left out" in r.getMessage() for r in caplog.records)
        assert CUT_NOTE.split("{")[0] in answer["message"]


class TestNoSilentStates:
    async def test_the_first_post_after_expiry_gets_one_cue(self, start_bot, world, mm, llm_server, clock):
        run = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        clock.advance(61)
        late = await mm.post_as(world.alice, world.town, "are you still there?", root_id=root["id"])
        later = await mm.post_as(world.alice, world.town, "hello?", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert reactions(mm, late) == ["zzz"] and reactions(mm, later) == []
        assert len(run.replies(root["id"])) == 1

    async def test_after_bye_the_next_post_gets_the_cue(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "ok bye", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        after = await mm.post_as(world.bob, world.town, "wait, one more thing", root_id=root["id"])
        await run.settle(world.town, world.john)
        assert reactions(mm, after) == ["zzz"]

    async def test_a_refused_user_gets_a_cue_once_per_thread(self, start_bot, world, mm, llm_server, caplog):
        run = await start_bot(LLMBOT_DENY_USERS="bob", LLMBOT_LOG_LEVEL="DEBUG")
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        with caplog.at_level("DEBUG", logger="llmbot"):
            first = await mm.post_as(world.bob, world.town, "and me?", root_id=root["id"])
            second = await mm.post_as(world.bob, world.town, "hello?", root_id=root["id"])
            await run.settle(world.town, world.john)
        assert reactions(mm, first) == ["no_entry_sign"] and reactions(mm, second) == []
        assert len(run.replies(root["id"])) == 1
        why = [r.getMessage() for r in caplog.records if first["id"] in r.getMessage()]
        assert any("@bob" in line and "~town-square" in line and "not answered" in line for line in why), why


class TestRestartsChangeNothingAUserSaw:
    async def test_a_post_left_unanswered_over_a_limit_stays_so_after_a_restart(self, start_bot, world, mm, llm_server):
        first = await start_bot(LLMBOT_MAX_STARTS_PER_MINUTE="1")
        one = await mm.post_as(world.alice, world.town, "gpt one")
        await first.wait_replies(one["id"], 1)
        two = await mm.post_as(world.alice, world.town, "gpt two")
        (refusal,) = await first.wait_replies(two["id"], 1)
        assert refusal["props"][PROP_KIND] == "refusal"
        three = await mm.post_as(world.alice, world.town, "gpt three")  # told already: silence, and a cue
        await mm.wait_for(lambda: reactions(mm, three) == ["hourglass_flowing_sand"])
        await first.stop()

        second = await start_bot(LLMBOT_MAX_STARTS_PER_MINUTE="1")  # its catch-up reads all three threads
        await second.settle(world.town, world.bob)
        assert len(second.replies(two["id"])) == 1  # no second refusal
        assert second.replies(three["id"]) == []  # not answered minutes later
        assert len(llm_server.requests) == 2  # "one" and the marker

    async def test_dms_off_a_refusal_is_not_posted_again_after_a_restart(self, start_bot, world, mm, llm_server):
        first = await start_bot(LLMBOT_DIRECT_MESSAGES="off")
        dm1 = await mm.post_as(world.alice, world.dm, "hello?")
        (told,) = await first.wait_dm_answers(dm1, 1)
        dm2 = await mm.post_as(world.alice, world.dm, "hello??")
        await mm.wait_for(lambda: reactions(mm, dm2) == ["no_entry_sign"])
        await first.stop()
        second = await start_bot(LLMBOT_DIRECT_MESSAGES="off")
        await second.settle(world.town, world.bob)
        assert [p["id"] for p in second.dm_answers(dm1)] == [told["id"]]  # nothing posted again
