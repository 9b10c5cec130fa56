"""The store protocol: bindings, the open-conversation index, claims on posts, limit counters.

The store is a cache, not a record: every binding can be rebuilt from the props the bot writes
into the thread (record.py), so losing it loses no conversation data. Async throughout, so that
a shared store (Redis) can stand in for the memory one without touching the dispatcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Binding:
    """A thread bound to a handler's conversation."""

    handler: str
    started_by: str  # user id of whoever opened the conversation
    conversation: str  # id of the post that opened it (recorded on every post of the bot's)
    last_activity: float  # store clock, seconds
    ttl: float | None = None  # seconds of silence that end it; None: the store's default
    # After a usage hint ("gpt" alone): only this user's next post continues it (their question).
    # Cleared by the first touch.
    awaiting: str = ""


class Store(Protocol):
    async def get(self, thread_id: str) -> Binding | None:
        """The thread's most recently active live binding, or None (never bound, ended or expired)."""

    async def bind(
        self, thread_id: str, handler: str, started_by: str, conversation: str, idle: float = 0.0, ttl: float | None = None,
        awaiting: str = "",
    ) -> Binding:
        """Bind a thread; `idle` says how long ago its last activity was (0 for a new one); `ttl`
        overrides the store's default for this conversation (a handler's own timeout); `awaiting`
        names the one user whose next post continues it (after a usage hint)."""

    async def active(self, thread_id: str) -> list[Binding]:
        """The live conversations of the thread, most recently active first (several may be stacked:
        a plugin's trigger inside another's conversation opens a second one)."""

    async def touch(self, thread_id: str, handler: str | None = None) -> Binding | None:
        """Restart the TTL of `handler`'s conversation in the thread (the newest one's by default)
        and make it the most recent; None if it is no longer bound."""

    async def unbind(self, thread_id: str, handler: str | None = None) -> bool:
        """End `handler`'s conversation in the thread, or all of them; False if none was bound."""

    async def sweep(self) -> list[tuple[str, Binding, str]]:
        """(thread id, binding, reason) of the conversations that expired ("expired") or were pushed
        out of a full store ("displaced") since the last sweep: their plugins are told."""

    async def look(self, thread_id: str) -> tuple[list[Binding], str | None]:
        """active(), and when nothing is active, why the thread's last conversation is over (as
        take_quiet says, without taking it): one look-up on the dispatcher's hot path."""

    async def take_quiet(self, thread_id: str) -> str | None:
        """Why the thread's last conversation is over ("ended" or "expired", for a day after), once:
        the next post there gets one cue, not every post."""

    async def opened_by(self, user_id: str) -> list[tuple[str, float]]:
        """(thread id, last activity) of the live conversations `user_id` opened, least recent first."""

    async def claim(self, post_id: str) -> bool:
        """True the first time a post is claimed: the bot acts on each post once."""

    async def count_start(self, user_id: str, at: float, window: float, limit: int) -> bool:
        """Record a conversation start at `at` (wall-clock seconds) unless `limit` starts of the
        user already fall within `window` seconds before it; True if recorded."""

    async def acquire(self, thread_id: str, holder: str, seconds: float) -> bool:
        """Hold the thread's turns for `seconds`, so one replica at a time runs them: True if this
        holder has it now (taken, or held already); False while another holder's lease lives."""

    async def renew(self, thread_id: str, holder: str, seconds: float) -> bool:
        """Extend this holder's lease by `seconds` from now; False if it was lost (expired, taken)."""

    async def release(self, thread_id: str, holder: str) -> None:
        """Give the lease up (only this holder's: never another's)."""

    async def heartbeat(self, replica: str, seconds: float) -> None:
        """This replica is alive for `seconds` more (renewed well before they pass)."""

    async def replicas_alive(self) -> int:
        """How many replicas beat now (they share the Mattermost rate budget); 1 for one instance."""

    async def track(self, replica: str, post_id: str, frame: str) -> None:
        """A turn this replica took on and has not finished: the post's `posted` frame, for another
        replica to finish it if this one dies."""

    async def untrack(self, replica: str, post_id: str) -> None:
        """The turn is finished (or handed on): nobody needs to take it over."""

    async def adopt(self, replica: str) -> list[str]:
        """The unfinished turns of replicas that stopped beating, now this replica's (each adopted
        by one replica only): their frames."""

    async def first_notice(self, key: str, window: float) -> bool:
        """True once per `window` seconds per key: tell a user about a limit once, not per message."""
