"""The public plugin API: decorators collected per class, the loader of LLMBOT_PLUGINS (pure parts)."""

from __future__ import annotations

import pytest

from llmbot import Message, Plugin, conversational_intent, listen_to
from llmbot.errors import ConfigError
from llmbot.plugins.loader import load_plugins


class Greeter(Plugin):
    name = "greeter"

    @listen_to(r"^hello (\w+)", conversation=True, allowed_users=("@Alice",))
    async def hello(self, message: Message, who: str) -> None: ...

    @conversational_intent(r"^thanks")
    async def thanks(self, message: Message) -> None: ...


class LouderGreeter(Greeter):
    name = "louder"

    @listen_to(r"^HELLO!")
    def shout(self, message: Message) -> None: ...


class Nameless(Plugin):
    @listen_to(r"^x")
    async def x(self, message: Message) -> None: ...


class Deaf(Plugin):
    name = "deaf"


class TestDecorators:
    def test_listeners_and_intents_are_collected_with_their_arguments(self) -> None:
        (listener,) = Greeter.listeners
        assert listener.method == "hello" and listener.conversation and not listener.passive
        assert listener.allowed_users == frozenset({"alice"})
        assert listener.pattern.search("HELLO bob") is not None  # case-insensitive
        assert [i.method for i in Greeter.intents] == ["thanks"]

    def test_a_subclass_inherits_its_base_s_listeners_and_adds_its_own(self) -> None:
        assert [listener.method for listener in LouderGreeter.listeners] == ["hello", "shout"]

    async def test_converse_declines_by_default(self) -> None:
        assert await Greeter().converse(None) is False  # type: ignore[arg-type]


class TestLoader:
    def test_the_built_in_chat_is_left_to_the_app_and_module_class_names_load(self) -> None:
        (plugin,) = load_plugins(("gpt", "tests.unit.test_plugin_api:Greeter"))
        assert isinstance(plugin, Greeter)

    def test_the_food_example_loads_by_its_module_path(self) -> None:
        (plugin,) = load_plugins(("examples.food_selection:FoodSelection",))
        assert plugin.name == "food"

    def test_every_bad_plugin_is_named_on_a_line_of_its_own(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_plugins((
                "no.such.module:Thing", "tests.unit.test_plugin_api:TestLoader", "tests.unit.test_plugin_api:Nameless",
                "tests.unit.test_plugin_api:Deaf", "tests.unit.test_plugin_api:Greeter", "tests.unit.test_plugin_api:Greeter",
                "not-installed",
            ))
        problems = caught.value.problems
        assert len(problems) == 6
        assert "no.such.module" in problems[0] and "ModuleNotFoundError" in problems[0]
        assert "not a subclass of llmbot.Plugin" in problems[1]
        assert "no valid name" in problems[2]
        assert "listens to nothing" in problems[3]
        assert "which another plugin has" in problems[4]
        assert "entry point" in problems[5] and "llmbot.plugins" in problems[5]
        assert all(p.startswith("LLMBOT_PLUGINS: ") for p in problems)

    def test_summarize_is_built_in_and_off_unless_listed(self) -> None:
        assert load_plugins(("gpt",)) == []
        (plugin,) = load_plugins(("gpt", "summarize"))
        assert plugin.name == "summarize" and plugin.listeners[0].pattern.search("TL;DR please")
