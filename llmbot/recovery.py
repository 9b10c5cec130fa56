"""The thread is the record: conversation state rebuilt from the props on the bot's own posts.

Pure functions, used after a restart (the binding cache starts empty) and after the websocket
was down (posts of the gap come in over REST): which conversations are still live, and which
human posts still wait for an answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .thread import KIND_ANSWER, KIND_END, KIND_REFUSAL, KIND_USAGE, PROP_ANSWERS, PROP_HANDLER, Post, Thread

# Posts of these kinds are not part of a conversation: after one, nothing is live.
_CLOSING_KINDS = (KIND_END, KIND_USAGE, KIND_REFUSAL)


@dataclass(frozen=True, slots=True)
class Recovered:
    """A live conversation found in a thread."""

    handler: str
    started_by: str
    idle_seconds: float  # since its last activity, so the rebuilt binding expires on time


def newest_human_post(thread: Thread, me_id: str) -> Post | None:
    for post in reversed(thread.posts):
        if post.user_id != me_id and post.is_human:
            return post
    return None


def already_answered(thread: Thread, post: Post, me_id: str) -> bool:
    """Did one of the bot's posts already take `post` (or something newer) into account?"""
    created = {p.id: p.create_at for p in thread.posts}
    for mine in thread.posts:
        if mine.user_id != me_id:
            continue
        answered = mine.props.get(PROP_ANSWERS)
        if isinstance(answered, str) and answered in created:
            if created[answered] >= post.create_at:
                return True
        elif mine.create_at > post.create_at and mine.llmbot_kind in (None, KIND_ANSWER):
            return True  # an answer written without the marker (or of a post we can't see), after the post
    return False


def conversation_state(thread: Thread, me_id: str, now_ms: int, ttl_seconds: float) -> Recovered | None:
    """The conversation live in `thread`, if any: the bot's newest post there is an answer or a
    notice (not a goodbye, a usage hint or a refusal) and the thread was active within the TTL.
    `thread` may be only the newest part of a thread: that is enough when it spans the TTL."""
    mine = [p for p in thread.posts if p.user_id == me_id and isinstance(p.props.get(PROP_HANDLER), str)]
    if not mine or mine[-1].llmbot_kind in _CLOSING_KINDS:
        return None
    last = mine[-1]
    # The TTL counts from the end of the last answer (its last edit) or a later human post.
    activity = max(last.create_at, last.edit_at)
    for post in thread.posts:
        if post.create_at > last.create_at and post.is_human and post.user_id != me_id:
            activity = max(activity, post.create_at)
    idle = max(0.0, (now_ms - activity) / 1000)
    if idle >= ttl_seconds:
        return None
    return Recovered(str(last.props[PROP_HANDLER]), _starter(thread, mine), idle)


def _starter(thread: Thread, mine: Sequence[Post]) -> str:
    """Who opened the running conversation: the author of the first post it answered."""
    authors = {p.id: p.user_id for p in thread.posts}
    first = 0
    for i, post in enumerate(mine):
        if post.llmbot_kind in _CLOSING_KINDS:
            first = i + 1
    for post in mine[first:]:
        answered = post.props.get(PROP_ANSWERS)
        if isinstance(answered, str) and answered in authors:
            return authors[answered]
    root = thread.root
    return root.user_id if root is not None else ""


def threads_of(posts: Iterable[Post]) -> dict[str, Thread]:
    """Group loose posts (a channel's posts since some time) into threads, oldest first."""
    grouped: dict[str, list[Post]] = {}
    for post in posts:
        grouped.setdefault(post.thread_id, []).append(post)
    return {
        root: Thread(root, tuple(sorted(group, key=lambda p: (p.id != root, p.create_at, p.id))))
        for root, group in grouped.items()
    }


def waiting_posts(thread: Thread, me_id: str, since_ms: int) -> list[Post]:
    """Human posts newer than `since_ms` that no post of the bot has answered yet, oldest first."""
    return [
        p for p in thread.posts
        if p.create_at > since_ms and p.user_id != me_id and p.is_human and not already_answered(thread, p, me_id)
    ]
