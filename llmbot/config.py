"""Settings: read once from the environment (and an optional .env), validated, frozen.

`load_settings` collects every problem before failing, so one start names them all.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from .errors import ConfigError

DEFAULT_TRIGGER = r"^gpt\b"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class ServerURL:
    """A Mattermost base URL split the way mattermostautodriver wants it."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    mattermost_url: ServerURL
    mattermost_token: str = field(repr=False)
    openai_api_key: str = field(repr=False)
    openai_base_url: str | None = None
    model: str = "gpt-4o-mini"
    trigger: re.Pattern[str] = re.compile(DEFAULT_TRIGGER, re.IGNORECASE)
    end_words: tuple[str, ...] = ("bye",)
    conversation_ttl: float = 3600.0
    max_context_tokens: int = 8000
    max_reply_tokens: int = 1000
    system_prompt_file: Path | None = None
    log_level: str = "INFO"
    request_timeout: float = 30.0
    llm_timeout: float = 120.0
    max_concurrent_turns: int = 256
    max_bound_threads: int = 200_000
    llm_idle_timeout: float = 60.0
    llm_retries: int = 3
    # Access control: names or ids, casefolded; an empty allow list allows everyone. Deny wins.
    allow_teams: frozenset[str] = frozenset()
    deny_teams: frozenset[str] = frozenset()
    allow_channels: frozenset[str] = frozenset()
    deny_channels: frozenset[str] = frozenset()
    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()
    direct_messages: bool = True
    # Limits; 0 turns a limit off.
    max_starts_per_minute: int = 10
    max_conversations_per_user: int = 10
    max_turns: int = 100

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line or a post."""
        return tuple(s for s in (self.mattermost_token, self.openai_api_key) if s)


def read_environment(env_file: str | os.PathLike[str] | None = ".env") -> dict[str, str]:
    """The process environment over the values of `env_file` (the environment wins)."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def load_settings(env: Mapping[str, str]) -> Settings:
    """Validate `env` into Settings, or raise ConfigError naming every bad variable."""
    problems: list[str] = []
    p = _Parser(env, problems)

    url = p.server_url("MATTERMOST_URL")
    token = p.required("MATTERMOST_TOKEN", example="a bot access token from System Console > Bot Accounts")
    api_key = p.required("OPENAI_API_KEY", example="sk-... (any non-empty value for servers that do not check)")
    base_url = p.http_url("OPENAI_BASE_URL")
    model = p.text("LLMBOT_MODEL", "gpt-4o-mini")
    trigger = p.regex("LLMBOT_TRIGGER", DEFAULT_TRIGGER)
    end_words = p.words("LLMBOT_END", "bye")
    ttl = p.number("LLMBOT_CONVERSATION_TTL", 3600.0, minimum=1.0)
    max_context = int(p.number("LLMBOT_MAX_CONTEXT_TOKENS", 8000, minimum=256, integer=True))
    max_reply = int(p.number("LLMBOT_MAX_REPLY_TOKENS", 1000, minimum=1, integer=True))
    prompt_file = p.existing_file("LLMBOT_SYSTEM_PROMPT_FILE")
    level = p.choice("LLMBOT_LOG_LEVEL", "INFO", LOG_LEVELS)
    request_timeout = p.number("LLMBOT_REQUEST_TIMEOUT", 30.0, minimum=0.1)
    llm_timeout = p.number("LLMBOT_LLM_TIMEOUT", 120.0, minimum=0.1)
    concurrency = int(p.number("LLMBOT_MAX_CONCURRENT_TURNS", 256, minimum=1, integer=True))
    max_threads = int(p.number("LLMBOT_MAX_BOUND_THREADS", 200_000, minimum=1, integer=True))
    idle_timeout = p.number("LLMBOT_LLM_IDLE_TIMEOUT", 60.0, minimum=0.1)
    llm_retries = int(p.number("LLMBOT_LLM_RETRIES", 3, minimum=0, integer=True))
    access = {
        "allow_teams": p.names("LLMBOT_ALLOW_TEAMS"),
        "deny_teams": p.names("LLMBOT_DENY_TEAMS"),
        "allow_channels": p.names("LLMBOT_ALLOW_CHANNELS"),
        "deny_channels": p.names("LLMBOT_DENY_CHANNELS"),
        "allow_users": p.names("LLMBOT_ALLOW_USERS"),
        "deny_users": p.names("LLMBOT_DENY_USERS"),
    }
    dms = p.flag("LLMBOT_DIRECT_MESSAGES", True)
    starts = int(p.number("LLMBOT_MAX_STARTS_PER_MINUTE", 10, minimum=0, integer=True))
    per_user = int(p.number("LLMBOT_MAX_CONVERSATIONS_PER_USER", 10, minimum=0, integer=True))
    max_turns = int(p.number("LLMBOT_MAX_TURNS", 100, minimum=0, integer=True))

    if problems:
        raise ConfigError(problems)
    assert url is not None and trigger is not None
    return Settings(
        mattermost_url=url,
        mattermost_token=token,
        openai_api_key=api_key,
        openai_base_url=base_url,
        model=model,
        trigger=trigger,
        end_words=end_words,
        conversation_ttl=ttl,
        max_context_tokens=max_context,
        max_reply_tokens=max_reply,
        system_prompt_file=prompt_file,
        log_level=level,
        request_timeout=request_timeout,
        llm_timeout=llm_timeout,
        max_concurrent_turns=concurrency,
        max_bound_threads=max_threads,
        llm_idle_timeout=idle_timeout,
        llm_retries=llm_retries,
        direct_messages=dms,
        max_starts_per_minute=starts,
        max_conversations_per_user=per_user,
        max_turns=max_turns,
        **access,
    )



class _Parser:
    """Reads one variable per call and appends a fix-it message to `problems` when it is bad."""

    def __init__(self, env: Mapping[str, str], problems: list[str]) -> None:
        self.env = env
        self.problems = problems

    def _raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def required(self, name: str, *, example: str) -> str:
        value = self._raw(name)
        if value is None:
            self.problems.append(f"{name} is not set: set it to {example}")
            return ""
        return value

    def text(self, name: str, default: str) -> str:
        return self._raw(name) or default

    def server_url(self, name: str) -> ServerURL | None:
        value = self._raw(name)
        if value is None:
            self.problems.append(f"{name} is not set: set it to the server's address, e.g. https://chat.example.com")
            return None
        parts = urlsplit(value if "://" in value else "")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port in (-1, 0):
            self.problems.append(
                f"{name}={value!r} is not a full URL: use e.g. https://chat.example.com or http://127.0.0.1:8065"
            )
            return None
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            self.problems.append(
                f"{name}={value!r} has a path: Mattermost behind a sub-path is not supported, use the bare server URL"
            )
            return None
        return ServerURL(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))

    def http_url(self, name: str) -> str | None:
        value = self._raw(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problems.append(f"{name}={value!r} is not an http(s) URL: use e.g. http://127.0.0.1:11434/v1")
            return None
        return value

    def regex(self, name: str, default: str) -> re.Pattern[str] | None:
        value = self._raw(name) or default
        try:
            return re.compile(value, re.IGNORECASE)
        except re.error as exc:
            self.problems.append(f"{name}={value!r} is not a valid regular expression ({exc}): e.g. {default}")
            return None

    def words(self, name: str, default: str) -> tuple[str, ...]:
        value = self._raw(name) or default
        words = tuple(w.strip().casefold() for w in value.split(",") if w.strip())
        if not words or any(len(w.split()) != 1 for w in words):
            self.problems.append(f"{name}={value!r} must be one word or a comma-separated list of words, e.g. bye,goodbye")
            return (default,)
        return words

    def names(self, name: str) -> frozenset[str]:
        """A comma-separated list of names or ids; a leading @ (users) or ~ (channels) is dropped."""
        value = self._raw(name)
        if value is None:
            return frozenset()
        names = frozenset(n.strip().lstrip("@~").casefold() for n in value.split(",") if n.strip().lstrip("@~"))
        if any(len(n.split()) != 1 for n in names):
            self.problems.append(f"{name}={value!r} must be a comma-separated list of names or ids, e.g. town-square,off-topic")
            return frozenset()
        return names

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "on", "true", "yes"):
            return True
        if value.lower() in ("0", "off", "false", "no"):
            return False
        self.problems.append(f"{name}={value!r} must be on or off")
        return default

    def number(self, name: str, default: float, *, minimum: float, integer: bool = False) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            self.problems.append(f"{name}={value!r} is not {kind}: e.g. {name}={default:g}")
            return default
        if number < minimum or number != number:  # NaN fails both comparisons
            self.problems.append(f"{name}={value!r} is too small: it must be at least {minimum:g}")
            return default
        return number

    def existing_file(self, name: str) -> Path | None:
        value = self._raw(name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            self.problems.append(f"{name}={value!r} is not a readable file: point it at a prompt file such as prompts/system.md")
            return None
        return path

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self._raw(name) or default).upper()
        if value not in choices:
            self.problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
            return default
        return value


def configure_logging(level: str, secrets: tuple[str, ...] = ()) -> None:
    """Plain one-line logs to stderr; any secret that slips into a message is masked."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The driver logs every websocket frame at INFO/DEBUG and forces its own level; keep it quiet.
    logging.getLogger("mattermostautodriver.websocket").setLevel(max(logging.getLevelName(level), logging.WARNING))
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))


class RedactSecrets(logging.Filter):
    """Replaces secrets in the rendered message (args included) with '***'."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        text = message
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        for secret in self.secrets:
            text = text.replace(secret, "***")
            if record.exc_text:
                record.exc_text = record.exc_text.replace(secret, "***")
        if text != message:
            record.msg, record.args = text, None
        return True
