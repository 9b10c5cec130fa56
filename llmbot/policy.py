"""Who may talk to the bot: the allow and deny lists. Pure.

`AccessPolicy.refuses` runs for posts on the hot path, so it does a few set lookups and
returns fixed reason strings (nothing user-written, so they are safe to log).

Scope of the lists, by channel type:
- O/P (public, private): user, channel and team lists.
- G (group message): user and channel lists; a group message belongs to no team.
- D (direct message): `direct_messages` and the user lists only. A DM belongs to no team, and
  its "channel name" is a pair of user ids nobody would list, so a channel allow list would
  silently switch DMs off; `direct_messages` is the one switch for them.
- any other (unknown or missing) type: like O/P, so the lists fail closed.

Events carry only team ids: while a team's name is not learned, a post there is refused
(TEAM_UNKNOWN) unless its id alone decides, since a deny-by-name could not be checked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from .errors import ChatError
from .events import Posted
from .settings import Settings

log = logging.getLogger(__name__)

# Reasons `refuses` returns; constants, so callers and tests can compare them.
DMS_OFF = "direct messages are off"
USER_DENIED = "user is denied"
USER_NOT_ALLOWED = "user is not allowed"
CHANNEL_DENIED = "channel is denied"
CHANNEL_NOT_ALLOWED = "channel is not allowed"
TEAM_DENIED = "team is denied"
TEAM_NOT_ALLOWED = "team is not allowed"
TEAM_UNKNOWN = "team name not learned yet"


class _Lists:
    """One allow/deny pair of casefolded names or ids."""

    __slots__ = ("allow", "deny", "active")

    def __init__(self, allow: frozenset[str], deny: frozenset[str]) -> None:
        self.allow = _fold_all(allow)
        self.deny = _fold_all(deny)
        self.active = bool(self.allow or self.deny)  # precomputed: refuses() runs per post

    def verdict(self, key: str, other: str = "") -> bool | None:
        """False if a key is denied, True if allowed, None if an allow list exists and misses both.

        Neither list holds "" (see _fold_all), so an empty key matches nothing.
        """
        if key in self.deny or other in self.deny:
            return False
        if not self.allow or key in self.allow or other in self.allow:
            return True
        return None


class AccessPolicy:
    """The allow/deny lists of Settings applied to posts. Deny beats allow; an empty allow list allows all."""

    __slots__ = ("_users", "_channels", "_teams", "_dms", "_team_names")

    def __init__(
        self,
        *,
        allow_users: frozenset[str] = frozenset(),
        deny_users: frozenset[str] = frozenset(),
        allow_channels: frozenset[str] = frozenset(),
        deny_channels: frozenset[str] = frozenset(),
        allow_teams: frozenset[str] = frozenset(),
        deny_teams: frozenset[str] = frozenset(),
        direct_messages: bool = True,
    ) -> None:
        self._users = _Lists(allow_users, deny_users)
        self._channels = _Lists(allow_channels, deny_channels)
        self._teams = _Lists(allow_teams, deny_teams)
        self._dms = direct_messages
        self._team_names: dict[str, str] = {}  # team id -> casefolded name

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            allow_users=settings.allow_users,
            deny_users=settings.deny_users,
            allow_channels=settings.allow_channels,
            deny_channels=settings.deny_channels,
            allow_teams=settings.allow_teams,
            deny_teams=settings.deny_teams,
            direct_messages=settings.direct_messages,
        )

    @property
    def is_open(self) -> bool:
        """True when nothing is ever refused, so the caller may skip `refuses` altogether."""
        return self._dms and not (self._users.active or self._channels.active or self._teams.active)

    @property
    def needs_team_names(self) -> bool:
        """Team lists are set: posts in channels need their team's name learned first."""
        return self._teams.active

    def wants_team_name(self, team_id: str) -> bool:
        """Should the caller look up this team's name (once) and `learn_team` it?"""
        return self._teams.active and bool(team_id) and team_id.casefold() not in self._team_names

    def learn_team(self, team_id: str, name: str) -> None:
        """Remember a team's name (events carry only its id). Teams are few: no bound needed."""
        self._team_names[team_id.casefold()] = name.casefold()

    def refuses(self, event: Posted) -> str | None:
        """Why this post may not start or continue a conversation, or None if it may."""
        direct = event.channel_type == "D"
        if direct and not self._dms:
            return DMS_OFF
        user = self.user_refusal(event.post.user_id, event.sender_name)
        if user is not None:
            return user
        post = event.post
        if direct:
            return None
        if self._channels.active:
            verdict = self._channels.verdict(post.channel_id.casefold(), event.channel_name.casefold())
            if verdict is not True:
                return CHANNEL_DENIED if verdict is False else CHANNEL_NOT_ALLOWED
        if self._teams.active and event.channel_type != "G":
            return self._team_refuses(event.team_id.casefold())
        return None

    def user_refusal(self, user_id: str, username: str) -> str | None:
        """Why the user lists refuse this person, or None: for any post of a thread, whose
        channel the thread's first post already passed."""
        if not self._users.active:
            return None
        verdict = self._users.verdict(user_id.casefold(), username.casefold())
        if verdict is True:
            return None
        return USER_DENIED if verdict is False else USER_NOT_ALLOWED

    def _team_refuses(self, team_id: str) -> str | None:
        name = self._team_names.get(team_id)
        if name is None:
            # Without the name a deny-by-name cannot be checked: fail closed unless the id decides.
            verdict = self._teams.verdict(team_id)
            if verdict is False:
                return TEAM_DENIED
            if verdict is True and not self._teams.deny:
                return None
            return TEAM_UNKNOWN
        verdict = self._teams.verdict(team_id, name)
        if verdict is True:
            return None
        return TEAM_DENIED if verdict is False else TEAM_NOT_ALLOWED


def _fold_all(names: frozenset[str]) -> frozenset[str]:
    # Settings already casefolds and strips; doing it again keeps hand-built policies honest.
    return frozenset(n.lstrip("@~").casefold() for n in names if n.lstrip("@~"))


TEAM_RETRY = 60.0  # seconds between attempts to learn team names after a failure


class TeamNames:
    """Team names for access lists written with names, learned from the bot's teams. A team still
    unknown after a look-up (or a failed look-up) is asked about again only after TEAM_RETRY, not
    on every post."""

    def __init__(self, policy: AccessPolicy, teams: Callable[[], Awaitable[dict[str, str]]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._teams = teams
        self._clock = clock
        self._asked: dict[str, float] = {}  # team id -> when its name was last looked up

    async def learn(self, team_id: str = "") -> None:
        now = self._clock()
        if team_id and now - self._asked.get(team_id, float("-inf")) < TEAM_RETRY:
            return
        if team_id:
            self._asked[team_id] = now
        try:
            teams = await self._teams()
        except ChatError as exc:
            log.error("cannot read the bot's teams, so team names in the access lists match nothing yet: %s", exc)
            return
        for known_id, name in teams.items():
            self.policy.learn_team(known_id, name)
