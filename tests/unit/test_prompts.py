"""Prompt templates: $name placeholders, checked when loaded rather than on a user's turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbot.errors import PromptError
from llmbot.prompts import PROMPTS_DIR, SYSTEM_VARIABLES, load_prompt, load_system_prompt

VALUES = {
    "bot_name": "llmbot",
    "date": "Tuesday 2025-03-04",
    "channel": "~town-square (Town Square)",
    "participants": "@alice, @bob",
}


def prompt_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prompt.md"
    path.write_text(text, encoding="utf-8")
    return path


class TestDefaultPrompt:
    def test_the_system_variables_are_the_four_documented_ones(self) -> None:
        assert SYSTEM_VARIABLES == ("bot_name", "date", "channel", "participants")

    def test_the_default_prompt_renders_with_the_four_variables(self) -> None:
        text = load_system_prompt(None).render(**VALUES)
        for value in VALUES.values():
            assert value in text
        assert "$" not in text
        assert text.startswith("You are llmbot, an assistant")

    def test_the_default_prompt_uses_every_variable(self) -> None:
        source = (PROMPTS_DIR / "system.md").read_text(encoding="utf-8")
        for name in SYSTEM_VARIABLES:
            assert f"${name}" in source

    def test_the_default_prompt_tells_the_model_who_speaks(self) -> None:
        text = load_system_prompt(None).render(**VALUES)
        assert '"@name:"' in text

    def test_every_shipped_prompt_loads(self) -> None:
        files = sorted(PROMPTS_DIR.glob("*.md"))
        assert files
        for path in files:
            load_prompt(path)

    def test_an_override_file_replaces_the_default(self, tmp_path: Path) -> None:
        prompt = load_system_prompt(prompt_file(tmp_path, "Be terse, $bot_name."))
        assert prompt.render(**VALUES) == "Be terse, llmbot."


class TestValidation:
    @pytest.mark.parametrize("text", ["Hello $user", "Hello ${user}!", "$bot_name meets $user"])
    def test_an_unknown_variable_fails_at_load_time_naming_it(self, tmp_path: Path, text: str) -> None:
        with pytest.raises(PromptError) as caught:
            load_prompt(prompt_file(tmp_path, text))
        assert "$user" in str(caught.value)
        assert "prompt.md" in str(caught.value)
        assert "bot_name" in str(caught.value)  # and it lists what is allowed

    @pytest.mark.parametrize("text", ["It costs $5 a month", "a lone $ sign", "ends with $", "${not closed"])
    def test_a_malformed_dollar_fails_at_load_time(self, tmp_path: Path, text: str) -> None:
        with pytest.raises(PromptError) as caught:
            load_prompt(prompt_file(tmp_path, text))
        assert "malformed" in str(caught.value)
        assert "$$" in str(caught.value)  # the fix is named

    def test_a_double_dollar_is_a_literal_dollar(self, tmp_path: Path) -> None:
        prompt = load_prompt(prompt_file(tmp_path, "Prices are in $$USD; you are $bot_name. $$$date"))
        assert prompt.render(**VALUES) == "Prices are in $USD; you are llmbot. $Tuesday 2025-03-04"

    def test_a_missing_file_fails_naming_it(self, tmp_path: Path) -> None:
        with pytest.raises(PromptError) as caught:
            load_prompt(tmp_path / "absent.md")
        assert "absent.md" in str(caught.value)

    def test_a_file_that_is_not_utf8_fails(self, tmp_path: Path) -> None:
        path = tmp_path / "latin1.md"
        path.write_bytes("Grüße, $bot_name".encode("latin-1"))
        with pytest.raises(PromptError):
            load_prompt(path)

    def test_custom_variables_can_be_allowed(self, tmp_path: Path) -> None:
        prompt = load_prompt(prompt_file(tmp_path, "Summarize for $audience."), variables=("audience",))
        assert prompt.render(audience="managers") == "Summarize for managers."


class TestRendering:
    def test_rendering_without_a_variable_fails_naming_it(self) -> None:
        prompt = load_system_prompt(None)
        values = {k: v for k, v in VALUES.items() if k != "date"}
        with pytest.raises(PromptError) as caught:
            prompt.render(**values)
        assert "$date" in str(caught.value)

    def test_values_are_not_substituted_again(self) -> None:
        # A channel or user name containing "$" must come out as typed.
        prompt = load_system_prompt(None)
        text = prompt.render(**{**VALUES, "channel": "~cost-$date", "participants": "@$$bob"})
        assert "~cost-$date" in text
        assert "@$$bob" in text
        assert VALUES["date"] in text

    def test_extra_values_are_ignored(self, tmp_path: Path) -> None:
        prompt = load_prompt(prompt_file(tmp_path, "Hi $bot_name"))
        assert prompt.render(**VALUES, unused="x") == "Hi llmbot"
