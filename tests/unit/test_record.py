"""record: live conversations, unanswered posts and turns rebuilt from the thread alone (pure)."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from llmbot.errors import StateError
from llmbot.mattermost import reconnect_delay
from llmbot.record import (
    KIND_ANSWER,
    KIND_END,
    KIND_NOTICE,
    KIND_REFUSAL,
    KIND_USAGE,
    MAX_STATE_BYTES,
    PROP_ANSWERS,
    PROP_CONVERSATION,
    PROP_HANDLER,
    PROP_KIND,
    PROP_STATE,
    PROP_TURN,
    Recovered,
    active_conversations,
    checked_state,
    state_of,
    threads_of,
    turns_in_conversation,
    waiting_posts,
)
from llmbot.store import MemoryStore
from llmbot.thread import Post, Thread
from tests.fakes import FakeClock

ME, ALICE, BOB, OTHER_BOT = "me", "alice", "bob", "otherbot"
ROOT = "root"
TTL = 3600.0
NOW = 10_000_000  # ms

def conversation_state(thread: Thread, me_id: str, now_ms: int, ttl: float) -> Recovered | None:
    """The most recently active live conversation (every handler's timeout `ttl`), or None."""
    found = active_conversations(thread, me_id, lambda _handler: ttl, now_ms)
    return found[0] if found else None



def human(post_id: str, at: int, user: str = ALICE, root: str = ROOT) -> Post:
    return Post(post_id, "chan", user, "" if post_id == root else root, "text", at)


def mine(post_id: str, at: int, answers: str, kind: str = KIND_ANSWER, edited: int = 0, root: str = ROOT) -> Post:
    props = MappingProxyType({PROP_HANDLER: "gpt", PROP_KIND: kind, PROP_ANSWERS: answers, "from_bot": "true"})
    return Post(post_id, "chan", ME, root, "answer", at, props=props, edit_at=edited)


def thread(*posts: Post) -> Thread:
    return Thread(ROOT, tuple(sorted(posts, key=lambda p: (p.id != ROOT, p.create_at))))


class TestConversationState:
    def test_a_recent_answer_makes_the_conversation_live_with_its_starter(self) -> None:
        t = thread(human(ROOT, NOW - 5000), mine("a1", NOW - 4000, ROOT), human("h2", NOW - 3000, BOB))
        state = conversation_state(t, ME, NOW, TTL)
        assert state is not None and state.handler == "gpt" and state.started_by == ALICE
        assert state.idle_seconds == pytest.approx(3.0)  # the newest human post counts as activity

    def test_the_ttl_counts_from_the_end_of_the_answer(self) -> None:
        t = thread(human(ROOT, NOW - 4_000_000), mine("a1", NOW - 3_700_000, ROOT, edited=NOW - 3_000_000))
        state = conversation_state(t, ME, NOW, TTL)
        assert state is not None and state.idle_seconds == pytest.approx(3000)

    def test_an_old_conversation_is_not_live(self) -> None:
        t = thread(human(ROOT, NOW - 4_000_000), mine("a1", NOW - 3_700_000, ROOT))
        assert conversation_state(t, ME, NOW, TTL) is None

    @pytest.mark.parametrize("kind", [KIND_END, KIND_USAGE, KIND_REFUSAL])
    def test_a_goodbye_a_hint_or_a_refusal_closes_it(self, kind: str) -> None:
        t = thread(
            human(ROOT, NOW - 5000), mine("a1", NOW - 4000, ROOT), human("h2", NOW - 3000), mine("e", NOW - 2000, "h2", kind)
        )
        assert conversation_state(t, ME, NOW, TTL) is None

    def test_a_notice_keeps_it_live(self) -> None:
        t = thread(human(ROOT, NOW - 5000), mine("n1", NOW - 4000, ROOT, KIND_NOTICE))
        assert conversation_state(t, ME, NOW, TTL) is not None

    def test_a_conversation_reopened_after_a_goodbye_belongs_to_who_reopened_it(self) -> None:
        t = thread(
            human(ROOT, NOW - 9000), mine("a1", NOW - 8000, ROOT), human("bye", NOW - 7000),
            mine("e", NOW - 6000, "bye", KIND_END), human("h3", NOW - 5000, BOB), mine("a3", NOW - 4000, "h3"),
        )
        state = conversation_state(t, ME, NOW, TTL)
        assert state is not None and state.started_by == BOB

    def test_posts_of_other_bots_or_humans_with_forged_props_do_not_count(self) -> None:
        forged_props = MappingProxyType({PROP_HANDLER: "gpt", PROP_KIND: KIND_ANSWER})
        forged = Post("f", "chan", BOB, ROOT, "x", NOW - 1000, props=forged_props)
        bot_props = MappingProxyType({PROP_HANDLER: "gpt", "from_bot": "true"})
        bot = Post("b", "chan", OTHER_BOT, ROOT, "x", NOW - 1000, props=bot_props)
        assert conversation_state(thread(human(ROOT, NOW - 5000), forged, bot), ME, NOW, TTL) is None

    def test_a_window_without_the_root_falls_back_to_the_answered_author(self) -> None:
        t = Thread(ROOT, (human("h1", NOW - 5000, BOB), mine("a1", NOW - 4000, "h1")))
        state = conversation_state(t, ME, NOW, TTL)
        assert state is not None and state.started_by == BOB


class TestWaitingPosts:
    def test_only_unanswered_human_posts_after_since_wait(self) -> None:
        t = thread(
            human(ROOT, NOW - 9000), mine("a1", NOW - 8000, ROOT), human("h2", NOW - 7000),
            Post("b", "chan", OTHER_BOT, ROOT, "x", NOW - 6500, props=MappingProxyType({"from_bot": "true"})),
            human("h3", NOW - 6000, BOB),
        )
        assert [p.id for p in waiting_posts(t, ME, NOW - 10_000)] == ["h2", "h3"]
        assert [p.id for p in waiting_posts(t, ME, NOW - 6500)] == ["h3"]

    def test_an_answer_that_covered_a_newer_post_covers_the_older_ones(self) -> None:
        t = thread(human(ROOT, NOW - 9000), human("h2", NOW - 8000), mine("a", NOW - 7000, "h2"))
        assert waiting_posts(t, ME, 0) == []


class TestThreadsOf:
    def test_loose_posts_are_grouped_by_thread_root_first(self) -> None:
        posts = [human("h2", 3), human(ROOT, 1), human("x", 2, root="x"), human("h1", 2)]
        threads = threads_of(posts)
        assert set(threads) == {ROOT, "x"}
        assert [p.id for p in threads[ROOT].posts] == [ROOT, "h1", "h2"]


class TestRebuiltBindings:
    async def test_a_binding_rebuilt_idle_expires_ttl_after_its_last_activity(self) -> None:
        clock = FakeClock()
        store = MemoryStore(ttl=60, timer=clock)
        await store.bind(ROOT, "gpt", ALICE, ROOT, idle=50)
        clock.advance(9)
        assert await store.get(ROOT) is not None
        clock.advance(2)
        assert await store.get(ROOT) is None

    async def test_touching_a_rebuilt_binding_gives_it_a_full_ttl(self) -> None:
        clock = FakeClock()
        store = MemoryStore(ttl=60, timer=clock)
        await store.bind(ROOT, "gpt", ALICE, ROOT, idle=50)
        await store.touch(ROOT)
        clock.advance(59)
        assert await store.get(ROOT) is not None


class TestBackoff:
    @pytest.mark.parametrize("attempt, low, high", [(0, 0.5, 1.0), (1, 1.0, 2.0), (3, 4.0, 8.0), (10, 30.0, 60.0)])
    def test_reconnect_delay_doubles_with_jitter_up_to_the_cap(self, attempt: int, low: float, high: float) -> None:
        assert reconnect_delay(attempt, 1.0, 60.0, lambda: 0.0) == low
        assert reconnect_delay(attempt, 1.0, 60.0, lambda: 1.0) == high


def conv_answer(post_id: str, at: int, answers: str, conversation: str, kind: str = KIND_ANSWER) -> Post:
    props = {PROP_HANDLER: "gpt", PROP_KIND: kind, PROP_ANSWERS: answers, PROP_CONVERSATION: conversation, "from_bot": "true"}
    return Post(post_id, "chan", ME, ROOT, "answer", at, props=MappingProxyType(props))


class TestTurns:
    def test_each_answered_human_post_of_the_conversation_is_a_turn(self) -> None:
        t = thread(human(ROOT, 1), conv_answer("a1", 2, ROOT, ROOT), human("h2", 3), conv_answer("a2", 4, "h2", ROOT))
        assert turns_in_conversation(t, ME, ROOT) == 2

    def test_pages_and_a_notice_that_cut_an_answer_short_count_once(self) -> None:
        t = thread(
            human(ROOT, 1), conv_answer("p1", 2, ROOT, ROOT), conv_answer("p2", 3, ROOT, ROOT),
            conv_answer("n", 4, ROOT, ROOT, KIND_NOTICE),
        )
        assert turns_in_conversation(t, ME, ROOT) == 1

    def test_hints_goodbyes_and_refusals_are_not_turns(self) -> None:
        t = thread(
            human(ROOT, 1), conv_answer("u", 2, ROOT, ROOT, KIND_USAGE), conv_answer("r", 3, ROOT, ROOT, KIND_REFUSAL),
            conv_answer("e", 4, ROOT, ROOT, KIND_END),
        )
        assert turns_in_conversation(t, ME, ROOT) == 0

    def test_a_new_call_starts_at_zero_whatever_the_bot_posted_before(self) -> None:
        # an old conversation that expired without a goodbye, and answers written before posts were marked
        unmarked = Post("old", "chan", ME, ROOT, "an old answer", 2, props=MappingProxyType({"from_bot": "true"}))
        t = thread(
            human(ROOT, 1), unmarked, conv_answer("a1", 3, ROOT, ROOT), human("h2", 4), conv_answer("a2", 5, "h2", ROOT),
            human("h3", 6), conv_answer("a3", 7, "h3", "h3"),
        )
        assert turns_in_conversation(t, ME, "h3") == 1
        assert turns_in_conversation(t, ME, "new-call") == 0

    def test_other_authors_with_llmbot_props_are_not_turns(self) -> None:
        forged = Post("f", "chan", BOB, ROOT, "x", 2, props=MappingProxyType({PROP_KIND: KIND_ANSWER, PROP_CONVERSATION: ROOT}))
        assert turns_in_conversation(thread(human(ROOT, 1), forged), ME, ROOT) == 0


class TestTurnsOnAPartialThread:
    def test_the_newest_recorded_turn_number_counts_the_turns_no_longer_read(self) -> None:
        # only the newest posts were read (a long thread): the answer says it was turn 7
        props = {PROP_HANDLER: "gpt", PROP_KIND: KIND_ANSWER, PROP_ANSWERS: "h7", PROP_CONVERSATION: ROOT, PROP_TURN: 7}
        answer = Post("a7", "chan", ME, ROOT, "answer", 20, props=MappingProxyType({**props, "from_bot": "true"}))
        t = thread(human(ROOT, 1), human("h7", 19), answer, human("h8", 21))
        assert turns_in_conversation(t, ME, ROOT) == 7
        assert turns_in_conversation(t, ME, "another-conversation") == 0

    def test_a_forged_or_odd_turn_number_is_ignored(self) -> None:
        props = {PROP_HANDLER: "gpt", PROP_KIND: KIND_ANSWER, PROP_ANSWERS: ROOT, PROP_CONVERSATION: ROOT, PROP_TURN: True}
        answer = Post("a", "chan", ME, ROOT, "answer", 2, props=MappingProxyType(props))
        assert turns_in_conversation(thread(human(ROOT, 1), answer), ME, ROOT) == 1


class TestConversationIds:
    def test_a_recovered_conversation_keeps_its_recorded_id(self) -> None:
        t = thread(human(ROOT, NOW - 5000), human("h2", NOW - 4500), conv_answer("a", NOW - 4000, "h2", "h2"))
        state = conversation_state(t, ME, NOW, TTL)
        assert state is not None and state.conversation == "h2"

    def test_posts_written_before_ids_were_recorded_fall_back_to_the_first_answered_post(self) -> None:
        t = thread(human(ROOT, NOW - 5000), mine("a1", NOW - 4000, ROOT), human("h2", NOW - 3000), mine("a2", NOW - 2000, "h2"))
        state = conversation_state(t, ME, NOW, TTL)
        assert state is not None and state.conversation == ROOT


class TestState:
    def test_the_newest_state_of_the_handler_in_the_conversation_comes_back(self) -> None:
        def with_state(post_id: str, at: int, state: object, handler: str = "food", conversation: str = ROOT) -> Post:
            props = {PROP_HANDLER: handler, PROP_KIND: KIND_ANSWER, PROP_CONVERSATION: conversation, PROP_STATE: state}
            return Post(post_id, "chan", ME, ROOT, "x", at, props=MappingProxyType(props))

        t = thread(
            human(ROOT, 1), with_state("s1", 2, {"step": "choose"}), with_state("s2", 3, {"step": "pay"}),
            with_state("other", 4, {"step": "x"}, handler="quiz"), with_state("old", 5, {"step": "y"}, conversation="old"),
            with_state("bad", 6, "not an object"),
        )
        assert state_of(t, ME, "food", ROOT) == {"step": "pay"}
        assert state_of(t, ME, "quiz", ROOT) == {"step": "x"}
        assert state_of(t, ME, "food", "another") is None

    def test_a_human_cannot_plant_state(self) -> None:
        props = {PROP_HANDLER: "food", PROP_KIND: KIND_ANSWER, PROP_CONVERSATION: ROOT, PROP_STATE: {"paid": True}}
        forged = Post("f", "chan", BOB, ROOT, "x", 2, props=MappingProxyType(props))
        assert state_of(thread(human(ROOT, 1), forged), ME, "food", ROOT) is None

    def test_state_is_checked_as_json_of_at_most_32_kb(self) -> None:
        assert checked_state({"day": "monday", "n": (1, 2)}) == {"day": "monday", "n": [1, 2]}  # what comes back
        with pytest.raises(StateError, match="JSON"):
            checked_state({"when": object()})
        with pytest.raises(StateError, match="JSON"):
            checked_state({"x": float("nan")})
        with pytest.raises(StateError, match="32768"):
            checked_state({"big": "x" * (MAX_STATE_BYTES + 1)})
        with pytest.raises(StateError, match="dict"):
            checked_state(["not", "a", "dict"])  # type: ignore[arg-type]


class TestOwnTimeouts:
    def test_a_handler_s_own_timeout_decides_whether_its_conversation_is_still_live(self) -> None:
        t = thread(human(ROOT, NOW - 200_000), mine("a1", NOW - 100_000, ROOT))  # 100 s quiet
        assert conversation_state(t, ME, NOW, TTL) is not None
        assert active_conversations(t, ME, lambda handler: 60.0 if handler == "gpt" else TTL, NOW) == []
        assert active_conversations(t, ME, lambda handler: 300.0, NOW) != []
