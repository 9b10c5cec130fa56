"""Settings: defaults, one fix-it message per bad variable, URL parsing, secrets kept out of logs."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pytest

from llmbot.config import (
    DEFAULT_TRIGGER,
    RedactSecrets,
    ServerURL,
    Settings,
    load_settings,
    read_environment,
)
from llmbot.errors import ConfigError

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
        with pytest.raises(AttributeError):
            settings.model = "other"  # type: ignore[misc]


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
            ("LLMBOT_CONVERSATION_TTL", "nan", "too small"),
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

    def test_a_config_error_does_not_echo_secrets(self) -> None:
        with pytest.raises(ConfigError) as caught:
            load_settings(env(MATTERMOST_URL="nope"))
        assert TOKEN not in str(caught.value)
        assert API_KEY not in str(caught.value)


class TestRedactSecrets:
    @pytest.fixture
    def logged(self) -> tuple[logging.Logger, io.StringIO]:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        handler.addFilter(RedactSecrets((TOKEN, API_KEY)))
        logger = logging.getLogger("tests.unit.test_config.redact")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        yield logger, stream
        logger.handlers.clear()

    def test_a_token_in_the_message_is_masked(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        logger.info(f"Authorization: Bearer {TOKEN}")
        assert stream.getvalue() == "INFO Authorization: Bearer ***\n"

    def test_a_token_in_the_args_is_masked(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        logger.warning("connecting with %s and key=%r", TOKEN, API_KEY)
        out = stream.getvalue()
        assert TOKEN not in out and API_KEY not in out
        assert out == "WARNING connecting with *** and key='***'\n"

    def test_a_token_in_a_traceback_is_masked(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        try:
            raise RuntimeError(f"401 for token {TOKEN}")
        except RuntimeError:
            logger.exception("request failed")
        out = stream.getvalue()
        assert TOKEN not in out
        assert "401 for token ***" in out

    def test_messages_without_secrets_are_untouched(self, logged: tuple[logging.Logger, io.StringIO]) -> None:
        logger, stream = logged
        logger.info("answered %d posts in %s", 3, "town-square")
        assert stream.getvalue() == "INFO answered 3 posts in town-square\n"

    def test_the_filter_never_drops_a_record(self) -> None:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (API_KEY,), None)
        assert RedactSecrets((API_KEY,)).filter(record) is True
        assert record.getMessage() == "key ***"

    def test_empty_and_very_short_secrets_are_not_masked(self) -> None:
        # Masking "" or "ab" would garble every log line.
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "a tab of bytes", None, None)
        RedactSecrets(("", "ab")).filter(record)
        assert record.getMessage() == "a tab of bytes"


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

    def test_the_shipped_example_shows_the_defaults_and_loads_once_the_secrets_are_filled(self, monkeypatch: pytest.MonkeyPatch) -> None:
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

