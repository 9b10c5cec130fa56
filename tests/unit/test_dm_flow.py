"""dm_flow: where a DM's running conversation began, and reading it back (pure; pages faked)."""

from __future__ import annotations

import pytest

from llmbot.dm_flow import began_after, dm_threads, read_running
from llmbot.record import KIND_ANSWER, KIND_END, KIND_GOODBYE, KIND_NOTICE, threads_of
from llmbot.thread import Post

from . import payloads as p

DM = "dmdmdmdmdmdmdmdmdmdmdmdm00"
GAP = 60_000


def human(text: str, at: int, root_id: str = "") -> Post:
    return p.as_post({**p.post_dict(text, channel_id=DM, root_id=root_id), "create_at": at})


def bot(text: str, at: int, kind: str = KIND_ANSWER) -> Post:
    return p.as_post({**p.bot_answer(text, root_id="", channel_id=DM, kind=kind), "create_at": at})


@pytest.mark.parametrize(
    ("older", "newer", "began"),
    [
        (human("a", 0), human("b", 10_000), False),
        (human("a", 0), human("b", GAP), False),  # exactly the TTL: still the same conversation
        (human("a", 0), human("b", GAP + 1), True),  # silence past the TTL
        (bot("bye", 0, KIND_GOODBYE), human("b", 1_000), True),  # the end word's goodbye
        (bot("limit", 0, KIND_END), human("b", 1_000), True),  # a conversation the bot ended
        (bot("oops", 0, KIND_NOTICE), human("b", 1_000), False),  # a notice ends nothing
        (human("bye", 0), human("b", 1_000), False),  # the person's "bye": the bot's goodbye marks it
    ],
)
def test_where_a_running_conversation_began(older: Post, newer: Post, began: bool) -> None:
    assert began_after(older, newer, p.BOT_ID, GAP) is began


def pages_of(posts: list[Post], size: int):
    newest_first = sorted(posts, key=lambda q: q.create_at, reverse=True)

    async def page_of(number: int) -> list[Post]:
        return newest_first[number * size : (number + 1) * size][::-1]  # the server's order within a page: any

    return page_of


async def test_reading_stops_at_the_beginning_and_skips_thread_replies() -> None:
    old = [human("old", 0), bot("old answer", 1_000)]
    running = [bot("bye", 2_000, KIND_GOODBYE), human("q1", 3_000), bot("a1", 4_000), human("q2", 5_000)]
    reply = human("in a thread", 4_500, root_id=old[0].id)
    read = await read_running(pages_of(old + running + [reply], 2), lambda posts: False,
                              lambda o, n: began_after(o, n, p.BOT_ID, GAP), page_size=2)
    assert [q.message for q in read.posts] == ["q1", "a1", "q2"]
    assert read.root_id == read.posts[0].id


async def test_reading_stops_once_enough() -> None:
    posts = [human(f"q{i}", i * 1_000) for i in range(10)]
    read = await read_running(pages_of(posts, 3), lambda taken: len(taken) >= 4, lambda o, n: False, page_size=3)
    assert [q.message for q in read.posts] == ["q6", "q7", "q8", "q9"]


def test_the_catch_up_sees_the_root_posts_as_one_conversation_and_threads_as_threads() -> None:
    a, b = human("a", 0), human("b", 1_000)
    c = human("reply", 2_000, root_id=a.id)
    threads = dm_threads(threads_of([a, b, c]), DM)
    assert list(threads) == [DM, a.id]
    assert [q.message for q in threads[DM].posts] == ["a", "b"]
    assert [q.message for q in threads[a.id].posts] == ["a", "reply"]
