"""The Store contract, run against both stores: MemoryStore (one instance) and RedisStore (replicas
sharing a real redis-server). Times that the stores keep themselves run on the fake clock; what
expires on Redis's own clock (claims, notices, leases) is checked on Redis's key TTLs or waited for
with short expiries. "Two replicas" are two RedisStore instances on the same Redis and bot id; a
memory store is its own only replica."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from llmbot.errors import StoreUnavailable
from llmbot.store import Binding, MemoryStore, RedisStore, Store
from llmbot.store.memory import CLAIM_TTL, QUIET_TTL
from tests.fakes import FakeClock

ROOT = "r00tr00tr00tr00tr00tr00t00"
OTHER = "0therr00t0therr00t0therr00"
ALICE = "a1icea1icea1icea1icea1icea"
BOB = "b0bb0bb0bb0bb0bb0bb0bb0bb0"
TTL = 3600.0

AnyStore = MemoryStore | RedisStore


class Stores:
    """Makes the stores of one test: `replica()` is another instance sharing the first one's data."""

    def __init__(self, kind: str, clock: FakeClock, url: str) -> None:
        self.kind, self.clock, self.url = kind, clock, url
        self.bot = "bot" + uuid.uuid4().hex[:12]
        self.made: list[AnyStore] = []

    def new(self, bot: str | None = None, **kwargs: object) -> AnyStore:
        if self.kind == "memory":
            store: AnyStore = MemoryStore(ttl=TTL, timer=self.clock, **kwargs)  # type: ignore[arg-type]
        else:
            store = RedisStore(self.url, bot or self.bot, TTL, timer=self.clock, **kwargs)  # type: ignore[arg-type]
        self.made.append(store)
        return store

    def replica(self) -> AnyStore:
        return self.made[0] if self.kind == "memory" else self.new()

    async def close(self) -> None:
        for store in self.made:
            if isinstance(store, RedisStore):
                await store.close()


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Stores]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    made = Stores(request.param, clock, url)
    yield made
    await made.close()


@pytest.fixture
def store(stores: Stores) -> AnyStore:
    return stores.new()


@pytest.fixture
async def redis_stores(clock: FakeClock, redis_url: str) -> AsyncIterator[Stores]:
    made = Stores("redis", clock, redis_url)
    yield made
    await made.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Poll until `condition` holds; the seconds it took."""
    start = time.monotonic()
    while not await condition():
        assert time.monotonic() - start < timeout, "the condition did not hold in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


class TestProtocol:
    def test_both_stores_have_every_method_of_the_protocol(self, store: AnyStore) -> None:
        as_protocol: Store = store
        methods = [name for name, value in vars(Store).items() if inspect.iscoroutinefunction(value)]
        assert len(methods) >= 15
        for name in methods:
            assert inspect.iscoroutinefunction(getattr(as_protocol, name)), name


class TestBinding:
    async def test_an_unbound_thread_has_nothing(self, store: AnyStore) -> None:
        assert await store.get(ROOT) is None
        assert await store.active(ROOT) == []
        assert await store.look(ROOT) == ([], None)

    async def test_bind_records_handler_starter_time_ttl_and_awaiting(self, store: AnyStore, clock: FakeClock) -> None:
        binding = await store.bind(ROOT, "chat", ALICE, "conv", ttl=60.0, awaiting=BOB)
        assert binding == Binding("chat", ALICE, "conv", clock.now, 60.0, BOB)
        assert await store.get(ROOT) == binding
        assert await store.look(ROOT) == ([binding], None)

    async def test_idle_dates_the_last_activity_back(self, store: AnyStore, clock: FakeClock) -> None:
        binding = await store.bind(ROOT, "chat", ALICE, "conv", idle=100.5)
        assert binding.last_activity == clock.now - 100.5
        assert await store.get(ROOT) == binding
        clock.advance(TTL - 100)
        assert await store.get(ROOT) is None

    async def test_times_come_back_exact(self, store: AnyStore, clock: FakeClock) -> None:
        clock.now = 1_767_225_600.123456789  # a wall-clock reading with all its digits
        binding = await store.bind(ROOT, "chat", ALICE, "conv", idle=0.1)
        assert (await store.get(ROOT)).last_activity == binding.last_activity  # type: ignore[union-attr]

    async def test_threads_are_bound_independently(self, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.get(OTHER) is None
        await store.bind(OTHER, "tldr", ALICE, "conv")
        assert (await store.get(ROOT)).handler == "chat"  # type: ignore[union-attr]
        assert (await store.get(OTHER)).handler == "tldr"  # type: ignore[union-attr]

    async def test_the_newest_binding_comes_first(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(10)
        await store.bind(ROOT, "tldr", BOB, "conv")
        assert await store.get(ROOT) == Binding("tldr", BOB, "conv", clock.now)

    async def test_unbind_removes_it_and_says_whether_it_was_bound(self, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.unbind(ROOT) is True
        assert await store.get(ROOT) is None
        assert await store.unbind(ROOT) is False

    async def test_touch_updates_the_time_keeps_the_rest_and_clears_awaiting(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv", ttl=90.0, awaiting=ALICE)
        clock.advance(60)
        touched = await store.touch(ROOT)
        assert touched == Binding("chat", ALICE, "conv", clock.now, 90.0, "")
        assert await store.get(ROOT) == touched

    async def test_touching_an_unbound_thread_binds_nothing(self, store: AnyStore) -> None:
        assert await store.touch(ROOT) is None
        assert await store.touch(ROOT, "chat") is None
        assert await store.get(ROOT) is None

    async def test_a_replica_sees_the_bindings_at_once(self, stores: Stores, store: AnyStore) -> None:
        other = stores.replica()
        binding = await store.bind(ROOT, "chat", ALICE, "conv")
        assert await other.get(ROOT) == binding
        assert await other.unbind(ROOT) is True
        assert await store.get(ROOT) is None


class TestExpiry:
    async def test_a_binding_lives_until_the_ttl_passes(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL - 0.001)
        assert await store.get(ROOT) is not None
        clock.advance(0.002)
        assert await store.get(ROOT) is None
        assert await store.look(ROOT) == ([], "expired")

    async def test_reading_is_not_activity(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL / 2)
        assert await store.get(ROOT) is not None
        assert (await store.look(ROOT))[0]
        clock.advance(TTL / 2 + 1)
        assert await store.get(ROOT) is None

    async def test_touch_extends_the_life_of_a_binding(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        for _ in range(5):  # a lively conversation outlives several ttls
            clock.advance(TTL - 1)
            assert await store.touch(ROOT) is not None
        clock.advance(TTL - 1)
        assert await store.get(ROOT) is not None
        clock.advance(2)
        assert await store.get(ROOT) is None

    async def test_an_expired_binding_cannot_be_touched_back_nor_unbound(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        assert await store.touch(ROOT) is None
        assert await store.unbind(ROOT) is False
        assert await store.get(ROOT) is None

    async def test_each_thread_expires_on_its_own_clock(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL / 2)
        await store.bind(OTHER, "chat", ALICE, "conv")
        clock.advance(TTL / 2 + 1)
        assert await store.get(ROOT) is None
        assert await store.get(OTHER) is not None

    async def test_a_binding_with_its_own_ttl_expires_on_it_and_keeps_it_when_touched(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind("short", "quiz", ALICE, "short", ttl=60.0)
        await store.bind("long", "chat", ALICE, "long")
        clock.advance(59)
        assert await store.touch("short") is not None  # a touch gives it 60 s more, not the store's hour
        clock.advance(61)
        assert await store.get("short") is None
        assert await store.get("long") is not None


class TestStackedConversations:
    async def test_a_second_handler_stacks_on_top_and_each_keeps_its_own_life(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "food", ALICE, "f", ttl=60.0)
        clock.advance(10)
        await store.bind(ROOT, "chat", BOB, "c")
        assert [b.handler for b in await store.active(ROOT)] == ["chat", "food"]
        assert (await store.get(ROOT)).handler == "chat"  # type: ignore[union-attr]
        await store.touch(ROOT, "food")  # food answered last: it is tried first now
        assert [b.handler for b in await store.active(ROOT)] == ["food", "chat"]
        clock.advance(61)  # food's own minute is over; the chat's hour is not
        assert [b.handler for b in await store.active(ROOT)] == ["chat"]
        assert [b.handler for b in (await store.look(ROOT))[0]] == ["chat"]
        assert (await store.touch(ROOT, "food")) is None

    async def test_unbinding_one_leaves_the_other_and_unbinding_all_ends_both(self, store: AnyStore) -> None:
        await store.bind(ROOT, "food", ALICE, "f")
        await store.bind(ROOT, "chat", ALICE, "c")
        assert await store.unbind(ROOT, "food") is True
        assert await store.unbind(ROOT, "food") is False
        assert [b.handler for b in await store.active(ROOT)] == ["chat"]
        assert await store.look(ROOT) == (await store.active(ROOT), None)  # one of two ended: no cue
        await store.bind(ROOT, "food", ALICE, "f2")
        assert await store.unbind(ROOT) is True
        assert await store.active(ROOT) == []
        assert await store.look(ROOT) == ([], "ended")

    async def test_binding_the_same_handler_again_replaces_its_conversation(self, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "old")
        await store.bind(ROOT, "food", ALICE, "f")
        await store.bind(ROOT, "chat", ALICE, "new")
        assert [(b.handler, b.conversation) for b in await store.active(ROOT)] == [("chat", "new"), ("food", "f")]

    async def test_touch_of_a_named_handler_leaves_the_others_awaiting(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "food", ALICE, "f", awaiting=ALICE)
        await store.bind(ROOT, "chat", BOB, "c", awaiting=BOB)
        clock.advance(5)
        assert (await store.touch(ROOT, "food")) == Binding("food", ALICE, "f", clock.now)
        assert [(b.handler, b.awaiting) for b in await store.active(ROOT)] == [("food", ""), ("chat", BOB)]


class TestQuiet:
    """look() peeks at why a thread's last conversation is over; take_quiet() takes it, once."""

    async def test_an_ended_conversation_leaves_one_cue(self, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.take_quiet(ROOT) is None  # live: nothing is over
        await store.unbind(ROOT)
        assert await store.look(ROOT) == ([], "ended")
        assert await store.look(ROOT) == ([], "ended")  # looking does not take it
        assert await store.take_quiet(ROOT) == "ended"
        assert await store.take_quiet(ROOT) is None
        assert await store.look(ROOT) == ([], None)

    async def test_an_expired_conversation_leaves_one_cue(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        assert await store.look(ROOT) == ([], "expired")
        clock.advance(3600)
        assert await store.take_quiet(ROOT) == "expired"
        assert await store.take_quiet(ROOT) is None
        assert await store.look(ROOT) == ([], None)

    async def test_a_sweep_does_not_take_the_cue(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        await store.sweep()
        assert await store.take_quiet(ROOT) == "expired"

    async def test_the_cue_is_taken_once_across_replicas(self, stores: Stores, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        await store.unbind(ROOT)
        other = stores.replica()
        assert sorted(map(str, await asyncio.gather(store.take_quiet(ROOT), other.take_quiet(ROOT)))) == ["None", "ended"]

    async def test_the_ended_cue_lasts_a_day(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        await store.unbind(ROOT)
        clock.advance(QUIET_TTL - 1)
        assert await store.look(ROOT) == ([], "ended")
        clock.advance(2)
        assert await store.look(ROOT) == ([], None)
        assert await store.take_quiet(ROOT) is None

    async def test_a_new_conversation_forgets_the_cue(self, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        await store.unbind(ROOT)
        binding = await store.bind(ROOT, "chat", BOB, "conv2")
        assert await store.look(ROOT) == ([binding], None)
        assert await store.take_quiet(ROOT) is None
        await store.unbind(ROOT)
        assert await store.take_quiet(ROOT) == "ended"


class TestOpenedBy:
    async def test_a_user_s_live_conversations_come_least_recent_first(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind("a", "chat", ALICE, "a")
        clock.advance(1)
        await store.bind("b", "chat", ALICE, "b")
        clock.advance(1)
        await store.touch("a")
        assert await store.opened_by(ALICE) == [("b", clock.now - 1), ("a", clock.now)]
        assert await store.opened_by(BOB) == []

    async def test_equal_times_keep_the_order_of_activity(self, store: AnyStore) -> None:
        for name in ("c", "a", "b"):
            await store.bind(name, "chat", ALICE, name)
        await store.touch("c")
        assert [t for t, _ in await store.opened_by(ALICE)] == ["a", "b", "c"]

    async def test_ended_expired_and_rebound_threads_leave_the_index(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind("ended", "chat", ALICE, "x")
        await store.bind("taken", "chat", ALICE, "y")
        await store.unbind("ended")
        await store.bind("taken", "chat", BOB, "z")  # opened anew by someone else
        assert await store.opened_by(ALICE) == []
        assert [t for t, _ in await store.opened_by(BOB)] == ["taken"]
        await store.bind("old", "chat", ALICE, "o")
        clock.advance(TTL + 1)
        assert await store.opened_by(ALICE) == []
        assert await store.opened_by(BOB) == []

    async def test_a_stacked_conversation_of_another_user_does_not_count(self, store: AnyStore) -> None:
        await store.bind(ROOT, "chat", ALICE, "c")
        await store.bind(ROOT, "food", BOB, "f")
        assert [t for t, _ in await store.opened_by(ALICE)] == [ROOT]
        await store.unbind(ROOT, "chat")
        assert await store.opened_by(ALICE) == []
        assert [t for t, _ in await store.opened_by(BOB)] == [ROOT]


class TestClaims:
    async def test_a_post_is_claimed_once(self, store: AnyStore) -> None:
        assert await store.claim("p1") is True
        assert await store.claim("p1") is False
        assert await store.claim("p2") is True

    async def test_of_many_replicas_claiming_at_once_one_wins(self, stores: Stores, store: AnyStore) -> None:
        replicas = [store, stores.replica(), stores.replica()]
        won = await asyncio.gather(*(replicas[i % 3].claim("p1") for i in range(30)))
        assert won.count(True) == 1

    async def test_claims_are_forgotten_after_hours(self, stores: Stores, store: AnyStore, clock: FakeClock) -> None:
        await store.claim("p1")
        if isinstance(store, RedisStore):  # on Redis's clock: its key expires then
            client = Redis.from_url(stores.url, decode_responses=True)
            ttl = await client.ttl(f"llmbot:{stores.bot}:c:p1")
            await client.aclose()
            assert CLAIM_TTL - 5 < ttl <= CLAIM_TTL
        else:
            clock.advance(CLAIM_TTL + 1)
            assert await store.claim("p1") is True


class TestStarts:
    async def test_it_allows_the_limit_then_refuses(self, store: AnyStore) -> None:
        assert [await store.count_start(ALICE, 100.0, 60, 3) for _ in range(5)] == [True, True, True, False, False]

    async def test_users_are_limited_independently(self, store: AnyStore) -> None:
        assert await store.count_start(ALICE, 100.0, 60, 1)
        assert not await store.count_start(ALICE, 100.0, 60, 1)
        assert await store.count_start(BOB, 100.0, 60, 1)

    async def test_the_window_slides_on_the_posts_own_times(self, store: AnyStore) -> None:
        for at in (0.0, 10.0, 20.0):
            assert await store.count_start(ALICE, at, 60, 3)
        assert not await store.count_start(ALICE, 59.9, 60, 3)
        assert await store.count_start(ALICE, 60.0, 60, 3)  # the start at 0 has left the window
        assert not await store.count_start(ALICE, 65.0, 60, 3)

    async def test_replayed_posts_count_when_they_were_written(self, store: AnyStore) -> None:
        assert await store.count_start(ALICE, 4000.0, 60, 1)
        assert await store.count_start(ALICE, 100.0, 60, 1)
        assert await store.count_start(ALICE, 300.0, 60, 1)
        assert not await store.count_start(ALICE, 4010.0, 60, 1)

    async def test_wall_clock_times_with_all_their_digits(self, store: AnyStore) -> None:
        at = 1_767_225_600.123456
        assert await store.count_start(ALICE, at, 60, 1)
        assert not await store.count_start(ALICE, at + 59.999999, 60, 1)
        assert await store.count_start(ALICE, at + 60, 60, 1)

    async def test_replicas_counting_at_once_allow_the_limit_in_all(self, stores: Stores, store: AnyStore) -> None:
        replicas = [store, stores.replica()]
        allowed = await asyncio.gather(*(replicas[i % 2].count_start(ALICE, 100.0, 60, 3) for i in range(12)))
        assert allowed.count(True) == 3

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(limit=st.integers(1, 5), steps=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 40)), max_size=40))
    async def test_it_matches_a_sliding_window_counted_by_hand(self, store: AnyStore, limit: int, steps: list[tuple[str, float]]) -> None:
        run = uuid.uuid4().hex  # users of this example only
        allowed: dict[str, list[float]] = {}
        now = 0.0
        for user, dt in steps:
            now += dt
            expected = len([t for t in allowed.get(user, []) if t > now - 60]) < limit
            assert await store.count_start(run + user, now, 60, limit) is expected
            if expected:
                allowed.setdefault(user, []).append(now)


class TestNotices:
    async def test_a_key_is_first_once_per_window(self, store: AnyStore, clock: FakeClock) -> None:
        assert await store.first_notice("k", 0.3)
        assert not await store.first_notice("k", 0.3)
        if isinstance(store, RedisStore):  # on Redis's clock
            waited = await eventually(lambda: store.first_notice("k", 0.3))
            assert waited >= 0.2
        else:
            clock.advance(0.3)
            assert await store.first_notice("k", 0.3)

    async def test_keys_and_windows_are_independent(self, store: AnyStore) -> None:
        assert await store.first_notice("rate:alice", 60)
        assert await store.first_notice("dm:alice", 60)
        assert not await store.first_notice("rate:alice", 60)
        assert await store.first_notice("rate:alice", 600)

    async def test_one_replica_of_many_tells(self, stores: Stores, store: AnyStore) -> None:
        replicas = [store, stores.replica()]
        assert (await asyncio.gather(*(replicas[i % 2].first_notice("k", 60) for i in range(10)))).count(True) == 1


class TestSweep:
    async def test_an_expired_conversation_is_reported_once(self, store: AnyStore, clock: FakeClock) -> None:
        binding = await store.bind(ROOT, "chat", ALICE, "conv")
        assert await store.sweep() == []
        clock.advance(TTL + 1)
        assert await store.sweep() == [(ROOT, binding, "expired")]
        assert await store.sweep() == []

    async def test_two_replicas_sweeping_at_once_report_each_once(self, stores: Stores, store: AnyStore, clock: FakeClock) -> None:
        other = stores.replica()
        bound = [await store.bind(f"t{i}", "chat", ALICE, f"c{i}") for i in range(20)]
        clock.advance(TTL + 1)
        first, second = await asyncio.gather(store.sweep(), other.sweep())
        reported = first + second
        assert sorted(reported, key=lambda r: r[0]) == sorted(((f"t{i}", b, "expired") for i, b in enumerate(bound)), key=lambda r: r[0])
        assert await store.sweep() == [] and await other.sweep() == []

    async def test_one_of_a_stack_expiring_alone_is_reported(self, store: AnyStore, clock: FakeClock) -> None:
        chat = await store.bind(ROOT, "chat", ALICE, "conv")
        quiz = await store.bind(ROOT, "quiz", ALICE, "quiz-conv", ttl=60.0)
        clock.advance(61)
        assert await store.sweep() == [(ROOT, quiz, "expired")]
        assert await store.active(ROOT) == [chat]
        assert await store.sweep() == []

    async def test_an_expiry_noticed_by_a_write_is_reported_too(self, store: AnyStore, clock: FakeClock) -> None:
        old = await store.bind(ROOT, "chat", ALICE, "conv")
        clock.advance(TTL + 1)
        await store.bind(OTHER, "chat", ALICE, "conv2")
        await store.bind(ROOT, "chat", ALICE, "conv3")  # the same handler anew, after its end
        assert await store.sweep() == [(ROOT, old, "expired")]

    async def test_ended_replaced_or_touched_conversations_are_not_reported(self, store: AnyStore, clock: FakeClock) -> None:
        await store.bind(ROOT, "chat", ALICE, "conv")
        await store.bind(OTHER, "chat", ALICE, "conv2")
        await store.bind("third", "chat", ALICE, "old")
        await store.unbind(ROOT)
        clock.advance(TTL - 1)
        await store.touch(OTHER)
        new = await store.bind("third", "chat", ALICE, "new")
        clock.advance(2)
        assert await store.sweep() == []
        clock.advance(TTL)
        assert sorted(await store.sweep()) == sorted([(OTHER, Binding("chat", ALICE, "conv2", new.last_activity), "expired"),
                                                      ("third", new, "expired")])


class TestLease:
    async def test_one_holder_acquires_renews_and_releases(self, store: AnyStore) -> None:
        assert await store.acquire(ROOT, "r1", 5)
        assert await store.acquire(ROOT, "r1", 5)  # held already: still its own
        assert await store.renew(ROOT, "r1", 5)
        await store.release(ROOT, "r1")
        assert await store.acquire(ROOT, "r1", 5)

    async def test_of_two_holders_only_one_has_it(self, redis_stores: Stores) -> None:
        one, two = redis_stores.new(), redis_stores.replica()
        got = await asyncio.gather(one.acquire(ROOT, "r1", 5), two.acquire(ROOT, "r2", 5))
        assert sorted(got) == [False, True]
        holder, other = ("r1", "r2") if got[0] else ("r2", "r1")
        assert not await two.acquire(ROOT, other, 5)
        assert not await one.renew(ROOT, other, 5)
        await one.release(ROOT, other)  # not its own: nothing happens
        assert not await two.acquire(ROOT, other, 5)
        assert await two.renew(ROOT, holder, 5)
        await one.release(ROOT, holder)
        assert await two.acquire(ROOT, other, 5)
        assert await one.acquire(OTHER, holder, 5)  # one lease per thread

    async def test_an_expired_lease_goes_to_the_next_holder(self, redis_stores: Stores) -> None:
        one, two = redis_stores.new(), redis_stores.replica()
        assert await one.acquire(ROOT, "dead", 0.3)
        assert not await two.acquire(ROOT, "next", 5)
        waited = await eventually(lambda: two.acquire(ROOT, "next", 5))
        assert waited >= 0.2
        assert not await one.renew(ROOT, "dead", 5)

    async def test_renewing_extends_from_now(self, redis_stores: Stores) -> None:
        one, two = redis_stores.new(), redis_stores.replica()
        assert await one.acquire(ROOT, "r1", 1.0)
        for _ in range(4):
            await asyncio.sleep(0.3)
            assert await one.renew(ROOT, "r1", 1.0)
            assert not await two.acquire(ROOT, "r2", 5)


class TestRedisOnly:
    async def test_it_counts_the_live_conversations(self, redis_stores: Stores, clock: FakeClock) -> None:
        store = redis_stores.new()
        assert isinstance(store, RedisStore)
        await store.bind(ROOT, "chat", ALICE, "c")
        await store.bind(ROOT, "food", ALICE, "f", ttl=60.0)
        await store.bind(OTHER, "chat", ALICE, "c2")
        await store.unbind(OTHER)
        assert await store.live_count() == 2
        clock.advance(61)
        assert await store.live_count() == 1

    async def test_redis_never_displaces(self, redis_stores: Stores, clock: FakeClock) -> None:
        small = redis_stores.new(maxsize=1)
        await small.bind(ROOT, "chat", ALICE, "conv")
        await small.bind(OTHER, "chat", ALICE, "conv2")
        assert await small.sweep() == []
        assert await small.get(ROOT) is not None and await small.get(OTHER) is not None

    async def test_bots_sharing_a_redis_do_not_see_each_other(self, redis_stores: Stores, clock: FakeClock) -> None:
        mine, theirs = redis_stores.new(), redis_stores.new(bot="other" + uuid.uuid4().hex[:12])
        await mine.bind(ROOT, "chat", ALICE, "conv")
        await mine.claim("p1")
        await mine.count_start(ALICE, 100.0, 60, 1)
        await mine.first_notice("k", 60)
        await mine.acquire(ROOT, "r1", 5)
        assert await theirs.get(ROOT) is None and await theirs.opened_by(ALICE) == []
        assert await theirs.claim("p1") and await theirs.count_start(ALICE, 100.0, 60, 1)
        assert await theirs.first_notice("k", 60) and await theirs.acquire(ROOT, "r2", 5)
        await mine.unbind(ROOT)
        assert await theirs.take_quiet(ROOT) is None
        await theirs.bind(OTHER, "chat", ALICE, "c")
        clock.advance(TTL + 1)
        assert [r[0] for r in await mine.sweep()] == []
        assert [r[0] for r in await theirs.sweep()] == [OTHER]

    async def test_a_user_s_index_forgets_ended_threads_as_it_grows(self, redis_stores: Stores, raw: Redis, clock: FakeClock) -> None:
        store = redis_stores.new()
        for i in range(300):
            await store.bind(f"old{i}", "chat", ALICE, f"old{i}", ttl=10.0)
            clock.advance(11)
        await store.bind("live", "chat", ALICE, "live")
        assert await raw.zcard(f"llmbot:{redis_stores.bot}:o:{ALICE}") <= 64
        assert [t for t, _ in await store.opened_by(ALICE)] == ["live"]

    async def test_every_key_expires(self, redis_stores: Stores, raw: Redis, clock: FakeClock) -> None:
        store, other = redis_stores.new(), redis_stores.replica()
        assert isinstance(store, RedisStore) and isinstance(other, RedisStore)
        await store.bind(ROOT, "chat", ALICE, "conv", ttl=60.0)
        await store.bind(ROOT, "food", BOB, "f")
        await store.bind(OTHER, "chat", ALICE, "conv2", idle=30)
        await store.touch(ROOT, "chat")
        await store.bind("ended", "chat", ALICE, "e")
        await store.unbind("ended")
        await store.bind("gone", "chat", BOB, "g", ttl=10.0)
        clock.advance(11)
        await store.look("gone")
        await store.opened_by(ALICE)
        await store.claim("p1")
        await store.count_start(ALICE, 100.0, 60, 3)
        await store.first_notice("k", 60)
        await store.acquire(ROOT, "r1", 5)
        await store.heartbeat("r1", 5)
        await store.track("r1", "p1", '{"event": "posted"}')
        await store.track("dead", "p2", '{"event": "posted"}')
        await other.adopt("r2")
        keys = [key async for key in raw.scan_iter(match=f"llmbot:{redis_stores.bot}:*")]
        kinds = {key.removeprefix(f"llmbot:{redis_stores.bot}:").split(":")[0] for key in keys}
        assert kinds == {"t", "q", "d", "o", "c", "s", "n", "l", "h", "u", "r"}
        ttls = {key: await raw.pttl(key) for key in keys}
        assert all(ttl > 0 for ttl in ttls.values()), ttls

    async def test_an_unreachable_redis_raises_store_unavailable_everywhere(self, redis_servers, clock: FakeClock) -> None:
        server = redis_servers()
        store = RedisStore(server.url, "bot", TTL, timer=clock)
        await store.bind(ROOT, "chat", ALICE, "conv")
        server.stop()
        calls = {
            "get": (ROOT,), "active": (ROOT,), "look": (ROOT,), "bind": (ROOT, "chat", ALICE, "c"), "touch": (ROOT,),
            "unbind": (ROOT,), "sweep": (), "take_quiet": (ROOT,), "opened_by": (ALICE,), "claim": ("p",),
            "count_start": (ALICE, 1.0, 60, 1), "acquire": (ROOT, "r", 5), "renew": (ROOT, "r", 5), "release": (ROOT, "r"),
            "first_notice": ("k", 60), "heartbeat": ("r", 5), "track": ("r", "p", "{}"), "untrack": ("r", "p"), "adopt": ("r",), "replicas_alive": (),
            "ping": (),
        }
        protocol = {name for name, value in vars(Store).items() if inspect.iscoroutinefunction(value)}
        assert protocol <= set(calls)
        for name, args in calls.items():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="Redis"):
                await getattr(store, name)(*args)
            assert time.monotonic() - started < 3, name
        server.start(server.port)  # back: the same store answers again, nothing to restart
        assert await store.get(ROOT) is None  # (a Redis without persistence comes back empty)
        await store.close()

    async def test_a_redis_that_does_not_answer_is_unavailable_after_2_s(self, clock: FakeClock) -> None:
        connections: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)  # accepts, reads, never answers (a frozen server)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", "bot", TTL, timer=clock)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Redis"):
            await store.look(ROOT)
        assert 1.5 < time.monotonic() - started < 3.5
        await store.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


class TestReplicasTurns:
    """What a replica took on and has not finished, for another to finish if it dies."""

    async def test_a_live_replica_s_turns_are_not_adopted(self, redis_stores: Stores) -> None:
        one, two = redis_stores.new(), redis_stores.replica()
        await one.heartbeat("r1", 5)
        await one.track("r1", "p1", "frame1")
        assert await two.adopt("r2") == []

    async def test_a_stopped_replica_s_unfinished_turns_are_adopted_once(self, redis_stores: Stores) -> None:
        one, two, three = redis_stores.new(), redis_stores.replica(), redis_stores.replica()
        await one.heartbeat("r1", 5)
        for post in ("p1", "p2", "p3"):
            await one.track("r1", post, f"frame-{post}")
        await one.untrack("r1", "p2")
        await one.heartbeat("r1", 0.0)  # stopped
        await two.heartbeat("r2", 5)
        await three.heartbeat("r3", 5)
        adopted = await asyncio.gather(two.adopt("r2"), three.adopt("r3"))
        assert sorted(adopted[0] + adopted[1]) == ["frame-p1", "frame-p3"]
        assert await two.adopt("r2") == [] and await three.adopt("r3") == []
        taker, other = (two, three) if adopted[0] else (three, two)  # the adopter's own now: if it dies too, they move on
        await taker.heartbeat("r2" if taker is two else "r3", 0.0)
        assert sorted(await other.adopt("r3" if taker is two else "r2")) == ["frame-p1", "frame-p3"]

    async def test_a_replica_whose_beat_expired_is_adopted(self, redis_stores: Stores) -> None:
        one, two = redis_stores.new(), redis_stores.replica()
        await one.heartbeat("r1", 0.3)
        await one.track("r1", "p1", "frame")
        assert await two.adopt("r2") == []
        adopted: list[str] = []

        async def adopts() -> bool:
            adopted.extend(await two.adopt("r2"))
            return bool(adopted)

        assert await eventually(adopts) >= 0.2
        assert adopted == ["frame"]


class TestTheGaugeCount:
    async def test_len_is_the_live_conversations_at_the_last_sweep(self, redis_stores: Stores, clock: FakeClock) -> None:
        """llmbot_active_conversations reads len() at scrape time: no round trip, refreshed by each sweep."""
        store = redis_stores.new()
        await store.bind("t1", "gpt", "u1", "c1")
        await store.bind("t1", "food", "u1", "c2", ttl=60)
        await store.bind("t2", "gpt", "u2", "c3")
        assert len(store) == 0  # not counted yet
        await store.sweep()
        assert len(store) == 3  # stacked conversations count one each
        clock.advance(61)
        await store.sweep()
        assert len(store) == 2


class TestReplicasAlive:
    async def test_replicas_alive_counts_the_heartbeats(self, stores: Stores) -> None:
        store = stores.new()
        assert await store.replicas_alive() == 1  # nobody beats yet: this one counts as one
        await store.heartbeat("r1", 30)
        await store.heartbeat("r2", 30)
        assert await store.replicas_alive() == (2 if stores.kind == "redis" else 1)
        await store.heartbeat("r2", 0.0)
        assert await store.replicas_alive() == 1
