"""The public plugin API end to end: the seed's food-selection dialog (examples/food_selection.py)
through the real bot, driver and SDK against the fakes, its state in the thread only."""

from __future__ import annotations

import threading

from examples.food_selection import FoodSelection
from llmbot import Message, Plugin, listen_to
from llmbot.plugins.summarize import Summarize
from llmbot.record import KIND_END, PROP_HANDLER, PROP_KIND, PROP_STATE


class TestFoodSelection:
    async def test_the_whole_dialog_with_a_restart_in_the_middle(self, start_bot, world, mm, llm_server):
        first = await start_bot(plugins=(FoodSelection(),))
        root = await mm.post_as(world.alice, world.town, "@llmbot foodselection tomorrow")
        (options,) = await first.wait_replies(root["id"], 1)
        assert options["message"].startswith("Tomorrow there are 3 options:")
        assert options["props"][PROP_HANDLER] == "food" and options["props"][PROP_STATE] == {"step": "choose", "day": "tomorrow"}
        await mm.post_as(world.alice, world.town, "3", root_id=root["id"])
        await first.wait_replies(root["id"], 2)
        await first.stop()  # nothing of the dialog is kept in memory: a new process continues it

        second = await start_bot(plugins=(FoodSelection(),))
        await mm.post_as(world.alice, world.town, "Gluten-free", root_id=root["id"])
        replies = await second.wait_replies(root["id"], 3)
        assert replies[-1]["message"] == 'Great! Does "Gluten-free (brought by @alice)" look good to you?'
        await mm.post_as(world.alice, world.town, "yes", root_id=root["id"])
        replies = await second.wait_replies(root["id"], 4)
        assert replies[-1]["message"] == '"Gluten-free (brought by @alice)" is now an option and is available to others.'
        assert replies[-1]["props"][PROP_KIND] == KIND_END
        assert await second.bot.store.get(root["id"]) is None  # the dialog ended
        assert llm_server.requests == []  # no LLM was involved

    async def test_a_conversational_intent_wins_over_converse(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),))
        root = await mm.post_as(world.alice, world.town, "food today")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "cancel", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "Cancelled." and replies[-1]["props"][PROP_KIND] == KIND_END
        assert await run.bot.store.get(root["id"]) is None

    async def test_a_declined_follow_up_gets_no_answer_and_keeps_the_dialog(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),))
        root = await mm.post_as(world.alice, world.town, "food monday")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.bob, world.town, "what is this about?", root_id=root["id"])
        await run.settle(world.town, world.john)
        assert len(run.replies(root["id"])) == 1
        assert await run.bot.store.get(root["id"]) is not None
        await mm.post_as(world.alice, world.town, "1", root_id=root["id"])
        assert (await run.wait_replies(root["id"], 2))[-1]["message"] == "Enjoy: Vegetarian (brought by @mike)."


class Echo(Plugin):
    """A sync plugin: mmpy_bot's users write sync code; it runs in a worker thread."""

    name = "echo"
    release = threading.Event()

    @listen_to(r"^echo (.+)$")
    def echo(self, message: Message, text: str) -> None:
        if text == "slowly":
            self.release.wait(10)  # blocks this worker only
        message.reply(f"echo: {text}")


class TestSyncPlugins:
    async def test_a_blocking_sync_plugin_stalls_no_other_thread(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(Echo(),))
        slow = await mm.post_as(world.alice, world.town, "echo slowly")
        quick = await mm.post_as(world.bob, world.town, "echo quickly")
        chat = await mm.post_as(world.john, world.town, "gpt are you there?")
        await mm.wait_for(lambda: run.replies(quick["id"]) and run.replies(chat["id"]))  # (bot.idle() would wait for all)
        assert run.replies(quick["id"])[0]["message"] == "echo: quickly"
        assert run.replies(slow["id"]) == []  # still blocked...
        Echo.release.set()
        assert (await run.wait_replies(slow["id"], 1))[0]["message"] == "echo: slowly"  # ...then answered


class TestLoadingOrder:
    async def test_without_gpt_in_llmbot_plugins_the_chat_is_off(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS="examples.food_selection:FoodSelection")
        chat = await mm.post_as(world.alice, world.town, "gpt hello?")
        marker = await mm.post_as(world.bob, world.town, "food friday")  # taken after the gpt post, in order
        await run.wait_replies(marker["id"], 1)
        assert run.replies(chat["id"]) == [] and llm_server.requests == []
        assert list(run.bot.handlers) == ["food"]


class TestSummarize:
    async def test_tldr_in_a_thread_summarises_it_with_its_own_prompt_and_holds_no_conversation(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(Summarize(),), LLMBOT_PLUGINS="gpt,summarize")
        root = await mm.post_as(world.john, world.town, "Shall we move the release to Friday?")
        await mm.post_as(world.marc, world.town, "Fine by me, I'll tell QA.", root_id=root["id"])
        llm_server.enqueue(["- Release moves", " to Friday; @marc tells QA."])
        call = await mm.post_as(world.bob, world.town, "tl;dr", root_id=root["id"])
        (summary,) = await run.wait_replies(root["id"], 1)
        assert summary["message"] == "- Release moves to Friday; @marc tells QA."
        assert summary["props"][PROP_HANDLER] == "summarize" and summary["props"]["llmbot_answers"] == call["id"]
        request = llm_server.requests[-1]
        assert request["messages"][0]["content"].startswith("You are llmbot. Summarise the Mattermost conversation")
        users = [m["content"] for m in request["messages"] if m["role"] == "user"]
        assert users == ["@john: Shall we move the release to Friday?", "@marc: Fine by me, I'll tell QA.", "@bob: tl;dr"]
        assert await run.bot.store.get(root["id"]) is None  # one-shot
        await mm.post_as(world.john, world.town, "thanks!", root_id=root["id"])
        await run.settle(world.town, world.alice)
        assert len(run.replies(root["id"])) == 1


class Counter(Plugin):
    """Counts follow-ups; never ends by itself."""

    name = "counter"

    @listen_to(r"^count$", conversation=True)
    async def start(self, message: Message) -> None:
        await message.reply("1")

    async def converse(self, message: Message) -> bool:
        await message.reply("and one more")
        return True


class TestLimitsForEveryPlugin:
    async def test_the_turn_cap_ends_a_plugin_s_conversation_too(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(Counter(),), LLMBOT_MAX_TURNS="2")
        root = await mm.post_as(world.alice, world.town, "count")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "again", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        await mm.post_as(world.alice, world.town, "again", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 3)
        assert [p["props"].get("llmbot_turn") for p in replies[:2]] == [1, 2]
        assert replies[-1]["props"][PROP_KIND] == KIND_END and "limit of 2 answers" in replies[-1]["message"]
        assert await run.bot.store.get(root["id"]) is None


class SyncSummary(Plugin):
    """A sync plugin that asks the LLM, as mmpy_bot users would write it."""

    name = "syncsum"

    @listen_to(r"^recap$")
    def recap(self, message: Message) -> None:
        message.reply_stream(message.llm(message.context("Recap this thread.")))


class TestSyncPluginsUseTheLLM:
    async def test_a_sync_plugin_streams_an_llm_answer(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(SyncSummary(),))
        llm_server.enqueue(["All", " quiet."])
        post = await mm.post_as(world.alice, world.town, "recap")
        (reply,) = await run.wait_replies(post["id"], 1)
        assert reply["message"] == "All quiet." and reply["props"][PROP_HANDLER] == "syncsum"
        assert llm_server.requests[-1]["messages"][0] == {"role": "system", "content": "Recap this thread."}


class Alarm(Plugin):
    """An interrupt: it takes its trigger even inside another conversation."""

    name = "alarm"

    @listen_to(r"^alarm\b", interrupt=True)
    async def ring(self, message: Message) -> None:
        await message.reply("🔔 Alarm raised.")


class TestInterrupts:
    async def test_an_interrupt_listener_takes_its_trigger_inside_a_chat_conversation(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(Alarm(),))
        root = await mm.post_as(world.alice, world.town, "gpt hello")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.bob, world.town, "alarm: the build is red", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["message"] == "🔔 Alarm raised." and replies[-1]["props"][PROP_HANDLER] == "alarm"
        assert len(llm_server.requests) == 1
        await mm.post_as(world.alice, world.town, "so, where were we?", root_id=root["id"])  # the chat goes on
        assert (await run.wait_replies(root["id"], 3))[-1]["props"][PROP_HANDLER] == "gpt"


class TestDeclinedFollowUps:
    async def test_a_declined_follow_up_goes_to_another_plugin_s_trigger_and_the_dialog_goes_on(
        self, start_bot, world, mm, llm_server
    ):
        run = await start_bot(plugins=(FoodSelection(), Summarize()), LLMBOT_PLUGINS="gpt,examples.food_selection:FoodSelection,summarize")
        root = await mm.post_as(world.alice, world.town, "food monday")
        await run.wait_replies(root["id"], 1)
        llm_server.enqueue(["Alice is choosing lunch."])
        await mm.post_as(world.bob, world.town, "tl;dr", root_id=root["id"])  # food declines it; summarize's trigger takes it
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_HANDLER] == "summarize" and replies[-1]["message"] == "Alice is choosing lunch."
        await mm.post_as(world.alice, world.town, "1", root_id=root["id"])  # the food dialog is still active
        replies = await run.wait_replies(root["id"], 3)
        assert replies[-1]["props"][PROP_HANDLER] == "food" and replies[-1]["message"].startswith("Enjoy:")

    async def test_a_trigger_declined_by_the_dialog_opens_a_second_conversation_on_top(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS="gpt,examples.food_selection:FoodSelection")
        root = await mm.post_as(world.alice, world.town, "food monday")
        await run.wait_replies(root["id"], 1)
        llm_server.enqueue(["Vegan means no animal products."])
        await mm.post_as(world.bob, world.town, "gpt what does vegan mean?", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_HANDLER] == "gpt"
        assert [b.handler for b in await run.bot.store.active(root["id"])] == ["gpt", "food"]  # stacked, newest first
        await mm.post_as(world.alice, world.town, "bye", root_id=root["id"])  # the end word ends both
        await run.wait_replies(root["id"], 3)
        assert await run.bot.store.active(root["id"]) == []

    async def test_a_conversation_opened_by_falling_through_obeys_the_per_user_limits(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS="gpt,examples.food_selection:FoodSelection",
                              LLMBOT_MAX_STARTS_PER_MINUTE="1")
        root = await mm.post_as(world.alice, world.town, "food monday")  # alice's one start this minute
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "gpt what does vegan mean?", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_KIND] == "refusal" and "last minute" in replies[-1]["message"]
        assert llm_server.requests == []
        assert [b.handler for b in await run.bot.store.active(root["id"])] == ["food"]
