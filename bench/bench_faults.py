"""Faults at scale: 500 human turns (100 conversations x 5) while 20% of Mattermost and LLM calls
fail, the socket is closed every second and the bot is restarted every 2 s. Prints what happened
to every turn (the bounded version, with assertions, is tests/loopback/test_soak.py)."""

from __future__ import annotations

import logging

from _harness import FakeMattermost, FakeOpenAI, Row, report, run

from tests.loopback.soak import run_soak


async def main() -> None:
    for name in ("llmbot", "mattermostautodriver", "mattermostautodriver.websocket"):  # hundreds of expected warnings
        logging.getLogger(name).setLevel(logging.CRITICAL)
    mm, llm = FakeMattermost(), FakeOpenAI()
    await mm.start()
    await llm.start()
    try:
        soak = await run_soak(mm, llm, threads=100, turns=5, fault_rate=0.2, drop_every=1.0, restart_every=2.0, turn_timeout=60)
    finally:
        await mm.stop()
        await llm.stop()
    p50 = sorted(soak.latencies)[len(soak.latencies) // 2] if soak.latencies else 0.0
    p95 = sorted(soak.latencies)[int(len(soak.latencies) * 0.95)] if soak.latencies else 0.0
    report(
        "faults: 100 conversations x 5 turns, 20% of calls failing, socket closed every 1 s, restart every 2 s",
        [
            Row("human turns", f"{soak.turns}"),
            Row("wall time", f"{soak.seconds:.1f} s"),
            Row("faults injected: Mattermost REST / LLM", f"{soak.mattermost_faults} / {soak.llm_faults}"),
            Row("socket closes / restarts", f"{soak.socket_closes} / {soak.restarts}"),
            Row("turns that came in over the REST catch-up", f"{soak.caught_up}"),
            Row("answers (of which cut short, reason in the post)", f"{soak.outcomes['answer']} ({soak.cut_short})"),
            Row("notices", f"{soak.outcomes['notice']}"),
            Row("duplicates", f"{soak.duplicates}", "0", soak.duplicates == 0),
            Row("lost turns", f"{soak.lost}", "0", soak.lost == 0 and not soak.errors),
            Row("reply after: median / p95", f"{p50:.2f} s / {p95:.2f} s"),
        ],
        ["backoff waits are compressed to 50 ms (the figures are about outcomes, not waiting)."],
    )


if __name__ == "__main__":
    run(main())
