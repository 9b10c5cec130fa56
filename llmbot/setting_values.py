"""What each setting accepts: one parser per kind of value, raising ValueError with the fix.

pydantic calls these before its own checks (BeforeValidator); settings.py turns the errors
into one line per bad variable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

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


# --- parsers: a str from the environment, or the value itself when Settings(...) is built in code.
# Each raises ValueError with the part of the message that follows "NAME='value' ".


def server_url(value: object) -> ServerURL:
    if isinstance(value, ServerURL):
        return value
    text = str(value).strip()
    parts = urlsplit(text if "://" in text else "")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port in (-1, 0):
        raise ValueError("is not a full URL: use e.g. https://chat.example.com or http://127.0.0.1:8065")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("has a path: Mattermost behind a sub-path is not supported, use the bare server URL")
    return ServerURL(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def http_url(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("is not an http(s) URL: use e.g. http://127.0.0.1:11434/v1")
    return text


def one_word(value: object) -> str:
    """Model names and secrets: a space inside can only be a paste error (or a broken header)."""
    text = str(value).strip()
    if not text:
        raise ValueError("is empty: give it a value")
    if len(text.split()) != 1:
        raise ValueError("must be a single value without spaces")
    return text


def regex(value: object) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    try:
        return re.compile(str(value), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}): e.g. {DEFAULT_TRIGGER}") from None


def _items(value: object) -> list[str]:
    """A comma-separated string, or any iterable of strings given in code."""
    raw = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, Iterable) else [value]
    return [str(item).strip() for item in raw]


def words(value: object) -> tuple[str, ...]:
    words = tuple(w.casefold() for w in _items(value) if w)
    if not words or any(len(w.split()) != 1 for w in words):
        raise ValueError("must be one word or a comma-separated list of words, e.g. bye,goodbye")
    return words


def plugins(value: object) -> tuple[str, ...]:
    plugins = tuple(p for p in _items(value) if p)
    if not plugins or any(not re.fullmatch(r"[\w.]+(:\w+)?", p) for p in plugins) or len(set(plugins)) != len(plugins):
        raise ValueError(
            "must be a comma-separated list of plugins without repeats, e.g. gpt,examples.food_selection:FoodSelection"
        )
    return plugins


def names(value: object) -> frozenset[str]:
    """Names or ids, casefolded; a leading @ (users) or ~ (channels) is dropped."""
    names = frozenset(n.lstrip("@~").casefold() for n in _items(value) if n.lstrip("@~"))
    if any(len(n.split()) != 1 for n in names):
        raise ValueError("must be a comma-separated list of names or ids, e.g. town-square,off-topic")
    return names


def prompt_file(value: object) -> Path | None:
    if value is None:
        return None
    path = Path(str(value).strip()).expanduser()
    if not path.is_file():
        raise ValueError("is not a readable file: point it at a prompt file such as prompts/system.md")
    return path


def level(value: object) -> str:
    level = str(value).strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level
