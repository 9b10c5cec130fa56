"""Raw websocket frames -> typed events. Pure, and never raises: a bad frame becomes Ignored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from .thread import Post, post_from_json, text_or_empty


class Posted(NamedTuple):
    """A new post (a `posted` event). A NamedTuple, like Post: built for every message seen."""

    post: Post
    channel_type: str  # O public, P private, D direct, G group
    channel_name: str
    channel_display_name: str
    sender_name: str  # "alice", without the "@"
    team_id: str

    @property
    def is_direct(self) -> bool:
        return self.channel_type == "D"

    @property
    def in_dm_flow(self) -> bool:
        """A root post in a direct message: it continues the DM's one running conversation, which
        lives in the channel's root posts, not in a thread."""
        return self.channel_type == "D" and not self.post.root_id

    @property
    def place(self) -> str:
        """Where this post's conversation lives: its thread, or for a DM root post the DM itself
        (the key of its bindings and of its queue of turns)."""
        post = self.post
        return post.root_id or (post.channel_id if self.channel_type == "D" else post.id)

    def __str__(self) -> str:
        """The post as an admin reads it in a log line: ids, and the names beside them."""
        post = self.post
        where = f"~{self.channel_name}" if self.channel_name else post.channel_id
        return f"post {post.id} by @{self.sender_name or post.user_id} in {where} (thread {post.thread_id})"


@dataclass(frozen=True, slots=True)
class Hello:
    """The server accepted the socket's authentication."""

    connection_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: str
    malformed: bool = False  # the frame itself was broken, not just uninteresting


Event = Posted | Hello | Ignored


def parse_frame(raw: Any) -> Event:
    """Decode one websocket frame. Only `posted` and `hello` matter to the bot."""
    if not isinstance(raw, (str, bytes)):
        return Ignored("frame is not text", malformed=True)
    try:
        frame = orjson.loads(raw)  # the hot path: every message in every channel passes here
    except orjson.JSONDecodeError:
        return Ignored("frame is not UTF-8 JSON", malformed=True)
    if not isinstance(frame, dict):
        return Ignored("frame is not a JSON object", malformed=True)
    event = frame.get("event")
    if event is None:
        if "seq_reply" in frame:
            return Ignored("reply to a client action")
        return Ignored("frame without event", malformed=True)
    data = frame.get("data")
    if not isinstance(data, dict):
        return Ignored(f"{_short(event)} without data", malformed=True)
    if event == "hello":
        broadcast = frame.get("broadcast")
        user_id = broadcast.get("user_id") if isinstance(broadcast, dict) else ""
        return Hello(connection_id=text_or_empty(data.get("connection_id")), user_id=text_or_empty(user_id))
    if event != "posted":
        return Ignored(f"event {_short(event)}")
    return _posted(data)


def _posted(data: dict[str, Any]) -> Event:
    raw_post = data.get("post")
    try:
        post_json = orjson.loads(raw_post) if isinstance(raw_post, str) else raw_post
    except orjson.JSONDecodeError:
        return Ignored("posted: post is not JSON", malformed=True)
    post = post_from_json(post_json)
    if post is None:
        return Ignored("posted: post lacks id or channel_id", malformed=True)
    return Posted(
        post=post,
        channel_type=text_or_empty(data.get("channel_type")),
        channel_name=text_or_empty(data.get("channel_name")),
        channel_display_name=text_or_empty(data.get("channel_display_name")),
        sender_name=text_or_empty(data.get("sender_name")).removeprefix("@"),
        team_id=text_or_empty(data.get("team_id")),
    )


def _short(value: Any) -> str:
    return repr(value)[:40]


def frame_of(event: Posted) -> str:
    """A `posted` frame that parse_frame reads back as `event` (a replica hands a turn it could not
    finish to another through the store this way)."""
    post = event.post
    post_json = {
        "id": post.id, "channel_id": post.channel_id, "user_id": post.user_id, "root_id": post.root_id,
        "message": post.message, "create_at": post.create_at, "type": post.type, "props": dict(post.props),
        "file_ids": [f"file{i}" for i in range(post.file_count)], "delete_at": post.delete_at, "edit_at": post.edit_at,
        "metadata": {"reactions": [{"user_id": user} for user in sorted(post.reacted)]} if post.reacted else {},
    }
    data = {
        "post": orjson.dumps(post_json).decode(), "channel_type": event.channel_type, "channel_name": event.channel_name,
        "channel_display_name": event.channel_display_name, "sender_name": event.sender_name, "team_id": event.team_id,
    }
    return orjson.dumps({"event": "posted", "data": data}).decode()
