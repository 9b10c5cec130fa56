"""The rate budget end to end: the fake's limiter behaves as Mattermost's, and the real bot (driver,
aiohttp transport) keeps under it - 100 answers streaming at once against 10 req/s, burst 100,
with no 429; a 429 that comes anyway is waited out, logged once, and never doubles a post."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from dataclasses import dataclass

import httpx
import pytest

from llmbot.app import Bot
from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI

STREAMS = 100
SECONDS = 10.0  # each answer streams this long
CHUNKS = 41


@dataclass
class Figures:
    """What a burst of streaming answers did, as the fake Mattermost saw it."""

    streams: int
    complete: int  # threads whose one reply shows the whole answer
    rate_limited: int  # 429s the fake returned
    first_token: list[float]  # seconds from each question to the bot's first post in its thread
    done: list[float]  # seconds from each question to its answer's last update
    edits: list[int]  # edits per answer, the final one included
    rest_calls: int  # requests that reached the API (429s not counted)
    wall: float

    def lines(self) -> list[str]:
        def spread(values: list[float]) -> str:
            if not values:
                return "none"
            q = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
            return f"min {min(values):.2f} / median {statistics.median(values):.2f} / p90 {q[8]:.2f} / max {max(values):.2f} s"

        return [
            f"answers complete: {self.complete} / {self.streams}; 429s returned by the server: {self.rate_limited}",
            f"first token shown: {spread(self.first_token)}",
            f"answer complete:   {spread(self.done)}",
            f"edits per answer (the final one included): mean {statistics.fmean(self.edits or [0]):.2f}, "
            f"min {min(self.edits or [0])}, max {max(self.edits or [0])}",
            f"REST calls that reached the API: {self.rest_calls} ({self.rest_calls / self.streams:.2f} per answer); "
            f"wall {self.wall:.1f} s",
        ]


def answer_chunks(chunks: int = CHUNKS) -> list[str]:
    return ["Part 0."] + [f" Part {i}." for i in range(1, chunks)]


async def streams_at_once(
    mm: FakeMattermost, llm: FakeOpenAI, bot: Bot, channel: dict, users: list[dict], *,
    streams: int = STREAMS, seconds: float = SECONDS, chunks: int = CHUNKS, timeout: float = 120.0,
) -> Figures:
    """`streams` questions posted back to back, each answered by a stream of `seconds`; returns
    once every turn is over (answered or not)."""
    words = answer_chunks(chunks)
    final = "".join(words)
    for _ in range(streams):
        llm.enqueue(words, delay=seconds / (chunks - 1))
    mm.reset_requests()
    refused_before, edits_before = mm.rate_limited, len(mm.edits)
    asked_before = len(llm.requests)
    started = time.monotonic()
    roots: list[dict] = []
    asked_at: dict[str, float] = {}
    for i in range(streams):
        root = await mm.post_as(users[i % len(users)], channel, f"gpt question {i}, please")
        roots.append(root)
        asked_at[root["id"]] = time.monotonic()
    await mm.wait_for(lambda: len(llm.requests) - asked_before >= streams, timeout=timeout, message="every turn asked")
    await asyncio.wait_for(bot.idle(), timeout)
    wall = time.monotonic() - started

    bot_id = mm.bot["id"]
    replies = {r["id"]: [p for p in mm.thread(r["id"]) if p["user_id"] == bot_id] for r in roots}
    edits = mm.edits[edits_before:]
    first_token, done, per_answer = [], [], []
    complete = 0
    for root in roots:
        posts = replies[root["id"]]
        if not posts:
            continue
        first_token.append((posts[0]["create_at"] - root["create_at"]) / 1000)
        if len(posts) == 1 and posts[0]["message"] == final:
            complete += 1
        times = [t for post_id, _text, t in edits if post_id == posts[0]["id"]]
        per_answer.append(len(times))
        if times:
            done.append(max(times) - asked_at[root["id"]])
    return Figures(
        streams, complete, mm.rate_limited - refused_before, first_token, done, per_answer, len(mm.requests), wall
    )


def crowd(mm: FakeMattermost, people: int) -> tuple[dict, list[dict]]:
    users = [mm.add_user(f"asker{i}") for i in range(people)]
    return mm.add_channel("busy", members=(mm.bot, *users), display_name="Busy"), users


async def test_the_fakes_limiter_is_mattermosts_gcra(mm):
    """10/s, burst 100: 101 requests at once pass, the 102nd gets 429 with the server's headers."""
    now = [1000.0]
    mm.limit_rate(10, 100, clock=lambda: now[0])
    headers = {"Authorization": f"Bearer {mm.bot_token}"}
    async with httpx.AsyncClient(base_url=mm.url, headers=headers) as client:
        first = await client.get("/api/v4/users/me")
        assert first.status_code == 200
        assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("101", "100")
        assert first.headers["X-RateLimit-Reset"] == "1" and "Retry-After" not in first.headers
        for _ in range(99):
            assert (await client.get("/api/v4/users/me")).status_code == 200
        last = await client.get("/api/v4/users/me")  # the 101st
        assert last.status_code == 200 and last.headers["X-RateLimit-Remaining"] == "0"
        assert last.headers["X-RateLimit-Reset"] == "11"  # 10.1 s until the bucket is full again
        refused = await client.post("/api/v4/posts", json={"channel_id": "x", "message": "hi"})
        assert refused.status_code == 429 and refused.text == "limit exceeded\n"
        assert refused.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert refused.headers["Retry-After"] == "1" and refused.headers["X-RateLimit-Remaining"] == "0"
        assert "X-Request-Id" not in refused.headers  # refused in front of the router
        assert mm.rate_limited == 1 and mm.rate_limited_calls[0][:2] == ("POST", "/api/v4/posts")
        assert not any(r[0] == "POST" for r in mm.requests)  # it never reached the API
        now[0] += 0.1  # one period later, one more request passes
        assert (await client.get("/api/v4/users/me")).status_code == 200
        assert (await client.get("/api/v4/users/me")).status_code == 429
        now[0] += 20  # long enough: the bucket is full again
        again = await client.get("/api/v4/users/me")
        assert again.headers["X-RateLimit-Remaining"] == "100" and mm.rate_limited == 2


async def test_a_default_server_has_no_limiter_and_the_bot_no_budget(start_bot, world, mm, llm_server):
    run = await start_bot()
    post = await mm.post_as(world.alice, world.town, "gpt hello")
    await run.wait_replies(post["id"], 1)
    budget = run.bot.chat.rate_budget
    assert not budget.active and not budget.engaged and budget.edit_wait() == 0.0


async def test_the_bot_learns_the_limit_from_the_headers(start_bot, world, mm, llm_server):
    mm.limit_rate(10, 100)
    run = await start_bot()
    budget = run.bot.chat.rate_budget
    assert budget.active and budget.burst == 95  # MaxBurst 100, less a margin of 5
    post = await mm.post_as(world.alice, world.town, "gpt hello")
    await run.wait_replies(post["id"], 1)
    mm.limit_rate(None)  # the admin turned it off: the next answer's calls carry no headers
    post = await mm.post_as(world.alice, world.town, "gpt again")
    await run.wait_replies(post["id"], 1)
    assert not budget.active


async def test_a_429_anyway_is_waited_out_logged_once_and_posts_once(start_bot, world, mm, llm_server, caplog):
    """Another client at the bot's address spent the whole budget: the bot's create gets 429s,
    waits what the server asks, and posts its answer once; one warning says so."""
    mm.limit_rate(10, 100)
    run = await start_bot()
    mm.spend_rate_limit(150)  # someone else's requests, from the bot's address
    llm_server.enqueue(["All", " done."])
    caplog.set_level(logging.DEBUG, logger="llmbot")
    started = time.monotonic()
    post = await mm.post_as(world.alice, world.town, "gpt hello")
    (reply,) = await run.wait_replies(post["id"], 1, timeout=15)
    assert reply["message"] == "All done."
    assert mm.rate_limited >= 1 and time.monotonic() - started >= 0.9  # a Retry-After of 1 s, at least
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "429" in w]) == 1, warnings
    assert not [w for w in warnings if "failed (try" in w or "updating the answer failed" in w], warnings
    assert len([p for p in mm.posts_by(mm.bot) if p["root_id"] == post["id"]]) == 1


@pytest.mark.parametrize("configured", [False, True], ids=["learned", "set"])
async def test_100_answers_streaming_at_once_get_no_429(start_bot, mm, llm_server, configured):
    """The target of issue 10: 100 answers of 10 s at once against 10 req/s, burst 100: no 429,
    every answer whole, each first token shown within a few seconds."""
    mm.limit_rate(10, 100)
    channel, users = crowd(mm, STREAMS)
    env = {"LLMBOT_MATTERMOST_RATE": "10", "LLMBOT_MATTERMOST_BURST": "100"} if configured else {}
    run = await start_bot(LLMBOT_MAX_CONCURRENT_LLM=str(STREAMS), LLMBOT_LLM_TIMEOUT="60", **env)
    await asyncio.sleep(1.0)  # the limiter refills what starting took, as on a bot running a while
    figures = await streams_at_once(mm, llm_server, run.bot, channel, users)
    print(f"\n{STREAMS} answers of {SECONDS:g} s at once, limiter 10/s burst 100, budget "
          f"{'set' if configured else 'learned from the headers'}:")
    for line in figures.lines():
        print("  " + line)
    assert figures.rate_limited == 0
    assert figures.complete == STREAMS
    assert max(figures.first_token) < 5.0
    assert statistics.fmean(figures.edits) < SECONDS / 2  # unbudgeted, each stream edits once a second
