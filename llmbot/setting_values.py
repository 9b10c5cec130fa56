"""What each setting accepts: one parser per kind of value, raising ValueError with the fix.

pydantic calls these before its own checks (BeforeValidator); settings.py turns the errors
into one line per bad variable.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# "gpt" at the start of a post, then whitespace, ':' or ',' or nothing: `gpt how...`, `gpt: how...`,
# `gpt, how...` and `gpt` alone call the bot; `GPT-5 is out` and `gpt's answer` do not (a bare \b did).
DEFAULT_TRIGGER = r"^gpt(?=[\s:,]|$)"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PLUGIN_NAME = re.compile(r"[a-z0-9_.-]+")  # what the loader accepts as a plugin's `name`
MAX_ACTIVATIONS = 10_000  # a minute; like LLMBOT_MAX_STARTS_PER_MINUTE


@dataclass(frozen=True)
class ServerURL:
    """A Mattermost base URL split the way mattermostautodriver wants it."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class PluginNames:
    """Per-plugin lists of names or ids (casefolded, without @ or ~), in the order written.

    Tuples, not a dict, so that Settings stays hashable; PluginAccess turns them into dicts once."""

    lists: tuple[tuple[str, frozenset[str]], ...] = ()

    def as_dict(self) -> dict[str, frozenset[str]]:
        return dict(self.lists)


@dataclass(frozen=True)
class ActivationLimits:
    """Activations a plugin may have per minute: `default` for every plugin not in `limits`; 0 = no limit."""

    default: int = 0
    limits: tuple[tuple[str, int], ...] = ()

    def as_dict(self) -> dict[str, int]:
        return dict(self.limits)


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


def redis_url(value: object) -> str | None:
    """LLMBOT_REDIS_URL: redis://, rediss:// (TLS) or unix:// - what redis-py's from_url reads."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ValueError("is not a Redis URL: use e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS, unix:///run/redis.sock)")
    return text


def log_format(value: object) -> str:
    text = str(value).strip().lower()
    if text not in ("text", "json"):
        raise ValueError("must be text or json")
    return text


def one_word(value: object) -> str:
    """Model names and secrets: a space inside can only be a paste error (or a broken header)."""
    text = str(value).strip()
    if not text:
        raise ValueError("is empty: give it a value")
    if len(text.split()) != 1:
        raise ValueError("must be a single value without spaces")
    return text


# What python-dotenv makes of a backslash escape inside double quotes, back to what was typed.
_TYPED = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}
_NAMES = {"\a": "a bell", "\b": "a backspace", "\f": "a form feed", "\n": "a line break", "\r": "a carriage return",
          "\t": "a tab", "\v": "a vertical tab"}


def control_character(name: str, value: str, *, secret: bool = False) -> str | None:
    r"""The one-line problem of a value holding a control character, or None.

    No setting wants one, and the usual cause is a `.env` line in double quotes: python-dotenv reads
    `"^(gpt|ai)\b"` as a pattern ending in a backspace, which never matches. The fix shown is the
    line as it was typed, in single quotes (where backslashes stay as written)."""
    found = [c for c in value if unicodedata.category(c) == "Cc"]
    if not found:
        return None
    shown = name if secret else f"{name}={value!r}"
    odd = next((c for c in found if c not in _TYPED), None)
    if odd is not None:  # not from a .env escape: pasted, or set that way in the environment
        return f"{shown} has a control character (U+{ord(odd):04X}): remove it"
    typed = "...." if secret else "".join(_TYPED.get(c, c) for c in value).replace("'", "\\'")
    why = f"{_NAMES[found[0]]} ({_TYPED[found[0]]} inside double quotes in .env becomes one)"
    return f"{shown} has {why}: in .env, write it in single quotes: {name}='{typed}'"


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


# --- settings that name plugins. Which plugins exist is known only once they are loaded, so
# here only the syntax is checked (plugin_access.py names the unknown ones).

_LISTS_SYNTAX = "write plugin=names, with ';' between plugins"


def plugin_channels(value: object) -> PluginNames:
    return _plugin_names(value, "food=~lunch,~kitchen; summarize=town-square")


def plugin_users(value: object) -> PluginNames:
    return _plugin_names(value, "food=@alice,@bob; summarize=@carol")


def _plugin_names(value: object, example: str) -> PluginNames:
    """`food=lunch,kitchen; summarize=town-square`; in code also a PluginNames or a mapping."""
    if isinstance(value, PluginNames):
        return value
    if isinstance(value, Mapping):
        groups = [(str(plugin), _items(names)) for plugin, names in value.items()]
    else:
        groups = []
        for part in str(value).split(";"):
            if not part.strip():
                continue
            plugin, is_pair, written = part.partition("=")
            if not is_pair:
                raise ValueError(f"has {part.strip()!r} without a plugin: {_LISTS_SYNTAX}, e.g. {example}")
            groups.append((plugin, _items(written)))
    lists: dict[str, frozenset[str]] = {}
    for raw_plugin, items in groups:
        plugin = _plugin(raw_plugin, example)
        if plugin in lists:
            raise ValueError(f"names plugin {plugin!r} twice: give all its names in one group, e.g. {example}")
        names = [n.lstrip("@~").casefold() for n in items if n.lstrip("@~")]
        if not names:
            raise ValueError(f"gives plugin {plugin!r} no names: list names or ids after '=', or leave it out, e.g. {example}")
        for name in names:  # in the order written, so the first mistake is the one named
            if "=" in name:
                raise ValueError(f"has {name!r} inside the names of {plugin!r}: {_LISTS_SYNTAX}, e.g. {example}")
            if len(name.split()) != 1:
                raise ValueError(f"has {name!r}, which is not a name or id: separate names with ',', e.g. {example}")
        lists[plugin] = frozenset(names)
    return PluginNames(tuple(lists.items()))


def plugin_set(value: object) -> frozenset[str]:
    """Plugin names, comma-separated: `gpt,food`."""
    plugins = [_plugin(p, "gpt,food") for p in _items(value) if p]
    return frozenset(plugins)


def activation_limits(value: object) -> ActivationLimits:
    """`30` (every plugin), `food=5,gpt=60`, or both: `30,gpt=60` (gpt 60, the others 30); ';' works too."""
    example = "30 for every plugin, or food=5,gpt=60"
    if isinstance(value, ActivationLimits):
        return value
    if isinstance(value, Mapping):
        pairs: list[tuple[str | None, object]] = [(str(plugin), count) for plugin, count in value.items()]
    elif isinstance(value, int):
        pairs = [(None, value)]
    else:
        pairs = []
        for part in re.split("[,;]", str(value)):
            plugin, is_pair, count = part.rpartition("=")
            if part.strip():
                pairs.append((plugin if is_pair else None, count))
    default: int | None = None
    limits: dict[str, int] = {}
    for raw_plugin, raw_count in pairs:
        count = str(raw_count).strip()
        if not re.fullmatch(r"\d+", count) or int(count) > MAX_ACTIVATIONS:
            raise ValueError(f"has {count!r}, which is not a whole number from 0 to {MAX_ACTIVATIONS}: e.g. {example}")
        if raw_plugin is None:
            if default is not None:
                raise ValueError(f"has two limits for every plugin ({default} and {int(count)}): give one, e.g. {example}")
            default = int(count)
            continue
        plugin = _plugin(raw_plugin, example)
        if plugin in limits:
            raise ValueError(f"names plugin {plugin!r} twice: give it one limit, e.g. {example}")
        limits[plugin] = int(count)
    return ActivationLimits(default or 0, tuple(limits.items()))


def _plugin(raw: str, example: str) -> str:
    plugin = raw.strip().casefold()
    if not PLUGIN_NAME.fullmatch(plugin):
        raise ValueError(
            f"has {raw.strip()!r}, which is not a plugin name (lowercase letters, digits, _ . -): e.g. {example}"
        )
    return plugin
