"""A direct message as one running conversation.

People write root posts one after another in a DM, not thread replies. So in a DM a root post
continues the DM's conversation: its context is the DM's recent root posts and the bot's answers
(read newest first within the budget, like a thread), back to where the conversation began - the
bot's goodbye (the end word, or a conversation it ended) or a silence longer than the timeout.
The bot answers as a root post. A thread inside a DM works like a thread in a channel.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from .record import KIND_END, KIND_GOODBYE, kind_of
from .thread import Post, Thread

MAX_PAGES = 10  # pages of 200 posts: a DM conversation longer than that is read only that far back
PAGE = 200


def began_after(older: Post, newer: Post, me_id: str, gap_ms: int) -> bool:
    """Did the running conversation begin after `older` (the root post before `newer`)? Yes when
    `older` is the bot's goodbye or closing post, or when the DM was quiet for longer than the gap."""
    if older.user_id == me_id and kind_of(older) in (KIND_GOODBYE, KIND_END):
        return True
    return newer.create_at - older.create_at > gap_ms


async def read_running(
    page_of: Callable[[int], Awaitable[list[Post]]],
    enough: Callable[[Sequence[Post]], bool],
    began_after: Callable[[Post, Post], bool],
    page_size: int = PAGE,
) -> Thread:
    """The running conversation's root posts, oldest first: pages (newest first) until `enough`
    of them, or its beginning. `page_of(n)` is page n (of `page_size`) of the channel's posts."""
    taken: list[Post] = []  # newest first
    for number in range(MAX_PAGES):
        page = await page_of(number)
        roots = sorted((p for p in page if not p.root_id and not p.delete_at), key=lambda p: (p.create_at, p.id), reverse=True)
        for post in roots:
            if taken and began_after(post, taken[-1]):
                return _thread(taken)
            taken.append(post)
            if enough(taken):
                return _thread(taken)
        if len(page) < page_size:
            break
    return _thread(taken)


def _thread(newest_first: list[Post]) -> Thread:
    posts = tuple(reversed(newest_first))
    return Thread(posts[0].id if posts else "", posts)


def dm_threads(threads: dict[str, Thread], channel_id: str) -> dict[str, Thread]:
    """A DM's posts as the catch-up must see them: its root posts as one running conversation
    (keyed by the channel, like its bindings), first; its threads with replies as threads."""
    roots = sorted((t.posts[0] for t in threads.values() if t.posts and not t.posts[0].root_id),
                   key=lambda p: (p.create_at, p.id))
    grouped = {channel_id: Thread(roots[0].id if roots else "", tuple(roots))} if roots else {}
    grouped.update((key, thread) for key, thread in threads.items() if len(thread.posts) > 1 or thread.posts[0].root_id)
    return grouped
