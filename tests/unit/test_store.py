"""MemoryStore: bindings that expire after `ttl` seconds without activity, the open-conversation
index, claims, start counters and once-per-window notices (fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbot.store import Binding, MemoryStore, Store
from tests.fakes import FakeClock

ROOT = "r00tr00tr00tr00tr00tr00t00"
OTHER = "0therr00t0therr00t0therr00"
ALICE = "a1icea1icea1icea1icea1icea"
TTL = 3600.0


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(ttl=TTL, timer=clock)


class TestBinding:
    async def test_an_unbound_thread_has_no_binding(self, store: MemoryStore) -> None:
        assert await store.get(ROOT) is None
        assert len(store) == 0

    async def test_bind_records_handler_starter_and_time(self, store: MemoryStore, clock: FakeClock) -> None:
        binding = await store.bind(ROOT, "chat", ALICE, "conv")
        assert binding == Binding(handler="chat", started_by=ALICE, conversation="conv", last_activity=clock.now)
        assert await store.get(ROOT) == binding
        assert len(store) == 1

    async def test_threads_are_bound_independently(self, store: MemoryStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.get(OTHER) is None
        await store.bind(OTHER, "tldr", ALICE, "conv")
        assert (await store.get(ROOT)).handler == "chat"  # type: ignore[union-attr]
        assert (await store.get(OTHER)).handler == "tldr"  # type: ignore[union-attr]

    async def test_binding_again_replaces_the_binding(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(10)
        await store.bind(ROOT, "tldr", "b0b", "conv")
        assert await store.get(ROOT) == Binding("tldr", "b0b", "conv", clock.now)
        assert len(store) == 1

    async def test_unbind_removes_it_and_says_whether_it_was_bound(self, store: MemoryStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.unbind(ROOT) is True
        assert await store.get(ROOT) is None
        assert await store.unbind(ROOT) is False

    async def test_touch_updates_the_activity_time_and_keeps_the_rest(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(120)
        touched = await store.touch(ROOT)
        assert touched == Binding("chat", ALICE, "conv", clock.now)
        assert await store.get(ROOT) == touched

    async def test_touching_an_unbound_thread_binds_nothing(self, store: MemoryStore) -> None:
        assert await store.touch(ROOT) is None
        assert await store.get(ROOT) is None
        assert len(store) == 0

    def test_the_memory_store_satisfies_the_store_protocol(self, store: MemoryStore) -> None:
        as_protocol: Store = store
        for method in ("get", "bind", "touch", "unbind", "opened_by", "claim", "count_start", "first_notice"):
            assert callable(getattr(as_protocol, method))


class TestExpiry:
    async def test_a_binding_lives_until_the_ttl_passes(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL - 0.001)
        assert await store.get(ROOT) is not None

    async def test_a_binding_expires_after_the_ttl_without_activity(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 0.001)
        assert await store.get(ROOT) is None
        assert len(store) == 0

    async def test_reading_is_not_activity(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL / 2)
        assert await store.get(ROOT) is not None
        clock.advance(TTL / 2 + 1)
        assert await store.get(ROOT) is None

    async def test_touch_extends_the_life_of_a_binding(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        for _ in range(5):  # a lively conversation outlives several ttls
            clock.advance(TTL - 1)
            assert await store.touch(ROOT) is not None
        clock.advance(TTL - 1)
        assert await store.get(ROOT) is not None
        clock.advance(2)
        assert await store.get(ROOT) is None

    async def test_an_expired_binding_cannot_be_touched_back_to_life(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        assert await store.touch(ROOT) is None
        assert await store.get(ROOT) is None

    async def test_an_expired_binding_is_not_unbound_twice(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        assert await store.unbind(ROOT) is False

    async def test_each_thread_expires_on_its_own_clock(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL / 2)
        await store.bind(OTHER, "chat", ALICE, "conv")
        clock.advance(TTL / 2 + 1)
        assert await store.get(ROOT) is None
        assert await store.get(OTHER) is not None


class TestMaxsize:
    async def test_the_store_never_holds_more_than_maxsize(self, clock: FakeClock) -> None:
        store = MemoryStore(ttl=TTL, maxsize=3, timer=clock)
        for i in range(10):
            await store.bind(f"thread-{i}", "chat", ALICE, "conv")
            clock.advance(1)
        assert len(store) == 3
        assert [await store.get(f"thread-{i}") is not None for i in range(10)] == [False] * 7 + [True] * 3

    async def test_the_least_recently_active_thread_is_evicted_first(self, clock: FakeClock) -> None:
        store = MemoryStore(ttl=TTL, maxsize=3, timer=clock)
        for name in ("a", "b", "c"):
            await store.bind(name, "chat", ALICE, "conv")
            clock.advance(1)
        await store.touch("a")  # "a" is active again; "b" is now the oldest
        await store.bind("d", "chat", ALICE, "conv")
        assert await store.get("b") is None
        assert all([await store.get(name) is not None for name in ("a", "c", "d")])

    async def test_expired_threads_make_room_before_live_ones_are_evicted(self, clock: FakeClock) -> None:
        store = MemoryStore(ttl=10, maxsize=2, timer=clock)
        await store.bind("old", "chat", ALICE, "conv")
        clock.advance(5)
        await store.bind("live", "chat", ALICE, "conv")
        clock.advance(6)  # "old" has expired, "live" has not
        await store.bind("new", "chat", ALICE, "conv")
        assert await store.get("live") is not None
        assert await store.get("new") is not None


class TestOpenedBy:
    async def test_a_user_s_live_conversations_come_least_recent_first(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind("a", "chat", ALICE, "a")
        clock.advance(1)
        await store.bind("b", "chat", ALICE, "b")
        clock.advance(1)
        await store.touch("a")
        assert [t for t, _ in await store.opened_by(ALICE)] == ["b", "a"]
        assert await store.opened_by("b0b") == []

    async def test_equal_times_keep_the_order_of_activity(self, store: MemoryStore) -> None:
        for name in ("a", "b", "c"):
            await store.bind(name, "chat", ALICE, name)
        await store.touch("a")
        assert [t for t, _ in await store.opened_by(ALICE)] == ["b", "c", "a"]

    async def test_ended_expired_and_rebound_threads_leave_the_index(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind("ended", "chat", ALICE, "x")
        await store.bind("taken", "chat", ALICE, "y")
        await store.unbind("ended")
        await store.bind("taken", "chat", "b0b", "z")  # opened anew by someone else
        assert await store.opened_by(ALICE) == []
        await store.bind("old", "chat", ALICE, "o")
        clock.advance(TTL + 1)
        assert await store.opened_by(ALICE) == []

    async def test_the_index_forgets_users_whose_conversations_all_expired(self, store: MemoryStore, clock: FakeClock) -> None:
        for i in range(1000):
            await store.bind(f"old{i}", "chat", f"gone{i}", f"old{i}")
        clock.advance(TTL + 1)
        for i in range(1100):  # the index sweeps itself as it grows: the expired users go
            await store.bind(f"new{i}", "chat", f"here{i}", f"new{i}")
        assert len(store._opened) == 1100
        assert not any(user.startswith("gone") for user in store._opened)


class TestClaims:
    async def test_a_post_is_claimed_once(self, store: MemoryStore) -> None:
        assert await store.claim("p1") is True
        assert await store.claim("p1") is False
        assert await store.claim("p2") is True

    async def test_claims_are_forgotten_after_hours(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.claim("p1")
        clock.advance(3 * 3600 + 1)
        assert await store.claim("p1") is True


class TestStarts:
    async def test_it_allows_the_limit_then_refuses(self, store: MemoryStore) -> None:
        assert [await store.count_start(ALICE, 100.0, 60, 3) for _ in range(5)] == [True, True, True, False, False]

    async def test_users_are_limited_independently(self, store: MemoryStore) -> None:
        assert await store.count_start(ALICE, 100.0, 60, 1)
        assert not await store.count_start(ALICE, 100.0, 60, 1)
        assert await store.count_start("b0b", 100.0, 60, 1)

    async def test_the_window_slides_on_the_posts_own_times(self, store: MemoryStore) -> None:
        for at in (0.0, 10.0, 20.0):
            assert await store.count_start(ALICE, at, 60, 3)
        assert not await store.count_start(ALICE, 59.9, 60, 3)
        assert await store.count_start(ALICE, 60.0, 60, 3)  # the start at 0 has left the window
        assert not await store.count_start(ALICE, 65.0, 60, 3)

    async def test_replayed_posts_count_when_they_were_written(self, store: MemoryStore) -> None:
        # a catch-up replays posts of an hour ago after newer live ones: they do not crowd the window
        assert await store.count_start(ALICE, 4000.0, 60, 1)
        assert await store.count_start(ALICE, 100.0, 60, 1)
        assert await store.count_start(ALICE, 300.0, 60, 1)
        assert not await store.count_start(ALICE, 4010.0, 60, 1)

    @settings(max_examples=150, deadline=None)
    @given(limit=st.integers(1, 5), steps=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 40)), max_size=60))
    async def test_it_matches_a_sliding_window_counted_by_hand(self, limit: int, steps: list[tuple[str, float]]) -> None:
        store = MemoryStore(ttl=TTL, timer=FakeClock())
        allowed: dict[str, list[float]] = {}
        now = 0.0
        for user, dt in steps:
            now += dt
            expected = len([t for t in allowed.get(user, []) if t > now - 60]) < limit
            assert await store.count_start(user, now, 60, limit) is expected
            if expected:
                allowed.setdefault(user, []).append(now)


class TestNotices:
    async def test_a_key_is_first_once_per_window(self, store: MemoryStore, clock: FakeClock) -> None:
        assert await store.first_notice("k", 60)
        clock.advance(30)
        assert not await store.first_notice("k", 60)
        clock.advance(30)
        assert await store.first_notice("k", 60)

    async def test_keys_are_independent(self, store: MemoryStore) -> None:
        assert await store.first_notice("rate:alice", 60)
        assert await store.first_notice("dm:alice", 60)
        assert not await store.first_notice("rate:alice", 60)


class TestOwnTimeouts:
    async def test_a_binding_with_its_own_ttl_expires_on_it_and_keeps_it_when_touched(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind("short", "quiz", ALICE, "short", ttl=60)
        await store.bind("long", "chat", ALICE, "long")
        clock.advance(59)
        assert (await store.touch("short")) is not None  # a touch gives it 60 s more, not the store's hour
        clock.advance(61)
        assert await store.get("short") is None
        assert await store.get("long") is not None


class TestStackedConversations:
    async def test_a_second_handler_stacks_on_top_and_each_keeps_its_own_life(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "food", ALICE, "f", ttl=60)
        clock.advance(10)
        await store.bind(ROOT, "chat", "b0b", "c")
        assert [b.handler for b in await store.active(ROOT)] == ["chat", "food"]
        assert (await store.get(ROOT)).handler == "chat"  # type: ignore[union-attr]
        await store.touch(ROOT, "food")  # food answered last: it is tried first now
        assert [b.handler for b in await store.active(ROOT)] == ["food", "chat"]
        clock.advance(61)  # food's own minute is over; the chat's hour is not
        assert [b.handler for b in await store.active(ROOT)] == ["chat"]
        assert len(store) == 1

    async def test_unbinding_one_leaves_the_other_and_unbinding_all_ends_both(self, store: MemoryStore) -> None:
        await store.bind(ROOT, "food", ALICE, "f")
        await store.bind(ROOT, "chat", ALICE, "c")
        assert await store.unbind(ROOT, "food") is True
        assert await store.unbind(ROOT, "food") is False
        assert [b.handler for b in await store.active(ROOT)] == ["chat"]
        await store.bind(ROOT, "food", ALICE, "f2")
        assert await store.unbind(ROOT) is True
        assert await store.active(ROOT) == [] and len(store) == 0

    async def test_binding_the_same_handler_again_replaces_its_conversation(self, store: MemoryStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "old")
        await store.bind(ROOT, "food", ALICE, "f")
        await store.bind(ROOT, "chat", ALICE, "new")
        assert [(b.handler, b.conversation) for b in await store.active(ROOT)] == [("chat", "new"), ("food", "f")]


class TestSweep:
    """sweep(): what ended on its own since the last sweep, once, with why (plugins' on_deactivate)."""

    async def test_an_expired_conversation_is_reported_once(self, store: MemoryStore, clock: FakeClock) -> None:
        binding = await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.sweep() == []
        clock.advance(TTL + 1)
        assert await store.sweep() == [(ROOT, binding, "expired")]
        assert await store.sweep() == []

    async def test_one_of_a_stack_expiring_alone_is_reported(self, store: MemoryStore, clock: FakeClock) -> None:
        chat = await store.bind(ROOT, "chat", ALICE, "conv")
        quiz = await store.bind(ROOT, "quiz", ALICE, "quiz-conv", ttl=60)
        clock.advance(61)
        assert await store.sweep() == [(ROOT, quiz, "expired")]
        assert await store.active(ROOT) == [chat]
        assert await store.sweep() == []

    async def test_an_expiry_the_cache_noticed_itself_is_reported_too(self, store: MemoryStore, clock: FakeClock) -> None:
        old = await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        await store.bind(OTHER, "chat", ALICE, "conv2")  # a write expires old entries on the way
        assert await store.sweep() == [(ROOT, old, "expired")]

    async def test_ended_or_touched_conversations_are_not_reported(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        await store.bind(OTHER, "chat", ALICE, "conv2")
        await store.unbind(ROOT)
        clock.advance(TTL - 1)
        await store.touch(OTHER)
        clock.advance(2)
        assert await store.sweep() == []

    async def test_a_full_store_reports_what_it_pushed_out(self, clock: FakeClock) -> None:
        small = MemoryStore(ttl=TTL, maxsize=1, timer=clock)
        first = await small.bind(ROOT, "chat", ALICE, "conv")
        await small.bind(OTHER, "chat", ALICE, "conv2")
        assert await small.sweep() == [(ROOT, first, "displaced")]
