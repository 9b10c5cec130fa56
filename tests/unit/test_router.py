"""route(): who wrote it, then the bound conversation, then new calls; first match wins."""

from __future__ import annotations

import re

import pytest

from llmbot.events import Posted, parse_frame
from llmbot.router import Continue, End, HandlerSpec, Identity, Ignore, Start, Usage, route
from llmbot.triggers import mention_pattern

from . import payloads as p

ME = Identity(user_id=p.BOT_ID, username=p.BOT_NAME, mention=mention_pattern(p.BOT_NAME))
CHAT = HandlerSpec("chat", (re.compile(r"^gpt\b", re.IGNORECASE),), hints_usage=True)
TLDR = HandlerSpec("tldr", (re.compile(r"^tl;?dr\b", re.IGNORECASE),), conversational=False)
HANDLERS = (CHAT,)
END_WORDS = ("bye",)
ROOT = "r00tr00tr00tr00tr00tr00t00"


def posted(raw: str) -> Posted:
    event = parse_frame(raw)
    assert isinstance(event, Posted), event
    return event


def decide(raw: str, bound: str | None = None, handlers: tuple[HandlerSpec, ...] = HANDLERS):
    return route(posted(raw), ME, bound, handlers, END_WORDS)


class TestWhoWroteIt:
    """Checked first: these posts are ignored even in a bound thread, even saying the end word."""

    @pytest.mark.parametrize("bound", [None, "chat"])
    def test_the_bots_own_post_is_ignored(self, bound: str | None) -> None:
        assert decide(p.bots_own_reply(ROOT, "gpt bye"), bound) == Ignore("own post")

    @pytest.mark.parametrize("bound", [None, "chat"])
    def test_the_bots_own_end_word_is_ignored(self, bound: str | None) -> None:
        assert decide(p.bots_own_reply(ROOT, "bye"), bound) == Ignore("own post")

    @pytest.mark.parametrize("bound", [None, "chat"])
    def test_another_bot_is_ignored(self, bound: str | None) -> None:
        assert decide(p.other_bot_in_thread(ROOT, "gpt summarize this ticket"), bound) == Ignore("post by a bot")
        assert decide(p.other_bot_in_thread(ROOT, "bye"), bound) == Ignore("post by a bot")

    def test_a_bot_marked_with_a_boolean_from_bot_is_ignored_too(self) -> None:
        post = p.post_dict("@llmbot hi", user_id=p.OTHER_BOT_ID, props={"from_bot": True})
        assert decide(p.posted_frame(post)) == Ignore("post by a bot")

    def test_from_bot_false_is_a_human(self) -> None:
        post = p.post_dict("gpt hi", props={"from_bot": "false"})
        assert decide(p.posted_frame(post)) == Start("chat")

    @pytest.mark.parametrize("bound", [None, "chat"])
    def test_a_webhook_is_ignored(self, bound: str | None) -> None:
        assert decide(p.webhook_in_thread(ROOT, "gpt build #42 failed, why?"), bound) == Ignore("post by a webhook")

    @pytest.mark.parametrize("bound", [None, "chat"])
    def test_a_system_post_is_ignored(self, bound: str | None) -> None:
        assert decide(p.join_in_thread(ROOT), bound) == Ignore("system post")

    def test_a_system_post_with_a_trigger_in_its_text_is_ignored(self) -> None:
        post = p.post_dict("gpt was added to the channel", type="system_add_to_channel")
        assert decide(p.posted_frame(post)) == Ignore("system post")

    def test_a_post_without_author_is_ignored(self) -> None:
        assert decide(p.posted_frame(p.post_dict("gpt hi", user_id=""))) == Ignore("post without author")


class TestBoundThread:
    def test_a_follow_up_continues_without_any_prefix(self) -> None:
        assert decide(p.reply_in_thread(ROOT, "and what about IPv6?"), "chat") == Continue("chat")

    def test_another_human_may_continue_the_conversation(self) -> None:
        assert decide(p.reply_in_thread(ROOT, "me too", user_id=p.BOB_ID), "chat") == Continue("chat")

    @pytest.mark.parametrize("text", ["bye", "BYE!", "bye.", "Bye :)", "  bye  ", "@llmbot bye", "@LLMBOT, bye!"])
    def test_the_end_word_alone_ends_it(self, text: str) -> None:
        assert decide(p.reply_in_thread(ROOT, text), "chat") == End("chat")

    @pytest.mark.parametrize("text", ["bye bye now", "goodbye", "bye, and thanks for the fish", "say bye", "byebye"])
    def test_a_sentence_containing_the_end_word_continues(self, text: str) -> None:
        assert decide(p.reply_in_thread(ROOT, text), "chat") == Continue("chat")

    def test_an_interrupt_trigger_wins_over_the_bound_conversation_but_not_over_the_end_word(self) -> None:
        alarm = HandlerSpec("alarm", (re.compile(r"^alarm\b", re.IGNORECASE),), interrupts=(re.compile(r"^alarm\b", re.IGNORECASE),))
        handlers = (CHAT, alarm)
        assert decide(p.reply_in_thread(ROOT, "alarm now"), "chat", handlers) == Start("alarm")
        assert decide(p.reply_in_thread(ROOT, "@llmbot alarm now"), "chat", handlers) == Start("alarm")
        assert decide(p.reply_in_thread(ROOT, "the alarm rang"), "chat", handlers) == Continue("chat")
        assert decide(p.reply_in_thread(ROOT, "bye"), "chat", handlers) == End("chat")

    def test_a_trigger_in_a_bound_thread_continues_rather_than_restarting(self) -> None:
        assert decide(p.reply_in_thread(ROOT, "gpt also this"), "chat") == Continue("chat")

    def test_the_bound_handler_wins_over_another_handlers_trigger(self) -> None:
        decision = decide(p.reply_in_thread(ROOT, "tldr"), "chat", handlers=(CHAT, TLDR))
        assert decision == Continue("chat")

    def test_a_second_handler_can_own_the_thread(self) -> None:
        decision = decide(p.reply_in_thread(ROOT, "bye"), "tldr", handlers=(CHAT, TLDR))
        assert decision == End("tldr")

    def test_a_conversation_of_a_retired_handler_holds_nothing(self) -> None:
        """A plugin taken out of LLMBOT_PLUGINS: its conversations take no follow-up, triggers work."""
        assert decide(p.reply_in_thread(ROOT, "and then?"), "retired-handler") == Ignore("no trigger")
        assert decide(p.reply_in_thread(ROOT, "bye"), "retired-handler") == Ignore("no trigger")
        assert decide(p.reply_in_thread(ROOT, "gpt hello"), "retired-handler") == Start("chat")

    def test_a_configured_end_word_list_is_honoured(self) -> None:
        event = posted(p.reply_in_thread(ROOT, "Ciao!"))
        assert route(event, ME, "chat", HANDLERS, ("bye", "ciao")) == End("chat")
        assert route(event, ME, "chat", HANDLERS, ("bye",)) == Continue("chat")


class TestTriggers:
    def test_a_trigger_at_the_start_of_a_root_post_starts(self) -> None:
        assert decide(p.alice_in_town_square("gpt what is a bloom filter?")) == Start("chat")

    def test_a_trigger_in_a_reply_of_an_unbound_thread_starts(self) -> None:
        assert decide(p.reply_in_thread(ROOT, "gpt what do you make of this?")) == Start("chat")

    @pytest.mark.parametrize("text", ["gpt", "GPT", "gpt  ", "gpt:", "gpt, "])
    def test_the_trigger_alone_asks_for_usage(self, text: str) -> None:
        assert decide(p.alice_in_town_square(text)) == Usage("chat")

    def test_the_trigger_is_case_insensitive(self) -> None:
        assert decide(p.alice_in_town_square("GPT hi")) == Start("chat")
        assert decide(p.alice_in_town_square("Gpt: hi")) == Start("chat")

    @pytest.mark.parametrize("text", ["gptx hello", "chatgpt hello", "I asked gpt yesterday", "hello"])
    def test_text_that_does_not_start_with_the_trigger_word_is_ignored(self, text: str) -> None:
        assert decide(p.alice_in_town_square(text)) == Ignore("no trigger")

    def test_the_first_handler_whose_trigger_matches_wins(self) -> None:
        assert decide(p.alice_in_town_square("tldr please"), handlers=(CHAT, TLDR)) == Start("tldr")
        assert decide(p.alice_in_town_square("gpt please"), handlers=(CHAT, TLDR)) == Start("chat")

    def test_a_one_shot_handler_still_starts(self) -> None:
        # Whether a Start binds the thread is the app's business, not the router's.
        assert decide(p.alice_in_town_square("tl;dr the design doc"), handlers=(TLDR,)) == Start("tldr")

    def test_with_no_handlers_nothing_is_done(self) -> None:
        assert decide(p.dm_from_alice("hello"), handlers=()) == Ignore("no trigger")


class TestDirectMessages:
    def test_a_root_post_in_a_dm_starts_without_any_prefix(self) -> None:
        assert decide(p.dm_from_alice("what is a monad?")) == Start("chat")

    def test_a_dm_goes_to_the_first_conversational_handler(self) -> None:
        assert decide(p.dm_from_alice("what is a monad?"), handlers=(TLDR, CHAT)) == Start("chat")
        assert decide(p.dm_from_alice("what is a monad?"), handlers=(TLDR,)) == Ignore("no trigger")

    def test_a_dm_reply_in_an_unbound_thread_is_ignored(self) -> None:
        assert decide(p.dm_from_alice("one more thing", root_id=ROOT)) == Ignore("no trigger")

    def test_a_dm_reply_with_a_trigger_starts(self) -> None:
        assert decide(p.dm_from_alice("gpt one more thing", root_id=ROOT)) == Start("chat")

    def test_a_dm_with_only_an_attachment_starts(self) -> None:
        assert decide(p.dm_from_alice("", file_ids=["f1"])) == Start("chat")

    def test_a_dm_with_only_the_trigger_asks_for_usage(self) -> None:
        assert decide(p.dm_from_alice("gpt")) == Usage("chat")

    def test_a_dm_with_only_a_mention_asks_for_usage(self) -> None:
        assert decide(p.dm_from_alice("@llmbot")) == Usage("chat")


class TestMentions:
    @pytest.mark.parametrize(
        "text",
        ["@llmbot what is a bloom filter?", "hey @llmbot, thoughts?", "@LLMBOT hi", "thanks @llmbot.", "(@llmbot) ok?"],
    )
    def test_a_mention_in_a_channel_starts(self, text: str) -> None:
        assert decide(p.alice_in_town_square(text)) == Start("chat")

    def test_a_mention_in_a_reply_of_an_unbound_thread_starts(self) -> None:
        assert decide(p.reply_in_thread(ROOT, "@llmbot can you summarize?")) == Start("chat")

    def test_a_mention_alone_asks_for_usage(self) -> None:
        assert decide(p.alice_in_town_square("@llmbot")) == Usage("chat")

    def test_a_mention_with_only_an_attachment_starts(self) -> None:
        post = p.post_dict("@llmbot", file_ids=["f1"])
        assert decide(p.posted_frame(post)) == Start("chat")

    @pytest.mark.parametrize(
        "text",
        ["@llmbottle is a different user", "write to me@llmbot.com", "@llmbot-dev hi", "@llmbot.staging hi",
         "llmbot without the at sign"],
    )
    def test_look_alikes_are_not_mentions(self, text: str) -> None:
        assert decide(p.alice_in_town_square(text)) == Ignore("no trigger")

    def test_an_unrelated_message_is_ignored(self) -> None:
        assert decide(p.alice_in_town_square("lunch at noon?")) == Ignore("no trigger")
