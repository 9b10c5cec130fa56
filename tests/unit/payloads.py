"""Realistic Mattermost payloads, named for what they show.

Websocket frames are built the way the server sends them (see
/work/shared/reference/mattermost-api.md): the envelope is JSON, and inside a `posted` event
`data.post` and `data.mentions` are themselves JSON *strings*.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from llmbot.record import KIND_ANSWER, PROP_ANSWERS, PROP_HANDLER, PROP_KIND
from llmbot.thread import Post, post_from_json

# Mattermost ids are 26 lowercase alphanumerics.
BOT_ID = "b0tb0tb0tb0tb0tb0tb0tb0tb0"
ALICE_ID = "a1icea1icea1icea1icea1icea"
BOB_ID = "b0bb0bb0bb0bb0bb0bb0bb0bb0"
OTHER_BOT_ID = "0therb0t0therb0t0therb0t00"
TEAM_ID = "teamteamteamteamteamteam00"
TOWN_SQUARE_ID = "t0wnsquaret0wnsquaret0wn00"
DM_ALICE_BOT_ID = "dma1icebotdma1icebotdm0000"
CONNECTION_ID = "c0nnc0nnc0nnc0nnc0nnc0nn00"

BOT_NAME = "llmbot"
USERNAMES = {BOT_ID: BOT_NAME, ALICE_ID: "alice", BOB_ID: "bob", OTHER_BOT_ID: "jirabot"}

_ids = itertools.count(1)
_seq = itertools.count(1)
_clock = itertools.count(1_700_000_000_000, 1000)  # create_at, ms, strictly increasing


def new_id() -> str:
    """A fresh, unique 26-character post id."""
    return f"p{next(_ids):025d}"


# ------------------------------------------------------------------------------------ posts
def post_dict(
    message: str,
    *,
    user_id: str = ALICE_ID,
    channel_id: str = TOWN_SQUARE_ID,
    root_id: str = "",
    post_id: str | None = None,
    type: str = "",
    props: dict[str, Any] | None = None,
    file_ids: list[str] | None = None,
    create_at: int | None = None,
    delete_at: int = 0,
) -> dict[str, Any]:
    """A Post object exactly as the REST API and the websocket carry it."""
    created = next(_clock) if create_at is None else create_at
    return {
        "id": post_id or new_id(),
        "create_at": created,
        "update_at": created,
        "edit_at": 0,
        "delete_at": delete_at,
        "is_pinned": False,
        "user_id": user_id,
        "channel_id": channel_id,
        "root_id": root_id,
        "original_id": "",
        "message": message,
        "type": type,
        "props": props if props is not None else {},
        "hashtags": "",
        "pending_post_id": "",
        "reply_count": 0,
        "last_reply_at": 0,
        "participants": None,
        "file_ids": file_ids if file_ids is not None else [],
        "metadata": {},
    }


def as_post(data: dict[str, Any]) -> Post:
    post = post_from_json(data)
    assert post is not None, data
    return post


def bot_answer(message: str, *, root_id: str, channel_id: str = TOWN_SQUARE_ID, kind: str = KIND_ANSWER,
               answers: str = "") -> dict[str, Any]:
    """A post the bot itself wrote in a thread, with the props it records (the server adds from_bot)."""
    props: dict[str, Any] = {"from_bot": "true", PROP_HANDLER: "chat", PROP_KIND: kind}
    if answers:
        props[PROP_ANSWERS] = answers
    return post_dict(message, user_id=BOT_ID, channel_id=channel_id, root_id=root_id, props=props)


def other_bot_post(message: str, *, root_id: str = "", channel_id: str = TOWN_SQUARE_ID) -> dict[str, Any]:
    return post_dict(message, user_id=OTHER_BOT_ID, channel_id=channel_id, root_id=root_id,
                     props={"from_bot": "true"})


def webhook_post(message: str, *, root_id: str = "", channel_id: str = TOWN_SQUARE_ID) -> dict[str, Any]:
    """An incoming webhook posts as the user who created it, marked from_webhook."""
    return post_dict(message, user_id=BOB_ID, channel_id=channel_id, root_id=root_id,
                     props={"from_webhook": "true", "override_username": "ci"})


def join_post(*, root_id: str = "", user_id: str = BOB_ID, channel_id: str = TOWN_SQUARE_ID) -> dict[str, Any]:
    return post_dict("bob joined the channel.", user_id=user_id, channel_id=channel_id, root_id=root_id,
                     type="system_join_channel", props={"username": "bob"})


# ------------------------------------------------------------------------------------ frames
def posted_frame(
    post: dict[str, Any],
    *,
    channel_type: str = "O",
    channel_name: str = "town-square",
    channel_display_name: str = "Town Square",
    sender_name: str | None = None,
    team_id: str = TEAM_ID,
    mentions: list[str] | None = None,
    seq: int | None = None,
) -> str:
    """The exact `posted` websocket frame: data.post (and data.mentions) are JSON strings."""
    data: dict[str, Any] = {
        "channel_display_name": channel_display_name,
        "channel_name": channel_name,
        "channel_type": channel_type,
        "post": json.dumps(post),
        "sender_name": sender_name if sender_name is not None else "@" + USERNAMES.get(post["user_id"], "someone"),
        "set_online": True,
        "team_id": team_id,
    }
    if mentions is not None:
        data["mentions"] = json.dumps(mentions)
    return json.dumps({
        "event": "posted",
        "data": data,
        "broadcast": {"omit_users": None, "user_id": "", "channel_id": post["channel_id"], "team_id": "",
                      "connection_id": "", "omit_connection_id": ""},
        "seq": next(_seq) if seq is None else seq,
    })


def hello_frame(*, user_id: str = BOT_ID, connection_id: str = CONNECTION_ID) -> str:
    return json.dumps({
        "event": "hello",
        "data": {"connection_id": connection_id, "server_version": "10.5.0.13192.abc.true"},
        "broadcast": {"omit_users": None, "user_id": user_id, "channel_id": "", "team_id": ""},
        "seq": 0,
    })


def auth_ok_reply(seq_reply: int = 1) -> str:
    """The server's answer to the authentication challenge: no event, no seq."""
    return json.dumps({"status": "OK", "seq_reply": seq_reply})


def typing_frame(*, user_id: str = ALICE_ID, channel_id: str = TOWN_SQUARE_ID) -> str:
    return json.dumps({
        "event": "typing",
        "data": {"parent_id": "", "user_id": user_id},
        "broadcast": {"omit_users": {user_id: True}, "user_id": "", "channel_id": channel_id, "team_id": ""},
        "seq": next(_seq),
    })


def post_edited_frame(post: dict[str, Any]) -> str:
    return json.dumps({
        "event": "post_edited",
        "data": {"post": json.dumps(post)},
        "broadcast": {"omit_users": None, "user_id": "", "channel_id": post["channel_id"], "team_id": ""},
        "seq": next(_seq),
    })


# ------------------------------------------------------------------- named scenario frames
def dm_from_alice(message: str, *, root_id: str = "", file_ids: list[str] | None = None) -> str:
    """Alice writes to the bot in their direct channel; DMs always carry mentions."""
    post = post_dict(message, channel_id=DM_ALICE_BOT_ID, root_id=root_id, file_ids=file_ids)
    return posted_frame(post, channel_type="D", channel_name=f"{ALICE_ID}__{BOT_ID}",
                        channel_display_name="@alice", team_id="", mentions=[BOT_ID])


def alice_in_town_square(message: str, *, mentions: list[str] | None = None) -> str:
    """A root post by alice in a public channel."""
    return posted_frame(post_dict(message), mentions=mentions)


def reply_in_thread(root_id: str, message: str, *, user_id: str = ALICE_ID,
                    mentions: list[str] | None = None) -> str:
    """A reply in the thread of `root_id` in Town Square."""
    return posted_frame(post_dict(message, user_id=user_id, root_id=root_id), mentions=mentions)


def bots_own_reply(root_id: str, message: str = "Here is what I think.") -> str:
    """The bot's own answer echoed back to it (the author receives its posts too)."""
    return posted_frame(bot_answer(message, root_id=root_id))


def other_bot_in_thread(root_id: str, message: str) -> str:
    return posted_frame(other_bot_post(message, root_id=root_id))


def webhook_in_thread(root_id: str, message: str) -> str:
    return posted_frame(webhook_post(message, root_id=root_id), sender_name="@ci")


def join_in_thread(root_id: str) -> str:
    return posted_frame(join_post(root_id=root_id))
