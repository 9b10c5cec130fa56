"""The default LLMBOT_TRIGGER through the router: `gpt` as a word of address, not as a word in a sentence.

The pattern is the one an admin who sets nothing gets (load_settings of the bare minimum), routed by plan()
and route() exactly as the dispatcher does.
"""

from __future__ import annotations

import re

import pytest

from llmbot.events import Posted, parse_frame
from llmbot.router import Continue, HandlerSpec, Identity, Ignore, Start, Usage, plan, route
from llmbot.settings import load_settings
from llmbot.triggers import mention_pattern, strip_call, trigger_word

from . import payloads as p

ME = Identity(user_id=p.BOT_ID, username=p.BOT_NAME, mention=mention_pattern(p.BOT_NAME))
DEFAULT = load_settings({"MATTERMOST_URL": "https://chat.example.com", "MATTERMOST_TOKEN": "t", "OPENAI_API_KEY": "k"}).trigger
GPT = HandlerSpec("gpt", (DEFAULT,), conversational=True, hints_usage=True)
ROOT = "r00tr00tr00tr00tr00tr00t00"

CALLS = [
    "gpt how do I undo my last commit?",
    "gpt: how do I undo my last commit?",
    "gpt, how do I undo my last commit?",
    "GPT how do I undo my last commit?",
    "Gpt:how do I undo my last commit?",
    "gpt\nhow do I undo my last commit?",
    "gpt\thow do I undo my last commit?",
]
SENTENCES = [
    "GPT-5 is out today, has anyone compared it?",
    "gpt's answer yesterday was wrong",
    "gpt4all runs on my laptop",
    "gpt.el is an emacs package",
    "gpt-4o-mini is the default model",
    "gpt/claude comparison in the wiki",
    "I asked gpt yesterday",
]


def _posted(text: str, root_id: str = "") -> Posted:
    event = parse_frame(p.posted_frame(p.post_dict(text, root_id=root_id)))
    assert isinstance(event, Posted)
    return event


@pytest.mark.parametrize("text", CALLS)
def test_the_word_then_a_space_a_colon_or_a_comma_calls_the_bot(text: str) -> None:
    assert route(_posted(text), ME, None, (GPT,), ("bye",)) == Start("gpt")


@pytest.mark.parametrize("text", ["gpt", "GPT", "gpt:", "gpt,", "gpt  "])
def test_the_word_alone_gets_the_usage_hint(text: str) -> None:
    assert route(_posted(text), ME, None, (GPT,), ("bye",)) == Usage("gpt")


@pytest.mark.parametrize("text", SENTENCES)
def test_the_word_inside_a_sentence_about_it_calls_nobody(text: str) -> None:
    route_ = plan(_posted(text), ME, (), (GPT,), ("bye",))
    assert route_.decision == Ignore("no trigger")
    assert route_.step == 7


@pytest.mark.parametrize("text", SENTENCES)
def test_a_reply_about_it_in_a_thread_nobody_called_the_bot_into_calls_nobody(text: str) -> None:
    # the case of the issue: a false start here made the bot answer the whole human thread for an hour
    assert route(_posted(text, root_id=ROOT), ME, None, (GPT,), ("bye",)) == Ignore("no trigger")


def test_in_a_conversation_such_a_sentence_is_a_follow_up_as_before() -> None:
    assert route(_posted("GPT-5 is out, what changes?", root_id=ROOT), ME, "gpt", (GPT,), ("bye",)) == Continue("gpt")


@pytest.mark.parametrize(
    ("text", "question"),
    [("gpt how are you", "how are you"), ("gpt: how are you", "how are you"), ("gpt, how are you", "how are you")],
)
def test_the_model_gets_the_question_without_the_word_or_its_punctuation(text: str, question: str) -> None:
    assert strip_call(text, (DEFAULT,), ME.mention) == question


def test_the_default_is_case_insensitive_and_anchored_at_the_start() -> None:
    assert DEFAULT.flags & re.IGNORECASE
    assert not DEFAULT.search("hey gpt how are you")


def test_the_usage_hint_and_the_goodbye_can_name_the_word() -> None:
    assert trigger_word(DEFAULT) == "gpt"
