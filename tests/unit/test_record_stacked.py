"""record.active_conversations: every conversation stacked in a thread, rebuilt from the thread alone
(pure), one row per situation."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from llmbot.record import (
    KIND_ANSWER,
    KIND_END,
    KIND_GOODBYE,
    KIND_NOTICE,
    KIND_REFUSAL,
    PROP_ANSWERS,
    PROP_CONVERSATION,
    PROP_HANDLER,
    PROP_KIND,
    PROP_TURN,
    Recovered,
    active_conversations,
)
from llmbot.thread import Post, Thread

ME, ALICE, BOB = "me", "alice", "bob"
ROOT = "root"
NOW = 100_000_000  # ms
TIMEOUTS: dict[str, float | None] = {"gpt": 3600.0, "food": 300.0, "summarize": None}  # summarize holds none

def conversation_state(thread: Thread, me_id: str, now_ms: int, ttl: float) -> Recovered | None:
    """The most recently active live conversation (every handler's timeout `ttl`), or None."""
    found = active_conversations(thread, me_id, lambda _handler: ttl, now_ms)
    return found[0] if found else None



def human(post_id: str, ago: float, user: str = ALICE) -> Post:
    """A person's post `ago` seconds before NOW."""
    return Post(post_id, "chan", user, "" if post_id == ROOT else ROOT, "text", NOW - int(ago * 1000))


def bot(
    post_id: str, ago: float, handler: str, conversation: str, answers: str, kind: str = KIND_ANSWER, edited: float = 0
) -> Post:
    """A post of the bot's as reply.py writes it (answers and notices carry their turn), last
    edited `edited` seconds before NOW if at all."""
    props: dict[str, object] = {PROP_HANDLER: handler, PROP_KIND: kind, PROP_ANSWERS: answers, "from_bot": "true"}
    if conversation:
        props[PROP_CONVERSATION] = conversation
    if kind in (KIND_ANSWER, KIND_NOTICE):
        props[PROP_TURN] = 1
    edit_at = NOW - int(edited * 1000) if edited else 0
    return Post(post_id, "chan", ME, ROOT, "reply", NOW - int(ago * 1000), props=MappingProxyType(props), edit_at=edit_at)


# The base of most rows: alice's chat conversation (opened by the root), then bob opens the food
# dialog inside it, which sits on top.
STACKED = (
    human(ROOT, 100), bot("g1", 90, "gpt", ROOT, ROOT),
    human("f", 60, BOB), bot("f1", 50, "food", "f", "f"),
)
GOODBYE = (human("bye", 40), bot("gb", 30, "food", "f", "bye", KIND_GOODBYE))

CASES = [
    pytest.param(STACKED, {}, [("food", "f", BOB, 50), ("gpt", ROOT, ALICE, 90)], id="two stacked, both live"),
    pytest.param(
        (*STACKED, human("c", 40, BOB), bot("f2", 30, "food", "f", "c", KIND_END)), {},
        [("gpt", ROOT, ALICE, 90)], id="the plugin's own end ends its conversation only",
    ),
    pytest.param(
        (*STACKED, human("c", 40, BOB), bot("f2", 30, "food", "f", "c", KIND_END), bot("f3", 29, "food", "f", "c")), {},
        [("gpt", ROOT, ALICE, 90)], id="a reply after the plugin's end does not reopen it",
    ),
    pytest.param((*STACKED, *GOODBYE), {}, [], id="one goodbye ends both"),
    pytest.param(
        (*STACKED, human("bye", 40), bot("gb", 30, "gpt", ROOT, "bye", KIND_GOODBYE)), {}, [],
        id="whichever handler wrote the goodbye",
    ),
    pytest.param(
        STACKED, {"food": 30.0}, [("gpt", ROOT, ALICE, 90)], id="the short per-plugin timeout expired, the longer one lives",
    ),
    pytest.param(STACKED, {"food": 30.0, "gpt": 60.0}, [], id="both timeouts expired"),
    pytest.param(STACKED, {"food": None}, [("gpt", ROOT, ALICE, 90)], id="an unknown handler is skipped"),
    pytest.param(
        (*STACKED, *GOODBYE, human("f2", 20), bot("f3", 10, "food", "f2", "f2")), {},
        [("food", "f2", ALICE, 10)], id="a conversation opened after a goodbye is live",
    ),
    pytest.param(
        (*STACKED, *GOODBYE, bot("late", 20, "gpt", ROOT, "x")), {}, [],
        id="nothing reopens a conversation the goodbye ended",
    ),
    pytest.param(
        (*STACKED, human("f2", 40), bot("f3", 30, "food", "f2", "f2")), {},
        [("food", "f2", ALICE, 30), ("gpt", ROOT, ALICE, 90)], id="a plugin's second dialog replaces its first",
    ),
    pytest.param(
        (*STACKED, human("q", 40), bot("g2", 30, "gpt", ROOT, "q")), {},
        [("gpt", ROOT, ALICE, 30), ("food", "f", BOB, 50)], id="a follow-up the chat answered puts it back on top",
    ),
    pytest.param(
        (*STACKED, human("w", 10, BOB)), {}, [("food", "f", BOB, 10), ("gpt", ROOT, ALICE, 90)],
        id="an unanswered post is activity of the conversation on top only",
    ),
    pytest.param(
        (*STACKED, human("w", 10)), {"food": 30.0}, [("gpt", ROOT, ALICE, 10)],
        id="a post after the top one expired went to the one below",
    ),
    pytest.param(
        (human(ROOT, 100), bot("g1", 90, "gpt", ROOT, ROOT, edited=50), human("f", 60, BOB), bot("f1", 50, "food", "f", "f")),
        {}, [("food", "f", BOB, 50), ("gpt", ROOT, ALICE, 50)], id="of two as recently active, the one that posted last",
    ),
    pytest.param(
        (*STACKED, human("t", 40), bot("s", 30, "summarize", "t", "t")), {},
        [("food", "f", BOB, 50), ("gpt", ROOT, ALICE, 90)], id="a one-shot handler's answer hides nothing",
    ),
    pytest.param(
        (*STACKED, human("f2", 40), bot("r", 30, "food", "", "f2", KIND_REFUSAL), bot("p", 20, "gpt", "", "f2")), {},
        [("food", "f", BOB, 50), ("gpt", ROOT, ALICE, 90)], id="a refusal or a passive reply opens or ends nothing",
    ),
]


@pytest.mark.parametrize("posts, timeouts, expected", CASES)
def test_active_conversations(posts: tuple[Post, ...], timeouts: dict[str, float | None],
                              expected: list[tuple[str, str, str, float]]) -> None:
    limits = {**TIMEOUTS, **timeouts}
    found = active_conversations(Thread(ROOT, posts), ME, lambda handler: limits.get(handler), NOW)
    assert [(c.handler, c.conversation, c.started_by, c.idle_seconds) for c in found] == expected


def test_each_handler_s_timeout_is_asked_once() -> None:
    asked: list[str] = []

    def timeout_for(handler: str) -> float | None:
        asked.append(handler)
        return TIMEOUTS.get(handler)

    posts = (*STACKED, human("q", 40), bot("g2", 30, "gpt", ROOT, "q"), human("r", 20, BOB), bot("f2", 10, "food", "f", "r"))
    assert len(active_conversations(Thread(ROOT, posts), ME, timeout_for, NOW)) == 2
    assert sorted(asked) == ["food", "gpt"]


def test_conversation_state_is_the_most_recently_active_one() -> None:
    state = conversation_state(Thread(ROOT, STACKED), ME, NOW, 3600.0)
    assert state is not None and (state.handler, state.conversation) == ("food", "f")
