"""Settings: defaults, ranges, one fix-it message per bad variable, URL parsing, secrets kept out of sight."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmbot.errors import ConfigError
from llmbot.setting_values import ActivationLimits, PluginNames
from llmbot.settings import (
    DEFAULT_TRIGGER,
    ServerURL,
    Settings,
    load_settings,
    read_environment,
    unknown_variables,
)

TOKEN = "mm-token-4f9c2e7a1b"
API_KEY = "sk-test-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def env(**overrides: str) -> dict[str, str]:
    """A minimal valid environment plus `overrides`."""
    base = {
        "MATTERMOST_URL": "https://chat.example.com",
        "MATTERMOST_TOKEN": TOKEN,
        "OPENAI_API_KEY": API_KEY,
    }
    base.update(overrides)
    return base


def problems_for(environment: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environment)
    return caught.value.problems


def single_problem(environment: dict[str, str]) -> str:
    problems = problems_for(environment)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own settings must not leak into read_environment()."""
    import os

    for name in list(os.environ):
        if name.startswith(("MATTERMOST_", "OPENAI_", "LLMBOT_")):
            monkeypatch.delenv(name)


class TestDefaults:
    def test_the_three_required_variables_are_enough(self) -> None:
        settings = load_settings(env())
        assert settings.mattermost_url == ServerURL("https", "chat.example.com", 443)
        assert settings.mattermost_token == TOKEN
        assert settings.openai_api_key == API_KEY

    def test_every_optional_setting_has_its_documented_default(self) -> None:
        settings = load_settings(env())
        assert settings.openai_base_url is None
        assert settings.model == "gpt-4o-mini"
        assert settings.trigger.pattern == DEFAULT_TRIGGER
        assert settings.trigger.flags & re.IGNORECASE
        assert settings.end_words == ("bye",)
        assert settings.conversation_ttl == 3600.0
        assert settings.max_context_tokens == 8000
        assert settings.max_reply_tokens == 1000
        assert settings.system_prompt_file is None
        assert settings.log_level == "INFO"
        assert settings.request_timeout == 30.0
        assert settings.llm_timeout == 120.0
        assert settings.max_concurrent_turns == 256
        assert settings.max_bound_threads == 200_000
        assert settings.llm_idle_timeout == 60.0
        assert settings.llm_retries == 3
        assert settings.max_concurrent_llm == 4
        assert settings.turn_deadline == 180.0
        assert settings.merge_user_turns is False
        assert settings.direct_messages is True
        assert (settings.max_starts_per_minute, settings.max_conversations_per_user, settings.max_turns) == (10, 10, 100)

    def test_empty_and_blank_optional_values_mean_the_default(self) -> None:
        settings = load_settings(env(OPENAI_BASE_URL="", LLMBOT_MODEL="   ", LLMBOT_MAX_CONTEXT_TOKENS=""))
        assert settings.openai_base_url is None
        assert settings.model == "gpt-4o-mini"
        assert settings.max_context_tokens == 8000

    def test_values_are_trimmed_and_parsed(self) -> None:
        settings = load_settings(env(
            MATTERMOST_TOKEN=f"  {TOKEN}\n",
            LLMBOT_MODEL="llama3.1:8b",
            LLMBOT_CONVERSATION_TTL="90.5",
            LLMBOT_MAX_CONTEXT_TOKENS="32000",
            LLMBOT_END="Bye, Ciao ,ENDE",
            LLMBOT_LOG_LEVEL="debug",
            OPENAI_BASE_URL="http://127.0.0.1:11434/v1",
        ))
        assert settings.mattermost_token == TOKEN
        assert settings.model == "llama3.1:8b"
        assert settings.conversation_ttl == 90.5
        assert settings.max_context_tokens == 32000
        assert isinstance(settings.max_context_tokens, int)
        assert settings.end_words == ("bye", "ciao", "ende")
        assert settings.log_level == "DEBUG"
        assert settings.openai_base_url == "http://127.0.0.1:11434/v1"

    def test_a_custom_trigger_is_compiled_case_insensitive(self) -> None:
        settings = load_settings(env(LLMBOT_TRIGGER=r"^(ai|bot)\b"))
        assert settings.trigger.match("AI what is up")
        assert not settings.trigger.match("said the ai")

    def test_an_existing_prompt_file_is_accepted(self, tmp_path: Path) -> None:
        prompt = tmp_path / "prompt.md"
        prompt.write_text("You are $bot_name.", encoding="utf-8")
        assert load_settings(env(LLMBOT_SYSTEM_PROMPT_FILE=str(prompt))).system_prompt_file == prompt

    def test_settings_are_frozen(self) -> None:
        settings = load_settings(env())
        with pytest.raises(ValidationError, match="frozen"):
            settings.model = "other"
        assert settings.model == "gpt-4o-mini"

    def test_types_are_the_ones_the_code_relies_on(self) -> None:
        settings = load_settings(env(LLMBOT_CONVERSATION_TTL="60", LLMBOT_TURN_DEADLINE="30", LLMBOT_ALLOW_USERS="@Alice"))
        assert isinstance(settings.mattermost_token, str) and isinstance(settings.openai_api_key, str)
        assert isinstance(settings.conversation_ttl, float) and isinstance(settings.turn_deadline, float)
        assert isinstance(settings.max_concurrent_llm, int)
        assert settings.allow_users == frozenset({"alice"})

    def test_settings_built_in_code_read_no_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Only load_settings reads variables, and only from the mapping it is given.
        monkeypatch.setenv("LLMBOT_MODEL", "from-the-process")
        settings = Settings(mattermost_url=ServerURL("http", "chat", 80), mattermost_token="t", openai_api_key="k")
        assert settings.model == "gpt-4o-mini"
        assert load_settings(env()).model == "gpt-4o-mini"

    def test_settings_built_in_code_are_validated_like_the_environment(self) -> None:
        settings = Settings(
            mattermost_url="http://chat:8065",  # type: ignore[arg-type]
            mattermost_token="t",
            openai_api_key="k",
            deny_users=frozenset({"@Bob"}),
            end_words=("Bye", "Ciao"),
        )
        assert settings.mattermost_url == ServerURL("http", "chat", 8065)
        assert settings.deny_users == frozenset({"bob"})
        assert settings.end_words == ("bye", "ciao")
        with pytest.raises(ValidationError):
            Settings(
                mattermost_url=ServerURL("http", "chat", 80), mattermost_token="t", openai_api_key="k", conversation_ttl=math.inf
            )


class TestServerURL:
    @pytest.mark.parametrize(
        ("url", "scheme", "host", "port"),
        [
            ("https://chat.example.com", "https", "chat.example.com", 443),
            ("http://chat.example.com", "http", "chat.example.com", 80),
            ("http://127.0.0.1:8065", "http", "127.0.0.1", 8065),
            ("https://chat.example.com:8443/", "https", "chat.example.com", 8443),
            ("https://chat.example.com/", "https", "chat.example.com", 443),
            ("HTTPS://Chat.Example.COM", "https", "chat.example.com", 443),
            ("  http://localhost:8065  ", "http", "localhost", 8065),
        ],
    )
    def test_a_url_is_split_into_scheme_host_and_port(self, url: str, scheme: str, host: str, port: int) -> None:
        assert load_settings(env(MATTERMOST_URL=url)).mattermost_url == ServerURL(scheme, host, port)

    def test_str_gives_the_full_base_url_with_its_port(self) -> None:
        assert str(ServerURL("https", "chat.example.com", 443)) == "https://chat.example.com:443"

    @pytest.mark.parametrize(
        "url",
        [
            "chat.example.com",  # no scheme
            "chat.example.com:8065",  # no scheme, looks like one
            "//chat.example.com",
            "ftp://chat.example.com",
            "https://",
            "https://:8065",
            "https://chat.example.com:99999",  # port out of range
            "https://chat.example.com:80a",  # port not a number
            "https://chat.example.com:-1",
        ],
    )
    def test_a_url_that_is_not_a_full_server_url_is_named(self, url: str) -> None:
        problem = single_problem(env(MATTERMOST_URL=url))
        assert problem.startswith("MATTERMOST_URL=")
        assert "not a full URL" in problem
        assert repr(url.strip()) in problem

    @pytest.mark.parametrize(
        "url",
        [
            "https://chat.example.com/mattermost",
            "https://chat.example.com/api/v4/",
            "https://chat.example.com?team=x",
            "https://chat.example.com/#channels",
        ],
    )
    def test_a_url_with_a_path_query_or_fragment_is_rejected(self, url: str) -> None:
        problem = single_problem(env(MATTERMOST_URL=url))
        assert problem.startswith("MATTERMOST_URL=")
        assert "path" in problem

    def test_port_zero_is_rejected_rather_than_replaced_by_the_default(self) -> None:
        # Port 0 cannot be connected to; silently using 443 instead hides the typo.
        problem = single_problem(env(MATTERMOST_URL="https://chat.example.com:0"))
        assert problem.startswith("MATTERMOST_URL=")


class TestBadValues:
    @pytest.mark.parametrize(
        ("name", "value", "words"),
        [
            ("LLMBOT_CONVERSATION_TTL", "an hour", "is not a number"),
            ("LLMBOT_CONVERSATION_TTL", "0.5", "too small"),
            ("LLMBOT_CONVERSATION_TTL", "nan", "not a finite number"),
            ("LLMBOT_CONVERSATION_TTL", "-3600", "too small"),
            ("LLMBOT_MAX_CONTEXT_TOKENS", "8k", "is not a whole number"),
            ("LLMBOT_MAX_CONTEXT_TOKENS", "8000.5", "is not a whole number"),
            ("LLMBOT_MAX_CONTEXT_TOKENS", "255", "too small"),
            ("LLMBOT_MAX_REPLY_TOKENS", "0", "too small"),
            ("LLMBOT_REQUEST_TIMEOUT", "0", "too small"),
            ("LLMBOT_REQUEST_TIMEOUT", "30s", "is not a number"),
            ("LLMBOT_LLM_TIMEOUT", "-1", "too small"),
            ("LLMBOT_MAX_CONCURRENT_TURNS", "0", "too small"),
            ("LLMBOT_MAX_CONCURRENT_TURNS", "many", "is not a whole number"),
            ("LLMBOT_MAX_BOUND_THREADS", "1e5", "is not a whole number"),
            ("LLMBOT_TRIGGER", "(gpt", "not a valid regular expression"),
            ("LLMBOT_TRIGGER", "[", "not a valid regular expression"),
            ("LLMBOT_END", "good bye", "comma-separated list of words"),
            ("LLMBOT_END", ",,", "comma-separated list of words"),
            ("LLMBOT_LOG_LEVEL", "verbose", "must be one of DEBUG, INFO, WARNING, ERROR"),
            ("OPENAI_BASE_URL", "localhost:11434/v1", "not an http(s) URL"),
            ("OPENAI_BASE_URL", "127.0.0.1:11434", "not an http(s) URL"),
            ("LLMBOT_SYSTEM_PROMPT_FILE", "/nonexistent/prompt.md", "not a readable file"),
            ("LLMBOT_DIRECT_MESSAGES", "sometimes", "must be on or off"),
            ("LLMBOT_MERGE_USER_TURNS", "sometimes", "must be on or off"),
            ("LLMBOT_MODEL", "gpt 4o", "without spaces"),
        ],
    )
    def test_a_bad_value_fails_naming_the_variable_and_the_value(self, name: str, value: str, words: str) -> None:
        problem = single_problem(env(**{name: value}))
        assert problem.startswith(f"{name}="), problem
        assert words in problem
        assert value.upper() in problem.upper()

    def test_a_number_problem_shows_an_example_value(self) -> None:
        problem = single_problem(env(LLMBOT_MAX_CONTEXT_TOKENS="lots"))
        assert "LLMBOT_MAX_CONTEXT_TOKENS=8000" in problem

    def test_a_too_small_number_states_the_minimum(self) -> None:
        assert "at least 256" in single_problem(env(LLMBOT_MAX_CONTEXT_TOKENS="100"))

    def test_a_directory_is_not_a_prompt_file(self, tmp_path: Path) -> None:
        problem = single_problem(env(LLMBOT_SYSTEM_PROMPT_FILE=str(tmp_path)))
        assert problem.startswith("LLMBOT_SYSTEM_PROMPT_FILE=")

    def test_a_blank_required_value_counts_as_missing(self) -> None:
        problem = single_problem(env(MATTERMOST_TOKEN="   "))
        assert problem.startswith("MATTERMOST_TOKEN is not set")


# Every numeric setting and the range an admin may choose from: the contract .env.example documents.
RANGES: dict[str, tuple[float, float]] = {
    "LLMBOT_CONVERSATION_TTL": (1, 2_592_000),  # a second .. 30 days
    "LLMBOT_MAX_CONTEXT_TOKENS": (256, 2_000_000),
    "LLMBOT_MAX_REPLY_TOKENS": (1, 2_000_000),
    "LLMBOT_REQUEST_TIMEOUT": (0.1, 3600),
    "LLMBOT_LLM_TIMEOUT": (0.1, 3600),
    "LLMBOT_LLM_IDLE_TIMEOUT": (0.1, 3600),
    "LLMBOT_TURN_DEADLINE": (5, 3600),
    "LLMBOT_MAX_CONCURRENT_TURNS": (1, 10_000),
    "LLMBOT_MAX_CONCURRENT_LLM": (1, 1024),
    "LLMBOT_MAX_BOUND_THREADS": (1, 10_000_000),
    "LLMBOT_LLM_RETRIES": (0, 10),
    "LLMBOT_MAX_STARTS_PER_MINUTE": (0, 10_000),
    "LLMBOT_MAX_CONVERSATIONS_PER_USER": (0, 10_000),
    "LLMBOT_MAX_TURNS": (0, 10_000),
    "LLMBOT_REDIS_LEASE": (1, 300),
}
FIELD_OF = {str(field.validation_alias): name for name, field in Settings.model_fields.items()}


def shown(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def is_integer_setting(name: str) -> bool:
    return Settings.model_fields[FIELD_OF[name]].annotation is int


class TestRanges:
    """Infinite, NaN and absurd numbers used to pass and then break every catch-up silently."""

    def test_an_infinite_conversation_ttl_is_rejected_naming_the_variable_and_the_range(self) -> None:
        problem = single_problem(env(LLMBOT_CONVERSATION_TTL="inf"))
        assert problem == "LLMBOT_CONVERSATION_TTL='inf' is not a finite number: it must be from 1 to 2592000"

    def test_every_numeric_setting_has_a_range(self) -> None:
        numeric = {name for name, field in FIELD_OF.items() if Settings.model_fields[field].annotation in (int, float)}
        assert numeric == set(RANGES)

    @pytest.mark.parametrize("name", sorted(RANGES))
    def test_both_ends_of_the_range_are_accepted(self, name: str) -> None:
        for bound in RANGES[name]:
            assert getattr(load_settings(env(**{name: shown(bound)})), FIELD_OF[name]) == bound

    @pytest.mark.parametrize("name", sorted(RANGES))
    def test_just_above_the_maximum_is_too_large(self, name: str) -> None:
        high = RANGES[name][1]
        value = shown(high + 1 if is_integer_setting(name) else high * 1.001)
        assert single_problem(env(**{name: value})) == f"{name}={value!r} is too large: it must be at most {shown(high)}"

    @pytest.mark.parametrize("name", sorted(RANGES))
    def test_just_below_the_minimum_is_too_small(self, name: str) -> None:
        low = RANGES[name][0]
        value = shown(low - 1 if is_integer_setting(name) else low / 2)
        assert single_problem(env(**{name: value})) == f"{name}={value!r} is too small: it must be at least {shown(low)}"

    @pytest.mark.parametrize("value", ["inf", "-inf", "+inf", "Infinity", "nan", "NaN", "1e999"])
    @pytest.mark.parametrize("name", sorted(RANGES))
    def test_infinite_and_nan_are_rejected(self, name: str, value: str) -> None:
        problem = single_problem(env(**{name: value}))
        assert problem.startswith(f"{name}={value!r} ")
        expected = "is not a whole number" if is_integer_setting(name) else "is not a finite number"
        assert expected in problem

    @pytest.mark.parametrize("value", ["1e12", "99999999999999999999999999"])
    def test_absurdly_large_token_budgets_are_rejected(self, value: str) -> None:
        for name in ("LLMBOT_MAX_CONTEXT_TOKENS", "LLMBOT_MAX_REPLY_TOKENS"):
            assert single_problem(env(**{name: value})).startswith(f"{name}=")

    def test_every_bad_number_is_named_at_once(self) -> None:
        problems = problems_for(env(**{name: "inf" for name in RANGES}))
        assert sorted(p.split("=")[0] for p in problems) == sorted(RANGES)


class TestNewSettings:
    def test_llm_concurrency_is_its_own_limit(self) -> None:
        settings = load_settings(env(LLMBOT_MAX_CONCURRENT_LLM="2", LLMBOT_MAX_CONCURRENT_TURNS="64"))
        assert (settings.max_concurrent_llm, settings.max_concurrent_turns) == (2, 64)

    def test_llm_concurrency_is_a_whole_number(self) -> None:
        assert "is not a whole number" in single_problem(env(LLMBOT_MAX_CONCURRENT_LLM="2.5"))

    def test_turn_deadline_takes_fractional_seconds(self) -> None:
        assert load_settings(env(LLMBOT_TURN_DEADLINE="42.5")).turn_deadline == 42.5

    def test_turn_deadline_is_a_number_of_seconds(self) -> None:
        problem = single_problem(env(LLMBOT_TURN_DEADLINE="3m"))
        assert problem == "LLMBOT_TURN_DEADLINE='3m' is not a number: e.g. LLMBOT_TURN_DEADLINE=180"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("on", True), ("ON", True), ("yes", True), ("true", True), ("1", True),
         ("off", False), ("Off", False), ("no", False), ("false", False), ("0", False), ("", False)],
    )
    def test_merge_user_turns_is_on_or_off(self, value: str, expected: bool) -> None:
        assert load_settings(env(LLMBOT_MERGE_USER_TURNS=value)).merge_user_turns is expected


class TestPluginSettings:
    """The per-plugin settings; their parsing is tested in detail in test_plugin_access.py."""

    def test_by_default_no_plugin_is_restricted_or_limited(self) -> None:
        settings = load_settings(env())
        for field in ("plugin_allowed_channels", "plugin_denied_channels", "plugin_allowed_users", "plugin_denied_users"):
            assert getattr(settings, field) == PluginNames()
        assert settings.converse_allowed == settings.converse_denied == frozenset()
        assert settings.max_activations_per_minute == ActivationLimits()

    def test_the_per_plugin_lists_read_like_the_global_ones_per_plugin(self) -> None:
        settings = load_settings(env(LLMBOT_PLUGIN_ALLOWED_CHANNELS="food=~Lunch,kitchen; summarize=town-square"))
        assert settings.plugin_allowed_channels.as_dict() == {
            "food": frozenset({"lunch", "kitchen"}), "summarize": frozenset({"town-square"}),
        }

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("LLMBOT_PLUGIN_ALLOWED_USERS", "@alice"),
            ("LLMBOT_PLUGIN_DENIED_CHANNELS", "food=a,summarize=b"),
            ("LLMBOT_CONVERSE_ALLOWED", "gpt food"),
            ("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", "food=inf"),
        ],
    )
    def test_a_bad_value_is_one_line_naming_the_variable(self, name: str, value: str) -> None:
        assert single_problem(env(**{name: value})).startswith(f"{name}={value!r} ")


class TestAllProblemsAtOnce:
    def test_an_empty_environment_names_every_required_variable(self) -> None:
        problems = problems_for({})
        assert len(problems) == 3
        assert [p.split(" ")[0] for p in problems] == ["MATTERMOST_URL", "MATTERMOST_TOKEN", "OPENAI_API_KEY"]
        assert all("is not set" in p for p in problems)

    def test_missing_messages_say_how_to_fix_them(self) -> None:
        problems = "\n".join(problems_for({}))
        assert "https://chat.example.com" in problems
        assert "Bot Accounts" in problems
        assert "sk-" in problems

    def test_missing_and_bad_values_are_reported_together(self) -> None:
        problems = problems_for({
            "MATTERMOST_URL": "chat.example.com",
            "LLMBOT_TRIGGER": "(",
            "LLMBOT_MAX_CONTEXT_TOKENS": "ten",
            "LLMBOT_LOG_LEVEL": "loud",
        })
        named = {p.split("=")[0].split(" ")[0] for p in problems}
        assert named == {
            "MATTERMOST_URL",
            "MATTERMOST_TOKEN",
            "OPENAI_API_KEY",
            "LLMBOT_TRIGGER",
            "LLMBOT_MAX_CONTEXT_TOKENS",
            "LLMBOT_LOG_LEVEL",
        }

    def test_the_error_message_joins_every_problem(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings({"LLMBOT_LOG_LEVEL": "loud"})
        for problem in caught.value.problems:
            assert problem in str(caught.value)


class TestSecrets:
    def test_secrets_are_not_in_the_repr(self) -> None:
        settings = load_settings(env())
        assert TOKEN not in repr(settings)
        assert API_KEY not in repr(settings)
        assert TOKEN not in str(settings)
        assert "chat.example.com" in repr(settings)  # the repr is still useful

    def test_secrets_lists_the_token_and_the_api_key(self) -> None:
        assert set(load_settings(env()).secrets()) == {TOKEN, API_KEY}

    def test_secrets_are_not_in_a_dump(self) -> None:
        settings = load_settings(env())
        assert "mattermost_token" not in settings.model_dump()
        assert TOKEN not in settings.model_dump_json() and API_KEY not in settings.model_dump_json()

    def test_a_secret_with_a_space_is_named_without_its_value(self) -> None:
        problem = single_problem(env(MATTERMOST_TOKEN=f"{TOKEN} extra"))
        assert problem == "MATTERMOST_TOKEN must be a single value without spaces"

    def test_a_config_error_does_not_echo_secrets(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(env(MATTERMOST_URL="nope"))
        assert TOKEN not in str(caught.value)
        assert API_KEY not in str(caught.value)


class TestReadEnvironment:
    def test_the_process_environment_wins_over_the_env_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        dotenv = tmp_path / ".env"
        dotenv.write_text(
            "MATTERMOST_URL=https://from-file.example.com\n"
            "LLMBOT_MODEL=from-file-model\n",
            encoding="utf-8",
        )
        monkeypatch.setenv("MATTERMOST_URL", "https://from-env.example.com")
        merged = read_environment(dotenv)
        assert merged["MATTERMOST_URL"] == "https://from-env.example.com"
        assert merged["LLMBOT_MODEL"] == "from-file-model"

    def test_an_empty_process_variable_still_wins(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        dotenv = tmp_path / ".env"
        dotenv.write_text("OPENAI_BASE_URL=http://127.0.0.1:11434/v1\n", encoding="utf-8")
        monkeypatch.setenv("OPENAI_BASE_URL", "")
        assert read_environment(dotenv)["OPENAI_BASE_URL"] == ""

    def test_the_env_file_is_parsed_like_every_other_tool_does(self, tmp_path: Path) -> None:
        dotenv = tmp_path / ".env"
        dotenv.write_text(
            "# a comment\n"
            'export LLMBOT_MODEL="llama3.1:8b"\n'
            "LLMBOT_END='bye,ciao'  # inline comment\n"
            "LLMBOT_TRIGGER=^gpt\\b\n"
            "NO_VALUE\n",
            encoding="utf-8",
        )
        merged = read_environment(dotenv)
        assert merged["LLMBOT_MODEL"] == "llama3.1:8b"
        assert merged["LLMBOT_END"] == "bye,ciao"
        assert merged["LLMBOT_TRIGGER"] == r"^gpt\b"
        assert "NO_VALUE" not in merged

    def test_a_missing_env_file_is_not_an_error(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LLMBOT_MODEL", "from-env")
        merged = read_environment(tmp_path / "absent.env")
        assert merged["LLMBOT_MODEL"] == "from-env"

    def test_no_env_file_reads_the_process_environment_only(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        (tmp_path / ".env").write_text("LLMBOT_MODEL=from-file\n", encoding="utf-8")
        assert "LLMBOT_MODEL" not in read_environment(None)
        assert read_environment()["LLMBOT_MODEL"] == "from-file"  # the default is ./.env

    def test_the_shipped_example_pre_fills_nothing_that_must_be_changed(self) -> None:
        # the first start names every value the admin must give, the server's address too
        problems = problems_for(read_environment(REPO / ".env.example"))
        assert problems == [
            "MATTERMOST_URL is not set: set it to the server's address, e.g. https://chat.example.com",
            "MATTERMOST_TOKEN is not set: set it to the bot account's access token (Integrations → Bot Accounts → Create New Token)",
            "OPENAI_API_KEY is not set: set it to sk-... (any non-empty value for servers that do not check)",
        ]

    def test_the_shipped_example_shows_the_defaults_and_loads_once_the_secrets_are_filled(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MATTERMOST_URL", "https://chat.example.com")
        monkeypatch.setenv("MATTERMOST_TOKEN", TOKEN)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        settings = load_settings(read_environment(REPO / ".env.example"))
        assert settings == Settings(
            mattermost_url=ServerURL("https", "chat.example.com", 443),
            mattermost_token=TOKEN,
            openai_api_key=API_KEY,
            trigger=settings.trigger,
        )
        assert settings.trigger.pattern == DEFAULT_TRIGGER



class TestControlCharacters:
    """A .env line in double quotes turns \\b into a backspace: a trigger that never matches, in silence."""

    def test_a_pattern_read_from_double_quotes_is_refused_with_the_line_to_write(self, tmp_path: Path) -> None:
        dotenv = tmp_path / ".env"
        dotenv.write_text('LLMBOT_TRIGGER="^(gpt|ai)\\b"\n', encoding="utf-8")
        problem = single_problem(env(**read_environment(dotenv)))
        assert problem == (
            "LLMBOT_TRIGGER='^(gpt|ai)\\x08' has a backspace (\\b inside double quotes in .env becomes one): "
            "in .env, write it in single quotes: LLMBOT_TRIGGER='^(gpt|ai)\\b'"
        )

    def test_the_single_quoted_line_it_suggests_loads(self, tmp_path: Path) -> None:
        dotenv = tmp_path / ".env"
        dotenv.write_text("LLMBOT_TRIGGER='^(gpt|ai)\\b'\n", encoding="utf-8")
        settings = load_settings(env(**read_environment(dotenv)))
        assert settings.trigger.match("ai what is up") and not settings.trigger.match("aim high")

    @pytest.mark.parametrize(("value", "escape"), [("bye\x08x", "\\b"), ("by\te", "\\t"), ("b\nye", "\\n")])
    def test_every_setting_refuses_them_naming_the_escape(self, value: str, escape: str) -> None:
        problem = single_problem(env(LLMBOT_END=value))
        assert problem.startswith("LLMBOT_END=") and f"({escape} inside double quotes" in problem

    def test_a_secret_with_one_is_named_without_its_value(self) -> None:
        problem = single_problem(env(OPENAI_API_KEY=f"{API_KEY}\x08"))
        assert problem.startswith("OPENAI_API_KEY has a backspace") and API_KEY not in problem

    def test_one_not_made_by_a_dotenv_escape_is_to_be_removed(self) -> None:
        assert single_problem(env(LLMBOT_MODEL="llama\x01")) == "LLMBOT_MODEL='llama\\x01' has a control character (U+0001): remove it"

    def test_it_is_named_once_among_the_other_problems(self) -> None:
        problems = problems_for({"LLMBOT_TRIGGER": "^gpt\x08", "LLMBOT_MAX_TURNS": "many"})
        assert sum(p.startswith("LLMBOT_TRIGGER") for p in problems) == 1
        assert len(problems) == 5  # the trigger, the turns, the three required variables

    def test_surrounding_whitespace_is_trimmed_as_before_not_refused(self) -> None:
        assert load_settings(env(LLMBOT_END="bye\n")).end_words == ("bye",)


class TestUnknownVariables:
    def test_a_typo_gets_the_closest_real_name_and_where_it_was_written(self) -> None:
        warnings = unknown_variables(env(LLMBOT_TRIGER="^ai\\b"), from_file={"LLMBOT_TRIGER"}, env_file="/etc/llmbot.env")
        assert warnings == [
            "LLMBOT_TRIGER (in /etc/llmbot.env) is not a setting of llmbot and is ignored: did you mean LLMBOT_TRIGGER?"
        ]

    def test_from_the_environment_and_without_a_close_name(self) -> None:
        assert unknown_variables({"LLMBOT_COLOUR": "red"}) == [
            "LLMBOT_COLOUR (in the environment) is not a setting of llmbot and is ignored: see .env.example for the settings there are"
        ]

    def test_known_settings_and_other_tools_variables_are_not_warned_about(self) -> None:
        assert unknown_variables(env(LLMBOT_TRIGGER="x", LLMBOT_MAX_TURNS="3", OPENAI_ORG_ID="org", PATH="/bin")) == []

    def test_every_setting_is_known(self) -> None:
        every = {str(field.validation_alias): "x" for field in Settings.model_fields.values()}
        assert unknown_variables(every) == []
