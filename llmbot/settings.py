"""Settings: read once from the environment (and an optional .env), validated, frozen.

Built on pydantic-settings: each field names its variable and its range. `load_settings`
collects every problem before failing and turns pydantic's errors into one fix-it line per
bad variable, so one start names them all.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from annotated_types import Ge, Le
from dotenv import dotenv_values
from pydantic import BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from . import setting_values as parse
from .errors import ConfigError
from .setting_values import DEFAULT_TRIGGER, ActivationLimits, PluginNames, ServerURL

DAY = 86_400.0
MAX_TOKENS = 2_000_000  # above any model's context window today; larger is a typo


def _var(name: str, default: Any = ..., **constraints: Any) -> Any:
    """The field read from the variable `name`: that name is the contract, the field's is for code."""
    return Field(default, validation_alias=name, **constraints)


def _number(name: str, default: float, low: float, high: float) -> Any:
    """A number from `low` to `high`; inf and NaN never fit (they broke the catch-up before)."""
    if isinstance(default, int):  # whole numbers refuse inf and NaN anyway; older pydantic rejects the flag here
        return _var(name, default, ge=low, le=high)
    return _var(name, default, ge=low, le=high, allow_inf_nan=False)


# The variables load_settings is validating: sources are picked per class, so the call's own
# mapping reaches settings_customise_sources this way (safe across threads and tasks).
_GIVEN: ContextVar[Mapping[str, str] | None] = ContextVar("llmbot_settings_env", default=None)

Secret = Annotated[str, BeforeValidator(parse.one_word)]
Names = Annotated[frozenset[str], BeforeValidator(parse.names)]
PluginChannels = Annotated[PluginNames, BeforeValidator(parse.plugin_channels)]
PluginUsers = Annotated[PluginNames, BeforeValidator(parse.plugin_users)]
Plugins = Annotated[frozenset[str], BeforeValidator(parse.plugin_set)]


class Settings(BaseSettings):
    """Everything the bot is told by its admin. Immutable; secrets stay out of repr and dumps."""

    # Settings(...) in code validates its arguments like the environment does (kwargs by field name).
    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, case_sensitive=True)

    mattermost_url: Annotated[ServerURL, BeforeValidator(parse.server_url)] = _var("MATTERMOST_URL")
    mattermost_token: Secret = _var("MATTERMOST_TOKEN", repr=False, exclude=True)
    openai_api_key: Secret = _var("OPENAI_API_KEY", repr=False, exclude=True)
    openai_base_url: Annotated[str | None, BeforeValidator(parse.http_url)] = _var("OPENAI_BASE_URL", None)
    model: Annotated[str, BeforeValidator(parse.one_word)] = _var("LLMBOT_MODEL", "gpt-4o-mini")
    trigger: Annotated[re.Pattern[str], BeforeValidator(parse.regex)] = _var(
        "LLMBOT_TRIGGER", re.compile(DEFAULT_TRIGGER, re.IGNORECASE)
    )
    end_words: Annotated[tuple[str, ...], BeforeValidator(parse.words)] = _var("LLMBOT_END", ("bye",))
    # The catch-up looks back one TTL (in ms): inf crashed it, and past 30 days it reads months of posts.
    conversation_ttl: float = _number("LLMBOT_CONVERSATION_TTL", 3600.0, 1, 30 * DAY)
    max_context_tokens: int = _number("LLMBOT_MAX_CONTEXT_TOKENS", 8000, 256, MAX_TOKENS)
    max_reply_tokens: int = _number("LLMBOT_MAX_REPLY_TOKENS", 1000, 1, MAX_TOKENS)
    system_prompt_file: Annotated[Path | None, BeforeValidator(parse.prompt_file)] = _var("LLMBOT_SYSTEM_PROMPT_FILE", None)
    log_level: Annotated[str, BeforeValidator(parse.level)] = _var("LLMBOT_LOG_LEVEL", "INFO")
    # No single wait may outlast the longest turn deadline (an hour).
    request_timeout: float = _number("LLMBOT_REQUEST_TIMEOUT", 30.0, 0.1, 3600)
    llm_timeout: float = _number("LLMBOT_LLM_TIMEOUT", 120.0, 0.1, 3600)
    max_concurrent_turns: int = _number("LLMBOT_MAX_CONCURRENT_TURNS", 256, 1, 10_000)
    max_bound_threads: int = _number("LLMBOT_MAX_BOUND_THREADS", 200_000, 1, 10_000_000)
    llm_idle_timeout: float = _number("LLMBOT_LLM_IDLE_TIMEOUT", 60.0, 0.1, 3600)
    llm_retries: int = _number("LLMBOT_LLM_RETRIES", 3, 0, 10)
    # Local servers (Ollama, llama.cpp) serve a few requests at a time; the rest queue here.
    max_concurrent_llm: int = _number("LLMBOT_MAX_CONCURRENT_LLM", 4, 1, 1024)
    turn_deadline: float = _number("LLMBOT_TURN_DEADLINE", 180.0, 5, 3600)
    # Some chat templates demand strict user/assistant alternation.
    merge_user_turns: bool = _var("LLMBOT_MERGE_USER_TURNS", False)
    # In priority order: "gpt" (the built-in chat), module:Class, or an entry point of group llmbot.plugins.
    plugins: Annotated[tuple[str, ...], BeforeValidator(parse.plugins)] = _var("LLMBOT_PLUGINS", ("gpt",))
    # Access control: names or ids, casefolded; an empty allow list allows everyone. Deny wins.
    allow_teams: Names = _var("LLMBOT_ALLOW_TEAMS", frozenset())
    deny_teams: Names = _var("LLMBOT_DENY_TEAMS", frozenset())
    allow_channels: Names = _var("LLMBOT_ALLOW_CHANNELS", frozenset())
    deny_channels: Names = _var("LLMBOT_DENY_CHANNELS", frozenset())
    allow_users: Names = _var("LLMBOT_ALLOW_USERS", frozenset())
    deny_users: Names = _var("LLMBOT_DENY_USERS", frozenset())
    direct_messages: bool = _var("LLMBOT_DIRECT_MESSAGES", True)
    # Per plugin (`food=lunch,kitchen; summarize=town-square`), on top of the lists above; a plugin
    # not named is not restricted. Which plugins exist is checked after loading (plugin_access.py).
    plugin_allowed_channels: PluginChannels = _var("LLMBOT_PLUGIN_ALLOWED_CHANNELS", PluginNames())
    plugin_denied_channels: PluginChannels = _var("LLMBOT_PLUGIN_DENIED_CHANNELS", PluginNames())
    plugin_allowed_users: PluginUsers = _var("LLMBOT_PLUGIN_ALLOWED_USERS", PluginNames())
    plugin_denied_users: PluginUsers = _var("LLMBOT_PLUGIN_DENIED_USERS", PluginNames())
    # Plugins that may hold a conversation (empty: all); the others answer one-shot.
    converse_allowed: Plugins = _var("LLMBOT_CONVERSE_ALLOWED", frozenset())
    converse_denied: Plugins = _var("LLMBOT_CONVERSE_DENIED", frozenset())
    # Limits; 0 turns a limit off.
    max_starts_per_minute: int = _number("LLMBOT_MAX_STARTS_PER_MINUTE", 10, 0, 10_000)
    max_conversations_per_user: int = _number("LLMBOT_MAX_CONVERSATIONS_PER_USER", 10, 0, 10_000)
    max_turns: int = _number("LLMBOT_MAX_TURNS", 100, 0, 10_000)
    # Starts a plugin may take per minute, all users together: `30`, `food=5,gpt=60` or `30,gpt=60`.
    max_activations_per_minute: Annotated[ActivationLimits, BeforeValidator(parse.activation_limits)] = _var(
        "LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", ActivationLimits()
    )

    # Several replicas (issue: Redis): unset, one instance keeps everything in memory.
    redis_url: Annotated[str | None, BeforeValidator(parse.redis_url)] = _var("LLMBOT_REDIS_URL", None, repr=False)
    redis_lease: float = _number("LLMBOT_REDIS_LEASE", 5.0, 1, 300)  # seconds a dead replica holds a thread
    # Mattermost's rate limit, client side: unset, learned from the server's X-RateLimit-* headers.
    mattermost_rate: float | None = _var("LLMBOT_MATTERMOST_RATE", None, gt=0, le=100_000, allow_inf_nan=False)
    mattermost_burst: int | None = _var("LLMBOT_MATTERMOST_BURST", None, ge=1, le=1_000_000)
    # The operator's view: /healthz and /metrics (unset: off), and JSON logs.
    http_port: int | None = _var("LLMBOT_HTTP_PORT", None, ge=1, le=65535)
    http_host: Annotated[str, BeforeValidator(parse.one_word)] = _var("LLMBOT_HTTP_HOST", "127.0.0.1")
    log_format: Annotated[str, BeforeValidator(parse.log_format)] = _var("LLMBOT_LOG_FORMAT", "text")

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line or a post."""
        redis_password = urlsplit(self.redis_url).password if self.redis_url else None
        return tuple(s for s in (self.mattermost_token, self.openai_api_key, redis_password) if s)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the mapping given to load_settings, never os.environ behind the caller's back
        # (read_environment already merged it); Settings(...) in code reads no environment at all.
        given = _GIVEN.get()
        return (init_settings,) if given is None else (init_settings, _Variables(settings_cls, given))


class _Variables(PydanticBaseSettingsSource):
    """Each field's variable from the given mapping, trimmed; a blank value counts as unset."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        name = _variable(field_name)
        value = (self.env.get(name) or "").strip()
        return value or None, name, False

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for field_name, field in self.settings_cls.model_fields.items():
            value, name, _ = self.get_field_value(field, field_name)
            if value is not None:
                found[name] = value
        return found


def _variable(field_name: str) -> str:
    alias = Settings.model_fields[field_name].validation_alias
    assert isinstance(alias, str)
    return alias


def read_env_file(env_file: str | os.PathLike[str] | None) -> dict[str, str]:
    """The values of `env_file` as python-dotenv reads them (quotes, export, comments); {} when absent."""
    if env_file is None or not Path(env_file).is_file():
        return {}
    return {k: v for k, v in dotenv_values(env_file).items() if v is not None}


def read_environment(env_file: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment over the values of `env_file` (the environment wins)."""
    return read_env_file(env_file) | dict(os.environ)


def load_settings(env: Mapping[str, str]) -> Settings:
    """Validate `env` into Settings, or raise ConfigError naming every bad variable.

    A value with a control character is named first and on its own (it is almost always a `.env`
    escape in double quotes, so the fix is the quotes, whatever else the value says)."""
    garbled: dict[str, str] = {}
    for name in map(_variable, Settings.model_fields):
        problem = parse.control_character(name, (env.get(name) or "").strip(), secret=name in _SECRET)
        if problem is not None:
            garbled[name] = problem
    token = _GIVEN.set({k: v for k, v in env.items() if k not in garbled})
    try:
        settings = Settings()  # the required fields come from `env`, through _Variables
    except ValidationError as exc:
        # `from None`: pydantic's own text would echo input values, and that is our formatter's job.
        problems = [_problem(error) for error in exc.errors() if _variable(_FIELD_OF[str(error["loc"][0])]) not in garbled]
        raise ConfigError([*garbled.values(), *problems]) from None
    finally:
        _GIVEN.reset(token)
    if garbled:
        raise ConfigError(list(garbled.values()))
    return settings


def unknown_variables(env: Mapping[str, str], from_file: Collection[str] = (), env_file: str = ".env") -> list[str]:
    """One warning per LLMBOT_* variable that no setting reads (a typo, or a setting since renamed),
    with the closest real name; the others are nobody's business here (plugins, other tools)."""
    known = {_variable(name).removeprefix("LLMBOT_"): _variable(name) for name in Settings.model_fields}
    warnings = []
    for name in sorted(n for n in env if n.upper().startswith("LLMBOT_") and n not in known.values()):
        where = env_file if name in from_file else "the environment"
        close = difflib.get_close_matches(name[len("LLMBOT_") :].upper(), known, n=1, cutoff=0.6)
        fix = f"did you mean {known[close[0]]}?" if close else "see .env.example for the settings there are"
        warnings.append(f"{name} (in {where}) is not a setting of llmbot and is ignored: {fix}")
    return warnings


# --- pydantic's errors as the one-line fix-its an admin reads.

_REQUIRED = {
    "MATTERMOST_URL": "the server's address, e.g. https://chat.example.com",
    "MATTERMOST_TOKEN": "the bot account's access token (Integrations → Bot Accounts → Create New Token)",
    "OPENAI_API_KEY": "sk-... (any non-empty value for servers that do not check)",
}
_SECRET = ("MATTERMOST_TOKEN", "OPENAI_API_KEY")


def _problem(error: ErrorDetails) -> str:
    """One line naming the variable, its value (never a secret's) and how to fix it."""
    field_name = _FIELD_OF[str(error["loc"][0])]  # every error here belongs to one field
    field, name = Settings.model_fields[field_name], _variable(field_name)
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "missing":
        return f"{name} is not set: set it to {_REQUIRED.get(name, 'a value')}"
    value = error["input"]
    shown = value.strip() if isinstance(value, str) else value
    named = name if name in _SECRET else f"{name}={shown!r}"  # a secret's value is never repeated
    if kind == "value_error":
        return f"{named} {ctx['error']}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{named} is not a whole number: e.g. {name}={_num(field.default)}"
    if kind in ("float_parsing", "float_type"):
        return f"{named} is not a number: e.g. {name}={_num(field.default)}"
    if kind == "finite_number":
        low = next(m.ge for m in field.metadata if isinstance(m, Ge))
        high = next(m.le for m in field.metadata if isinstance(m, Le))
        return f"{named} is not a finite number: it must be from {_num(low)} to {_num(high)}"
    if kind == "greater_than_equal":
        return f"{named} is too small: it must be at least {_num(ctx['ge'])}"
    if kind == "less_than_equal":
        return f"{named} is too large: it must be at most {_num(ctx['le'])}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{named} must be on or off"
    return f"{named} is not valid: {error['msg']}"


def _num(value: object) -> str:
    """2000000 rather than 2e+06 or 2000000.0; 0.1 stays 0.1."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


# Errors name a field by its variable (from the environment) or by its name (Settings(...) in code).
_FIELD_OF = {key: name for name in Settings.model_fields for key in (name, _variable(name))}
