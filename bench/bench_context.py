"""Context build for a 2,000-post thread: llmbot.context.build_messages with the real tokenizer.

The thread is built in memory (no server): humans and the bot's answers, 20-400 characters each,
with code blocks and non-ASCII text. Cold = the first call in the process (empty token-count cache);
warm = 50 further calls on the same thread.
"""

from __future__ import annotations

import gc
import json
import random
import re
import statistics
import time

from _harness import Row, report, run

from llmbot.context import Speaker, build_messages, fit_to_budget, recent_turns, thread_turns
from llmbot.prompts import load_system_prompt
from llmbot.record import KIND_ANSWER, PROP_ANSWERS, PROP_HANDLER, PROP_KIND
from llmbot.settings import DEFAULT_TRIGGER
from llmbot.thread import Post, Thread, posts_from_post_list, thread_from_posts
from llmbot.tokens import load_tokenizer
from llmbot.triggers import mention_pattern

POSTS = 2_000
BUDGET = 8_000
WARM_CALLS = 50
TARGET_WARM_MS = 20.0
_ID_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"

WORDS = (
    "the deploy pipeline fails on the staging cluster after we bumped the base image and I think it is the "
    "certificate chain again because curl works from my laptop but not from the pod we could pin the CA bundle "
    "or mount it as a secret what do you think about retries with backoff and jitter in the client library "
    "also the migration took forty minutes on the replica which is odd given the index is already there"
).split()
UNICODE = [
    "café", "naïve", "Größe", "façade", "日本語", "中文测试", "Привет", "emoji 🚀",
    "✅", "→", "€42", "½", "ñandú", "🙂", "Ελληνικά",
]
CODE = [
    "```python\nfor item in items:\n    if item.ready:\n        yield item.value\n```",
    "```bash\nkubectl -n prod rollout restart deploy/api && kubectl -n prod rollout status deploy/api\n```",
    "```sql\nSELECT id, created_at FROM orders WHERE status = 'stuck' ORDER BY created_at DESC LIMIT 20;\n```",
    "```json\n{\"retries\": 3, \"backoff\": \"exponential\", \"timeout_s\": 30}\n```",
    "`git reset --soft HEAD~1`",
]


def new_id(rng: random.Random) -> str:
    return "".join(rng.choices(_ID_ALPHABET, k=26))


def text(rng: random.Random, low: int = 20, high: int = 400) -> str:
    size = rng.randint(low, high)
    parts: list[str] = []
    length = 0
    while length < size:
        roll = rng.random()
        if roll < 0.04 and size - length > 60:
            piece = "\n" + rng.choice(CODE) + "\n"
        elif roll < 0.12:
            piece = rng.choice(UNICODE)
        else:
            piece = rng.choice(WORDS)
        if rng.random() < 0.08:
            piece += rng.choice((".", ",", "?", "!", ":"))
        parts.append(piece)
        length += len(piece) + 1
    out = " ".join(parts)
    if len(out) > high:
        out = out[:high]
    return out + f" #{rng.randint(0, 10**6)}"  # every post distinct, so nothing is cached by accident


def build_thread(rng: random.Random) -> tuple[Thread, Speaker, dict[str, str], str]:
    bot_id = new_id(rng)
    humans = {new_id(rng): name for name in ("alice", "bob", "carol", "dave", "erin", "frank")}
    human_ids = list(humans)
    channel = new_id(rng)
    root_id = new_id(rng)
    t = 1_700_000_000_000
    posts: list[Post] = [Post(root_id, channel, human_ids[0], "", "gpt " + text(rng), t)]
    last_human = root_id
    for _ in range(1, POSTS):
        t += rng.randint(1_000, 120_000)
        if rng.random() < 0.45:  # one of the bot's answers to the newest human post
            props = {"from_bot": "true", PROP_HANDLER: "gpt", PROP_KIND: KIND_ANSWER, PROP_ANSWERS: last_human}
            posts.append(Post(new_id(rng), channel, bot_id, root_id, text(rng), t, props=props))
        else:
            pid = new_id(rng)
            message = text(rng)
            if rng.random() < 0.05:
                message = "@llmbot " + message
            author = rng.choice(human_ids)  # drawn before the file count, as ever: the same thread every run
            files = 1 if rng.random() < 0.02 else 0
            posts.append(Post(pid, channel, author, root_id, message, t, file_count=files))
            last_human = pid
    names = {**humans, bot_id: "llmbot"}
    speaker = Speaker(bot_id, mention_pattern("llmbot"), (re.compile(DEFAULT_TRIGGER, re.IGNORECASE),))
    system = load_system_prompt(None).render(
        bot_name="llmbot", date="Monday, 03 June 2024 (UTC)", channel="the channel ~Town Square",
        participants=", ".join(f"@{n}" for n in humans.values()),
    )
    return Thread(root_id, tuple(posts)), speaker, names, system


def as_post_list(thread: Thread) -> str:
    """The thread as the server's PostList JSON, to decode fresh copies (as each turn re-fetches it)."""
    posts = {
        p.id: {"id": p.id, "channel_id": p.channel_id, "user_id": p.user_id, "root_id": p.root_id, "message": p.message,
               "create_at": p.create_at, "type": p.type, "props": dict(p.props), "file_ids": ["f"] * p.file_count,
               "delete_at": 0, "edit_at": 0}
        for p in thread.posts
    }
    return json.dumps({"order": list(posts), "posts": posts})


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


async def main() -> None:
    rng = random.Random(42)
    thread, speaker, names, system = build_thread(rng)
    chars = sum(len(p.message) for p in thread.posts)

    t0 = time.perf_counter()
    tokenizer = load_tokenizer("gpt-4o-mini")
    load_s = time.perf_counter() - t0

    gc.collect()
    t0 = time.perf_counter()
    messages = build_messages(thread, system, speaker, names, BUDGET, tokenizer)
    cold = time.perf_counter() - t0

    warm: list[float] = []
    for _ in range(WARM_CALLS):
        t0 = time.perf_counter()
        build_messages(thread, system, speaker, names, BUDGET, tokenizer)
        warm.append(time.perf_counter() - t0)

    # As in production: every turn re-reads the thread, so the posts are new objects (same texts).
    raw = as_post_list(thread)
    copies = [thread_from_posts(thread.root_id, posts_from_post_list(json.loads(raw))) for _ in range(WARM_CALLS)]
    fresh: list[float] = []
    for copy in copies:
        t0 = time.perf_counter()
        build_messages(copy, system, speaker, names, BUDGET, tokenizer)
        fresh.append(time.perf_counter() - t0)

    # Where the warm time goes (informational): the two halves of build_messages, and what
    # converting every post (thread_turns) would cost instead of only the newest (recent_turns).
    turns_s: list[float] = []
    fit_s: list[float] = []
    all_s: list[float] = []
    for _ in range(20):
        t0 = time.perf_counter()
        turns = recent_turns(thread, speaker, names, BUDGET, tokenizer)
        t1 = time.perf_counter()
        fit_to_budget(system, turns, BUDGET, tokenizer)
        t2 = time.perf_counter()
        every = thread_turns(thread, speaker, names)
        turns_s.append(t1 - t0)
        fit_s.append(t2 - t1)
        all_s.append(time.perf_counter() - t2)

    used = sum(tokenizer.count_message(m.content) + (1 if m.name else 0) for m in messages) + 3
    median = statistics.median(warm)
    report(
        f"context build: {POSTS:,}-post thread, budget {BUDGET:,} tokens, tokenizer {tokenizer.name}",
        [
            Row("cold: first build_messages call", ms(cold)),
            Row("warm: median of 50 further calls", ms(median), f"<= {TARGET_WARM_MS:g} ms", median * 1000 <= TARGET_WARM_MS),
            Row("warm: p95 of 50 further calls", ms(p95(warm)), f"<= {TARGET_WARM_MS:g} ms", p95(warm) * 1000 <= TARGET_WARM_MS),
            Row("  of which recent_turns (first question + newest)", f"{ms(statistics.median(turns_s))} ({len(turns):,} turns)"),
            Row("  of which fit_to_budget", ms(statistics.median(fit_s))),
            Row("for comparison: converting every post (thread_turns)", f"{ms(statistics.median(all_s))} ({len(every):,} turns)"),
            Row("warm, fresh Post objects per call: median / p95", f"{ms(statistics.median(fresh))} / {ms(p95(fresh))}"),
            Row("load_tokenizer (once per process)", ms(load_s)),
            Row("messages in the context / tokens used", f"{len(messages)} / {used:,}"),
            Row("thread size", f"{len(thread.posts):,} posts, {chars:,} chars"),
        ],
        [
            "gpt-4o-mini's own encoding is o200k_base; llmbot counts with whatever encoding file is cached "
            f"(here {tokenizer.name}).",
        ],
    )


if __name__ == "__main__":
    run(main())
