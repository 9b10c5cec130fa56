"""1 vs 2 vs 4 replicas: 1,000 conversations opened at once, with an LLM that takes 1 s per answer.

Each replica is an `llmbot run` process (tests/loopback/replicas.py) with LLMBOT_REDIS_URL pointing at
one redis-server this script starts on a free loopback port (`--save "" --appendonly no`) and
empties (FLUSHALL) before each replica count. The fakes (FakeMattermost, FakeOpenAI) run in this
script's process, fresh for each count. The fake LLM waits `--llm-seconds` before the first chunk of
every answer (FakeOpenAI.default_first_delay), then sends three chunks.

Once the replicas are connected and caught up, the root posts "gpt ..." are posted back to back, from
eight people in one channel. Wall time runs from the first post until every root post has a complete
answer from the bot (a bot post in the thread without a status line). Then the script waits
`--settle` seconds more, so a late duplicate would show, and counts:
  duplicates  complete answers beyond the first, over all threads (must be 0)
  lost        threads without a complete answer at the deadline (must be 0)
  partial     bot posts with a status line (cut short, taken over)
CPU is utime + stime from /proc/<pid>/stat of each replica (and of redis-server), read just before
the posts and again after the settle, before the replicas are stopped with SIGTERM.

LLMBOT_MAX_STARTS_PER_MINUTE=0 and LLMBOT_MAX_CONVERSATIONS_PER_USER=0: eight people opening 1,000
conversations are a load test, not spammers. LLMBOT_MAX_CONCURRENT_LLM is raised from 4 (meant for a
local model server) to `--llm-cap`, by default 256, the default LLMBOT_MAX_CONCURRENT_TURNS: the fake
LLM serves any number of answers at once, as a hosted API does, and with a cap below the turn cap the
wall time would be about conversations / (cap x replicas) x 1 s by construction - the bench would
measure the setting, not the replicas. At 256 the per-replica limit is the turn cap, the same for
every count. LLMBOT_REDIS_LEASE=5 (the default; the tests' helper uses 2), LLMBOT_REQUEST_TIMEOUT=30.

Run: .venv/bin/python bench/bench_replicas.py [--replicas 1,2,4] [--conversations 1000]
     [--llm-seconds 1] [--llm-cap 256] [--settle 3] [--timeout 300] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from _harness import ROOT, FakeMattermost, FakeOpenAI, Row, report, run

import llmbot
from llmbot.record import STATUS_LINE
from tests.conftest import RedisServer
from tests.loopback.replicas import Replicas

PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/<pid>/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def load_average() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Result:
    replicas: int
    post_seconds: float
    wall: float
    answered: int
    duplicates: int
    lost: int
    partial: int
    llm_calls: int
    rest_calls: int
    bot_cpu: float
    bot_cpu_each: list[float]
    turns_each: list[int]
    redis_cpu: float
    fakes_cpu: float
    exit_codes: list[int]
    warnings: int
    load_before: str
    load_after: str


def tally(mm: FakeMattermost, roots: list[str]) -> tuple[Counter[str], Counter[str]]:
    """Complete answers and marked (status line) answers per root, in one pass over the posts."""
    bot_id, wanted = mm.bot["id"], set(roots)
    complete: Counter[str] = Counter()
    marked: Counter[str] = Counter()
    for post in list(mm.posts.values()):
        root = post["root_id"]
        if root in wanted and post["user_id"] == bot_id and not post["delete_at"]:
            (marked if STATUS_LINE in post["message"] else complete)[root] += 1
    return complete, marked


async def flush(url: str) -> None:
    client = aioredis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def one_count(count: int, redis: RedisServer, args: argparse.Namespace, workdir: Path) -> Result:
    await flush(redis.url)
    mm, llm = FakeMattermost(), FakeOpenAI()
    llm.default_first_delay = args.llm_seconds  # every answer, not only scripted ones, takes this long
    llm.responder = lambda body: ["Here is ", "a short ", "answer."]
    await mm.start()
    await llm.start()
    people = [mm.add_user(name) for name in PEOPLE]
    channel = mm.add_channel("town-square", members=(mm.bot, *people), display_name="Town Square")
    rundir = workdir / f"x{count}"
    rundir.mkdir(exist_ok=True)
    group = Replicas(mm, llm, redis.url, rundir)
    group.env.update(
        LLMBOT_MAX_STARTS_PER_MINUTE="0", LLMBOT_MAX_CONVERSATIONS_PER_USER="0",
        LLMBOT_MAX_CONCURRENT_LLM=str(args.llm_cap), LLMBOT_REDIS_LEASE="5", LLMBOT_REQUEST_TIMEOUT="30",
    )
    try:
        await group.start(count)
        await asyncio.sleep(1.0)  # start-up is over: the first beats are out, the catch-up's requests are done
        pids = [r.proc.pid for r in group.running]
        assert redis.process is not None
        mm.reset_requests()
        load_before = load_average()
        cpu0 = [cpu_seconds(pid) for pid in pids]
        redis0, fakes0 = cpu_seconds(redis.process.pid), time.process_time()
        t0 = time.monotonic()
        roots = [(await mm.post_as(people[i % len(people)], channel, f"gpt question {i}: what is {i} squared?"))["id"]
                 for i in range(args.conversations)]
        post_seconds = time.monotonic() - t0
        deadline = t0 + args.timeout
        while True:
            complete, _ = tally(mm, roots)
            if len(complete) == len(roots) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        wall = time.monotonic() - t0
        await asyncio.sleep(args.settle)  # a duplicate or a take-over would land now
        cpu1 = [cpu_seconds(pid) for pid in pids]
        redis_cpu, fakes_cpu = cpu_seconds(redis.process.pid) - redis0, time.process_time() - fakes0
        load_after = load_average()
        complete, marked = tally(mm, roots)
        rest_calls = len(mm.requests)
        turns_each = [r.text().count(": answered in ") for r in group.running]
        warnings = sum(len(re.findall(r" (?:WARNING|ERROR|CRITICAL) ", r.text())) for r in group.running)
        exit_codes = [await group.stop(r) for r in list(group.running)]
    finally:
        await group.close()
        await mm.stop()
        await llm.stop()
    each = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    return Result(
        replicas=count, post_seconds=post_seconds, wall=wall, answered=len(complete),
        duplicates=sum(n - 1 for n in complete.values() if n > 1), lost=len(roots) - len(complete),
        partial=sum(marked.values()), llm_calls=len(llm.requests), rest_calls=rest_calls, bot_cpu=sum(each),
        bot_cpu_each=each, turns_each=turns_each, redis_cpu=redis_cpu, fakes_cpu=fakes_cpu, exit_codes=exit_codes,
        warnings=warnings, load_before=load_before, load_after=load_after,
    )


async def main(args: argparse.Namespace) -> None:
    # the replicas run this checkout's llmbot, as this script does
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    counts = [int(c) for c in args.replicas.split(",")]
    redis = RedisServer().start()  # (tests/conftest.py's: the tests' own redis-server)
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory(prefix="llmbot-bench-replicas-") as tmp:
            logs = Path(args.logs) if args.logs else Path(tmp)
            logs.mkdir(parents=True, exist_ok=True)
            for count in counts:
                result = await one_count(count, redis, args, logs)
                results.append(result)
                n = args.conversations
                floor = -(-n // (count * min(args.llm_cap, 256))) * args.llm_seconds
                report(
                    f"replicas: {count} x `llmbot run` on one redis-server, {n} conversations at once, "
                    f"LLM {args.llm_seconds:g} s per answer",
                    [
                        Row("wall time, first post -> every call answered", f"{result.wall:.2f} s"),
                        Row("  posting the root posts took", f"{result.post_seconds:.2f} s"),
                        Row("calls with a complete answer", f"{result.answered} / {n}"),
                        Row("duplicates", str(result.duplicates), "0", result.duplicates == 0),
                        Row("lost", str(result.lost), "0", result.lost == 0),
                        Row("answers marked partial (status line)", str(result.partial)),
                        Row("LLM calls", str(result.llm_calls)),
                        Row("Mattermost REST calls by the replicas", str(result.rest_calls)),
                        Row("bot CPU, all replicas", f"{result.bot_cpu:.2f} s"),
                        Row("  per replica", " / ".join(f"{c:.2f}" for c in result.bot_cpu_each) + " s"),
                        Row("bot CPU per turn", f"{result.bot_cpu / n * 1000:.2f} ms"),
                        Row("turns answered per replica (log)", " / ".join(map(str, result.turns_each))),
                        Row("redis-server CPU", f"{result.redis_cpu:.2f} s"),
                        Row("the fakes' CPU (this process)", f"{result.fakes_cpu:.2f} s"),
                        Row("log lines at WARNING and above, all replicas", str(result.warnings)),
                        Row("exit codes after SIGTERM", " / ".join(map(str, result.exit_codes))),
                        Row("load average before / after", f"{result.load_before}  |  {result.load_after}"),
                    ],
                    [
                        f"LLMBOT_MAX_CONCURRENT_LLM={args.llm_cap}, LLMBOT_MAX_CONCURRENT_TURNS=256 per replica: "
                        f"the floor is about {floor:g} s.",
                        f"CPU runs from the first post to {args.settle:g} s after the last answer.",
                        f"llmbot from {Path(llmbot.__file__).parent}",
                    ],
                )
    finally:
        redis.stop()
    print("\n| replicas | wall | duplicates | lost | partial | LLM calls | REST calls | bot CPU | CPU per turn "
          "| redis CPU | fakes CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.replicas} | {r.wall:.2f} s | {r.duplicates} | {r.lost} | {r.partial} | {r.llm_calls} | {r.rest_calls} "
              f"| {r.bot_cpu:.2f} s | {r.bot_cpu / args.conversations * 1000:.2f} ms | {r.redis_cpu:.2f} s "
              f"| {r.fakes_cpu:.2f} s |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2,4", help="replica counts, comma-separated (default 1,2,4)")
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--llm-seconds", type=float, default=1.0)
    parser.add_argument("--llm-cap", type=int, default=256, help="LLMBOT_MAX_CONCURRENT_LLM per replica (default 256)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds waited after the last answer (default 3)")
    parser.add_argument("--logs", metavar="DIR", help="keep the replicas' logs in DIR/x<count>/ (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before the rest count as lost")
    run(main(parser.parse_args()))
