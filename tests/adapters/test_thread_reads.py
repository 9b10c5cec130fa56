"""Thread reads against the fake server through the real driver: the whole thread oldest first,
or the root and the newest posts, newest first, only as far as the caller needs."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from llmbot.mattermost import MattermostChat
from llmbot.thread import Post
from tests.fakes import settings_for


@pytest.fixture
async def chat(mm, llm_server):
    client = MattermostChat(settings_for(mm, llm_server))
    await client.login()
    yield client
    await client.close()


async def long_thread(mm, replies: int) -> str:
    user = mm.add_user("alice")
    channel = mm.add_channel("town", members=(mm.bot, user))
    root = await mm.post_as(user, channel, "the root", broadcast=False)
    for i in range(replies):
        await mm.post_as(user, channel, f"reply {i}", root_id=root["id"], broadcast=False)
    return root["id"]


def thread_reads(mm) -> list[dict]:
    return [query for method, path, query, _ in mm.requests if path.endswith("/thread")]


class TestRecentThread:
    async def test_one_page_of_the_newest_posts_and_the_root_when_that_is_enough(self, chat, mm) -> None:
        root = await long_thread(mm, 450)
        mm.reset_requests()
        thread = await chat.recent_thread(root, lambda replies: len(replies) >= 150)
        assert len(thread_reads(mm)) == 1 and thread_reads(mm)[0]["direction"] == "up"
        assert thread.posts[0].id == root and thread.posts[0].message == "the root"
        assert [p.message for p in thread.posts[1:]] == [f"reply {i}" for i in range(250, 450)]  # oldest first

    async def test_it_pages_on_newest_first_until_enough(self, chat, mm) -> None:
        root = await long_thread(mm, 450)
        seen: list[int] = []

        def enough(replies: Sequence[Post]) -> bool:
            seen.append(len(replies))
            return len(replies) >= 300

        mm.reset_requests()
        thread = await chat.recent_thread(root, enough)
        assert seen == [200, 400] and len(thread_reads(mm)) == 2
        assert [p.message for p in thread.posts[1:]] == [f"reply {i}" for i in range(50, 450)]

    async def test_never_enough_reads_the_whole_thread_like_get_thread(self, chat, mm) -> None:
        root = await long_thread(mm, 450)
        recent = await chat.recent_thread(root, lambda replies: False)
        whole = await chat.get_thread(root)
        assert [p.id for p in recent.posts] == [p.id for p in whole.posts] and len(whole.posts) == 451
