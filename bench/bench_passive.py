"""What a passive listener costs per ignored message: bench_irrelevant's whole path, with and without one.

The same ignored `posted` frames as bench_irrelevant.py (minus the few whose text the listener's
pattern matches, which it would run for) go through `bot.on_frame` and the dispatcher's consumer,
once with the built-in chat alone and once with the chat plus a plugin whose only listener is
`@listen_to(r"\\bdeploy\\b", passive=True)`. Each configuration is a fresh bot; they alternate
within this process (plain, passive, plain, passive, ...) and the figure to read is the median of
the paired ratios. Every frame is still ignored: the listener matches none, so nothing is queued,
bound or claimed.
"""

from __future__ import annotations

import gc
import json
import random
import re
import statistics
import time
from dataclasses import dataclass

from _harness import Row, report, run, running_bot
from bench_irrelevant import MESSAGES, WARMUP, build_frames

from llmbot import Message, Plugin, listen_to
from llmbot.store import MemoryStore

PAIRS = 3
PATTERN = r"\bdeploy\b"
HUMANS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


class DeployWatcher(Plugin):
    """A plugin that only watches: it would see every post that says "deploy", and takes none."""

    name = "deploy-watch"

    @listen_to(PATTERN, passive=True)
    async def seen(self, message: Message) -> None:
        raise AssertionError("the bench feeds no post this listener matches")


def text_of(raw: str) -> str:
    message: str = json.loads(json.loads(raw)["data"]["post"])["message"]
    return message


@dataclass
class Result:
    cpu_us: float  # per measured frame, on_frame + consumer
    handlers: int
    taken: int  # posts queued or claimed: 0 when every frame was ignored
    kept: int
    dropped: int


async def measure(*, passive: bool) -> Result:
    """One fresh bot: bench_irrelevant's warm-up, then the whole path of the measured frames."""
    pattern = re.compile(PATTERN, re.IGNORECASE)
    plugins = (DeployWatcher(),) if passive else ()
    async with running_bot(humans=HUMANS, plugins=plugins) as b:
        bot = b.bot
        dispatcher, store = bot.dispatcher, bot.store
        assert dispatcher is not None, "started by running_bot"
        assert isinstance(store, MemoryStore), "the bot's default store"
        rng = random.Random(20240601)  # the fake's ids differ per bot; the texts and the mix do not
        warm, _ = build_frames(WARMUP, b.users, b.channel, rng, 1)
        built, _ = build_frames(MESSAGES, b.users, b.channel, rng, 1 + WARMUP)
        warm = [f for f in warm if not pattern.search(text_of(f))]
        frames = [f for f in built if not pattern.search(text_of(f))]

        for raw in warm:
            await bot.on_frame(raw)
        await bot.idle()
        claims_before = len(store._claims)
        gc.collect()
        cpu0 = time.process_time()
        for raw in frames:
            await bot.on_frame(raw)
        await dispatcher.idle()
        cpu = time.process_time() - cpu0
        queued = len(bot.scheduler)
        await bot.idle()
        taken = queued + len(store._claims) - claims_before
        return Result(cpu / len(frames) * 1e6, len(dispatcher._specs), taken, len(frames), len(built) - len(frames))


async def main() -> None:
    plain: list[Result] = []
    with_listener: list[Result] = []
    for _ in range(PAIRS):
        plain.append(await measure(passive=False))
        with_listener.append(await measure(passive=True))
    plain_us = [r.cpu_us for r in plain]
    passive_us = [r.cpu_us for r in with_listener]
    ratios = [p / q for p, q in zip(passive_us, plain_us, strict=True)]
    extra = [p - q for p, q in zip(passive_us, plain_us, strict=True)]
    taken = sum(r.taken for r in plain + with_listener)
    kept, dropped = plain[0].kept, plain[0].dropped

    def spread(values: list[float], unit: str, digits: int = 1) -> str:
        return f"{statistics.median(values):.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"

    report(
        f"passive listener: {kept:,} ignored frames, chat alone vs chat + one passive listener ({PAIRS} pairs)",
        [
            Row("CPU per message, chat alone: median [min-max]", spread(plain_us, " µs")),
            Row(f"CPU per message, chat + passive r'{PATTERN}': median [min-max]", spread(passive_us, " µs")),
            Row("paired ratio, passive / alone: median [min-max]", spread(ratios, "", 3)),
            Row("extra CPU per message: median [min-max]", spread(extra, " µs", 2)),
            Row("handlers routed (alone / with the plugin)", f"{plain[0].handlers} / {with_listener[0].handlers}"),
            Row("posts queued or claimed, all runs", str(taken), "0", taken == 0),
        ],
        [
            f"bench_irrelevant's {MESSAGES:,} frames (seed 20240601) less the {dropped:,} whose text the pattern matches; "
            f"its {WARMUP:,} warm-up frames (less theirs) first; every run a fresh bot.",
            "alternating in one process: plain, passive, plain, passive, ...; read the paired ratio, not the absolutes.",
        ],
    )


if __name__ == "__main__":
    run(main())
