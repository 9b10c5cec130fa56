"""plugin_access: per-plugin channel and user lists, who may converse, activations per minute."""

from __future__ import annotations

import pytest

from llmbot.errors import ConfigError
from llmbot.events import Posted, parse_frame
from llmbot.plugin_access import (
    CHANNEL_DENIED,
    CHANNEL_NOT_ALLOWED,
    STORE_KEY,
    USER_DENIED,
    USER_NOT_ALLOWED,
    Activations,
    PluginAccess,
)
from llmbot.setting_values import ActivationLimits, PluginNames
from llmbot.settings import Settings, load_settings
from llmbot.store import MemoryStore
from tests.fakes import FakeClock

from . import payloads as p

LUNCH_ID = "1unch1unch1unch1unch1unch0"
GROUP_ID = "gr0upgr0upgr0upgr0upgr0up0"
BASE = {"MATTERMOST_URL": "https://chat.example.com", "MATTERMOST_TOKEN": "t", "OPENAI_API_KEY": "k"}


def load(**variables: str) -> Settings:
    return load_settings({**BASE, **variables})


def access(**variables: str) -> PluginAccess:
    return PluginAccess.from_settings(load(**variables))


def post(
    *, user_id: str = p.ALICE_ID, channel_id: str = p.TOWN_SQUARE_ID, channel_name: str = "town-square", channel_type: str = "O"
) -> Posted:
    frame = p.posted_frame(p.post_dict("food today", user_id=user_id, channel_id=channel_id),
                           channel_type=channel_type, channel_name=channel_name)
    event = parse_frame(frame)
    assert isinstance(event, Posted)
    return event


ALICE = post()  # alice in ~town-square
BOB = post(user_id=p.BOB_ID)
IN_LUNCH = post(channel_id=LUNCH_ID, channel_name="lunch")
DM = post(channel_id=p.DM_ALICE_BOT_ID, channel_name=f"{p.ALICE_ID}__{p.BOT_ID}", channel_type="D")
GROUP = post(channel_id=GROUP_ID, channel_name="3b7a2c9d1e4f5a6b", channel_type="G")


class TestParsing:
    @pytest.mark.parametrize(
        ("name", "value", "field", "expected"),
        [
            ("LLMBOT_PLUGIN_ALLOWED_CHANNELS", "food=~Lunch, kitchen; summarize=town-square",
             "plugin_allowed_channels", PluginNames((("food", frozenset({"lunch", "kitchen"})),
                                                     ("summarize", frozenset({"town-square"}))))),
            ("LLMBOT_PLUGIN_DENIED_CHANNELS", " Food = lunch ;", "plugin_denied_channels",
             PluginNames((("food", frozenset({"lunch"})),))),
            ("LLMBOT_PLUGIN_ALLOWED_USERS", f"food=@Alice,{p.BOB_ID}", "plugin_allowed_users",
             PluginNames((("food", frozenset({"alice", p.BOB_ID})),))),
            ("LLMBOT_PLUGIN_DENIED_USERS", "examples.food=@bob", "plugin_denied_users",
             PluginNames((("examples.food", frozenset({"bob"})),))),
            ("LLMBOT_CONVERSE_ALLOWED", "gpt, Food", "converse_allowed", frozenset({"gpt", "food"})),
            ("LLMBOT_CONVERSE_DENIED", "summarize", "converse_denied", frozenset({"summarize"})),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "30", "max_activations_per_minute", ActivationLimits(30)),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=5,gpt=60", "max_activations_per_minute",
             ActivationLimits(0, (("food", 5), ("gpt", 60)))),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "30; gpt = 0", "max_activations_per_minute",
             ActivationLimits(30, (("gpt", 0),))),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "0", "max_activations_per_minute", ActivationLimits()),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=10000", "max_activations_per_minute",
             ActivationLimits(0, (("food", 10_000),))),
        ],
    )
    def test_a_good_value_is_parsed(self, name: str, value: str, field: str, expected: object) -> None:
        assert getattr(load(**{name: value}), field) == expected

    @pytest.mark.parametrize(
        ("name", "value", "words"),
        [
            ("LLMBOT_PLUGIN_ALLOWED_CHANNELS", "lunch", "has 'lunch' without a plugin"),
            ("LLMBOT_PLUGIN_ALLOWED_CHANNELS", "food=lunch,summarize=town-square",
             "has 'summarize=town-square' inside the names of 'food': write plugin=names, with ';' between plugins"),
            ("LLMBOT_PLUGIN_DENIED_CHANNELS", "food=lunch kitchen", "has 'lunch kitchen', which is not a name or id"),
            ("LLMBOT_PLUGIN_DENIED_CHANNELS", "food=", "gives plugin 'food' no names"),
            ("LLMBOT_PLUGIN_ALLOWED_USERS", "food=@a; food=@b", "names plugin 'food' twice"),
            ("LLMBOT_PLUGIN_ALLOWED_USERS", "my food=@a", "has 'my food', which is not a plugin name"),
            ("LLMBOT_PLUGIN_DENIED_USERS", "=@bob", "has '', which is not a plugin name"),
            ("LLMBOT_CONVERSE_ALLOWED", "gpt,examples.food:Food", "has 'examples.food:Food', which is not a plugin name"),
            ("LLMBOT_CONVERSE_DENIED", "food=1", "has 'food=1', which is not a plugin name"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "lots", "has 'lots', which is not a whole number from 0 to 10000"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=-1", "has '-1', which is not a whole number"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=2.5", "has '2.5', which is not a whole number"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=10001", "has '10001', which is not a whole number from 0 to 10000"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=", "has '', which is not a whole number"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "5,10", "has two limits for every plugin (5 and 10)"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=5;food=6", "names plugin 'food' twice"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "Food Court=5", "has 'Food Court', which is not a plugin name"),
        ],
    )
    def test_a_bad_value_is_one_line_naming_the_setting_the_value_and_a_fix(self, name: str, value: str, words: str) -> None:
        with pytest.raises(ConfigError) as caught:
            load(**{name: value})
        [problem] = caught.value.problems
        assert problem.startswith(f"{name}={value!r} "), problem
        assert words in problem
        assert "e.g. " in problem and "\n" not in problem

    def test_every_bad_plugin_setting_is_named_at_once(self) -> None:
        bad = {"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "x", "LLMBOT_CONVERSE_DENIED": "a b", "LLMBOT_MAX_ACTIVATIONS_PER_MINUTE": "-"}
        with pytest.raises(ConfigError) as caught:
            load(**bad)
        assert sorted(problem.split("=")[0] for problem in caught.value.problems) == sorted(bad)

    def test_unset_and_blank_mean_no_restriction(self) -> None:
        settings = load(LLMBOT_PLUGIN_ALLOWED_USERS="  ", LLMBOT_MAX_ACTIVATIONS_PER_MINUTE="")
        assert settings.plugin_allowed_users == PluginNames() and settings.max_activations_per_minute == ActivationLimits()
        assert PluginAccess.from_settings(settings).is_open
        assert Activations.from_settings(MemoryStore(ttl=60), settings).is_open

    def test_settings_built_in_code_take_mappings_and_stay_hashable(self) -> None:
        settings = Settings.model_validate({
            **{"mattermost_url": "https://chat.example.com", "mattermost_token": "t", "openai_api_key": "k"},
            "plugin_denied_users": {"Food": ["@Bob"]},
            "converse_allowed": ["gpt"],
            "max_activations_per_minute": {"food": 5},
        })
        assert settings.plugin_denied_users == PluginNames((("food", frozenset({"bob"})),))
        assert settings.max_activations_per_minute == ActivationLimits(0, (("food", 5),))
        assert hash(settings) == hash(settings.model_copy())


class TestRefuses:
    @pytest.mark.parametrize(
        ("variables", "plugin", "event", "expected"),
        [
            # a plugin no setting names is not restricted
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch"}, "gpt", ALICE, None),
            # channels by name (with or without ~) or id, casefolded
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=~Lunch"}, "food", IN_LUNCH, None),
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch"}, "food", ALICE, CHANNEL_NOT_ALLOWED),
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": f"food={LUNCH_ID.upper()}"}, "food", IN_LUNCH, None),
            ({"LLMBOT_PLUGIN_DENIED_CHANNELS": "food=town-square"}, "food", ALICE, CHANNEL_DENIED),
            ({"LLMBOT_PLUGIN_DENIED_CHANNELS": f"food={p.TOWN_SQUARE_ID}"}, "food", ALICE, CHANNEL_DENIED),
            ({"LLMBOT_PLUGIN_DENIED_CHANNELS": "food=town-square"}, "food", IN_LUNCH, None),
            # users by username (with or without @) or id
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=@alice"}, "food", ALICE, None),
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=alice"}, "food", BOB, USER_NOT_ALLOWED),
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": f"food={p.BOB_ID}"}, "food", BOB, None),
            ({"LLMBOT_PLUGIN_DENIED_USERS": "food=@Bob"}, "food", BOB, USER_DENIED),
            ({"LLMBOT_PLUGIN_DENIED_USERS": f"food={p.ALICE_ID}"}, "food", ALICE, USER_DENIED),
            ({"LLMBOT_PLUGIN_DENIED_USERS": "food=bob"}, "food", ALICE, None),
            # deny wins over allow
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=alice", "LLMBOT_PLUGIN_DENIED_USERS": "food=alice"},
             "food", ALICE, USER_DENIED),
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch", "LLMBOT_PLUGIN_DENIED_CHANNELS": "food=lunch"},
             "food", IN_LUNCH, CHANNEL_DENIED),
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=bob", "LLMBOT_PLUGIN_DENIED_CHANNELS": "food=town-square"},
             "food", ALICE, CHANNEL_DENIED),
            # both kinds of list must let the post through
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=alice", "LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch"},
             "food", ALICE, CHANNEL_NOT_ALLOWED),
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=alice", "LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch"},
             "food", IN_LUNCH, None),
            # one plugin's lists say nothing about another's
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch; summarize=town-square"}, "summarize", ALICE, None),
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch; summarize=town-square"}, "summarize", IN_LUNCH,
             CHANNEL_NOT_ALLOWED),
            # DMs obey only the user lists, as with the global lists; group messages obey both
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch"}, "food", DM, None),
            ({"LLMBOT_PLUGIN_DENIED_CHANNELS": f"food={p.DM_ALICE_BOT_ID}"}, "food", DM, None),
            ({"LLMBOT_PLUGIN_DENIED_USERS": "food=alice"}, "food", DM, USER_DENIED),
            ({"LLMBOT_PLUGIN_ALLOWED_USERS": "food=bob"}, "food", DM, USER_NOT_ALLOWED),
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": "food=lunch"}, "food", GROUP, CHANNEL_NOT_ALLOWED),
            ({"LLMBOT_PLUGIN_ALLOWED_CHANNELS": f"food={GROUP_ID}"}, "food", GROUP, None),
        ],
    )
    def test_refuses(self, variables: dict[str, str], plugin: str, event: Posted, expected: str | None) -> None:
        rules = access(**variables)
        assert not rules.is_open
        assert rules.refuses(plugin, event) == expected

    def test_an_empty_name_or_id_matches_nothing(self) -> None:
        nameless = post(channel_name="")
        rules = PluginAccess(allowed_channels={"food": ["", "~", "lunch"]}, denied_users={"food": ["@"]})
        assert rules.refuses("food", nameless) == CHANNEL_NOT_ALLOWED
        assert PluginAccess(allowed_users={"food": [""]}).is_open  # an empty list restricts nothing

    def test_nothing_configured_is_open_and_refuses_nothing(self) -> None:
        rules = access()
        assert rules.is_open
        assert all(rules.refuses(plugin, event) is None for plugin in ("gpt", "food") for event in (ALICE, DM, GROUP))
        assert rules.may_converse("gpt")


class TestMayConverse:
    @pytest.mark.parametrize(
        ("variables", "verdicts"),
        [
            ({}, {"gpt": True, "food": True}),
            ({"LLMBOT_CONVERSE_ALLOWED": "food"}, {"gpt": False, "food": True}),
            ({"LLMBOT_CONVERSE_DENIED": "gpt"}, {"gpt": False, "food": True}),
            ({"LLMBOT_CONVERSE_ALLOWED": "gpt,food", "LLMBOT_CONVERSE_DENIED": "food"}, {"gpt": True, "food": False}),
            ({"LLMBOT_CONVERSE_ALLOWED": "Food"}, {"food": True, "summarize": False}),
        ],
    )
    def test_may_converse(self, variables: dict[str, str], verdicts: dict[str, bool]) -> None:
        rules = access(**variables)
        assert rules.is_open == (not variables)
        assert {plugin: rules.may_converse(plugin) for plugin in verdicts} == verdicts

    def test_converse_settings_leave_the_lists_alone(self) -> None:
        assert access(LLMBOT_CONVERSE_DENIED="food").refuses("food", ALICE) is None


class TestUnknownPlugins:
    def test_each_setting_that_names_a_plugin_not_loaded_gets_a_line(self) -> None:
        settings = load(
            LLMBOT_PLUGIN_ALLOWED_CHANNELS="fod=lunch; food=lunch",
            LLMBOT_PLUGIN_DENIED_USERS="summarise=@bob",
            LLMBOT_CONVERSE_DENIED="gpt,sumarize",
            LLMBOT_MAX_ACTIVATIONS_PER_MINUTE="5,gtp=60,food=1",
        )
        loaded = {"gpt", "food"}
        assert PluginAccess.from_settings(settings).unknown_plugins(loaded) == [
            "LLMBOT_PLUGIN_ALLOWED_CHANNELS names plugin 'fod', which is not loaded (loaded: food, gpt)",
            "LLMBOT_PLUGIN_DENIED_USERS names plugin 'summarise', which is not loaded (loaded: food, gpt)",
            "LLMBOT_CONVERSE_DENIED names plugin 'sumarize', which is not loaded (loaded: food, gpt)",
        ]
        assert Activations.from_settings(MemoryStore(ttl=60), settings).unknown_plugins(loaded) == [
            "LLMBOT_MAX_ACTIVATIONS_PER_MINUTE names plugin 'gtp', which is not loaded (loaded: food, gpt)",
        ]

    def test_known_plugins_give_no_lines(self) -> None:
        settings = load(LLMBOT_CONVERSE_ALLOWED="gpt", LLMBOT_MAX_ACTIVATIONS_PER_MINUTE="9")
        assert PluginAccess.from_settings(settings).unknown_plugins({"gpt"}) == []
        assert Activations.from_settings(MemoryStore(ttl=60), settings).unknown_plugins({"gpt"}) == []


WALL = 1_700_000_000.0  # posts' own times, seconds


class TestActivations:
    @pytest.fixture
    def store(self, clock: FakeClock) -> MemoryStore:
        return MemoryStore(ttl=3600, timer=clock)

    @staticmethod
    async def admitted(activations: Activations, plugin: str, times: list[float]) -> list[bool]:
        return [await activations.admit(plugin, WALL + t) for t in times]

    @pytest.mark.parametrize(
        ("value", "plugin", "times", "expected"),
        [
            ("2", "food", [0, 1, 2], [True, True, False]),
            ("2", "gpt", [0, 1, 2], [True, True, False]),  # a bare number applies to every plugin
            ("food=2", "gpt", [0, 1, 2, 3], [True, True, True, True]),  # a plugin not named: no limit
            ("food=2", "food", [0, 30, 59.9, 60, 60.5], [True, True, False, True, False]),  # a sliding minute
            ("food=1", "food", [0, 61, 122], [True, True, True]),
            ("30,food=1", "food", [0, 1], [True, False]),
            ("1,gpt=0", "gpt", [0, 1, 2], [True, True, True]),  # 0: no limit for that plugin
            ("0", "food", [0] * 50, [True] * 50),
        ],
    )
    async def test_admit(self, store: MemoryStore, value: str, plugin: str, times: list[float], expected: list[bool]) -> None:
        activations = Activations.from_settings(store, load(LLMBOT_MAX_ACTIVATIONS_PER_MINUTE=value))
        assert await self.admitted(activations, plugin, times) == expected

    async def test_plugins_count_apart_and_apart_from_the_users(self, store: MemoryStore) -> None:
        activations = Activations(store, {"food": 1, "gpt": 1})
        assert await self.admitted(activations, "food", [0, 1]) == [True, False]
        assert await self.admitted(activations, "gpt", [1]) == [True]
        assert await store.count_start(p.ALICE_ID, WALL + 1, 60, 1)  # the per-user counter is untouched
        assert not await store.count_start(STORE_KEY.format("food"), WALL + 1, 60, 1)  # the key it uses

    async def test_posts_replayed_out_of_order_count_when_they_were_written(self, store: MemoryStore) -> None:
        activations = Activations(store, {"food": 1})
        # the post at 0, read after the one at 50, had no activation in the minute before it
        assert await self.admitted(activations, "food", [50, 0, 70]) == [True, True, False]

    async def test_a_refused_activation_is_not_recorded(self, store: MemoryStore) -> None:
        activations = Activations(store, {"food": 1})
        assert await self.admitted(activations, "food", [0, 30, 30, 61]) == [True, False, False, True]

    async def test_no_limit_never_touches_the_store(self) -> None:
        class NoStore:
            async def count_start(self, *_: object) -> bool:
                raise AssertionError("no limit: no store call")

        activations = Activations(NoStore(), {"food": 0})  # type: ignore[arg-type]
        assert activations.is_open and activations.limit("food") == 0
        assert await activations.admit("food", WALL)

    def test_limits_per_plugin(self) -> None:
        activations = Activations(MemoryStore(ttl=60), {"Food": 5}, default=30)
        assert not activations.is_open
        assert (activations.limit("food"), activations.limit("gpt")) == (5, 30)
