"""The loopback fakes in a process of their own, so a benchmark measures the bot, not the fakes.

Started by bench scripts as `python bench/_fake_servers.py LLM_SECONDS`. Prints the world as one JSON
line, then obeys one command per stdin line, answering one JSON line each:
  burst N    N users' root posts "gpt question i", created and broadcast back to back
  status     how many burst threads hold the bot's complete answer, and the REST calls seen
Exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI

ANSWER = ["Here is", " the answer", " to your question."]
FINAL = "".join(ANSWER)


async def main() -> None:
    llm_seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    mm, llm = FakeMattermost(), FakeOpenAI()
    await mm.start()
    await llm.start()
    llm.default_first_delay = llm_seconds
    llm.responder = lambda body: list(ANSWER)
    users = [mm.add_user(f"user{i}") for i in range(20)]
    channel = mm.add_channel("town-square", members=(mm.bot, *users), display_name="Town Square")
    world = {"mm_url": mm.url, "llm_url": llm.base_url, "api_key": llm.api_key, "bot_token": mm.bot_token}
    print(json.dumps(world), flush=True)

    roots: list[str] = []
    cpu_at_burst = time.process_time()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command, *args = line.split()
        if command == "burst":
            mm.reset_requests()
            cpu_at_burst = time.process_time()
            started = time.monotonic()
            for i in range(int(args[0])):
                post = await mm.post_as(users[i % len(users)], channel, f"gpt question {i}")
                roots.append(post["id"])
            print(json.dumps({"burst_seconds": time.monotonic() - started}), flush=True)
        elif command == "status":
            bot_id = mm.bot["id"]
            answered = {p["root_id"] for p in mm.posts.values() if p["user_id"] == bot_id and p["message"] == FINAL}
            calls = [r for r in mm.requests if r[0] != "GET" or not r[1].endswith("/users/me")]
            status = {
                "complete": len(answered & set(roots)),
                "roots": len(roots),
                "rest_calls": len(calls),
                "llm_calls": len(llm.requests),
                "fakes_cpu_seconds": time.process_time() - cpu_at_burst,
            }
            print(json.dumps(status), flush=True)
    await mm.stop()
    await llm.stop()


if __name__ == "__main__":
    asyncio.run(main())
