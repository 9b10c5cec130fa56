"""REST calls per follow-up turn, not counting streaming edits (PUT /posts/{id}/patch).

One conversation is opened, then 20 follow-ups are posted one at a time, each waiting for the
bot's complete answer; FakeMattermost.requests is reset before each follow-up and read after it.
"""

from __future__ import annotations

import re
import statistics

from _harness import Row, bot_replies, report, run, running_bot

FOLLOW_UPS = 20
TARGET = 2  # GET the thread + POST the answer
ANSWER_CHUNKS = ["Sure", " — here is", " a short answer", " to that."]
_PATCH = re.compile(r"^/api/v4/posts/[^/]+/patch$")
_ID = re.compile(r"/[a-z0-9]{26}(?=/|$)")


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


async def main() -> None:
    final = "".join(ANSWER_CHUNKS)
    per_turn: list[int] = []
    edits_per_turn: list[int] = []
    sample: list[tuple] = []
    typing_ws = 0
    async with running_bot() as b:
        alice, bob = b.users[0], b.users[1]
        b.llm.enqueue(ANSWER_CHUNKS, delay=0.01)
        root = await b.mm.post_as(alice, b.channel, "gpt how do I undo my last git commit?")
        await wait_answer(b, root["id"], 1, final)
        opening = list(b.mm.requests)

        for n in range(FOLLOW_UPS):
            b.llm.enqueue(ANSWER_CHUNKS, delay=0.01)
            b.mm.reset_requests()
            typing_before = len(b.mm.typing)
            user = (alice, bob)[n % 2]
            await b.mm.post_as(user, b.channel, f"follow-up {n}: and what if it was already pushed?", root_id=root["id"])
            await wait_answer(b, root["id"], n + 2, final)
            calls = list(b.mm.requests)
            counted = [c for c in calls if not is_edit(c)]
            per_turn.append(len(counted))
            edits_per_turn.append(len(calls) - len(counted))
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
        Row("posts in the thread at the end", str(thread_size)),
    ]
    notes = [f"per turn: {per_turn}", f"calls of follow-up #{FOLLOW_UPS // 2} (edits included):"]
    notes += [f"  {show(c)}" + ("   (edit, not counted)" if is_edit(c) else "") for c in sample]
    report(f"REST calls per follow-up: {FOLLOW_UPS} follow-ups in one conversation, each waited for", rows, notes)


if __name__ == "__main__":
    run(main())
