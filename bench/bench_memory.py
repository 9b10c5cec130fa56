"""Memory of 100,000 bound threads in llmbot.store.MemoryStore.

Every thread gets its own freshly created 26-character root id and user id (Mattermost's id
shape: lowercase letters and digits), so no string is shared and the ids count towards the store,
which holds them. Nothing else keeps a reference to them. Each conversation is opened by the
thread's root post, so its conversation id is the root id (the same string, as the dispatcher
binds it); the store's per-user index of opened conversations grows with every binding.

Two passes: RSS growth (/proc/self/statm) without tracing first, then tracemalloc (current and
peak growth, and where it was allocated) on a fresh store.
"""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
from collections import Counter

from _harness import Row, report, run

from llmbot.store import MemoryStore

THREADS = 100_000
TARGET_BYTES = 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def id_maker(seed: int):
    rng = random.Random(seed)

    def new_id() -> str:
        # 13 random bytes -> 26 lowercase hex chars: a fresh 26-char ASCII str, same size as a Mattermost id
        return rng.randbytes(13).hex()

    return new_id


async def fill(store: MemoryStore, seed: int) -> None:
    new_id = id_maker(seed)
    for _ in range(THREADS):
        root_id = new_id()
        await store.bind(root_id, "gpt", new_id(), root_id)  # opened by the root post: conversation = root id


async def main() -> None:
    # Pass 1: RSS, no tracing overhead.
    gc.collect()
    rss0 = rss()
    store = MemoryStore(ttl=3600.0, maxsize=200_000)
    t0 = time.perf_counter()
    await fill(store, 1)
    fill_s = time.perf_counter() - t0
    gc.collect()
    rss_growth = rss() - rss0
    bound_rss = len(store)
    del store
    gc.collect()

    # Pass 2: tracemalloc, started before any id exists.
    tracemalloc.start(1)
    gc.collect()
    before = tracemalloc.take_snapshot()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    store = MemoryStore(ttl=3600.0, maxsize=200_000)
    await fill(store, 2)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    bound = len(store)
    by_file: Counter[str] = Counter()
    for stat in after.compare_to(before, "filename"):
        name = stat.traceback[0].filename
        short = "cachetools" if "cachetools" in name else os.path.basename(name)
        by_file[short] += stat.size_diff
    del before, after

    # Informational: the store also claims each post the bot acts on, for 3 h (MemoryStore._claims);
    # that is per triggering post, not per bound thread, so measured apart on a store of its own.
    del store
    gc.collect()
    claims_base, _ = tracemalloc.get_traced_memory()
    claims_store = MemoryStore(ttl=3600.0, maxsize=200_000)
    new_id = id_maker(3)
    for _ in range(THREADS):
        await claims_store.claim(new_id())
    gc.collect()
    claims_bytes = tracemalloc.get_traced_memory()[0] - claims_base
    claimed = len(claims_store._claims)
    tracemalloc.stop()

    per_thread = (current - base) / bound
    per_thread_peak = (peak - base) / bound
    per_thread_rss = rss_growth / bound_rss
    top = ", ".join(f"{name} {size / bound:.0f}" for name, size in by_file.most_common(4) if size / bound >= 0.5)
    report(
        f"memory: {THREADS:,} bound threads in MemoryStore (fresh 26-char root and user ids per thread)",
        [
            Row("tracemalloc growth per bound thread", f"{per_thread:.0f} bytes", f"<= {TARGET_BYTES} bytes",
                per_thread <= TARGET_BYTES),
            Row("tracemalloc peak growth per bound thread", f"{per_thread_peak:.0f} bytes", f"<= {TARGET_BYTES} bytes",
                per_thread_peak <= TARGET_BYTES),
            Row("RSS growth per bound thread (/proc/self/statm)", f"{per_thread_rss:.0f} bytes", f"<= {TARGET_BYTES} bytes",
                per_thread_rss <= TARGET_BYTES),
            Row("tracemalloc growth / peak, total", f"{(current - base) / 2**20:.1f} MiB / {(peak - base) / 2**20:.1f} MiB"),
            Row("RSS growth, total", f"{rss_growth / 2**20:.1f} MiB"),
            Row("threads bound (pass 1 / pass 2)", f"{bound_rss:,} / {bound:,}"),
            Row("time to bind them (pass 1)", f"{fill_s:.2f} s"),
            Row("not per thread: MemoryStore._claims, per claimed post id", f"{claims_bytes / claimed:.0f} bytes"),
        ],
        [
            f"bytes per thread by allocating file: {top}",
            "the store's share includes both id strings (2 x 75 bytes), which only the store holds.",
            "every thread has a user of its own, so each binding also adds a user to the per-user index (its worst case).",
            "a conversation opened by a reply inside an older thread has an id of its own: one more 26-char string (75 bytes).",
        ],
    )


if __name__ == "__main__":
    run(main())
