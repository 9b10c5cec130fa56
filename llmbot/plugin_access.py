"""Per-plugin access, conversation rights and activation limits. Pure, except Activations.admit (the store).

On top of the global lists (policy.py), each plugin may be limited to some channels and users:
- LLMBOT_PLUGIN_ALLOWED_CHANNELS / _DENIED_CHANNELS match a post's channel id or name, and
  LLMBOT_PLUGIN_ALLOWED_USERS / _DENIED_USERS its author's id or username, casefolded, as the
  global lists do. A plugin not named in a setting is not restricted by it; deny wins over allow.
- Direct messages obey only the user lists, as with the global lists: a DM's "channel name" is a
  pair of user ids nobody would list, so a channel allow list would silently shut the plugin out
  of DMs. Group messages obey both. Teams have no per-plugin lists.
- LLMBOT_CONVERSE_ALLOWED / _DENIED: which plugins may hold a conversation (empty allowed: all).
  The others still answer their triggers, one-shot: follow-ups never go to them.
- LLMBOT_MAX_ACTIVATIONS_PER_MINUTE: starts a plugin may take per minute, all users together
  (OVOS max_activations), counted in the store like the per-user starts.

Which plugins exist is known only once they are loaded: `unknown_plugins` names the settings
that mention others, so the app can warn or refuse to start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .events import Posted
from .router import HandlerSpec
from .settings import Settings
from .store.base import Store

# Reasons `refuses` returns: constants naming the setting, so a log line tells the admin where to look.
USER_DENIED = "user is in LLMBOT_PLUGIN_DENIED_USERS"
USER_NOT_ALLOWED = "user is not in LLMBOT_PLUGIN_ALLOWED_USERS"
CHANNEL_DENIED = "channel is in LLMBOT_PLUGIN_DENIED_CHANNELS"
CHANNEL_NOT_ALLOWED = "channel is not in LLMBOT_PLUGIN_ALLOWED_CHANNELS"

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds: LLMBOT_MAX_ACTIVATIONS_PER_MINUTE is a sliding minute
STORE_KEY = "plugin:{}"  # the counter's key in Store.count_start; Mattermost user ids hold no ':'

_NO_NAMES: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Rules:
    """One plugin's lists, casefolded; an empty allow list allows all."""

    allow_users: frozenset[str] = _NO_NAMES
    deny_users: frozenset[str] = _NO_NAMES
    allow_channels: frozenset[str] = _NO_NAMES
    deny_channels: frozenset[str] = _NO_NAMES


class PluginAccess:
    """Who may use which plugin, and which plugins may converse."""

    __slots__ = ("_rules", "_converse_allowed", "_converse_denied", "_named", "is_open")

    def __init__(
        self,
        *,
        allowed_channels: Mapping[str, Iterable[str]] | None = None,
        denied_channels: Mapping[str, Iterable[str]] | None = None,
        allowed_users: Mapping[str, Iterable[str]] | None = None,
        denied_users: Mapping[str, Iterable[str]] | None = None,
        converse_allowed: Iterable[str] = (),
        converse_denied: Iterable[str] = (),
    ) -> None:
        lists = {
            "allow_channels": _fold(allowed_channels),
            "deny_channels": _fold(denied_channels),
            "allow_users": _fold(allowed_users),
            "deny_users": _fold(denied_users),
        }
        plugins = {plugin for by_plugin in lists.values() for plugin in by_plugin}
        self._rules: dict[str, _Rules] = {
            plugin: _Rules(**{kind: by_plugin.get(plugin, _NO_NAMES) for kind, by_plugin in lists.items()})
            for plugin in plugins
        }
        self._converse_allowed = frozenset(p.casefold() for p in converse_allowed)
        self._converse_denied = frozenset(p.casefold() for p in converse_denied)
        # setting -> the plugins it names, for unknown_plugins()
        self._named: tuple[tuple[str, frozenset[str]], ...] = (
            ("LLMBOT_PLUGIN_ALLOWED_CHANNELS", frozenset(lists["allow_channels"])),
            ("LLMBOT_PLUGIN_DENIED_CHANNELS", frozenset(lists["deny_channels"])),
            ("LLMBOT_PLUGIN_ALLOWED_USERS", frozenset(lists["allow_users"])),
            ("LLMBOT_PLUGIN_DENIED_USERS", frozenset(lists["deny_users"])),
            ("LLMBOT_CONVERSE_ALLOWED", self._converse_allowed),
            ("LLMBOT_CONVERSE_DENIED", self._converse_denied),
        )
        # True when nothing is configured: refuses() is always None and may_converse() always True.
        self.is_open: bool = not (self._rules or self._converse_allowed or self._converse_denied)

    @classmethod
    def from_settings(cls, settings: Settings) -> PluginAccess:
        return cls(
            allowed_channels=settings.plugin_allowed_channels.as_dict(),
            denied_channels=settings.plugin_denied_channels.as_dict(),
            allowed_users=settings.plugin_allowed_users.as_dict(),
            denied_users=settings.plugin_denied_users.as_dict(),
            converse_allowed=settings.converse_allowed,
            converse_denied=settings.converse_denied,
        )

    def refuses(self, plugin: str, event: Posted) -> str | None:
        """Why `plugin` may not take this post (a constant of this module, for the log), or None."""
        rules = self._rules.get(plugin)
        if rules is None:
            return None
        user, username = event.post.user_id.casefold(), event.sender_name.casefold()
        channels = not event.is_direct  # DMs obey only the user lists (see the module's docstring)
        channel, channel_name = event.post.channel_id.casefold(), event.channel_name.casefold()
        if _hit(rules.deny_users, user, username):
            return USER_DENIED
        if channels and _hit(rules.deny_channels, channel, channel_name):
            return CHANNEL_DENIED
        if rules.allow_users and not _hit(rules.allow_users, user, username):
            return USER_NOT_ALLOWED
        if channels and rules.allow_channels and not _hit(rules.allow_channels, channel, channel_name):
            return CHANNEL_NOT_ALLOWED
        return None

    def allowed(self, specs: tuple[HandlerSpec, ...], event: Posted) -> tuple[HandlerSpec, ...]:
        """The handlers this post may reach: a refused plugin is routed as if it were not loaded."""
        allowed = []
        for spec in specs:
            reason = self.refuses(spec.name, event)
            if reason is None:
                allowed.append(spec)
            else:
                log.debug("post %s: plugin %s left out: %s", event.post.id, spec.name, reason)
        return tuple(allowed)

    def may_converse(self, plugin: str) -> bool:
        """May `plugin` hold a conversation? If not, its turns are one-shot."""
        if plugin in self._converse_denied:
            return False
        return not self._converse_allowed or plugin in self._converse_allowed

    def unknown_plugins(self, names: set[str]) -> list[str]:
        """One line per setting that names a plugin not in `names` (the loaded ones)."""
        return _unknown(self._named, names)


class Activations:
    """LLMBOT_MAX_ACTIVATIONS_PER_MINUTE: starts per plugin per sliding minute, all users together."""

    def __init__(self, store: Store, limits_per_plugin: Mapping[str, int], default: int = 0) -> None:
        self.store = store
        self._limits = {plugin.casefold(): limit for plugin, limit in limits_per_plugin.items()}
        self._default = default  # for plugins not in limits_per_plugin; 0 = no limit
        self.is_open: bool = not default and not any(self._limits.values())

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Activations:
        limits = settings.max_activations_per_minute
        return cls(store, limits.as_dict(), limits.default)

    def limit(self, plugin: str) -> int:
        """Starts `plugin` may take per minute; 0 = no limit."""
        return self._limits.get(plugin, self._default)

    async def admit(self, plugin: str, at: float) -> bool:
        """Record one start of `plugin` at `at` (wall-clock seconds: the post's create_at / 1000)
        unless its limit of starts already fall within the minute before; True if recorded."""
        limit = self.limit(plugin)
        if not limit:
            return True
        return await self.store.count_start(STORE_KEY.format(plugin), at, WINDOW, limit)

    def unknown_plugins(self, names: set[str]) -> list[str]:
        """One line if LLMBOT_MAX_ACTIVATIONS_PER_MINUTE names a plugin not in `names`."""
        return _unknown((("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", frozenset(self._limits)),), names)


def _fold(lists: Mapping[str, Iterable[str]] | None) -> dict[str, frozenset[str]]:
    """Casefolded plugin -> casefolded names without @ or ~; empty lists are dropped (they restrict nothing)."""
    folded: dict[str, frozenset[str]] = {}
    for plugin, names in (lists or {}).items():
        kept = frozenset(n.strip().lstrip("@~").casefold() for n in names if n.strip().lstrip("@~"))
        if kept:
            folded[plugin.casefold()] = kept
    return folded


def _hit(names: frozenset[str], key: str, other: str) -> bool:
    # Neither set holds "" (see _fold), so an empty id or name matches nothing.
    return key in names or other in names


def _unknown(named: Iterable[tuple[str, frozenset[str]]], loaded: set[str]) -> list[str]:
    known = ", ".join(sorted(loaded)) or "none"
    return [
        f"{setting} names plugin {plugin!r}, which is not loaded (loaded: {known})"
        for setting, plugins in named
        for plugin in sorted(plugins - loaded)
    ]


def unknown_plugins(settings: Settings, loaded: set[str]) -> list[str]:
    """One line per per-plugin setting that names a plugin not loaded (the start stops, exit 2)."""
    limits = settings.max_activations_per_minute
    named = (("LLMBOT_MAX_ACTIVATIONS_PER_MINUTE", frozenset(plugin.casefold() for plugin in limits.as_dict())),)
    return PluginAccess.from_settings(settings).unknown_plugins(loaded) + _unknown(named, loaded)
