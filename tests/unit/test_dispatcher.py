"""The dispatcher, driven with raw websocket frames: routing outcomes queued per thread, claims,
posts held from `hello` until the catch-up releases them (in order, before later live ones),
the bound on what is held, a socket side that never waits on slow work, and the limits.

FakeChat, a MemoryStore on a fake clock and a real Scheduler whose run callback records jobs;
what the dispatcher submits (and in which order) is recorded as it is submitted."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from llmbot import dispatcher as dispatcher_module
from llmbot.dispatcher import Dispatcher
from llmbot.events import Posted
from llmbot.handlers.base import Turn
from llmbot.limits import Limits
from llmbot.policy import AccessPolicy
from llmbot.router import Continue, End, HandlerSpec, Identity, Refuse
from llmbot.runner import Job
from llmbot.scheduler import Scheduler
from llmbot.store import MemoryStore
from llmbot.triggers import mention_pattern

from .payloads import (
    ALICE_ID,
    BOB_ID,
    BOT_ID,
    BOT_NAME,
    TEAM_ID,
    as_post,
    bot_answer,
    hello_frame,
    other_bot_post,
    post_dict,
    posted_frame,
)
from .ports_fakes import FakeChat, FakeClock, within

TTL = 600.0


class StubHandler:
    """Only its spec matters here: the jobs never reach a handler."""

    def __init__(self, spec: HandlerSpec) -> None:
        self.spec = spec

    def call_word(self) -> str:
        return self.spec.name

    async def handle(self, turn: Turn) -> None:
        raise AssertionError("the dispatcher tests run no handler")


GPT = StubHandler(HandlerSpec("gpt", (re.compile(r"^gpt\b", re.IGNORECASE),), conversational=True, hints_usage=True, coalesces=True))
SUMMARY = StubHandler(HandlerSpec("sum", (re.compile(r"^sum\b", re.IGNORECASE),), conversational=False))


class RecordingScheduler(Scheduler[Job]):
    """The real scheduler, also noting each submission as it is made."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submitted: list[tuple[str, Job, bool]] = []  # (thread id, job, coalesces)

    def submit(self, thread_id: str, job: Job, *, coalesces: bool = False) -> None:
        self.submitted.append((thread_id, job, coalesces))
        super().submit(thread_id, job, coalesces=coalesces)


class World:
    def __init__(
        self,
        *,
        policy: AccessPolicy | None = None,
        max_open: int = 0,
        max_starts: int = 0,
        teams: Callable[[], Awaitable[dict[str, str]]] | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.chat = FakeChat(clock=self.clock)
        self.store = MemoryStore(TTL, timer=self.clock)
        self.ran: list[Job] = []
        self.scheduler = RecordingScheduler(self._run, max_concurrent=8)
        self.hellos: list[int] = []
        self.limits = Limits(
            self.store, max_starts_per_minute=max_starts, max_open=max_open, direct_messages=True, call_word=lambda h: h
        )
        self.dispatcher = Dispatcher(
            me=Identity(BOT_ID, BOT_NAME, mention_pattern(BOT_NAME)), store=self.store, scheduler=self.scheduler,
            handlers={"gpt": GPT, "sum": SUMMARY}, policy=policy or AccessPolicy(), limits=self.limits,
            end_words=("bye",), remember_name=self.chat.remember_name, teams=teams or self.chat.teams,
            on_hello=self.hellos.append, clock=self.clock,
        )
        self.dispatcher.start()

    async def _run(self, job: Job) -> None:
        self.ran.append(job)

    async def send(self, *frames: str) -> None:
        """Deliver frames as the socket reader does, then wait until the consumer took them all."""
        for raw in frames:
            await within(self.dispatcher.on_frame(raw))
        await within(self.dispatcher.idle())

    def routed(self) -> list[tuple[str, str]]:
        """(post id, decision) of every submitted job, in the order submitted."""
        return [(job.event.post.id, type(job.decision).__name__) for _, job, _ in self.scheduler.submitted]

    def job_for(self, post_id: str) -> Job:
        [job] = [job for _, job, _ in self.scheduler.submitted if job.event.post.id == post_id]
        return job

    async def close(self) -> None:
        await self.dispatcher.close()
        await within(self.scheduler.idle())


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    yield w
    await w.close()


def root(message: str, *, user_id: str = ALICE_ID, create_at: int | None = None) -> dict[str, Any]:
    return post_dict(message, user_id=user_id, create_at=create_at)


def reply(root_post: dict[str, Any], message: str, *, user_id: str = ALICE_ID) -> dict[str, Any]:
    return post_dict(message, user_id=user_id, root_id=root_post["id"])


def event_of(post: dict[str, Any]) -> Posted:
    """A post as the catch-up replays it (read over REST, not from the socket)."""
    return Posted(as_post(post), "O", "town-square", "Town Square", "alice", TEAM_ID)


class TestRouting:
    async def test_routing_outcomes_are_queued_per_thread(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        greeting = root(f"@{BOT_NAME} hello there")
        bare_call = root("gpt")
        chatter = root("lunch anyone?")
        await world.send(
            posted_frame(question), posted_frame(greeting), posted_frame(bare_call), posted_frame(chatter),
            posted_frame(reply(question, "and 3+3?")),
            posted_frame(bot_answer("4", root_id=question["id"])),  # its own post comes back to it
            posted_frame(other_bot_post("build passed", root_id=question["id"])),
            posted_frame(reply(greeting, "bye")),
        )
        await within(world.scheduler.idle())

        per_thread: dict[str, list[str]] = {}
        for thread_id, job, _ in world.scheduler.submitted:
            per_thread.setdefault(thread_id, []).append(type(job.decision).__name__)
        assert per_thread == {
            question["id"]: ["Start", "Continue"],
            greeting["id"]: ["Start", "End"],
            bare_call["id"]: ["Usage"],
        }
        assert [c for _, job, c in world.scheduler.submitted if isinstance(job.decision, Continue)] == [True]
        assert not any(c for _, job, c in world.scheduler.submitted if not isinstance(job.decision, Continue))
        assert len(world.ran) == 5

    async def test_a_post_delivered_twice_is_claimed_once(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        await world.send(posted_frame(question), posted_frame(question))

        assert world.routed() == [(question["id"], "Start")]
        assert await world.dispatcher.dispatch(event_of(question), replayed=True) is False  # nor by a catch-up

    async def test_a_start_binds_the_thread_with_the_post_as_its_conversation(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        await world.send(posted_frame(question))

        binding = await world.store.get(question["id"])
        assert binding is not None
        assert (binding.handler, binding.started_by, binding.conversation) == ("gpt", ALICE_ID, question["id"])
        assert world.job_for(question["id"]).conversation == question["id"]

    async def test_a_continue_keeps_the_conversation_of_the_binding(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        follow_up = reply(question, "and 3+3?", user_id=BOB_ID)
        await world.send(posted_frame(question), posted_frame(follow_up))

        job = world.job_for(follow_up["id"])
        assert isinstance(job.decision, Continue)
        assert job.conversation == question["id"]
        binding = await world.store.get(question["id"])
        assert binding is not None and binding.conversation == question["id"]

    async def test_a_call_in_a_reply_opens_a_conversation_named_by_the_reply_bound_to_the_thread(self, world: World) -> None:
        chatter = root("the build is red again")
        call = reply(chatter, "gpt summarize this thread")
        await world.send(posted_frame(chatter), posted_frame(call))

        assert world.routed() == [(call["id"], "Start")]
        assert world.job_for(call["id"]).conversation == call["id"]
        binding = await world.store.get(chatter["id"])
        assert binding is not None and binding.conversation == call["id"]

    async def test_the_end_word_unbinds_the_thread_and_its_job_names_the_conversation(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        goodbye = reply(question, "Bye!")
        await world.send(posted_frame(question), posted_frame(goodbye))

        job = world.job_for(goodbye["id"])
        assert isinstance(job.decision, End) and job.conversation == question["id"]
        assert await world.store.get(question["id"]) is None

    async def test_a_one_shot_handler_answers_without_binding_the_thread(self, world: World) -> None:
        call = root("sum the last release notes")
        await world.send(posted_frame(call))

        assert world.routed() == [(call["id"], "Start")]
        assert world.job_for(call["id"]).conversation == call["id"]
        assert await world.store.get(call["id"]) is None


class TestHolding:
    async def test_a_post_right_behind_hello_is_held_until_the_catch_up_releases_it(self, world: World) -> None:
        before = root("gpt first question")
        await world.send(posted_frame(before))
        behind = root("gpt a question during the reconnect")

        await world.dispatcher.on_frame(hello_frame())
        await world.dispatcher.on_frame(posted_frame(behind))  # right behind it, before the consumer saw either
        await within(world.dispatcher.idle())

        assert world.hellos == [before["create_at"]]  # the catch-up reads from the last post the socket delivered
        assert world.routed() == [(before["id"], "Start")]
        assert world.dispatcher.live_ms == behind["create_at"]

        await world.dispatcher.release()
        await within(world.dispatcher.idle())

        assert world.routed() == [(before["id"], "Start"), (behind["id"], "Start")]

    async def test_held_posts_are_routed_in_order_before_later_live_ones(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        first, second, third = (reply(question, text) for text in ("and 3+3?", "and 4+4?", "and 5+5?"))
        await world.send(hello_frame(), posted_frame(question), posted_frame(first))
        await world.send(posted_frame(second))  # the catch-up is still running: held too

        await world.dispatcher.release()
        await world.send(posted_frame(third))  # live, right after the release

        # Out of order, the follow-ups would come before the call that bound the thread and be ignored.
        assert world.routed() == [
            (question["id"], "Start"), (first["id"], "Continue"), (second["id"], "Continue"), (third["id"], "Continue"),
        ]

    async def test_past_max_held_every_held_post_is_left_for_the_catch_up_to_read_again_in_order(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(dispatcher_module, "MAX_HELD", 2)
        posts = [root(f"gpt question {i}") for i in range(4)]
        await world.send(hello_frame(), *(posted_frame(p) for p in posts))

        assert world.dispatcher.overflow_ms == posts[0]["create_at"]  # from the oldest one held

        await world.dispatcher.release()
        await within(world.dispatcher.idle())
        assert world.routed() == []  # none taken live: the newer ones would overtake the older ones

        # The catch-up reads them all again from overflow_ms, in order; none was claimed, so all are taken now.
        for post in posts:
            assert await world.dispatcher.dispatch(event_of(post), replayed=True) is True
        assert [post_id for post_id, _ in world.routed()] == [p["id"] for p in posts]
        assert world.job_for(posts[3]["id"]).replayed

    async def test_held_posts_are_not_routed_once_the_bot_is_stopping(self, world: World) -> None:
        question = root("gpt what is 2+2?")
        await world.send(hello_frame(), posted_frame(question))

        world.dispatcher.accepting = False
        await world.dispatcher.release()
        await within(world.dispatcher.idle())

        assert world.routed() == []
        assert await world.store.claim(question["id"])  # left unclaimed for the next start-up's catch-up


class TestSocketSide:
    async def test_on_frame_never_waits_on_slow_work(self) -> None:
        asked = asyncio.Event()
        never: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def teams() -> dict[str, str]:  # Mattermost that never answers
            asked.set()
            return await never

        world = World(policy=AccessPolicy(allow_teams=frozenset({"engineering"})), teams=teams)
        try:
            await within(world.dispatcher.on_frame(posted_frame(root("gpt who is on call?"))))
            await within(asked.wait())  # the consumer is stuck looking the team up

            for i in range(100):
                await within(world.dispatcher.on_frame(posted_frame(root(f"gpt question {i}"))), seconds=1.0)

            assert not never.done()  # every on_frame above returned while the look-up still hangs
            assert world.dispatcher.queued == 100
            assert world.routed() == []
        finally:
            never.cancel()
            await world.close()


class TestLimits:
    async def test_over_the_open_conversation_cap_the_least_recent_conversation_ends_quietly(self) -> None:
        world = World(max_open=2)
        try:
            a, b, c = root("gpt question a"), root("gpt question b"), root("gpt question c")
            await world.send(posted_frame(a))
            world.clock.advance(10)
            await world.send(posted_frame(b))
            world.clock.advance(10)
            await world.send(posted_frame(reply(a, "more on a")))  # a is now the more recently active
            world.clock.advance(10)
            await world.send(posted_frame(c))

            assert await world.store.get(b["id"]) is None
            assert await world.store.get(a["id"]) is not None and await world.store.get(c["id"]) is not None
            assert [decision for _, decision in world.routed()] == ["Start", "Start", "Continue", "Start"]  # no refusal
        finally:
            await world.close()

    async def test_a_replayed_post_counts_by_when_it_was_written(self) -> None:
        world = World(max_starts=2)
        try:
            written = 1_700_000_000_000
            posts = [root(f"gpt question {i}", create_at=written + i * 40_000) for i in range(3)]  # 40 s apart

            for post in posts:  # all read at once by a catch-up
                assert await world.dispatcher.dispatch(event_of(post), replayed=True)

            assert [decision for _, decision in world.routed()] == ["Start", "Start", "Start"]
        finally:
            await world.close()

    async def test_starts_over_the_rate_limit_are_refused_once_then_ignored(self) -> None:
        world = World(max_starts=2)
        try:
            written = 1_700_000_000_000
            posts = [root(f"gpt question {i}", create_at=written + i * 1_000) for i in range(4)]  # within a minute

            await world.send(*(posted_frame(p) for p in posts))

            # the fourth: told already, so a cue (a reaction) instead of a second refusal
            assert [decision for _, decision in world.routed()] == ["Start", "Start", "Refuse", "Cue"]
            refusal = world.job_for(posts[2]["id"]).decision
            assert isinstance(refusal, Refuse) and "2 conversations" in refusal.message
            assert await world.store.get(posts[2]["id"]) is None
        finally:
            await world.close()

