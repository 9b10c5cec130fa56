"""Edits per second of one streamed reply: ~100 chunks, 0.05 s apart (a ~5 s stream).

Counts the PATCHes FakeMattermost recorded on the reply post (FakeMattermost.edits holds
(post_id, message, monotonic time)) and relates them to the stream's duration.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from _harness import Row, bot_replies, report, run, running_bot

CHUNKS = 100
DELAY = 0.05
TARGET_PER_S = 1.0


def answer_chunks() -> list[str]:
    words = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")
    chunks = [words[i % len(words)] for i in range(CHUNKS - 1)]
    return [*chunks, " Done."]


async def main() -> None:
    chunks = answer_chunks()
    final = "".join(chunks)
    async with running_bot() as b:
        b.llm.enqueue(chunks, delay=DELAY)
        root = await b.mm.post_as(b.users[0], b.channel, "gpt tell me a long story")
        created_at: float | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # find the reply as soon as it exists (10 ms resolution)
            replies = bot_replies(b.mm, root["id"])
            if replies:
                if created_at is None:
                    created_at = time.monotonic()
                if replies[-1]["message"] == final:
                    break
            await asyncio.sleep(0.01)
        await b.bot.idle()
        replies = bot_replies(b.mm, root["id"])
        reply_ids = {p["id"] for p in replies}
        edits = [e for e in b.mm.edits if e[0] in reply_ids]
        complete = bool(replies) and replies[-1]["message"] == final

    times = [t for _, _, t in edits]
    gaps = [b2 - a for a, b2 in itertools.pairwise(times)]
    start = created_at if created_at is not None else (times[0] if times else 0.0)
    duration = (times[-1] - start) if times else 0.0
    rate = len(edits) / duration if duration > 0 else float("inf") if edits else 0.0
    # The busiest one-second window, whatever its start (the rule as users see it).
    window_max = max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)
    gap_text = f"{min(gaps):.3f} s" if gaps else "n/a"
    create_to_first = f"{times[0] - start:.3f} s" if times and created_at is not None else "n/a"
    report(
        f"edits per streamed reply: {CHUNKS} chunks {DELAY:.2f} s apart (~{(CHUNKS - 1) * DELAY:.1f} s stream)",
        [
            Row("edits (PATCH) per second over the stream", f"{rate:.2f} /s", f"<= {TARGET_PER_S:g} /s", rate <= TARGET_PER_S),
            Row("strict reading: edits in the busiest 1-second window", str(window_max), f"<= {TARGET_PER_S:g}",
                window_max <= TARGET_PER_S),
            Row("strict reading: minimum gap between consecutive edits", gap_text, f">= {1 / TARGET_PER_S:g} s",
                bool(gaps) and min(gaps) >= 1 / TARGET_PER_S),
            Row("edits on the reply", str(len(edits))),
            Row("stream duration (reply created -> last edit)", f"{duration:.3f} s"),
            Row("reply created -> first edit", create_to_first),
            Row("all gaps between edits", ", ".join(f"{g:.2f}" for g in gaps) or "n/a"),
            Row("reply posts / final text complete", f"{len(replies)} / {'yes' if complete else 'NO'}"),
        ],
        [
            "creation time is seen by polling every 10 ms; edit times are the fake's own monotonic stamps.",
            "the last edit is the flush when the stream ends; the 'strict reading' rows check it against the 1 s rule too.",
        ],
    )


if __name__ == "__main__":
    run(main())
