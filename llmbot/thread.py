"""Posts and threads as pure values, decoded defensively from Mattermost JSON."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

_SURROGATE = re.compile("[\ud800-\udfff]")


class Post(NamedTuple):
    """One post. A NamedTuple: as immutable as a frozen dataclass and several times cheaper to
    build, which matters because every message in every channel the bot is in becomes one."""

    id: str
    channel_id: str
    user_id: str
    root_id: str = ""
    message: str = ""
    create_at: int = 0
    type: str = ""
    props: Mapping[str, Any] = MappingProxyType({})
    file_count: int = 0
    delete_at: int = 0
    edit_at: int = 0
    reacted: frozenset[str] = frozenset()  # user ids that reacted to it (the server's metadata, in post lists)

    @property
    def thread_id(self) -> str:
        """The id of the root post of this post's thread."""
        return self.root_id or self.id

    @property
    def is_root(self) -> bool:
        return not self.root_id

    @property
    def from_bot(self) -> bool:
        return _truthy(self.props.get("from_bot"))

    @property
    def from_webhook(self) -> bool:
        return _truthy(self.props.get("from_webhook"))

    @property
    def is_system(self) -> bool:
        return bool(self.type)  # normal posts have type ""; joins, header changes... are "system_*"

    @property
    def is_human(self) -> bool:
        """Written by a person: not a bot, a webhook or the system (the bot's own posts are
        from_bot too)."""
        return bool(self.user_id) and not (self.from_bot or self.from_webhook or self.is_system)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def text_or_empty(value: Any) -> str:
    """`value` if it is a str, else "": for fields of JSON that may hold anything."""
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    return 0


def post_from_json(data: Any) -> Post | None:
    """A Post from the server's JSON, or None when it lacks what every post has."""
    if not isinstance(data, Mapping):
        return None
    post_id, channel_id = text_or_empty(data.get("id")), text_or_empty(data.get("channel_id"))
    if not post_id or not channel_id:
        return None
    props = data.get("props")
    file_ids = data.get("file_ids")
    return Post(
        id=post_id,
        channel_id=channel_id,
        user_id=text_or_empty(data.get("user_id")),
        root_id=text_or_empty(data.get("root_id")),
        message=text_or_empty(data.get("message")),
        create_at=_int(data.get("create_at")),
        type=text_or_empty(data.get("type")),
        props=props if isinstance(props, Mapping) else {},
        file_count=len(file_ids) if isinstance(file_ids, list) else 0,
        delete_at=_int(data.get("delete_at")),
        edit_at=_int(data.get("edit_at")),
        reacted=_reacted(data.get("metadata")),
    )


_NOBODY: frozenset[str] = frozenset()


def _reacted(metadata: Any) -> frozenset[str]:
    if not metadata or type(metadata) is not dict:  # the common case, on every post the bot sees: no reactions
        return _NOBODY
    reactions = metadata.get("reactions")
    if not reactions or not isinstance(reactions, list):
        return _NOBODY
    return frozenset(text_or_empty(r.get("user_id")) for r in reactions if isinstance(r, Mapping))


@dataclass(frozen=True, slots=True)
class Thread:
    """A root post and its replies, oldest first."""

    root_id: str
    posts: tuple[Post, ...]

    @property
    def root(self) -> Post | None:
        return self.posts[0] if self.posts and self.posts[0].id == self.root_id else None

    def user_ids(self) -> set[str]:
        return {p.user_id for p in self.posts if p.user_id}


def thread_from_posts(root_id: str, posts: Iterable[Post]) -> Thread:
    """De-duplicated by id and sorted by (create_at, id): the server gives no order."""
    unique = {p.id: p for p in posts if p.id == root_id or p.root_id == root_id}
    ordered = sorted(unique.values(), key=lambda p: (p.id != root_id, p.create_at, p.id))
    return Thread(root_id=root_id, posts=tuple(ordered))


def posts_from_post_list(data: Any) -> list[Post]:
    """The posts of a PostList ({"order": [...], "posts": {...}}); malformed entries are skipped."""
    if not isinstance(data, Mapping):
        return []
    raw = data.get("posts")
    if not isinstance(raw, Mapping):
        return []
    posts = [p for p in (post_from_json(v) for v in raw.values()) if p is not None]
    return [p if _encodable(p.message) else p._replace(message=_repaired(p.message)) for p in posts]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _repaired(text: str) -> str:
    """Lone surrogates (which Python's JSON decoder lets through, and a proxy could send) made
    U+FFFD, as Mattermost's own encoder would: one such post must not poison its thread."""
    return _SURROGATE.sub("\ufffd", text)
