"""The token bucket of the Mattermost rate budget (rate_budget.py), and what a request carries of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`tokens` at `stamp`, refilled at `rate` a second up to `capacity`; below zero is a debt."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    def level(self, now: float) -> float:
        return min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)

    def wait(self, now: float, floor: float = 0.0) -> float:
        """Seconds until a token can be taken leaving at least `floor` (0: now)."""
        short = floor + 1.0 - self.level(now)
        return short / self.rate if short > 1e-9 else 0.0  # (a clock's rounding is no wait)

    def take(self, now: float, floor: float = 0.0) -> float:
        """Take a token if that leaves at least `floor`: 0.0; else the seconds to wait (nothing taken)."""
        wait = self.wait(now, floor)
        if wait <= 0:
            self.tokens, self.stamp = self.level(now) - 1.0, max(now, self.stamp)
        return wait

    def adjust(self, tokens: float, now: float) -> None:
        """Add (or, negative, remove) tokens: what the server's count says that ours missed."""
        level = self.level(now)
        self.tokens = max(-self.capacity, min(self.capacity, level + tokens))
        self.stamp = max(now, self.stamp)


@dataclass(frozen=True, slots=True)
class Ticket:
    """The bucket as a request left: its level then, and the corrections made so far."""

    level: float
    corrections: float
