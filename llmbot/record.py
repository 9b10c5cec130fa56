"""The thread is the record: what the bot writes into the props of its posts, and every rule
that reads it back. Pure.

Each post of the bot carries:
    llmbot_handler       which handler wrote it
    llmbot_kind          answer | notice | end | goodbye | usage | refusal
    llmbot_answers       the id of the newest human post it took into account
    llmbot_conversation  the id of the post that opened the conversation it belongs to
    llmbot_page          for answers, which page of a long answer it is (0, 1, ...)
    llmbot_turn          for answers and notices, which turn of its conversation it is (1, 2, ...)
    llmbot_state         what a handler asked to remember (a JSON object of at most 32 KB), if anything

From those alone the bot rebuilds, after a restart or a socket gap, which conversations are
live, which human posts still wait for an answer and how many turns a conversation took.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import StateError
from .thread import Post, Thread, text_or_empty

PROP_HANDLER = "llmbot_handler"
PROP_KIND = "llmbot_kind"
PROP_ANSWERS = "llmbot_answers"
PROP_CONVERSATION = "llmbot_conversation"
PROP_PAGE = "llmbot_page"
PROP_TURN = "llmbot_turn"
PROP_STATE = "llmbot_state"
MAX_STATE_BYTES = 32 * 1024

KIND_ANSWER = "answer"
KIND_NOTICE = "notice"
KIND_END = "end"  # this handler's conversation ended (its plugin's end(), a turn cap)
KIND_GOODBYE = "goodbye"  # the end word: ends every conversation of the thread that was active before it
KIND_USAGE = "usage"
KIND_REFUSAL = "refusal"  # a limit or a policy said no: opens no conversation

# How the bot appends a status to an answer it could not finish ("\n\n_⚠️ ..._"); the context
# builder drops it, as it drops notices.
STATUS_LINE = "\n\n_⚠️ "

# Posts of these kinds close a conversation: after one, the conversation it names (a goodbye: every one) is over.
CLOSING_KINDS = (KIND_END, KIND_GOODBYE, KIND_USAGE, KIND_REFUSAL)
# Kinds that used a turn of the conversation (None: an answer written before posts were marked).
_TURN_KINDS = (None, KIND_ANSWER, KIND_NOTICE)


def props_for(
    handler: str,
    kind: str,
    answers: str,
    conversation: str = "",
    page: int | None = None,
    turn: int | None = None,
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The props of one post of the bot's (`state` already checked: checked_state)."""
    props: dict[str, Any] = {PROP_HANDLER: handler, PROP_KIND: kind, PROP_ANSWERS: answers}
    if conversation:
        props[PROP_CONVERSATION] = conversation
    if page is not None:
        props[PROP_PAGE] = page
    if turn is not None:
        props[PROP_TURN] = turn
    if state is not None:
        props[PROP_STATE] = dict(state)
    return props


def checked_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """`state` as it will come back from the thread (a JSON round trip), or StateError."""
    try:
        encoded = json.dumps(state, ensure_ascii=False, allow_nan=False)
        decoded = json.loads(encoded)
    except (TypeError, ValueError) as exc:
        raise StateError(f"state must be a JSON object of strings, numbers, booleans, lists and objects: {exc}") from None
    if not isinstance(decoded, dict):
        raise StateError(f"state must be a JSON object (a dict), not {type(state).__name__}")
    size = len(encoded.encode("utf-8"))
    if size > MAX_STATE_BYTES:
        raise StateError(f"state is {size} bytes as JSON; at most {MAX_STATE_BYTES} fit in a post")
    return decoded


def state_of(thread: Thread, me_id: str, handler: str, conversation: str) -> dict[str, Any] | None:
    """The newest state `handler` stored in `conversation` in this thread, or None."""
    for post in thread.posts[::-1]:
        if post.user_id != me_id or post.props.get(PROP_HANDLER) != handler or conversation_of(post) != conversation:
            continue
        state = post.props.get(PROP_STATE)
        if isinstance(state, dict):
            return dict(state)
    return None


def kind_of(post: Post) -> str | None:
    kind = post.props.get(PROP_KIND)
    return kind if isinstance(kind, str) else None


def conversation_of(post: Post) -> str:
    """The conversation a post of the bot's belongs to ("" for posts written before it was recorded)."""
    return text_or_empty(post.props.get(PROP_CONVERSATION))


def same_post(props: Mapping[str, Any], post: Post) -> bool:
    """Is `post` the one a create with `props` made? (The server forgets pending_post_id after 30 s.)"""
    return all(post.props.get(key) == props.get(key) for key in (PROP_HANDLER, PROP_KIND, PROP_ANSWERS, PROP_PAGE))


@dataclass(frozen=True, slots=True)
class Recovered:
    """A live conversation found in a thread."""

    handler: str
    started_by: str
    conversation: str
    idle_seconds: float  # since its last activity, so the rebuilt binding expires on time


def newest_human_post(thread: Thread, me_id: str, answerable: Callable[[Post], bool] | None = None) -> Post | None:
    """The newest post by a person (that `answerable` accepts, when given)."""
    for post in thread.posts[::-1]:
        if post.user_id != me_id and post.is_human and (answerable is None or answerable(post)):
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
        elif mine.create_at > post.create_at and kind_of(mine) in (None, KIND_ANSWER):
            return True  # an answer written without the marker (or of a post we can't see), after the post
    return False


def turns_in_conversation(thread: Thread, me_id: str, conversation: str) -> int:
    """How many turns the bot has taken in `conversation` (the id of the post that opened it).

    A turn is one human post the bot answered (or failed to answer: a notice used a turn too),
    so the pages of one answer, and an answer plus the notice that cut it short, count once.
    Only posts recorded with this conversation count: a new call starts at 0 whatever the bot
    posted in the thread before, unmarked posts included. `thread` may hold only the newest posts:
    each answer records its turn number, so the newest one tells how many came before.
    """
    answered: set[str] = set()
    recorded = 0
    for post in thread.posts:
        if post.user_id == me_id and conversation_of(post) == conversation and kind_of(post) in _TURN_KINDS:
            answered.add(text_or_empty(post.props.get(PROP_ANSWERS)) or post.id)
            turn = post.props.get(PROP_TURN)
            if isinstance(turn, int) and not isinstance(turn, bool):
                recorded = max(recorded, turn)
    return max(len(answered), recorded)


def active_conversations(
    thread: Thread, me_id: str, timeout_for: Callable[[str], float | None], now_ms: int
) -> list[Recovered]:
    """Every conversation live in `thread`, the most recently active first, at most one per handler.

    The thread is read in order, as the router saw it. A conversation is a (handler, conversation
    id) pair of the bot's posts: an answer or a notice keeps it open (and replaces an older one of
    the handler's, as the store's bind does); KIND_END (and a usage hint or a refusal) ends that
    one, KIND_GOODBYE every one opened before it. A human post that no post of the bot's took into
    account is activity of the conversation then most recently active (the one the router offered
    it to); one quiet for its handler's timeout (`timeout_for(handler)` seconds, asked once per
    handler; None: not recovered, the handler is unknown or holds no conversation) has expired.
    `thread` may be only the newest part of a thread: enough when it spans the timeouts.
    """
    answered = {text_or_empty(p.props.get(PROP_ANSWERS)) for p in thread.posts if _is_mine(p, me_id)}
    reading = _Reading(timeout_for)
    for post in thread.posts:
        reading.expire(post.create_at)
        if _is_mine(post, me_id):
            reading.take(post)
        elif post.is_human and post.user_id != me_id and post.id not in answered and reading.live:
            top = max(reading.live.values(), key=_Open.recency)
            top.activity = max(top.activity, post.create_at)
    reading.expire(now_ms)
    authors = {p.id: p.user_id for p in thread.posts}
    root = thread.root
    found = []
    for c in sorted(reading.live.values(), key=_Open.recency, reverse=True):
        opener = c.conversation or c.opener or thread.root_id
        started_by = authors.get(opener) or (root.user_id if root is not None else "")
        found.append(Recovered(c.handler, started_by, opener, max(0.0, (now_ms - c.activity) / 1000)))
    return found


def _is_mine(post: Post, me_id: str) -> bool:
    return post.user_id == me_id and isinstance(post.props.get(PROP_HANDLER), str)


@dataclass(slots=True)
class _Open:
    """A conversation open at the point a _Reading has reached."""

    handler: str
    conversation: str  # "" for posts written before the ids were recorded
    opener: str  # for those: the first post its answers took into account
    activity: int  # ms: its newest post of the bot's (last edit) or a human post after it
    last_post: int  # ms: its newest post of the bot's, which breaks ties in activity

    def recency(self) -> tuple[int, int]:
        return self.activity, self.last_post


class _Reading:
    """The conversations open while a thread is read post by post (active_conversations)."""

    def __init__(self, timeout_for: Callable[[str], float | None]) -> None:
        self.timeout_for = timeout_for
        self.timeouts: dict[str, float | None] = {}
        self.live: dict[tuple[str, str], _Open] = {}
        self.seen: set[tuple[str, str]] = set()
        self.ended: set[tuple[str, str]] = set()  # recorded ids only: an id never opens twice

    def expire(self, at_ms: int) -> None:
        for key, c in list(self.live.items()):
            timeout = self.timeouts[c.handler]
            if timeout is not None and at_ms - c.activity >= timeout * 1000:
                del self.live[key]

    def take(self, post: Post) -> None:
        """A post of the bot's, in thread order."""
        handler, conversation, kind = str(post.props[PROP_HANDLER]), conversation_of(post), kind_of(post)
        key = (handler, conversation)
        if kind == KIND_GOODBYE:  # ends every conversation opened before it
            self.ended.update(k for k in (*self.seen, key) if k[1])
            self.live.clear()
            return
        if not conversation and post.props.get(PROP_TURN) is not None:
            return  # written outside any conversation (a passive reply): ids were recorded before turns
        self.seen.add(key)
        if kind in CLOSING_KINDS:
            self.live.pop(key, None)
            if conversation:
                self.ended.add(key)
            return
        if key in self.ended:
            return
        if handler not in self.timeouts:
            self.timeouts[handler] = self.timeout_for(handler)
        if self.timeouts[handler] is None:
            return
        c = self.live.get(key)
        if c is None:  # a handler holds one conversation per thread: a new one replaces its old one
            self.live = {k: v for k, v in self.live.items() if k[0] != handler}
            c = self.live[key] = _Open(handler, conversation, "", post.create_at, post.create_at)
        c.opener = c.opener or text_or_empty(post.props.get(PROP_ANSWERS))
        c.activity = max(c.activity, post.create_at, post.edit_at)
        c.last_post = post.create_at


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
    """Human posts newer than `since_ms` that no post of the bot has answered yet, oldest first.
    A post the bot reacted to was decided on live (left unanswered on purpose, with a cue)."""
    return [
        p for p in thread.posts
        if p.create_at > since_ms and p.user_id != me_id and p.is_human and me_id not in p.reacted
        and not already_answered(thread, p, me_id)
    ]
