"""The scheduler: one serial queue per thread, a cap on concurrent jobs, coalesced follow-ups,
a job's failure kept to itself, the drain at shutdown; LimitedLLM's cap on open streams.

Jobs are strings; each one's run is scripted by a Jobs recorder: when it starts, what it waits
for (a gate the test opens), what it raises, and when it ends."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from llmbot.scheduler import LimitedLLM, Scheduler

from .ports_fakes import FakeLLM, within


class Jobs:
    """The run callback: records "start x" / "end x" / "cancelled x" and how many ran at once."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.gates: dict[str, asyncio.Event] = {}  # a job with a gate waits until it is opened
        self.raises: dict[str, BaseException] = {}
        self.running = 0
        self.max_running = 0

    def gate(self, *jobs: str) -> None:
        for job in jobs:
            self.gates[job] = asyncio.Event()

    def open(self, job: str) -> None:
        self.gates[job].set()

    async def run(self, job: str) -> None:
        self.log.append(f"start {job}")
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started[job].set()
        try:
            if job in self.gates:
                await self.gates[job].wait()
            else:
                for _ in range(3):  # give any other job the chance to cut in
                    await asyncio.sleep(0)
            if job in self.raises:
                raise self.raises[job]
            self.log.append(f"end {job}")
        except asyncio.CancelledError:
            self.log.append(f"cancelled {job}")
            raise
        finally:
            self.running -= 1

    def ran(self) -> list[str]:
        return [entry.removeprefix("start ") for entry in self.log if entry.startswith("start ")]


@pytest.fixture
def jobs() -> Jobs:
    return Jobs()


class TestOneThread:
    async def test_jobs_of_one_thread_run_one_after_another_in_the_order_they_came(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=4)
        for job in ("a1", "a2", "a3"):
            scheduler.submit("thread-a", job)

        await within(scheduler.idle())

        assert jobs.log == ["start a1", "end a1", "start a2", "end a2", "start a3", "end a3"]
        assert len(scheduler) == 0

    async def test_a_job_that_raises_does_not_stop_the_later_jobs_of_its_thread(
        self, jobs: Jobs, caplog: pytest.LogCaptureFixture
    ) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=4)
        jobs.raises["a1"] = RuntimeError("a handler bug")
        scheduler.submit("thread-a", "a1")
        scheduler.submit("thread-a", "a2")

        await within(scheduler.idle())

        assert jobs.log == ["start a1", "start a2", "end a2"]
        failures = [r for r in caplog.records if "a job failed" in r.getMessage()]
        assert len(failures) == 1 and failures[0].exc_info is not None
        assert failures[0].exc_info[1] is jobs.raises["a1"]


class TestConcurrency:
    async def test_different_threads_run_side_by_side_up_to_the_cap(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=2)
        jobs.gate("a", "b", "c")
        for thread in ("a", "b", "c"):
            scheduler.submit(f"thread-{thread}", thread)

        await within(jobs.started["a"].wait())
        await within(jobs.started["b"].wait())  # b runs while a still waits: side by side
        jobs.open("a")
        await within(jobs.started["c"].wait())  # c had to wait for a slot
        jobs.open("b")
        jobs.open("c")
        await within(scheduler.idle())

        assert jobs.max_running == 2
        assert jobs.log.index("end a") < jobs.log.index("start c")


class TestCoalescing:
    async def test_a_coalescing_job_right_behind_another_coalescing_one_is_dropped(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=4)
        jobs.gate("start")
        scheduler.submit("thread-a", "start")
        await within(jobs.started["start"].wait())

        scheduler.submit("thread-a", "follow-up 1", coalesces=True)
        scheduler.submit("thread-a", "follow-up 2", coalesces=True)  # follow-up 1 will read the thread anyway
        scheduler.submit("thread-a", "end word")
        scheduler.submit("thread-a", "follow-up 3", coalesces=True)  # behind a job that does not coalesce: kept
        jobs.open("start")
        await within(scheduler.idle())

        assert jobs.ran() == ["start", "follow-up 1", "end word", "follow-up 3"]

    async def test_a_coalescing_job_behind_a_running_one_is_kept(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=4)
        jobs.gate("follow-up 1")
        scheduler.submit("thread-a", "follow-up 1", coalesces=True)
        await within(jobs.started["follow-up 1"].wait())  # it read the thread already: a newer post needs a turn

        scheduler.submit("thread-a", "follow-up 2", coalesces=True)
        jobs.open("follow-up 1")
        await within(scheduler.idle())

        assert jobs.ran() == ["follow-up 1", "follow-up 2"]


class TestDrain:
    """drain's grace is real time on the event loop (it has no clock to inject): kept short."""

    async def test_drain_lets_a_short_job_finish_cancels_a_long_one_and_reports_the_queued_ones(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=2)
        jobs.gate("short", "long", "after long")
        scheduler.submit("thread-short", "short")
        scheduler.submit("thread-long", "long")
        scheduler.submit("thread-long", "after long")
        await within(jobs.started["short"].wait())
        await within(jobs.started["long"].wait())
        unstarted: list[str] = []

        async def tell(job: str) -> None:
            unstarted.append(job)

        drain = asyncio.create_task(scheduler.drain(grace=0.2, unstarted=tell, interrupt_grace=1.0))
        jobs.open("short")  # finishes within the grace; "long" never does
        await within(drain)

        assert "end short" in jobs.log
        assert "cancelled long" in jobs.log and "end long" not in jobs.log
        assert unstarted == ["after long"]
        assert "start after long" not in jobs.log
        await within(scheduler.idle())
        assert len(scheduler) == 0

    async def test_a_job_still_waiting_for_a_slot_when_the_grace_ends_is_reported_and_never_started(
        self, jobs: Jobs
    ) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=1)
        jobs.gate("long", "waits for a slot")
        scheduler.submit("thread-long", "long")
        scheduler.submit("thread-other", "waits for a slot")
        await within(jobs.started["long"].wait())
        unstarted: list[str] = []

        async def tell(job: str) -> None:
            unstarted.append(job)

        await within(scheduler.drain(grace=0.05, unstarted=tell, interrupt_grace=1.0))
        await within(scheduler.idle())

        assert unstarted == ["waits for a slot"]
        assert jobs.log == ["start long", "cancelled long"]

    async def test_a_queued_job_does_not_start_during_the_grace_even_when_its_thread_frees_up(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=2)
        jobs.gate("first")
        scheduler.submit("thread", "first")
        scheduler.submit("thread", "queued")
        await within(jobs.started["first"].wait())
        unstarted: list[str] = []

        async def tell(job: str) -> None:
            unstarted.append(job)

        drain = asyncio.create_task(scheduler.drain(grace=0.5, unstarted=tell, interrupt_grace=1.0))
        jobs.open("first")  # the thread frees up within the grace: a new turn would start an LLM call
        await within(drain)
        assert "end first" in jobs.log and "start queued" not in jobs.log
        assert unstarted == ["queued"]

    async def test_drain_with_nothing_running_returns_at_once(self, jobs: Jobs) -> None:
        scheduler: Scheduler[str] = Scheduler(jobs.run, max_concurrent=2)
        unstarted: list[str] = []

        async def tell(job: str) -> None:
            unstarted.append(job)

        await within(scheduler.drain(grace=60.0, unstarted=tell, interrupt_grace=60.0), seconds=1.0)

        assert unstarted == []


class TestLimitedLLM:
    async def test_no_more_than_the_cap_of_streams_is_ever_open(self) -> None:
        llm = FakeLLM()
        replies = [llm.enqueue([f"answer {i}"], hold_at=0) for i in range(5)]
        limited = LimitedLLM(llm, max_concurrent=2)

        readers = [asyncio.create_task(_collect(limited)) for _ in range(5)]
        await within(replies[0].holding.wait())
        await within(replies[1].holding.wait())  # two open at once
        for reply in replies:
            await within(reply.holding.wait())  # each opens only once an earlier one closed
            reply.release()
        answers = await within(asyncio.gather(*readers))

        assert llm.max_open == 2
        assert sorted(answers) == [f"answer {i}" for i in range(5)]
        assert len(llm.requests) == 5

    async def test_a_stream_abandoned_by_its_reader_is_closed_before_its_slot_is_freed(self) -> None:
        llm = FakeLLM()
        first = llm.enqueue(["one", "two"])
        second = llm.enqueue(["three"])
        limited = LimitedLLM(llm, max_concurrent=1)

        stream = limited.stream([], 100)
        assert await anext(stream) == "one"
        await stream.aclose()  # e.g. the turn was cancelled mid-answer
        answer = await within(_collect(limited))

        assert answer == "three"
        assert first.closed.is_set() and second.closed.is_set()
        assert llm.max_open == 1  # the abandoned stream was closed before its slot went to the next
        assert llm.open == 0

    async def test_close_closes_the_wrapped_client(self) -> None:
        llm = FakeLLM()
        await LimitedLLM(llm, max_concurrent=1).close()

        assert llm.closed


async def _collect(limited: LimitedLLM) -> str:
    return "".join([delta async for delta in limited.stream([], 100)])

