"""The small world most end-to-end tests share: four people, another bot, a channel, a DM."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class World:
    alice: dict
    bob: dict
    john: dict
    marc: dict
    other_bot: dict
    town: dict  # a public channel the bot is in
    dm: dict  # alice <-> bot


@pytest.fixture
def world(mm) -> World:
    alice, bob = mm.add_user("alice"), mm.add_user("bob")
    john, marc = mm.add_user("john"), mm.add_user("marc")
    other_bot = mm.add_user("otherbot", is_bot=True)
    town = mm.add_channel("town-square", members=(mm.bot, alice, bob, john, marc, other_bot), display_name="Town Square")
    return World(alice, bob, john, marc, other_bot, town, mm.dm_channel(alice, mm.bot))


def user_turns(request: dict) -> list[dict]:
    return [m for m in request["messages"] if m["role"] == "user"]
