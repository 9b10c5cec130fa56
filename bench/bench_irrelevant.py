"""Bot CPU per irrelevant channel message: 20,000 `posted` frames the bot must ignore.

The frames have the exact shape Mattermost sends the bot (data.post is a JSON string, sender_name
with "@", channel_type "O", no `mentions` key because the bot is not mentioned) and are fed to
`await bot.on_frame(raw)` directly, as the websocket loop does.
"""

from __future__ import annotations

import gc
import json

import orjson
import random
import time

from _harness import Row, report, run, running_bot
from llmbot.events import parse_frame
from llmbot.router import route

MESSAGES = 20_000
WARMUP = 1_000
TARGET_US = 30.0
_ID_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"  # Mattermost ids: 26 lowercase alnum chars

SENTENCES = [
    "Has anyone seen the deploy dashboard today? It looks stuck on the staging step.",
    "I pushed the fix for the flaky login test, can someone review?",
    "Lunch at 12:30? The new place on 5th street has great ramen 🍜",
    "The build on main is green again, thanks everyone.",
    "Reminder: retro is moved to Thursday at 15:00 CET.",
    "Does the gpt-4 pricing page say anything about batch discounts?",  # "gpt" not at the start: no trigger
    "We should ask chatgpt later, or not. Let's first read the docs.",
    "Here is the stack trace:\n```\nTraceback (most recent call last):\n  File \"app.py\", line 12\nKeyError: 'id'\n```",
    "Merci pour la revue, je corrige ça demain matin. Ça marche ?",
    "Jira ticket OPS-4411 is blocked by the firewall change, see the thread above.",
    "+1, same here",
    "ok",
    "can you mail llmbot@example.com about the quota? (that's the shared inbox, not the bot)",
    "Kubernetes node pool upgrade finished: 12/12 nodes ready, no evictions.",
    "SELECT count(*) FROM events WHERE created_at > now() - interval '1 day'; -- returns 0, why?",
    "Ich schaue mir das nach dem Meeting an. Danke für den Hinweis!",
    "The PR description says `gpt` is reserved for the bot, we should pick another prefix for the CLI.",
    "✅ done. 🎉",
]


def new_id(rng: random.Random) -> str:
    return "".join(rng.choices(_ID_ALPHABET, k=26))


def frame(seq: int, post: dict, sender: str, channel: dict, team_id: str) -> str:
    """One `posted` websocket frame exactly as the server sends it to a member who is not mentioned."""
    data = {
        "channel_display_name": channel["display_name"],
        "channel_name": channel["name"],
        "channel_type": "O",
        "post": json.dumps(post),
        "sender_name": f"@{sender}",
        "set_online": True,
        "team_id": team_id,
    }
    broadcast = {"omit_users": None, "user_id": "", "channel_id": channel["id"], "team_id": "", "connection_id": "",
                 "omit_connection_id": ""}
    return json.dumps({"event": "posted", "data": data, "broadcast": broadcast, "seq": seq})


def build_frames(count: int, users: list[dict], channel: dict, rng: random.Random, first_seq: int) -> tuple[list[str], dict]:
    """A realistic mix of messages the bot must ignore; returns the frames and how many of each kind."""
    team_id = new_id(rng)
    now_ms = int(time.time() * 1000)
    foreign_roots = [new_id(rng) for _ in range(300)]  # threads the bot was never called into
    kinds = {"root post without trigger": 0, "reply in a thread the bot is not in": 0, "mention of other people": 0}
    frames = []
    for i in range(count):
        author = rng.choice(users)
        others = [u for u in users if u is not author]
        pick = rng.random()
        root_id = ""
        if pick < 0.45:
            kind = "root post without trigger"
            message = rng.choice(SENTENCES)
        elif pick < 0.80:
            kind = "reply in a thread the bot is not in"
            message = rng.choice(SENTENCES)
            root_id = rng.choice(foreign_roots)
        else:
            kind = "mention of other people"
            who = rng.sample(others, k=min(len(others), rng.choice((1, 2))))
            message = " ".join(f"@{u['username']}" for u in who) + " " + rng.choice(SENTENCES)
            if rng.random() < 0.5:
                root_id = rng.choice(foreign_roots)
        kinds[kind] += 1
        ts = now_ms + i
        post = {
            "id": new_id(rng), "create_at": ts, "update_at": ts, "edit_at": 0, "delete_at": 0, "is_pinned": False,
            "user_id": author["id"], "channel_id": channel["id"], "root_id": root_id, "original_id": "",
            "message": message, "type": "", "props": {"disable_group_highlight": True} if "@" in message else {},
            "hashtags": "", "pending_post_id": f"{author['id']}:{ts}", "reply_count": 0 if not root_id else rng.randint(1, 40),
            "last_reply_at": 0, "participants": None, "metadata": {},
        }
        if rng.random() < 0.05:
            post["file_ids"] = [new_id(rng)]
            post["metadata"] = {"files": [{"id": post["file_ids"][0], "name": "screenshot.png", "extension": "png",
                                           "size": rng.randint(10_000, 900_000), "mime_type": "image/png"}]}
        frames.append(frame(first_seq + i, post, author["username"], channel, team_id))
    return frames, kinds


async def main() -> None:
    rng = random.Random(20240601)
    async with running_bot(humans=("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")) as b:
        bot = b.bot
        warm, _ = build_frames(WARMUP, b.users, b.channel, rng, 1)
        frames, kinds = build_frames(MESSAGES, b.users, b.channel, rng, 1 + WARMUP)
        mean_bytes = sum(len(f) for f in frames) / len(frames)

        for raw in warm:
            await bot.on_frame(raw)
        b.mm.reset_requests()
        llm_before = len(b.llm.requests)
        store_before = len(bot.store)  # type: ignore[arg-type]
        acted_before = len(bot._acted)

        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for raw in frames:
            await bot.on_frame(raw)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0

        queued = len(bot._threads)
        await bot.idle()
        rest_calls = len(b.mm.requests)
        llm_calls = len(b.llm.requests) - llm_before
        store_after = len(bot.store)  # type: ignore[arg-type]
        acted_after = len(bot._acted)

        # Where the time goes (informational): the same frames through the parts of on_frame.
        def per_message(fn: object) -> float:
            gc.collect()
            c0 = time.process_time()
            fn()  # type: ignore[operator]
            return (time.process_time() - c0) / MESSAGES * 1e6

        json_us = per_message(lambda: [orjson.loads(orjson.loads(f)["data"]["post"]) for f in frames])
        parse_us = per_message(lambda: [parse_frame(f) for f in frames])
        events = [parse_frame(f) for f in frames]
        me, specs, end_words = bot.me, bot._specs, bot.settings.end_words
        route_us = per_message(lambda: [route(e, me, None, specs, end_words) for e in events])  # type: ignore[arg-type]

    cpu_us = cpu / MESSAGES * 1e6
    wall_us = wall / MESSAGES * 1e6
    mix = ", ".join(f"{n} {k}" for k, n in kinds.items())
    report(
        f"irrelevant messages: {MESSAGES:,} ignored `posted` frames fed to bot.on_frame",
        [
            Row("CPU per message (time.process_time)", f"{cpu_us:.1f} µs", f"<= {TARGET_US:.0f} µs", cpu_us <= TARGET_US),
            Row("wall per message", f"{wall_us:.1f} µs"),
            Row("total CPU / wall", f"{cpu:.3f} s / {wall:.3f} s"),
            Row("  of which parse_frame (both JSON layers -> Posted)", f"{parse_us:.1f} µs"),
            Row("    of which orjson.loads of frame + data.post alone", f"{json_us:.1f} µs"),
            Row("  of which route() alone", f"{route_us:.1f} µs"),
            Row("mean frame size", f"{mean_bytes:.0f} bytes"),
            Row("REST calls during the run", str(rest_calls), "0", rest_calls == 0),
            Row("LLM calls during the run", str(llm_calls), "0", llm_calls == 0),
            Row("turns queued / threads bound / posts remembered", f"{queued} / {store_after - store_before} / {acted_after - acted_before}",
                "0 / 0 / 0", queued == 0 and store_after == store_before and acted_after == acted_before),
        ],
        [f"mix: {mix}; ~5% carry a file; {WARMUP:,} other frames were fed first as a warm-up."],
    )


if __name__ == "__main__":
    run(main())
