"""REST calls per follow-up turn, not counting streaming edits (PUT /posts/{id}/patch).

One conversation is opened, then 20 follow-ups are posted one at a time, each waiting for the
bot's complete answer; FakeMattermost.requests is reset before each follow-up and read after it.

`--thread-posts N` puts N more posts into the thread after the opening answer, silently (no
websocket event, as if written before the bot started): the opener and the bot taking turns,
20-400 characters each (about 50 tokens), so the follow-ups run in a thread of N + 2 posts and more.
The thread read goes newest first and stops once the context budget is filled; with posts this
long one page of 200 does, whatever N.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics

from _harness import Row, bot_replies, report, run, running_bot

FOLLOW_UPS = 20
TARGET = 2  # GET the thread + POST the answer
ANSWER_CHUNKS = ["Sure", " — here is", " a short answer", " to that."]
_PATCH = re.compile(r"^/api/v4/posts/[^/]+/patch$")
_ID = re.compile(r"/[a-z0-9]{26}(?=/|$)")
_THREAD = re.compile(r"^/api/v4/posts/[^/]+/thread$")
FILLER_WORDS = (
    "the deploy pipeline fails on the staging cluster after we bumped the base image and I think it is the "
    "certificate chain again because curl works from my laptop but not from the pod we could pin the CA bundle "
    "or mount it as a secret what do you think about retries with backoff and jitter in the client library"
).split()


def is_edit(call: tuple) -> bool:
    method, path = call[0], call[1]
    return method == "PUT" and bool(_PATCH.match(path))


def show(call: tuple) -> str:
    method, path, query, _body = call
    path = _ID.sub("/{id}", path)
    q = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    return f"{method} {path}" + (f"?{q}" if q else "")


async def wait_answer(b, root_id: str, count: int, final: str, timeout: float = 15.0) -> None:
    await b.mm.wait_for(
        lambda: len(bot_replies(b.mm, root_id)) >= count and bot_replies(b.mm, root_id)[-1]["message"] == final,
        timeout=timeout,
        message=f"answer #{count}",
    )
    await b.bot.idle()


def filler(rng: random.Random) -> str:
    size = rng.randint(20, 400)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(FILLER_WORDS))
    return " ".join(words)[:size] + f" #{rng.randint(0, 10**6)}"


async def main(thread_posts: int) -> None:
    final = "".join(ANSWER_CHUNKS)
    per_turn: list[int] = []
    edits_per_turn: list[int] = []
    sample: list[tuple] = []
    typing_ws = 0
    thread_reads: list[int] = []
    async with running_bot() as b:
        alice, bob = b.users[0], b.users[1]
        b.llm.enqueue(ANSWER_CHUNKS, delay=0.01)
        root = await b.mm.post_as(alice, b.channel, "gpt how do I undo my last git commit?")
        await wait_answer(b, root["id"], 1, final)
        opening = list(b.mm.requests)
        rng = random.Random(20240601)
        for i in range(thread_posts):  # the opener and the bot taking turns, no websocket events
            await b.mm.post_as((alice, b.bot_user)[i % 2], b.channel, filler(rng), root_id=root["id"], broadcast=False)
        size_before = len(b.mm.thread(root["id"]))
        filled_by_bot = thread_posts // 2  # they count among the bot's posts the answers are waited on by

        for n in range(FOLLOW_UPS):
            b.llm.enqueue(ANSWER_CHUNKS, delay=0.01)
            b.mm.reset_requests()
            typing_before = len(b.mm.typing)
            user = (alice, bob)[n % 2]
            await b.mm.post_as(user, b.channel, f"follow-up {n}: and what if it was already pushed?", root_id=root["id"])
            await wait_answer(b, root["id"], n + 2 + filled_by_bot, final)
            calls = list(b.mm.requests)
            counted = [c for c in calls if not is_edit(c)]
            per_turn.append(len(counted))
            edits_per_turn.append(len(calls) - len(counted))
            thread_reads.append(sum(1 for c in calls if c[0] == "GET" and _THREAD.match(c[1])))
            typing_ws += sum(1 for t in b.mm.typing[typing_before:] if t[3] == "ws")
            if n == FOLLOW_UPS // 2:
                sample = calls
        thread_size = len(b.mm.thread(root["id"]))

    ok = min(per_turn) == max(per_turn) == TARGET
    rows = [
        Row("REST calls per follow-up turn, edits excluded (min / max / mean)",
            f"{min(per_turn)} / {max(per_turn)} / {statistics.mean(per_turn):.2f}", f"exactly {TARGET} every turn", ok),
        Row("streaming edits per turn (not counted): mean", f"{statistics.mean(edits_per_turn):.2f}"),
        Row("typing indicators sent over the websocket", str(typing_ws)),
        Row("REST calls of the opening turn (no edits)", str(sum(1 for c in opening if not is_edit(c)))),
        Row("thread reads (GET .../thread pages) per follow-up: min / max", f"{min(thread_reads)} / {max(thread_reads)}"),
        Row("posts in the thread before the first follow-up / at the end", f"{size_before:,} / {thread_size:,}"),
    ]
    notes = [f"per turn: {per_turn}", f"calls of follow-up #{FOLLOW_UPS // 2} (edits included):"]
    notes += [f"  {show(c)}" + ("   (edit, not counted)" if is_edit(c) else "") for c in sample]
    filled = f", {thread_posts:,} posts put in the thread first" if thread_posts else ""
    report(f"REST calls per follow-up: {FOLLOW_UPS} follow-ups in one conversation, each waited for{filled}", rows, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thread-posts", type=int, default=0, metavar="N", help="posts put in the thread first (default 0)")
    run(main(parser.parse_args().thread_posts))
