"""A DM is one running conversation (issue 9, item 1): root posts continue it, with the DM's recent
root posts and the bot's answers as context, back to the last goodbye or silence past the TTL."""

from __future__ import annotations

from llmbot.record import KIND_ANSWER, KIND_GOODBYE, PROP_KIND
from tests.loopback.conftest import user_turns


def contents(request: dict) -> list[str]:
    return [m["content"] for m in request["messages"][1:]]


class TestADirectMessageIsOneConversation:
    async def test_the_sixth_message_sees_the_first_and_ten_need_no_new_conversation(
        self, start_bot, world, mm, llm_server
    ):
        run = await start_bot(LLMBOT_MAX_CONVERSATIONS_PER_USER="3", LLMBOT_MAX_STARTS_PER_MINUTE="2")
        posts = []
        for i in range(10):
            llm_server.enqueue([f"answer {i}"])
            post = await mm.post_as(world.alice, world.dm, f"question {i}")
            (answer,) = await run.wait_dm_answers(post, 1)
            assert answer["message"] == f"answer {i}" and answer["props"][PROP_KIND] == KIND_ANSWER
            posts.append(post)
        sixth = llm_server.requests[5]
        assert contents(sixth)[:3] == ["@alice: question 0", "answer 0", "@alice: question 1"]
        assert contents(sixth)[-1] == "@alice: question 5"
        assert len(llm_server.requests) == 10  # no refusal: a DM is one conversation for the limits
        assert [b.handler for b in await run.bot.store.active(world.dm["id"])] == ["gpt"]
        assert all(run.replies(p["id"]) == [] for p in posts)  # answers are root posts, not thread replies

    async def test_bye_ends_it_and_the_next_message_starts_afresh(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        first = await mm.post_as(world.alice, world.dm, "my name is Alice")
        await run.wait_dm_answers(first, 1)
        bye = await mm.post_as(world.alice, world.dm, "thanks, bye")
        (goodbye,) = await run.wait_dm_answers(bye, 1)
        assert goodbye["props"][PROP_KIND] == KIND_GOODBYE
        again = await mm.post_as(world.alice, world.dm, "what is my name?")
        await run.wait_dm_answers(again, 1)
        assert contents(llm_server.requests[-1]) == ["@alice: what is my name?"]

    async def test_silence_past_the_ttl_starts_afresh(self, start_bot, world, mm, llm_server, clock):
        run = await start_bot(LLMBOT_CONVERSATION_TTL="60")
        first = await mm.post_as(world.alice, world.dm, "remember 42")
        await run.wait_dm_answers(first, 1)
        clock.advance(61)  # the conversation expires...
        for post in mm.posts.values():  # ...and its posts are a minute old
            post["create_at"] -= 61_000
            post["update_at"] -= 61_000
        later = await mm.post_as(world.alice, world.dm, "hello again")  # a new conversation
        await run.wait_dm_answers(later, 1)
        follow = await mm.post_as(world.alice, world.dm, "what did I ask you to remember?")  # read back: the gap stops it
        await run.wait_dm_answers(follow, 1)
        assert contents(llm_server.requests[-1])[0] == "@alice: hello again"
        assert "@alice: remember 42" not in contents(llm_server.requests[-1])

    async def test_a_thread_inside_a_dm_works_like_a_thread_in_a_channel(self, start_bot, world, mm, llm_server):
        run = await start_bot()
        root = await mm.post_as(world.alice, world.dm, "first")
        await run.wait_dm_answers(root, 1)
        await mm.post_as(world.alice, world.dm, "gpt about this one only", root_id=root["id"])
        (reply,) = await run.wait_replies(root["id"], 1)
        assert reply["root_id"] == root["id"]
        assert user_turns(llm_server.requests[-1])[-1]["content"] == "@alice: about this one only"

    async def test_a_restart_in_the_middle_loses_nothing(self, start_bot, world, mm, llm_server):
        first = await start_bot()
        one = await mm.post_as(world.alice, world.dm, "the code word is tangerine")
        await first.wait_dm_answers(one, 1)
        await first.stop()
        second = await start_bot()
        assert [b.handler for b in await second.bot.store.active(world.dm["id"])] == ["gpt"]  # recovered
        two = await mm.post_as(world.alice, world.dm, "what is the code word?")
        await second.wait_dm_answers(two, 1)
        assert contents(llm_server.requests[-1])[0] == "@alice: the code word is tangerine"
