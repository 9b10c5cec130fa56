"""plan(): the README's routing table, row by row (pure, table-driven).

Handlers in LLMBOT_PLUGINS order: food (conversational, trigger "food"), gpt (the chat:
conversational, trigger "gpt"), summarize (one-shot, trigger "summarize"), alarm (an interrupt),
log (passive only: sees every post that says "deploy").
"""

from __future__ import annotations

import re

import pytest

from llmbot.events import Posted, parse_frame
from llmbot.router import Continue, Decision, End, HandlerSpec, Identity, Ignore, Route, Start, Usage, plan
from llmbot.triggers import mention_pattern

from . import payloads as p

ME = Identity(user_id=p.BOT_ID, username=p.BOT_NAME, mention=mention_pattern(p.BOT_NAME))


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


FOOD = HandlerSpec("food", (_re(r"^food\s+(\w+)"),), conversational=True)
GPT = HandlerSpec("gpt", (_re(r"^gpt\b"),), conversational=True, hints_usage=True, coalesces=True)
SUMMARIZE = HandlerSpec("summarize", (_re(r"^summarize\b"),), conversational=False)
ALARM = HandlerSpec("alarm", (_re(r"^alarm\b"),), conversational=False, interrupts=(_re(r"^alarm\b"),))
LOG = HandlerSpec("log", (), conversational=False, passive=(_re(r"\bdeploy\b"),))
HANDLERS = (FOOD, GPT, SUMMARIZE, ALARM, LOG)
ROOT = "r00tr00tr00tr00tr00tr00t00"


def posted(raw: str) -> Posted:
    event = parse_frame(raw)
    assert isinstance(event, Posted), event
    return event


def route_of(*candidates: tuple[int, Decision], passive: tuple[str, ...] = ()) -> Route:
    return Route(tuple(candidates), passive)


ROWS = [
    # step 1: not a human post, whatever it says and whatever is active
    ("own post saying bye", p.bots_own_reply(ROOT, "bye"), ("gpt",), route_of((1, Ignore("own post")))),
    ("another bot", p.other_bot_in_thread(ROOT, "gpt deploy now"), (), route_of((1, Ignore("post by a bot")))),
    ("a webhook", p.webhook_in_thread(ROOT, "food monday"), ("food",), route_of((1, Ignore("post by a webhook")))),
    ("a system post", p.join_in_thread(ROOT), ("gpt",), route_of((1, Ignore("system post")))),
    # step 2: passive listeners, in addition to whatever else happens
    ("passive on an ignored post", p.alice_in_town_square("we deploy at 5"), (),
     route_of((7, Ignore("no trigger")), passive=("log",))),
    ("passive beside a trigger", p.alice_in_town_square("gpt when do we deploy?"), (),
     route_of((5, Start("gpt")), passive=("log",))),
    ("passive beside a follow-up", p.reply_in_thread(ROOT, "and the deploy?"), ("gpt",),
     route_of((4, Continue("gpt")), passive=("log",))),
    # step 3: the end word ends every conversation (one goodbye, by the most recent), then interrupts
    ("end word, two active", p.reply_in_thread(ROOT, "bye"), ("food", "gpt"), route_of((3, End("food")))),
    ("end word with a mention", p.reply_in_thread(ROOT, "@llmbot Bye!"), ("gpt",), route_of((3, End("gpt")))),
    ("a goodbye among courtesy words", p.reply_in_thread(ROOT, "thanks, bye"), ("gpt",), route_of((3, End("gpt")))),
    ("ok bye", p.reply_in_thread(ROOT, "ok bye"), ("gpt",), route_of((3, End("gpt")))),
    ("bye, mentioning the bot after", p.reply_in_thread(ROOT, "bye @llmbot"), ("gpt",), route_of((3, End("gpt")))),
    ("a sentence with the word", p.reply_in_thread(ROOT, "say bye to the old API"), ("gpt",),
     route_of((4, Continue("gpt")))),
    ("end word, nothing active", p.reply_in_thread(ROOT, "bye"), (), route_of((7, Ignore("no trigger")))),
    ("interrupt inside a chat", p.reply_in_thread(ROOT, "alarm 5 min"), ("gpt",), route_of((3, Start("alarm")))),
    ("interrupt outside any", p.alice_in_town_square("alarm 5 min"), (), route_of((5, Start("alarm")))),
    # step 4: active conversations, most recent first; then step 5/6 as the last resort
    ("follow-up, two active", p.reply_in_thread(ROOT, "2"), ("food", "gpt"),
     route_of((4, Continue("food")), (4, Continue("gpt")))),
    ("another plugin's trigger in a chat", p.reply_in_thread(ROOT, "summarize"), ("gpt",),
     route_of((4, Continue("gpt")), (5, Start("summarize")))),
    ("its own trigger again", p.reply_in_thread(ROOT, "food tuesday"), ("food",),
     route_of((4, Continue("food")), (5, Start("food")))),
    ("a mention after declines", p.reply_in_thread(ROOT, "@llmbot what now?"), ("food",),
     route_of((4, Continue("food")), (6, Start("food")))),
    ("addressed to someone else", p.reply_in_thread(ROOT, "@marc what do you think?"), ("gpt",),
     route_of((4, Ignore("addressed to someone else")))),
    ("someone else, and the bot", p.reply_in_thread(ROOT, "@marc @llmbot what do you think?"), ("gpt",),
     route_of((4, Continue("gpt")), (6, Start("food")))),
    ("@here is nobody in particular", p.reply_in_thread(ROOT, "@here lunch?"), ("gpt",), route_of((4, Continue("gpt")))),
    ("retired plugin's conversation", p.reply_in_thread(ROOT, "and then?"), ("retired",),
     route_of((7, Ignore("no trigger")))),
    # step 5: triggers in LLMBOT_PLUGINS order, the first match wins
    ("a trigger", p.alice_in_town_square("food monday"), (), route_of((5, Start("food")))),
    ("a trigger after a mention", p.alice_in_town_square("@llmbot food monday"), (), route_of((5, Start("food")))),
    ("a trigger alone: usage", p.alice_in_town_square("gpt"), (), route_of((5, Usage("gpt")))),
    ("a trigger in an unbound thread", p.reply_in_thread(ROOT, "summarize"), (), route_of((5, Start("summarize")))),
    # step 6: a DM root post or an @mention -> the first conversational plugin
    ("a DM root post", p.dm_from_alice("what is a monad?"), (), route_of((6, Start("food")))),
    ("a mention", p.alice_in_town_square("hey @llmbot, a question"), (), route_of((6, Start("food")))),
    # step 7: nothing matched
    ("an ordinary post", p.alice_in_town_square("lunch?"), (), route_of((7, Ignore("no trigger")))),
    ("a DM reply in an unbound thread", p.dm_from_alice("more", root_id=ROOT), (), route_of((7, Ignore("no trigger")))),
]


@pytest.mark.parametrize(("row", "raw", "active", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_routing_table(row: str, raw: str, active: tuple[str, ...], expected: Route) -> None:
    assert plan(posted(raw), ME, active, HANDLERS, ("bye",)) == expected


def test_step_6_skips_one_shot_plugins() -> None:
    """The default for DMs and mentions is the first plugin that can hold a conversation."""
    handlers = (SUMMARIZE, GPT, FOOD)
    assert plan(posted(p.dm_from_alice("hi")), ME, (), handlers, ("bye",)).decision == Start("gpt")


def test_a_root_post_ignores_whatever_is_active() -> None:
    """Conversations live in threads; a new root post opens its own."""
    routed = plan(posted(p.alice_in_town_square("2")), ME, ("food",), HANDLERS, ("bye",))
    assert routed == route_of((7, Ignore("no trigger")))
