"""End to end, the default trigger (issue 9, item 2): a human thread about GPT-5 stays the humans' own, and
`gpt,` / `gpt:` call the bot as `gpt` does. The real bot, driver and SDK against the loopback fakes."""

from __future__ import annotations

from tests.loopback.conftest import user_turns


async def test_a_thread_about_gpt_is_left_alone_until_someone_calls_the_bot(start_bot, world, mm, llm_server):
    run = await start_bot()
    root = await mm.post_as(world.alice, world.town, "GPT-5 is out today, has anyone compared it?")
    await mm.post_as(world.bob, world.town, "gpt's answer yesterday was wrong", root_id=root["id"])
    await mm.post_as(world.john, world.town, "it is faster, at least", root_id=root["id"])
    await run.settle(world.town, world.marc)  # every post above went through the bot before this answer
    assert run.replies(root["id"]) == []
    assert len(llm_server.requests) == 1  # the marker's alone

    llm_server.enqueue(["Mostly speed and a longer context."])
    await mm.post_as(world.marc, world.town, "gpt, what changed in GPT-5?", root_id=root["id"])
    (answer,) = await run.wait_replies(root["id"], 1)
    assert answer["message"] == "Mostly speed and a longer context."
    contents = [m["content"] for m in user_turns(llm_server.requests[-1])]
    assert contents[-1] == "@marc: what changed in GPT-5?"  # the call word and its comma are not the question
    assert "@alice: GPT-5 is out today, has anyone compared it?" in contents  # the thread is its context


async def test_gpt_colon_opens_a_conversation_like_gpt_space(start_bot, world, mm, llm_server):
    run = await start_bot()
    llm_server.enqueue(["Use git revert."])
    post = await mm.post_as(world.alice, world.town, "gpt: how do I undo a pushed commit?")
    (answer,) = await run.wait_replies(post["id"], 1)
    assert answer["message"] == "Use git revert."
    assert user_turns(llm_server.requests[-1])[-1]["content"] == "@alice: how do I undo a pushed commit?"


async def test_gpt_alone_gets_the_hint_naming_gpt(start_bot, world, mm, llm_server):
    run = await start_bot()
    post = await mm.post_as(world.alice, world.town, "gpt")
    (hint,) = await run.wait_replies(post["id"], 1)
    assert "`gpt how do I undo my last git commit?`" in hint["message"]
    assert llm_server.requests == []
