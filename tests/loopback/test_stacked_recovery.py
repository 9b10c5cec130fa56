"""Stacked conversations survive a restart: the start-up catch-up rebuilds every live one of a
thread from the bot's posts (record.active_conversations), the most recently active on top, and
the next follow-up goes to that one (the real bot, driver and SDK against the fakes)."""

from __future__ import annotations

import logging

from examples.food_selection import FoodSelection
from llmbot.record import (
    KIND_ANSWER,
    KIND_GOODBYE,
    PROP_ANSWERS,
    PROP_CONVERSATION,
    PROP_HANDLER,
    PROP_KIND,
    PROP_STATE,
    PROP_TURN,
)

PLUGINS = "gpt,examples.food_selection:FoodSelection"


def mine(handler: str, kind: str, answers: dict, conversation: dict, state: dict | None = None) -> dict:
    """The props the bot writes on a post (record.props_for)."""
    props = {PROP_HANDLER: handler, PROP_KIND: kind, PROP_ANSWERS: answers["id"], PROP_CONVERSATION: conversation["id"]}
    if kind == KIND_ANSWER:
        props[PROP_TURN] = 1
    if state is not None:
        props[PROP_STATE] = state
    return props


async def chat_then_food(mm, world) -> tuple[dict, dict]:
    """A thread as an earlier run left it: alice's chat conversation, and on top of it the food
    dialog bob opened with its trigger (which the chat did not take)."""
    root = await mm.post_as(world.alice, world.town, "gpt what's for lunch tomorrow?", broadcast=False)
    await mm.post_as(mm.bot, world.town, "Let's see.", root_id=root["id"], props=mine("gpt", KIND_ANSWER, root, root),
                     broadcast=False)
    food = await mm.post_as(world.bob, world.town, "food monday", root_id=root["id"], broadcast=False)
    await mm.post_as(mm.bot, world.town, "Monday there are 3 options: ... Which would you like to have?", root_id=root["id"],
                     props=mine("food", KIND_ANSWER, food, food, {"step": "choose", "day": "monday"}), broadcast=False)
    return root, food


class TestStackedConversationsAfterARestart:
    async def test_both_come_back_and_the_follow_up_goes_to_the_most_recent(self, start_bot, world, mm, llm_server):
        root, food = await chat_then_food(mm, world)

        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=PLUGINS)
        active = await run.bot.store.active(root["id"])
        assert [(b.handler, b.conversation, b.started_by) for b in active] == [
            ("food", food["id"], world.bob["id"]), ("gpt", root["id"], world.alice["id"]),
        ]
        await mm.post_as(world.bob, world.town, "1", root_id=root["id"])  # the food dialog's choice
        replies = await run.wait_replies(root["id"], 3)
        assert replies[-1]["message"] == "Enjoy: Vegetarian (brought by @mike)." and replies[-1]["props"][PROP_HANDLER] == "food"
        assert llm_server.requests == []
        assert [b.handler for b in await run.bot.store.active(root["id"])] == ["gpt"]  # the chat goes on below it
        llm_server.enqueue(["Enjoy your meal."])
        await mm.post_as(world.alice, world.town, "thanks", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 4)
        assert replies[-1]["props"][PROP_HANDLER] == "gpt" and replies[-1]["props"][PROP_CONVERSATION] == root["id"]

    async def test_a_goodbye_ends_both_for_good(self, start_bot, world, mm, llm_server):
        root, food = await chat_then_food(mm, world)
        bye = await mm.post_as(world.alice, world.town, "bye", root_id=root["id"], broadcast=False)
        await mm.post_as(mm.bot, world.town, "👋 Conversation ended.", root_id=root["id"],
                         props=mine("food", KIND_GOODBYE, bye, food), broadcast=False)

        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=PLUGINS)
        assert await run.bot.store.active(root["id"]) == []
        await mm.post_as(world.bob, world.town, "1", root_id=root["id"])
        await run.settle(world.town, world.john)
        assert len(run.replies(root["id"])) == 3  # nobody took it up

    async def test_a_conversation_of_a_handler_no_longer_loaded_is_skipped(self, start_bot, world, mm, llm_server, caplog):
        root, food = await chat_then_food(mm, world)

        with caplog.at_level(logging.DEBUG, logger="llmbot.catchup"):
            run = await start_bot()  # the chat only: food is not loaded any more
        assert [(b.handler, b.conversation) for b in await run.bot.store.active(root["id"])] == [("gpt", root["id"])]
        assert f"thread {root['id']}: conversations of handler 'food' not recovered: no such handler" in caplog.text
        llm_server.enqueue(["Sure."])
        await mm.post_as(world.bob, world.town, "1", root_id=root["id"])
        assert (await run.wait_replies(root["id"], 3))[-1]["props"][PROP_HANDLER] == "gpt"

    async def test_a_dialog_stacked_live_comes_back_in_the_same_order(self, start_bot, world, mm, llm_server):
        first = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=PLUGINS)
        root = await mm.post_as(world.alice, world.town, "food monday")
        await first.wait_replies(root["id"], 1)
        llm_server.enqueue(["Vegan means no animal products."])
        await mm.post_as(world.bob, world.town, "gpt what does vegan mean?", root_id=root["id"])  # on top of the dialog
        await first.wait_replies(root["id"], 2)
        before = [(b.handler, b.conversation, b.started_by) for b in await first.bot.store.active(root["id"])]
        assert [handler for handler, _, _ in before] == ["gpt", "food"]
        await first.stop()

        second = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=PLUGINS)
        assert [(b.handler, b.conversation, b.started_by) for b in await second.bot.store.active(root["id"])] == before
        llm_server.enqueue(["Yes, vegetarian too."])
        await mm.post_as(world.bob, world.town, "and is option 1 vegan?", root_id=root["id"])
        replies = await second.wait_replies(root["id"], 3)
        assert replies[-1]["props"][PROP_HANDLER] == "gpt" and len(llm_server.requests) == 2
