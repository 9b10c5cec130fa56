"""policy: the access lists."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbot.events import Posted, parse_frame
from llmbot.policy import (
    CHANNEL_DENIED,
    CHANNEL_NOT_ALLOWED,
    DMS_OFF,
    TEAM_DENIED,
    TEAM_NOT_ALLOWED,
    TEAM_UNKNOWN,
    USER_DENIED,
    USER_NOT_ALLOWED,
    AccessPolicy,
)
from llmbot.settings import ServerURL, Settings, load_settings
from llmbot.thread import Post

from . import payloads as p

ROOT = "r00tr00tr00tr00tr00tr00t00"
OTHER_TEAM_ID = "0therteam0therteam0therte0"
OFF_TOPIC_ID = "0fft0p1c0fft0p1c0fft0p1c00"
GROUP_ID = "gr0upgr0upgr0upgr0upgr0up0"
GROUP_NAME = "3b7a2c9d1e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b"  # group channels are named by a hash


def posted(raw: str) -> Posted:
    event = parse_frame(raw)
    assert isinstance(event, Posted), event
    return event


def in_channel(
    *,
    user_id: str = p.ALICE_ID,
    sender: str | None = None,
    channel_id: str = p.TOWN_SQUARE_ID,
    channel_name: str = "town-square",
    channel_type: str = "O",
    team_id: str = p.TEAM_ID,
) -> Posted:
    post = p.post_dict("gpt hi", user_id=user_id, channel_id=channel_id)
    return posted(p.posted_frame(post, channel_type=channel_type, channel_name=channel_name,
                                 sender_name=sender, team_id=team_id))


def in_group(*, user_id: str = p.ALICE_ID) -> Posted:
    post = p.post_dict("gpt hi", user_id=user_id, channel_id=GROUP_ID)
    return posted(p.posted_frame(post, channel_type="G", channel_name=GROUP_NAME,
                                 channel_display_name="alice, bob, llmbot", team_id=""))


def dm() -> Posted:
    return posted(p.dm_from_alice("what is a monad?"))


def policy(
    *,
    allow_users: AbstractSet[str] = frozenset(),
    deny_users: AbstractSet[str] = frozenset(),
    allow_channels: AbstractSet[str] = frozenset(),
    deny_channels: AbstractSet[str] = frozenset(),
    allow_teams: AbstractSet[str] = frozenset(),
    deny_teams: AbstractSet[str] = frozenset(),
    direct_messages: bool = True,
) -> AccessPolicy:
    """An AccessPolicy from plain sets of names: policy(allow_users={"alice"})."""
    return AccessPolicy(
        allow_users=frozenset(allow_users), deny_users=frozenset(deny_users),
        allow_channels=frozenset(allow_channels), deny_channels=frozenset(deny_channels),
        allow_teams=frozenset(allow_teams), deny_teams=frozenset(deny_teams),
        direct_messages=direct_messages,
    )


EVERY_KIND_OF_POST = [
    pytest.param(lambda: in_channel(), id="public"),
    pytest.param(lambda: in_channel(channel_type="P", channel_name="secret-plans"), id="private"),
    pytest.param(in_group, id="group"),
    pytest.param(dm, id="direct"),
]


class TestOpenPolicy:
    @pytest.mark.parametrize("make", EVERY_KIND_OF_POST)
    def test_a_policy_without_lists_refuses_nothing(self, make: Any) -> None:
        assert AccessPolicy().is_open
        assert AccessPolicy().refuses(make()) is None

    def test_default_settings_make_an_open_policy(self) -> None:
        settings = Settings(mattermost_url=ServerURL("http", "chat", 80), mattermost_token="t", openai_api_key="k")
        assert AccessPolicy.from_settings(settings).is_open

    @pytest.mark.parametrize(
        "lists",
        [{"allow_users": {"alice"}}, {"deny_users": {"bob"}}, {"allow_channels": {"x"}}, {"deny_channels": {"x"}},
         {"allow_teams": {"x"}}, {"deny_teams": {"x"}}, {"direct_messages": False}],
    )
    def test_any_list_or_dms_off_closes_it(self, lists: dict[str, Any]) -> None:
        assert not policy(**lists).is_open

    @settings(max_examples=200, deadline=None)
    @given(
        user_id=st.text(max_size=30),
        sender=st.text(max_size=30),
        channel_id=st.text(max_size=30),
        channel_name=st.text(max_size=30),
        channel_type=st.sampled_from(["O", "P", "D", "G", "", "X"]),
        team_id=st.text(max_size=30),
    )
    def test_an_open_policy_never_refuses(
        self, user_id: str, sender: str, channel_id: str, channel_name: str, channel_type: str, team_id: str
    ) -> None:
        event = Posted(Post("p1", channel_id or "c", user_id), channel_type, channel_name, "", sender, team_id)
        assert AccessPolicy().refuses(event) is None


class TestUsers:
    def test_an_allow_list_lets_in_a_user_by_username(self) -> None:
        allow = policy(allow_users={"alice"})
        assert allow.refuses(in_channel()) is None
        assert allow.refuses(in_channel(user_id=p.BOB_ID)) == USER_NOT_ALLOWED

    def test_an_allow_list_lets_in_a_user_by_id(self) -> None:
        allow = policy(allow_users={p.BOB_ID})
        assert allow.refuses(in_channel(user_id=p.BOB_ID)) is None
        assert allow.refuses(in_channel()) == USER_NOT_ALLOWED

    def test_a_deny_list_refuses_by_username_or_id_and_lets_others_in(self) -> None:
        assert policy(deny_users={"alice"}).refuses(in_channel()) == USER_DENIED
        assert policy(deny_users={p.ALICE_ID}).refuses(in_channel()) == USER_DENIED
        assert policy(deny_users={"alice"}).refuses(in_channel(user_id=p.BOB_ID)) is None

    def test_deny_beats_allow(self) -> None:
        assert policy(allow_users={"alice"}, deny_users={"alice"}).refuses(in_channel()) == USER_DENIED

    def test_a_denied_name_beats_an_allowed_id(self) -> None:
        assert policy(allow_users={p.ALICE_ID}, deny_users={"alice"}).refuses(in_channel()) == USER_DENIED

    def test_the_sender_name_is_matched_case_insensitively(self) -> None:
        assert policy(allow_users={"alice"}).refuses(in_channel(sender="@Alice")) is None
        assert policy(deny_users={"alice"}).refuses(in_channel(sender="@ALICE")) == USER_DENIED

    def test_a_hand_built_list_is_casefolded_and_loses_its_at_sign(self) -> None:
        assert policy(deny_users={"@Alice"}).refuses(in_channel()) == USER_DENIED

    def test_user_lists_apply_in_direct_and_group_messages(self) -> None:
        assert policy(deny_users={"alice"}).refuses(dm()) == USER_DENIED
        assert policy(allow_users={"bob"}).refuses(dm()) == USER_NOT_ALLOWED
        assert policy(deny_users={"alice"}).refuses(in_group()) == USER_DENIED
        assert policy(allow_users={"alice"}).refuses(in_group()) is None

    @settings(max_examples=200, deadline=None)
    @given(
        name=st.from_regex(r"[a-z0-9._-]{1,22}", fullmatch=True),
        allowed=st.sets(st.from_regex(r"[a-z0-9._-]{1,22}", fullmatch=True), max_size=4),
        denied=st.sets(st.from_regex(r"[a-z0-9._-]{1,22}", fullmatch=True), max_size=4),
        by_id=st.booleans(),
        channel_type=st.sampled_from(["O", "P", "D", "G"]),
    )
    def test_a_denied_user_is_refused_whatever_else_is_allowed(
        self, name: str, allowed: set[str], denied: set[str], by_id: bool, channel_type: str
    ) -> None:
        key = p.ALICE_ID if by_id else name
        access = policy(allow_users=allowed | {p.ALICE_ID, name}, deny_users=denied | {key},
                        allow_channels={"town-square", p.TOWN_SQUARE_ID}, allow_teams={p.TEAM_ID})
        event = Posted(Post("p1", p.TOWN_SQUARE_ID, p.ALICE_ID), channel_type, "town-square", "", name, p.TEAM_ID)
        assert access.refuses(event) == USER_DENIED


class TestChannels:
    def test_an_allow_list_lets_in_a_channel_by_name(self) -> None:
        allow = policy(allow_channels={"town-square"})
        assert allow.refuses(in_channel()) is None
        assert allow.refuses(in_channel(channel_id=OFF_TOPIC_ID, channel_name="off-topic")) == CHANNEL_NOT_ALLOWED

    def test_an_allow_list_lets_in_a_channel_by_id(self) -> None:
        allow = policy(allow_channels={OFF_TOPIC_ID})
        assert allow.refuses(in_channel(channel_id=OFF_TOPIC_ID, channel_name="off-topic")) is None
        assert allow.refuses(in_channel()) == CHANNEL_NOT_ALLOWED

    def test_a_deny_list_refuses_by_name_or_id(self) -> None:
        assert policy(deny_channels={"town-square"}).refuses(in_channel()) == CHANNEL_DENIED
        assert policy(deny_channels={p.TOWN_SQUARE_ID}).refuses(in_channel()) == CHANNEL_DENIED
        assert policy(deny_channels={"off-topic"}).refuses(in_channel()) is None

    def test_a_denied_name_beats_an_allowed_id(self) -> None:
        access = policy(allow_channels={p.TOWN_SQUARE_ID}, deny_channels={"town-square"})
        assert access.refuses(in_channel()) == CHANNEL_DENIED

    def test_the_channel_name_is_matched_case_insensitively(self) -> None:
        assert policy(allow_channels={"town-square"}).refuses(in_channel(channel_name="Town-Square")) is None
        assert policy(deny_channels={"~Town-Square"}).refuses(in_channel()) == CHANNEL_DENIED

    def test_channel_lists_apply_to_private_channels(self) -> None:
        private = in_channel(channel_type="P", channel_name="secret-plans")
        assert policy(deny_channels={"secret-plans"}).refuses(private) == CHANNEL_DENIED

    def test_a_group_message_obeys_the_channel_lists(self) -> None:
        assert policy(allow_channels={"town-square"}).refuses(in_group()) == CHANNEL_NOT_ALLOWED
        assert policy(allow_channels={GROUP_ID}).refuses(in_group()) is None
        assert policy(deny_channels={GROUP_ID}).refuses(in_group()) == CHANNEL_DENIED

    def test_a_direct_message_ignores_the_channel_lists(self) -> None:
        # DMs have their own switch; an allow list of channels must not silently turn them off.
        assert policy(allow_channels={"town-square"}).refuses(dm()) is None
        assert policy(deny_channels={p.DM_ALICE_BOT_ID}).refuses(dm()) is None


class TestTeams:
    def test_an_allow_list_lets_in_a_team_by_id_without_its_name(self) -> None:
        allow = policy(allow_teams={p.TEAM_ID})
        assert allow.refuses(in_channel()) is None
        assert not allow.wants_team_name("") and allow.needs_team_names

    def test_a_deny_list_refuses_by_id_without_the_name(self) -> None:
        assert policy(deny_teams={p.TEAM_ID}).refuses(in_channel()) == TEAM_DENIED

    def test_a_team_allowed_by_name_is_refused_until_its_name_is_learned(self) -> None:
        allow = policy(allow_teams={"engineering"})
        assert allow.wants_team_name(p.TEAM_ID)
        assert allow.refuses(in_channel()) == TEAM_UNKNOWN
        allow.learn_team(p.TEAM_ID, "engineering")
        assert not allow.wants_team_name(p.TEAM_ID)
        assert allow.refuses(in_channel()) is None

    def test_a_deny_by_name_fails_closed_until_the_name_is_learned(self) -> None:
        deny = policy(deny_teams={"sales"})
        assert deny.refuses(in_channel()) == TEAM_UNKNOWN
        deny.learn_team(p.TEAM_ID, "sales")
        assert deny.refuses(in_channel()) == TEAM_DENIED
        deny.learn_team(OTHER_TEAM_ID, "engineering")
        assert deny.refuses(in_channel(team_id=OTHER_TEAM_ID)) is None

    def test_an_allowed_id_still_needs_the_name_when_names_may_be_denied(self) -> None:
        access = policy(allow_teams={p.TEAM_ID}, deny_teams={"sales"})
        assert access.refuses(in_channel()) == TEAM_UNKNOWN
        access.learn_team(p.TEAM_ID, "sales")
        assert access.refuses(in_channel()) == TEAM_DENIED  # deny beats allow

    def test_a_learned_team_outside_the_allow_list_is_not_allowed(self) -> None:
        allow = policy(allow_teams={"engineering"})
        allow.learn_team(OTHER_TEAM_ID, "sales")
        assert allow.refuses(in_channel(team_id=OTHER_TEAM_ID)) == TEAM_NOT_ALLOWED

    def test_learned_names_are_matched_case_insensitively(self) -> None:
        allow = policy(allow_teams={"engineering"})
        allow.learn_team(p.TEAM_ID.upper(), "Engineering")
        assert allow.refuses(in_channel()) is None

    def test_a_team_learned_without_a_name_is_matched_by_id_only(self) -> None:
        access = policy(allow_teams={p.TEAM_ID}, deny_teams={"sales"})
        access.learn_team(p.TEAM_ID, "")
        assert access.refuses(in_channel()) is None
        assert policy(allow_teams={"engineering"}).refuses(in_channel()) == TEAM_UNKNOWN

    def test_without_team_lists_no_name_is_wanted(self) -> None:
        access = policy(allow_users={"alice"})
        assert not access.needs_team_names
        assert not access.wants_team_name(p.TEAM_ID)

    @pytest.mark.parametrize("channel_type", ["O", "P", ""])
    def test_a_channel_of_any_other_type_obeys_the_team_lists(self, channel_type: str) -> None:
        # An unknown or missing type is treated as a team channel: the lists fail closed.
        access = policy(allow_teams={"engineering"})
        access.learn_team(OTHER_TEAM_ID, "sales")
        assert access.refuses(in_channel(channel_type=channel_type, team_id=OTHER_TEAM_ID)) == TEAM_NOT_ALLOWED

    def test_direct_and_group_messages_ignore_the_team_lists(self) -> None:
        access = policy(allow_teams={"engineering"}, deny_teams={"sales"})
        assert access.refuses(dm()) is None
        assert access.refuses(in_group()) is None
        assert access.refuses(in_channel()) == TEAM_UNKNOWN  # the lists are live for channels


class TestDirectMessages:
    def test_dms_off_refuses_every_direct_message(self) -> None:
        off = policy(direct_messages=False)
        assert off.refuses(dm()) == DMS_OFF
        assert off.refuses(posted(p.dm_from_alice("one more thing", root_id=ROOT))) == DMS_OFF

    def test_dms_off_beats_an_allowed_user(self) -> None:
        assert policy(direct_messages=False, allow_users={"alice"}).refuses(dm()) == DMS_OFF

    def test_dms_off_leaves_channels_and_group_messages_alone(self) -> None:
        off = policy(direct_messages=False)
        assert off.refuses(in_channel()) is None
        assert off.refuses(in_group()) is None


class TestFromSettings:
    def test_the_environment_lists_reach_the_policy(self) -> None:
        settings = load_settings({
            "MATTERMOST_URL": "http://chat:8065",
            "MATTERMOST_TOKEN": "token",
            "OPENAI_API_KEY": "key",
            "LLMBOT_ALLOW_USERS": "@Alice, bob",
            "LLMBOT_DENY_USERS": p.BOB_ID,
            "LLMBOT_ALLOW_CHANNELS": "~Town-Square",
            "LLMBOT_DENY_TEAMS": "Sales",
            "LLMBOT_DIRECT_MESSAGES": "off",
        })
        access = AccessPolicy.from_settings(settings)
        access.learn_team(p.TEAM_ID, "engineering")
        assert access.refuses(in_channel()) is None
        assert access.refuses(in_channel(user_id=p.BOB_ID)) == USER_DENIED
        assert access.refuses(in_channel(channel_id=OFF_TOPIC_ID, channel_name="off-topic")) == CHANNEL_NOT_ALLOWED
        access.learn_team(OTHER_TEAM_ID, "SALES")
        assert access.refuses(in_channel(team_id=OTHER_TEAM_ID)) == TEAM_DENIED
        assert access.refuses(dm()) == DMS_OFF
