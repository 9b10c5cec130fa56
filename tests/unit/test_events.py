"""parse_frame: raw websocket frames -> Posted | Hello | Ignored, and never an exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmbot.events import Hello, Ignored, Posted, parse_frame
from llmbot.record import kind_of

from . import payloads as p


def frame_with(data: dict[str, Any], event: str = "posted") -> str:
    return json.dumps({"event": event, "data": data, "broadcast": {}, "seq": 7})


def ignored_reason(raw: Any) -> str:
    event = parse_frame(raw)
    assert isinstance(event, Ignored), event
    return event.reason


class TestPosted:
    def test_a_channel_post_is_decoded_from_the_json_string(self) -> None:
        post = p.post_dict("gpt how do I rotate logs?", file_ids=["f1", "f2"])
        event = parse_frame(p.posted_frame(post, mentions=[p.BOT_ID, p.BOB_ID]))
        assert isinstance(event, Posted)
        assert event.post.id == post["id"]
        assert event.post.channel_id == p.TOWN_SQUARE_ID
        assert event.post.user_id == p.ALICE_ID
        assert event.post.message == "gpt how do I rotate logs?"
        assert event.post.create_at == post["create_at"]
        assert event.post.is_root and event.post.thread_id == post["id"]
        assert event.post.file_count == 2
        assert event.channel_type == "O"
        assert event.channel_name == "town-square"
        assert event.channel_display_name == "Town Square"
        assert event.team_id == p.TEAM_ID
        assert not event.is_direct

    def test_the_sender_name_loses_its_at_sign(self) -> None:
        event = parse_frame(p.alice_in_town_square("hi"))
        assert isinstance(event, Posted)
        assert event.sender_name == "alice"

    def test_a_direct_message_is_direct_and_has_no_team(self) -> None:
        event = parse_frame(p.dm_from_alice("what is a monad?"))
        assert isinstance(event, Posted)
        assert event.is_direct
        assert event.team_id == ""
        assert event.channel_name == f"{p.ALICE_ID}__{p.BOT_ID}"

    def test_a_reply_knows_its_thread(self) -> None:
        event = parse_frame(p.reply_in_thread("r" * 26, "and then?"))
        assert isinstance(event, Posted)
        assert event.post.root_id == "r" * 26
        assert event.post.thread_id == "r" * 26
        assert not event.post.is_root

    def test_props_are_kept(self) -> None:
        event = parse_frame(p.bots_own_reply("r" * 26))
        assert isinstance(event, Posted)
        assert event.post.from_bot
        assert kind_of(event.post) == "answer"

    def test_a_system_post_is_still_decoded(self) -> None:
        event = parse_frame(p.join_in_thread("r" * 26))
        assert isinstance(event, Posted)
        assert event.post.is_system
        assert event.post.type == "system_join_channel"

    def test_odd_mentions_do_not_matter(self) -> None:
        # the bot tells a call by its @name in the text, never by `mentions`
        # (which @here and @channel fill with every member)
        post = json.dumps(p.post_dict("x"))
        for mentions in ("not json", '{"a": 1}', "42", ["u3"], None):
            event = parse_frame(frame_with({"post": post, "channel_type": "O", "mentions": mentions}))
            assert isinstance(event, Posted)
            assert event.post.message == "x"

    def test_a_post_given_as_an_object_is_accepted_too(self) -> None:
        post = p.post_dict("hello")
        event = parse_frame(frame_with({"post": post, "channel_type": "P"}))
        assert isinstance(event, Posted)
        assert event.post.id == post["id"]
        assert event.channel_type == "P"

    def test_the_frame_may_arrive_as_utf8_bytes(self) -> None:
        event = parse_frame(p.alice_in_town_square("grüße 👋").encode("utf-8"))
        assert isinstance(event, Posted)
        assert event.post.message == "grüße 👋"

    def test_wrongly_typed_fields_become_empty_values(self) -> None:
        post = p.post_dict("x")
        post.update(root_id=5, message=None, create_at="yesterday", props=[1], file_ids="f1", type=None)
        event = parse_frame(frame_with({"post": json.dumps(post), "channel_type": 1, "sender_name": None}))
        assert isinstance(event, Posted)
        assert event.post.root_id == "" and event.post.message == "" and event.post.create_at == 0
        assert event.post.props == {} and event.post.file_count == 0 and event.post.type == ""
        assert event.channel_type == "" and event.sender_name == ""


class TestHello:
    def test_hello_carries_the_connection_and_the_bot_user(self) -> None:
        assert parse_frame(p.hello_frame()) == Hello(connection_id=p.CONNECTION_ID, user_id=p.BOT_ID)

    def test_hello_without_broadcast_has_no_user(self) -> None:
        raw = json.dumps({"event": "hello", "data": {"connection_id": "c1"}, "seq": 0})
        assert parse_frame(raw) == Hello(connection_id="c1", user_id="")


class TestIgnored:
    def test_the_reply_to_the_authentication_challenge_is_ignored(self) -> None:
        assert ignored_reason(p.auth_ok_reply()) == "reply to a client action"

    def test_an_error_status_reply_is_ignored(self) -> None:
        raw = json.dumps({"status": "FAIL", "seq_reply": 2, "error": {"id": "api.web_socket_router.bad_seq.app_error"}})
        assert ignored_reason(raw) == "reply to a client action"

    def test_other_events_are_ignored_by_name(self) -> None:
        assert ignored_reason(p.typing_frame()) == "event 'typing'"
        assert ignored_reason(p.post_edited_frame(p.post_dict("gpt edited"))) == "event 'post_edited'"
        assert "status_change" in ignored_reason(frame_with({"status": "away"}, event="status_change"))

    def test_a_long_event_name_is_shortened_in_the_reason(self) -> None:
        assert len(ignored_reason(frame_with({}, event="x" * 10_000))) < 60

    def test_garbage_is_ignored(self) -> None:
        cases: dict[str, Any] = {
            "not JSON": "{event: posted",
            "empty": "",
            "JSON list": '[{"event": "posted"}]',
            "JSON string": '"posted"',
            "JSON null": "null",
            "non-UTF-8 bytes": b"\xff\xfe{\x00",
            "not text": 12345,
            "None": None,
            "a dict, not a frame": {"event": "posted"},
            "no event": '{"data": {}}',
            "missing data": '{"event": "posted"}',
            "data is a string": '{"event": "posted", "data": "{}"}',
            "post missing": '{"event": "posted", "data": {"channel_type": "O"}}',
            "post not JSON": frame_with({"post": "{not json"}),
            "post is a JSON list": frame_with({"post": "[1, 2]"}),
            "post is JSON null": frame_with({"post": "null"}),
            "post without id": frame_with({"post": json.dumps({**p.post_dict("x"), "id": ""})}),
            "post without channel": frame_with({"post": json.dumps({**p.post_dict("x"), "channel_id": None})}),
            "deeply nested": "[" * 100_000 + "]" * 100_000,
            "deeply nested post": frame_with({"post": "[" * 100_000 + "]" * 100_000}),
        }
        for label, raw in cases.items():
            assert isinstance(parse_frame(raw), Ignored), label

    def test_reasons_say_what_was_wrong(self) -> None:
        assert ignored_reason(b"\xff") == "frame is not UTF-8 JSON"
        assert ignored_reason("{") == "frame is not UTF-8 JSON"
        assert ignored_reason("[]") == "frame is not a JSON object"
        assert ignored_reason('{"event": "posted"}') == "'posted' without data"
        assert ignored_reason(frame_with({"post": "{"})) == "posted: post is not JSON"
        assert ignored_reason(frame_with({"post": "{}"})) == "posted: post lacks id or channel_id"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
post_like = st.fixed_dictionaries(
    {"id": st.text(max_size=5), "channel_id": st.text(max_size=5)},
    optional={k: json_values for k in ("user_id", "root_id", "message", "create_at", "type", "props", "file_ids")},
)
posted_like = st.fixed_dictionaries(
    {
        "event": st.just("posted"),
        "data": st.fixed_dictionaries(
            {"post": post_like.map(json.dumps) | json_values.map(json.dumps)},
            optional={k: json_values | json_values.map(json.dumps)
                      for k in ("mentions", "channel_type", "sender_name", "team_id")},
        ),
    },
    optional={"broadcast": json_values, "seq": json_values},
)
any_frame = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(["posted", "hello", "typing", "", None]) | json_values,
        "data": st.fixed_dictionaries(
            {},
            optional={
                "post": post_like.map(json.dumps) | post_like | json_values.map(json.dumps) | st.text(max_size=30),
                "mentions": json_values | json_values.map(json.dumps),
                "channel_type": json_values,
                "sender_name": json_values,
                "connection_id": json_values,
            },
        )
        | json_values,
        "broadcast": json_values,
        "seq_reply": json_values,
    },
)
frame_like = posted_like | any_frame


class TestNeverRaises:
    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_arbitrary_text_is_parsed_or_ignored(self, raw: str) -> None:
        assert isinstance(parse_frame(raw), (Posted, Hello, Ignored))

    @settings(max_examples=200, deadline=None)
    @given(frame_like)
    def test_arbitrary_json_frames_are_parsed_or_ignored(self, frame: dict[str, Any]) -> None:
        event = parse_frame(json.dumps(frame))
        assert isinstance(event, (Posted, Hello, Ignored))
        if isinstance(event, Posted):
            assert event.post.id and event.post.channel_id
            assert all(isinstance(v, str) for v in (event.channel_type, event.sender_name, event.post.message))

    @settings(max_examples=200, deadline=None)
    @given(st.binary())
    def test_arbitrary_bytes_are_parsed_or_ignored(self, raw: bytes) -> None:
        assert isinstance(parse_frame(raw), (Posted, Hello, Ignored))
