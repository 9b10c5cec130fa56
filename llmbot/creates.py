"""Creates that never double a post, even when a response is lost.

Each post on its way keeps one pending_post_id for all its tries: Mattermost answers a repeated
id with the post it already made. The server forgets an id after 30 s (pendingPostIDsCacheTTL
in app/post.go), so a try later than that first looks for the post in the thread by its props.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .ports import ChatAPI
from .record import same_post
from .thread import Post

log = logging.getLogger(__name__)

PENDING_WINDOW = 25.0  # seconds after which a retried create looks for its post first (server: 30)

_pending_ids = itertools.count()


def new_pending_id(me_id: str) -> str:
    """A pending_post_id as Mattermost's own clients make them ("<user id>:<time>"), unique here."""
    return f"{me_id}:{time.time_ns() // 1000}{next(_pending_ids)}"


def _a_page(posts: Sequence[Post]) -> bool:
    return len(posts) >= 60  # the bot's lost post is among the newest


def _no_beginning(_older: Post, _newer: Post) -> bool:
    return False


@dataclass
class Create:
    """One post on its way: the same pending id on every retry, and when it was first tried."""

    pending: str
    first_try: float | None = None


class IdempotentCreator:
    """Creates posts in one thread of the bot's."""

    def __init__(self, chat: ChatAPI, channel_id: str, thread_id: str, me_id: str, clock: Callable[[], float]) -> None:
        self.chat = chat
        self.channel_id = channel_id
        self.thread_id = thread_id
        self.me_id = me_id
        self.clock = clock

    async def create(self, message: str, props: dict[str, Any], create: Create) -> Post:
        """One create, made idempotent: the same pending id on every retry, and past the server's
        window for it, a look in the thread for the post an earlier, lost try made."""
        now = self.clock()
        if create.first_try is None:
            create.first_try = now
        elif now - create.first_try >= PENDING_WINDOW:
            found = await self.find([props])
            if found:
                earlier = found[0]
                log.info("thread %s: a lost create had made post %s; reusing it", self.thread_id, earlier.id)
                if earlier.message != message:
                    await self.chat.patch_post(earlier.id, message)
                return earlier
        post = await self.chat.create_post(self.channel_id, message, self.thread_id, props, create.pending)
        if post.message != message:
            # Mattermost answered a repeated pending_post_id with the post an earlier, lost try
            # made: it shows the text of back then, so bring it up to date.
            await self.chat.patch_post(post.id, message)
        return post

    async def find(self, wanted: list[dict[str, Any]]) -> list[Post]:
        """The posts of the bot's that creates with these props made, in order, up to the first missing."""
        if self.thread_id:
            posts = (await self.chat.get_thread(self.thread_id)).posts
        else:  # root posts of a DM's running conversation: the newest of the channel
            posts = (await self.chat.recent_roots(self.channel_id, _a_page, _no_beginning)).posts
        mine = [p for p in posts if p.user_id == self.me_id]
        found: list[Post] = []
        for props in wanted:
            post = next((p for p in mine if same_post(props, p)), None)
            if post is None:
                break
            found.append(post)
        return found
