"""MemoryStore: thread bindings that expire after `ttl` seconds without activity (fake clock)."""

from __future__ import annotations

import pytest

from llmbot.conversations import Binding, ConversationStore, MemoryStore
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
        binding = await store.bind(ROOT, "chat", ALICE)
        assert binding == Binding(handler="chat", started_by=ALICE, last_activity=clock.now)
        assert await store.get(ROOT) == binding
        assert len(store) == 1

    async def test_threads_are_bound_independently(self, store: MemoryStore) -> None:
        await store.bind(ROOT, "chat", ALICE)
        assert await store.get(OTHER) is None
        await store.bind(OTHER, "tldr", ALICE)
        assert (await store.get(ROOT)).handler == "chat"  # type: ignore[union-attr]
        assert (await store.get(OTHER)).handler == "tldr"  # type: ignore[union-attr]

    async def test_binding_again_replaces_the_binding(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(10)
        await store.bind(ROOT, "tldr", "b0b")
        assert await store.get(ROOT) == Binding("tldr", "b0b", clock.now)
        assert len(store) == 1

    async def test_unbind_removes_it_and_says_whether_it_was_bound(self, store: MemoryStore) -> None:
        await store.bind(ROOT, "chat", ALICE)
        assert await store.unbind(ROOT) is True
        assert await store.get(ROOT) is None
        assert await store.unbind(ROOT) is False

    async def test_touch_updates_the_activity_time_and_keeps_the_rest(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(120)
        touched = await store.touch(ROOT)
        assert touched == Binding("chat", ALICE, clock.now)
        assert await store.get(ROOT) == touched

    async def test_touching_an_unbound_thread_binds_nothing(self, store: MemoryStore) -> None:
        assert await store.touch(ROOT) is None
        assert await store.get(ROOT) is None
        assert len(store) == 0

    def test_the_memory_store_satisfies_the_store_protocol(self, store: MemoryStore) -> None:
        as_protocol: ConversationStore = store
        for method in ("get", "bind", "touch", "unbind"):
            assert callable(getattr(as_protocol, method))


class TestExpiry:
    async def test_a_binding_lives_until_the_ttl_passes(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(TTL - 0.001)
        assert await store.get(ROOT) is not None

    async def test_a_binding_expires_after_the_ttl_without_activity(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(TTL + 0.001)
        assert await store.get(ROOT) is None
        assert len(store) == 0

    async def test_reading_is_not_activity(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(TTL / 2)
        assert await store.get(ROOT) is not None
        clock.advance(TTL / 2 + 1)
        assert await store.get(ROOT) is None

    async def test_touch_extends_the_life_of_a_binding(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        for _ in range(5):  # a lively conversation outlives several ttls
            clock.advance(TTL - 1)
            assert await store.touch(ROOT) is not None
        clock.advance(TTL - 1)
        assert await store.get(ROOT) is not None
        clock.advance(2)
        assert await store.get(ROOT) is None

    async def test_an_expired_binding_cannot_be_touched_back_to_life(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(TTL + 1)
        assert await store.touch(ROOT) is None
        assert await store.get(ROOT) is None

    async def test_an_expired_binding_is_not_unbound_twice(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(TTL + 1)
        assert await store.unbind(ROOT) is False

    async def test_each_thread_expires_on_its_own_clock(self, store: MemoryStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE)
        clock.advance(TTL / 2)
        await store.bind(OTHER, "chat", ALICE)
        clock.advance(TTL / 2 + 1)
        assert await store.get(ROOT) is None
        assert await store.get(OTHER) is not None


class TestMaxsize:
    async def test_the_store_never_holds_more_than_maxsize(self, clock: FakeClock) -> None:
        store = MemoryStore(ttl=TTL, maxsize=3, timer=clock)
        for i in range(10):
            await store.bind(f"thread-{i}", "chat", ALICE)
            clock.advance(1)
        assert len(store) == 3
        assert [await store.get(f"thread-{i}") is not None for i in range(10)] == [False] * 7 + [True] * 3

    async def test_the_least_recently_active_thread_is_evicted_first(self, clock: FakeClock) -> None:
        store = MemoryStore(ttl=TTL, maxsize=3, timer=clock)
        for name in ("a", "b", "c"):
            await store.bind(name, "chat", ALICE)
            clock.advance(1)
        await store.touch("a")  # "a" is active again; "b" is now the oldest
        await store.bind("d", "chat", ALICE)
        assert await store.get("b") is None
        assert all([await store.get(name) is not None for name in ("a", "c", "d")])

    async def test_expired_threads_make_room_before_live_ones_are_evicted(self, clock: FakeClock) -> None:
        store = MemoryStore(ttl=10, maxsize=2, timer=clock)
        await store.bind("old", "chat", ALICE)
        clock.advance(5)
        await store.bind("live", "chat", ALICE)
        clock.advance(6)  # "old" has expired, "live" has not
        await store.bind("new", "chat", ALICE)
        assert await store.get("live") is not None
        assert await store.get("new") is not None
