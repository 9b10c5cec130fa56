"""Soak: 200 human turns while a fifth of all calls fail, the socket drops every half second and the
bot is restarted every 1.5 s. Bounded in count (40 threads x 5 turns) and time (each turn waits at most
40 s; the run takes some 5-10 s here). Every human turn must get exactly one post of the bot's:
its answer, or one clear notice. `pytest -s` prints the figures.
"""

from __future__ import annotations

from llmbot.record import KIND_ANSWER, KIND_NOTICE
from tests.loopback.soak import run_soak


async def test_every_turn_gets_exactly_one_answer_or_notice_under_faults(mm, llm_server):
    report = await run_soak(mm, llm_server, threads=40, turns=5, fault_rate=0.2, drop_every=0.5, restart_every=1.5)
    print("\nsoak:", report.summary())
    assert report.errors == []
    assert report.turns == 200
    assert report.mattermost_faults > 0 and report.llm_faults > 0  # the faults really happened...
    assert report.socket_closes >= 3 and report.restarts >= 1 and report.caught_up > 0
    assert report.duplicates == 0 and report.lost == 0  # ...and no turn was answered twice or lost
    assert set(report.outcomes) <= {KIND_ANSWER, KIND_NOTICE}
