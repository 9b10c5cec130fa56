"""MemoryStore: bindings that expire after `ttl` seconds without activity, the open-conversation
index, claims, start counters and once-per-window notices (fake clock)."""

from __future__ import annotations

import pytest

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

    async def test_binding_again_replaces_the_binding(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(10)
        await store.bind(ROOT, "tldr", "b0b", "conv")
        assert await store.get(ROOT) == Binding("tldr", "b0b", "conv", clock.now)
        assert len(store) == 1

    async def test_touch_updates_the_activity_time_and_keeps_the_rest(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(120)
        touched = await store.touch(ROOT)
        assert touched == Binding("chat", ALICE, "conv", clock.now)
        assert await store.get(ROOT) == touched

    def test_the_memory_store_satisfies_the_store_protocol(self, store: MemoryStore) -> None:
        as_protocol: Store = store
        for method in ("get", "bind", "touch", "unbind", "opened_by", "claim", "count_start", "first_notice"):
            assert callable(getattr(as_protocol, method))


class TestExpiry:
    async def test_a_binding_expires_after_the_ttl_without_activity(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 0.001)
        assert await store.get(ROOT) is None
        assert len(store) == 0

    async def test_an_expired_binding_cannot_be_touched_back_to_life(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        assert await store.touch(ROOT) is None
        assert await store.get(ROOT) is None

    async def test_an_expired_binding_is_not_unbound_twice(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        assert await store.unbind(ROOT) is False


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
    async def test_the_index_forgets_users_whose_conversations_all_expired(self, store: MemoryStore, clock: FakeClock) -> None:
        for i in range(1000):
            await store.bind(f"old{i}", "chat", f"gone{i}", f"old{i}")
        clock.advance(TTL + 1)
        for i in range(1100):  # the index sweeps itself as it grows: the expired users go
            await store.bind(f"new{i}", "chat", f"here{i}", f"new{i}")
        assert len(store._opened) == 1100
        assert not any(user.startswith("gone") for user in store._opened)


class TestNotices:
    async def test_keys_are_independent(self, store: MemoryStore) -> None:
        assert await store.first_notice("rate:alice", 60)
        assert await store.first_notice("dm:alice", 60)
        assert not await store.first_notice("rate:alice", 60)


class TestSweep:
    """sweep(): what ended on its own since the last sweep, once, with why (plugins' on_deactivate)."""

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
