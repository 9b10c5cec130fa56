"""Bot CPU per irrelevant channel message: 20,000 `posted` frames the bot must ignore.

The frames have the exact shape Mattermost sends the bot (data.post is a JSON string, sender_name
with "@", channel_type "O", no `mentions` key because the bot is not mentioned) and are fed to
`await bot.on_frame(raw)` directly, as the websocket loop does. That only parses and queues; the
dispatcher's consumer task routes each one (Dispatcher.dispatch: route + store look-up), so the
main figure runs from the first on_frame until the consumer has taken the last frame. The two
halves (Dispatcher.on_frame, Dispatcher.dispatch) are then timed on their own.
"""

from __future__ import annotations

import gc
import json
import random
import time

import orjson
from _harness import Row, report, run, running_bot

from llmbot.events import Posted, parse_frame
from llmbot.router import route
from llmbot.store import MemoryStore

MESSAGES = 20_000
WARMUP = 1_000
ON_FRAME_BATCH = 5_000  # below the dispatcher's queue size (10,000): on_frame never waits
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
        dispatcher, store = bot.dispatcher, bot.store
        assert dispatcher is not None, "started by running_bot"
        assert isinstance(store, MemoryStore), "the bot's default store"
        warm, _ = build_frames(WARMUP, b.users, b.channel, rng, 1)
        frames, kinds = build_frames(MESSAGES, b.users, b.channel, rng, 1 + WARMUP)
        mean_bytes = sum(len(f) for f in frames) / len(frames)

        for raw in warm:
            await bot.on_frame(raw)
        await bot.idle()  # the warm-up routed, and the start-up catch-up over: nothing is held back
        holding = dispatcher._holding
        b.mm.reset_requests()
        llm_before = len(b.llm.requests)
        store_before = len(store)
        claims_before = len(store._claims)

        # The whole path of an ignored message: bot.on_frame (parse, queue) and the dispatcher's
        # consumer (take from the queue, route + store look-up in Dispatcher.dispatch).
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for raw in frames:
            await bot.on_frame(raw)
        await dispatcher.idle()  # every frame taken by the consumer
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0

        queued = len(bot.scheduler)
        await bot.idle()
        rest_calls = len(b.mm.requests)
        llm_calls = len(b.llm.requests) - llm_before
        store_after = len(store)
        claims_after = len(store._claims)

        # The two halves on their own. on_frame only parses and queues: fed in batches smaller
        # than the queue, it never waits, so the consumer runs only between the timed batches.
        on_frame_cpu = 0.0
        for i in range(0, MESSAGES, ON_FRAME_BATCH):
            gc.collect()
            c0 = time.process_time()
            for raw in frames[i : i + ON_FRAME_BATCH]:
                await dispatcher.on_frame(raw)
            on_frame_cpu += time.process_time() - c0
            await dispatcher.idle()
        on_frame_us = on_frame_cpu / MESSAGES * 1e6
        events = [parse_frame(f) for f in frames]
        assert all(isinstance(e, Posted) for e in events)
        gc.collect()
        c0 = time.process_time()
        for e in events:
            await dispatcher.dispatch(e)  # type: ignore[arg-type]
        dispatch_us = (time.process_time() - c0) / MESSAGES * 1e6
        await bot.idle()

        # Where the time goes (informational): the same frames through the parts of the path.
        def per_message(fn: object) -> float:
            gc.collect()
            c0 = time.process_time()
            fn()  # type: ignore[operator]
            return (time.process_time() - c0) / MESSAGES * 1e6

        json_us = per_message(lambda: [orjson.loads(orjson.loads(f)["data"]["post"]) for f in frames])
        parse_us = per_message(lambda: [parse_frame(f) for f in frames])
        me, specs, end_words = dispatcher.me, dispatcher._specs, dispatcher.end_words
        route_us = per_message(lambda: [route(e, me, None, specs, end_words) for e in events])  # type: ignore[arg-type]

    cpu_us = cpu / MESSAGES * 1e6
    wall_us = wall / MESSAGES * 1e6
    mix = ", ".join(f"{n} {k}" for k, n in kinds.items())
    nothing = queued == 0 and store_after == store_before and claims_after == claims_before
    report(
        f"irrelevant messages: {MESSAGES:,} ignored `posted` frames fed to bot.on_frame",
        [
            Row("CPU per message, on_frame + consumer (time.process_time)", f"{cpu_us:.1f} µs", f"<= {TARGET_US:.0f} µs",
                cpu_us <= TARGET_US),
            Row("wall per message", f"{wall_us:.1f} µs"),
            Row("total CPU / wall", f"{cpu:.3f} s / {wall:.3f} s"),
            Row("  Dispatcher.on_frame alone (parse, queue)", f"{on_frame_us:.1f} µs"),
            Row("    of which parse_frame (both JSON layers -> Posted)", f"{parse_us:.1f} µs"),
            Row("      of which orjson.loads of frame + data.post alone", f"{json_us:.1f} µs"),
            Row("  Dispatcher.dispatch alone (route + store look-up)", f"{dispatch_us:.1f} µs"),
            Row("    of which route() alone", f"{route_us:.1f} µs"),
            Row("mean frame size", f"{mean_bytes:.0f} bytes"),
            Row("REST calls during the run", str(rest_calls), "0", rest_calls == 0),
            Row("LLM calls during the run", str(llm_calls), "0", llm_calls == 0),
            Row("threads queued / threads bound / posts claimed",
                f"{queued} / {store_after - store_before} / {claims_after - claims_before}", "0 / 0 / 0", nothing),
        ],
        [
            f"mix: {mix}; ~5% carry a file; {WARMUP:,} other frames were fed first as a warm-up.",
            "the first row is the whole cost of an ignored message: on_frame, the queue, the consumer task and dispatch;",
            "the consumer's own share (queue, task switches) is roughly the first row minus the two halves."
            + (" WARNING: the dispatcher was holding posts back (catch-up) when the run began." if holding else ""),
        ],
    )


if __name__ == "__main__":
    run(main())
