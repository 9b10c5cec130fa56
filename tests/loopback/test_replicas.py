"""Several replicas on one Redis (issue 10), end to end: `llmbot run` processes on the loopback fakes
and a real redis-server. Every human post is answered exactly once, whatever happens to a replica.
Each test prints its figures (run with -s to see them)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmbot.record import STATUS_LINE
from llmbot.takeover import ABANDONED
from tests.loopback.replicas import Replicas

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def redis_server(redis_servers):
    """A redis-server of this test's own (tests/conftest.py): the outage test stops and starts it."""
    return redis_servers()


@pytest.fixture
async def replicas(mm, llm_server, redis_server, tmp_path):
    group = Replicas(mm, llm_server, redis_server.url, tmp_path)
    # load tests: four people opening 200 conversations are not a spammer
    group.env.update(LLMBOT_MAX_STARTS_PER_MINUTE="0", LLMBOT_MAX_CONVERSATIONS_PER_USER="0")
    try:
        yield group
    finally:
        await group.close()
        for log in sorted(tmp_path.glob("r*.log")):  # shown when the test fails
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))


def answers(mm, root_id: str) -> list[dict]:
    """The bot's posts in a thread, oldest first."""
    return [p for p in mm.thread(root_id) if p["user_id"] == mm.bot["id"]]


def complete(mm, root_id: str) -> list[dict]:
    """Answers that look complete: no status line (cut short, interrupted, taken over)."""
    return [p for p in answers(mm, root_id) if STATUS_LINE not in p["message"]]


async def call_many(mm, world, count: int, prefix: str) -> list[dict]:
    people = (world.alice, world.bob, world.john, world.marc)
    return [await mm.post_as(people[i % 4], world.town, f"gpt {prefix} {i}") for i in range(count)]


async def all_answered(mm, roots: list[dict], timeout: float) -> None:
    try:
        await mm.wait_for(lambda: all(complete(mm, r["id"]) for r in roots), timeout=timeout,
                          message="every call has a complete answer")
    except AssertionError:
        print("unanswered:", [r["id"] for r in roots if not complete(mm, r["id"])])
        raise


def figures(mm, roots: list[dict], label: str, started: float) -> dict[str, int]:
    counts = [len(complete(mm, r["id"])) for r in roots]
    result = {"calls": len(roots), "answered": sum(1 for c in counts if c >= 1), "duplicates": sum(c - 1 for c in counts if c > 1),
              "lost": sum(1 for c in counts if c == 0), "marked partial": sum(len(answers(mm, r["id"])) - c
                                                                               for r, c in zip(roots, counts, strict=True))}
    print(f"\n{label}: {result}, {time.monotonic() - started:.1f}s")
    return result


class TestExactlyOnce:
    @pytest.mark.parametrize("count", [2, 3])
    async def test_every_call_is_answered_once_by_the_replicas(self, replicas, mm, llm_server, world, count):
        started = time.monotonic()
        await replicas.start(count)
        roots = await call_many(mm, world, 200, f"x{count}")
        await all_answered(mm, roots, 90)
        await asyncio.sleep(0)  # (nothing more is expected: the marker below proves the queues are empty)
        marker = await mm.post_as(world.alice, world.town, "gpt marker")
        await mm.wait_for(lambda: complete(mm, marker["id"]), timeout=30)
        result = figures(mm, roots, f"{count} replicas, 200 calls", started)
        assert result["duplicates"] == 0 and result["lost"] == 0
        assert len(llm_server.requests) == 201
        busy = [r.name for r in replicas.running if "answered in" in r.text()]
        print(f"replicas that answered: {busy}")


class TestAReplicaDies:
    async def test_sigkill_mid_answer_another_replica_finishes_the_turn(self, replicas, mm, llm_server, world):
        started = time.monotonic()
        await replicas.start(2)
        llm_server.enqueue([f"word{i} " for i in range(40)], delay=0.1)  # 4 s of streaming
        llm_server.enqueue(["The whole answer."])
        root = await mm.post_as(world.alice, world.town, "gpt tell me a long story")
        await mm.wait_for(lambda: answers(mm, root["id"]), timeout=20, message="a partial answer is on screen")
        writer = next(r for r in replicas.running if root["id"] in r.text())
        await replicas.kill(writer)
        await mm.wait_for(lambda: any(p["message"] == "The whole answer." for p in answers(mm, root["id"])), timeout=30,
                          message="the turn was finished elsewhere")
        await mm.wait_for(lambda: len(complete(mm, root["id"])) == 1, timeout=10, message="the partial answer is marked")
        posts = answers(mm, root["id"])
        print(f"\nSIGKILL mid-answer: {len(posts)} post(s), {time.monotonic() - started:.1f}s: "
              + " | ".join(p["message"][-60:] for p in posts))
        assert [p["message"] for p in complete(mm, root["id"])] == ["The whole answer."]
        partial = [p for p in posts if STATUS_LINE in p["message"]]
        assert len(partial) == 1 and partial[0]["message"].endswith(ABANDONED)


class TestRollingRestart:
    async def test_sigterm_one_by_one_under_traffic_loses_and_doubles_nothing(self, replicas, mm, llm_server, world):
        started = time.monotonic()
        r1, r2 = await replicas.start(2)
        roots: list[dict] = []

        async def traffic() -> None:
            for i in range(60):
                roots.append(await mm.post_as(world.bob, world.town, f"gpt steady {i}"))
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(traffic())
        assert await replicas.stop(r1) == 0
        await replicas.start(1)
        assert await replicas.stop(r2) == 0
        await replicas.start(1)
        await sender
        await all_answered(mm, roots, 60)
        result = figures(mm, roots, "rolling restart, 60 calls in 6 s", started)
        assert result["duplicates"] == 0 and result["lost"] == 0


class TestRedisOutage:
    async def test_five_seconds_without_redis_under_traffic(self, replicas, mm, llm_server, world, redis_server):
        started = time.monotonic()
        await replicas.start(2)
        before = await call_many(mm, world, 10, "before")
        await all_answered(mm, before, 30)
        redis_server.stop()
        down_at = time.monotonic()
        during = await call_many(mm, world, 10, "during")
        for replica in replicas.running:  # each has met the outage (the marker), and taken no turn since
            await mm.wait_for(lambda r=replica: "Redis does not answer" in r.text(), timeout=10, message=f"{replica.name} saw it")
        await asyncio.sleep(max(0.0, 5 - (time.monotonic() - down_at)))  # Redis stays down for five seconds
        assert all(answers(mm, r["id"]) == [] for r in during)  # no turn is taken without Redis
        redis_server.start(redis_server.port)  # (on the same port, as a restarted server)
        await all_answered(mm, during, 60)
        result = figures(mm, before + during, "Redis down 5 s, 10 calls meanwhile", started)
        assert result["duplicates"] == 0 and result["lost"] == 0
