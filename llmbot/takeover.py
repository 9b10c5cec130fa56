"""A turn another replica took on and could not finish: its partial answer is marked, never left
looking complete, before the full answer is written (replicas.py adopts such turns)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from .errors import ChatError
from .handlers.base import Turn
from .record import KIND_ANSWER, PROP_ANSWERS, STATUS_LINE, kind_of
from .thread import Thread

log = logging.getLogger(__name__)

ABANDONED = f"{STATUS_LINE}Cut short: the bot stopped while writing this. The full answer follows._"


async def mark_abandoned(turn: Turn, thread: Thread) -> int:
    """Mark the bot's partial answers to this turn's post; how many were marked."""
    me, post_id = turn.reply.where.me_id, turn.post.id
    marked = 0
    for post in thread.posts:
        if post.user_id != me or kind_of(post) != KIND_ANSWER or post.props.get(PROP_ANSWERS) != post_id:
            continue
        if STATUS_LINE in post.message:  # marked already (interrupted, cut short)
            continue
        try:
            await turn.reply.retrying(_patch(turn, post.id, post.message + ABANDONED), f"thread {turn.thread_id}: marking")
            marked += 1
        except ChatError as exc:
            log.warning("thread %s: the partial answer %s could not be marked: %s", turn.thread_id, post.id, exc)
    if marked:
        log.info("thread %s: %d partial answer(s) to post %s marked as cut short", turn.thread_id, marked, post_id)
    return marked


def _patch(turn: Turn, post_id: str, message: str) -> Callable[[], Awaitable[None]]:
    return lambda: turn.chat.patch_post(post_id, message)
