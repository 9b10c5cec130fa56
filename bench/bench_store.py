"""The store's hot calls, MemoryStore vs RedisStore on a loopback redis-server (informational).

look (a bound thread, and a thread the bot never saw: the dispatcher's look-up on every reply),
bind, touch and claim: microseconds per call one at a time (a turn's own latency), and calls per
second with 100 in flight at once (what one replica can push through its connection pool). Starts
its own redis-server (Debian's package) on a free port, without persistence.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable

from _harness import Row, report, run

from llmbot.store import MemoryStore, RedisStore

CALLS = 20_000
IN_FLIGHT = 100
THREADS = 1_000


def start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return server, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    server.kill()
    return None


async def timed(call: Callable[[int], Awaitable[object]], in_flight: int) -> float:
    """Seconds per call: one at a time, or `in_flight` at once."""
    start = time.perf_counter()
    if in_flight == 1:
        for i in range(CALLS):
            await call(i)
    else:
        for base in range(0, CALLS, in_flight):
            await asyncio.gather(*(call(base + j) for j in range(in_flight)))
    return (time.perf_counter() - start) / CALLS


async def measure(store: MemoryStore | RedisStore) -> dict[str, tuple[float, float]]:
    run_id = uuid.uuid4().hex[:8]
    for t in range(THREADS):
        await store.bind(f"bound-{t}", "gpt", f"user-{t % 50}", f"bound-{t}")
    calls: dict[str, Callable[[int], Awaitable[object]]] = {
        "look, a bound thread": lambda i: store.look(f"bound-{i % THREADS}"),
        "look, a thread never bound": lambda i: store.look(f"unknown-{i}"),
        "bind (a new thread)": lambda i: store.bind(f"new-{run_id}-{i}", "gpt", f"user-{i % 50}", "conv"),
        "touch": lambda i: store.touch(f"bound-{i % THREADS}"),
        "claim (a new post)": lambda i: store.claim(f"post-{run_id}-{i}"),
    }
    results = {}
    for what, call in calls.items():
        one = await timed(call, 1)
        run_id = uuid.uuid4().hex[:8]  # new names for the second pass
        many = await timed(call, IN_FLIGHT)
        results[what] = (one, many)
    return results


async def main() -> None:
    memory = await measure(MemoryStore(ttl=3600.0, maxsize=200_000, timer=time.time))
    started = start_redis()
    redis: dict[str, tuple[float, float]] = {}
    if started is not None:
        server, url = started
        try:
            store = RedisStore(url, "bench" + uuid.uuid4().hex[:8], 3600.0)
            redis = await measure(store)
            await store.close()
        finally:
            server.terminate()
            server.wait()
    rows = []
    for what, (one, many) in memory.items():
        rows.append(Row(f"{what}: memory", f"{one * 1e6:7.1f} µs   {1 / many:>9,.0f} /s"))
        if what in redis:
            r_one, r_many = redis[what]
            rows.append(Row(f"{what}: redis", f"{r_one * 1e6:7.1f} µs   {1 / r_many:>9,.0f} /s"))
    report(
        f"store: µs per call one at a time, calls/s with {IN_FLIGHT} in flight ({CALLS:,} calls each)",
        rows,
        [f"{THREADS:,} threads bound beforehand; Redis on 127.0.0.1, one client (its connection pool), no persistence.",
         "redis-server not found: only MemoryStore measured (apt-get install -y redis-server)" if started is None
         else "RedisStore's look is one MGET; bind/touch one Lua script each (atomic per thread); claim one SET NX EX.",
         "a Redis call's time is mostly redis-py and the event loop around one loopback round trip: the store adds a few µs."],
    )


if __name__ == "__main__":
    run(main())
