"""LLMBOT_PLUGINS -> plugin instances: built-in names, package.module:Class, or entry points."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import entry_points

from ..errors import ConfigError
from .api import Plugin

BUILT_IN = "gpt"  # the GPT chat: built by the app, which knows the bot's identity
BUILT_INS: dict[str, str] = {"summarize": "llmbot.plugins.summarize:Summarize"}  # off unless listed
ENTRY_POINT_GROUP = "llmbot.plugins"
_NAME = re.compile(r"[a-z0-9_.-]+")


def load_plugins(names: tuple[str, ...]) -> list[Plugin]:
    """The plugins LLMBOT_PLUGINS names (except the built-in chat), in its order; ConfigError with one
    line per plugin that cannot be loaded (exit code 2)."""
    problems: list[str] = []
    plugins: list[Plugin] = []
    for name in names:
        if name == BUILT_IN:
            continue
        try:
            plugin = _load(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import or build a plugin is the admin's to fix
            problems.append(f"LLMBOT_PLUGINS: cannot load {name!r}: {type(exc).__name__}: {exc}")
            continue
        problem = _invalid(plugin, [p.name for p in plugins])
        if problem:
            problems.append(f"LLMBOT_PLUGINS: {name!r} {problem}")
        else:
            plugins.append(plugin)
    if problems:
        raise ConfigError(problems)
    return plugins


def _load(name: str) -> Plugin:
    name = BUILT_INS.get(name, name)
    if ":" in name:
        module, _, attribute = name.partition(":")
        found = getattr(importlib.import_module(module), attribute)
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            raise LookupError(f"no built-in plugin and no installed entry point of group {ENTRY_POINT_GROUP} has this name")
        found = matches[0].load()
    if not (isinstance(found, type) and issubclass(found, Plugin)):
        raise TypeError(f"{found!r} is not a subclass of llmbot.Plugin")
    return found()


def _invalid(plugin: Plugin, taken: list[str]) -> str | None:
    if not plugin.name or not _NAME.fullmatch(plugin.name):
        return "has no valid name (lowercase letters, digits, _ . -)"
    if plugin.name == BUILT_IN or plugin.name in taken:
        return f"has the name {plugin.name!r}, which another plugin has"
    if not plugin.listeners:
        return "listens to nothing (no @listen_to method)"
    return None
