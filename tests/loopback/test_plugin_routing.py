"""The routing table and the OVOS hooks end to end, through the real clients against the fakes:
step 4 before 5, passive listeners, a raising plugin, hooks, activate(), per-plugin settings."""

from __future__ import annotations

import logging

from examples.food_selection import FoodSelection
from llmbot import Message, Plugin, listen_to
from llmbot.record import KIND_ANSWER, KIND_NOTICE, PROP_HANDLER, PROP_KIND
from llmbot.runner import FAILED

FOOD = "gpt,examples.food_selection:FoodSelection"


class Watcher(Plugin):
    """Passive: sees every post that mentions a deploy, whatever else takes it."""

    name = "watcher"

    @listen_to(r"\bdeploy(ed)?\b", passive=True)
    async def note(self, message: Message, _ed: str | None) -> None:
        await message.reply("📝 noted for the changelog")


class Incidents(Plugin):
    """Watches for incident reports (passively) and takes their threads with activate()."""

    name = "incidents"
    conversation_timeout = 120

    @listen_to(r"^incident:", passive=True)
    async def spotted(self, message: Message) -> None:
        await self.activate(message.channel_id, message.thread_id)
        await message.reply("🚨 Incident opened. Reply with status updates; say `resolved` when done.", state={"updates": 0})

    @listen_to(r"^never-called-trigger$", conversation=True)  # (it holds conversations: one listener says so)
    async def unused(self, message: Message) -> None:
        raise AssertionError("not called")

    async def converse(self, message: Message) -> bool:
        updates = (message.state or {}).get("updates", 0) + 1
        if message.text.lower().startswith("resolved"):
            await message.end(f"✅ Incident closed after {updates} update(s).")
        else:
            await message.reply(f"Update {updates} logged.", state={"updates": updates})
        return True


class Hooked(Plugin):
    """Records its hooks (a test double: class-level, since the bot owns the instance)."""

    name = "hooked"
    conversation_timeout = 60
    events: list[tuple[str, str]] = []

    @listen_to(r"^hook\s+(\w+)", conversation=True)
    async def start(self, message: Message, word: str) -> None:
        await message.reply(f"hooked {word}")

    async def converse(self, message: Message) -> bool:
        await message.reply(f"heard {message.text}")
        return True

    async def on_activate(self, message: Message) -> None:
        self.events.append(("activate", message.thread_id))

    def on_deactivate(self, thread_id: str, reason: str) -> None:  # sync: runs in a worker thread
        self.events.append((reason, thread_id))


class Broken(Plugin):
    name = "broken"

    @listen_to(r"^broken please")
    async def fail(self, message: Message) -> None:
        raise ZeroDivisionError("a bug in the plugin")

    @listen_to(r"^broken sync")
    def fail_in_a_worker(self, message: Message) -> None:
        message.reply("about to fail")
        raise KeyError("a bug in sync code")


class TestStepFourBeforeFive:
    async def test_in_a_chat_conversation_another_plugin_s_trigger_goes_to_the_chat(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=FOOD)
        root = await mm.post_as(world.alice, world.town, "gpt what's for lunch?")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "food monday", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_HANDLER] == "gpt"  # the chat accepts every follow-up
        assert [b.handler for b in await run.bot.store.active(root["id"])] == ["gpt"]
        assert len(llm_server.requests) == 2


class TestPassiveListeners:
    async def test_a_passive_listener_runs_beside_the_chat_and_on_posts_nothing_else_takes(
        self, start_bot, world, mm, llm_server
    ):
        run = await start_bot(plugins=(Watcher(),))
        root = await mm.post_as(world.alice, world.town, "gpt when can we deploy?")
        replies = await run.wait_replies(root["id"], 2)
        assert sorted(r["props"][PROP_HANDLER] for r in replies) == ["gpt", "watcher"]
        assert [b.handler for b in await run.bot.store.active(root["id"])] == ["gpt"]  # the watcher binds nothing

        plain = await mm.post_as(world.bob, world.town, "I deployed the hotfix")  # no trigger: the watcher alone
        (note,) = await run.wait_replies(plain["id"], 1)
        assert note["message"] == "📝 noted for the changelog"
        assert await run.bot.store.active(plain["id"]) == []
        await mm.post_as(world.bob, world.town, "thanks all", root_id=plain["id"])
        await run.settle(world.town, world.john)
        assert len(run.replies(plain["id"])) == 1  # nothing holds that thread
        assert len(llm_server.requests) == 2  # the chat's answer and the marker


class TestAPluginThatRaises:
    async def test_it_costs_its_turn_one_notice_and_a_traceback_never_the_bot(
        self, start_bot, world, mm, llm_server, caplog
    ):
        run = await start_bot(plugins=(Broken(),))
        with caplog.at_level(logging.ERROR, logger="llmbot"):
            root = await mm.post_as(world.alice, world.town, "broken please")
            (notice,) = await run.wait_replies(root["id"], 1)
        assert notice["message"] == FAILED and notice["props"][PROP_KIND] == KIND_NOTICE
        assert "ZeroDivisionError" not in notice["message"]
        assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
        other = await mm.post_as(world.bob, world.town, "gpt still there?")
        assert (await run.wait_replies(other["id"], 1))[0]["props"][PROP_KIND] == KIND_ANSWER

    async def test_a_sync_plugin_that_raises_after_replying_gets_its_reply_marked(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(Broken(),))
        root = await mm.post_as(world.alice, world.town, "broken sync")
        (reply,) = await run.wait_replies(root["id"], 1)
        assert reply["message"].startswith("about to fail") and "Something went wrong" in reply["message"]


class TestAFreshCall:
    async def test_a_new_gpt_call_after_bye_starts_a_new_turn_count(self, start_bot, world, mm, llm_server):
        run = await start_bot(LLMBOT_MAX_TURNS="2")
        root = await mm.post_as(world.alice, world.town, "gpt one")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "two", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        await mm.post_as(world.alice, world.town, "bye", root_id=root["id"])
        await run.wait_replies(root["id"], 3)
        await mm.post_as(world.alice, world.town, "gpt three", root_id=root["id"])
        await run.wait_replies(root["id"], 4)
        await mm.post_as(world.alice, world.town, "four", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 5)
        assert [r["props"][PROP_KIND] for r in replies[3:]] == [KIND_ANSWER, KIND_ANSWER]  # not the cap's goodbye
        assert [r["props"]["llmbot_turn"] for r in replies[3:]] == [1, 2]


class TestHooks:
    async def test_activate_then_ended_by_the_end_word(self, start_bot, world, mm, llm_server):
        Hooked.events = []
        run = await start_bot(plugins=(Hooked(),))
        root = await mm.post_as(world.alice, world.town, "hook one")
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "bye", root_id=root["id"])
        await run.wait_replies(root["id"], 2)
        assert Hooked.events == [("activate", root["id"]), ("ended", root["id"])]

    async def test_a_new_conversation_of_the_plugin_displaces_its_old_one(self, start_bot, world, mm, llm_server):
        Hooked.events = []
        run = await start_bot(plugins=(Hooked(),), LLMBOT_PLUGINS="hooked,gpt")
        root = await mm.post_as(world.alice, world.town, "gpt hi")  # a chat conversation first...
        await run.wait_replies(root["id"], 1)
        await mm.post_as(world.alice, world.town, "hook one", root_id=root["id"])  # the chat takes it (step 4)
        await run.wait_replies(root["id"], 2)
        assert Hooked.events == []
        other = await mm.post_as(world.bob, world.town, "hook one")
        await run.wait_replies(other["id"], 1)
        await mm.post_as(world.bob, world.town, "@llmbot hook two", root_id=other["id"])  # its trigger again
        replies = await run.wait_replies(other["id"], 2)
        assert replies[-1]["message"] == "heard hook two"  # its conversation takes the follow-up first (step 4)
        assert Hooked.events == [("activate", other["id"])]

    async def test_expiry_is_noticed_by_the_sweep(self, start_bot, world, mm, llm_server, clock):
        Hooked.events = []
        run = await start_bot(plugins=(Hooked(),))
        root = await mm.post_as(world.alice, world.town, "hook one")
        await run.wait_replies(root["id"], 1)
        clock.advance(61)  # past the plugin's own minute
        await run.bot.sweep()
        await run.bot.idle()
        assert Hooked.events == [("activate", root["id"]), ("expired", root["id"])]
        await run.bot.sweep()  # told once
        await run.bot.idle()
        assert len(Hooked.events) == 2


class TestActivate:
    async def test_a_plugin_takes_a_thread_it_saw_and_holds_the_dialog_there(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(Incidents(),))
        root = await mm.post_as(world.john, world.town, "incident: the API returns 502")
        (opened,) = await run.wait_replies(root["id"], 1)
        assert opened["message"].startswith("🚨 Incident opened")
        assert [b.handler for b in await run.bot.store.active(root["id"])] == ["incidents"]
        await mm.post_as(world.marc, world.town, "rolled back the deploy", root_id=root["id"])
        assert (await run.wait_replies(root["id"], 2))[-1]["message"] == "Update 1 logged."
        await mm.post_as(world.john, world.town, "resolved, it was the cache", root_id=root["id"])
        replies = await run.wait_replies(root["id"], 3)
        assert replies[-1]["message"] == "✅ Incident closed after 2 update(s)."
        assert await run.bot.store.active(root["id"]) == []
        assert llm_server.requests == []


class TestPerPluginSettings:
    async def test_a_plugin_denied_in_a_channel_leaves_its_trigger_to_the_others(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=FOOD, LLMBOT_PLUGIN_DENIED_CHANNELS="food=town-square")
        root = await mm.post_as(world.alice, world.town, "food monday")
        await mm.post_as(world.alice, world.town, "gpt so, what is there?", root_id=root["id"])
        (answer,) = await run.wait_replies(root["id"], 1)  # the food plugin never answered
        assert answer["props"][PROP_HANDLER] == "gpt"
        dm = await mm.post_as(world.alice, world.dm, "food monday")  # DMs obey only the user lists
        assert (await run.wait_dm_answers(dm, 1))[0]["props"][PROP_HANDLER] == "food"

    async def test_a_plugin_denied_conversations_answers_once(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=FOOD, LLMBOT_CONVERSE_DENIED="food")
        root = await mm.post_as(world.alice, world.town, "food monday")
        await run.wait_replies(root["id"], 1)
        assert await run.bot.store.active(root["id"]) == []
        await mm.post_as(world.alice, world.town, "1", root_id=root["id"])
        await run.settle(world.town, world.bob)
        assert len(run.replies(root["id"])) == 1

    async def test_activations_per_minute_per_plugin(self, start_bot, world, mm, llm_server):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=FOOD, LLMBOT_MAX_ACTIVATIONS_PER_MINUTE="food=1")
        first = await mm.post_as(world.alice, world.town, "food monday")
        await run.wait_replies(first["id"], 1)
        second = await mm.post_as(world.bob, world.town, "food tuesday")
        (busy,) = await run.wait_replies(second["id"], 1)
        assert busy["props"][PROP_KIND] == "refusal" and "busy" in busy["message"]
        chat = await mm.post_as(world.bob, world.town, "gpt hi")  # other plugins are not limited
        assert (await run.wait_replies(chat["id"], 1))[0]["props"][PROP_HANDLER] == "gpt"


class TestOneReadPerTurn:
    async def test_a_declined_follow_up_is_offered_on_without_reading_the_thread_again(
        self, start_bot, world, mm, llm_server
    ):
        run = await start_bot(plugins=(FoodSelection(),), LLMBOT_PLUGINS=FOOD)
        root = await mm.post_as(world.alice, world.town, "gpt hi")
        await run.wait_replies(root["id"], 1)
        await run.bot.store.bind(root["id"], "food", world.alice["id"], root["id"])  # a food dialog on top, with no state
        mm.requests.clear()
        await mm.post_as(world.alice, world.town, "what about dessert?", root_id=root["id"])  # food declines; the chat takes it
        replies = await run.wait_replies(root["id"], 2)
        assert replies[-1]["props"][PROP_HANDLER] == "gpt"
        reads = [path for method, path, _, _ in mm.requests if method == "GET" and path.endswith("/thread")]
        assert len(reads) == 1, reads
