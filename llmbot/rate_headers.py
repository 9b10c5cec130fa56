"""What Mattermost's rate limiter says, and what the bot learns from it. Pure.

The limiter (RateLimitSettings, off by default; app/ratelimit.go) is throttled's GCRA per address
(throttled's rate.go): PerSec requests a second, MaxBurst + 1 at once. Every response carries
`X-RateLimit-Limit` (MaxBurst + 1), `X-RateLimit-Remaining` (requests that could go at once now)
and `X-RateLimit-Reset` (seconds, rounded up, until the bucket is full again); a refused request
gets 429, `Retry-After` (seconds, rounded up) and the plain-text body "limit exceeded".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_SECONDS_OF_BURST = 10.0  # rate = burst / 10 until known: Mattermost's defaults (10/s, burst 100)


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    """X-RateLimit-* of one response (Reset None when absent)."""

    limit: int
    remaining: int
    reset: int | None

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> LimitHeaders | None:
        raw = headers.get("x-ratelimit-limit")
        if raw is None:  # a server without a limiter: the usual case, kept cheap
            return None
        limit, remaining = _least(raw), _least(headers.get("x-ratelimit-remaining"))
        if limit is None or remaining is None or limit < 1:
            return None
        return cls(limit, min(remaining, limit), _least(headers.get("x-ratelimit-reset")))


def _least(value: str | None) -> int | None:
    """A header's number; the least of several (VaryByUser adds a second set of headers)."""
    if value is None:
        return None
    try:
        numbers = [int(v) for v in value.split(",")]
    except ValueError:
        return None
    return min(numbers) if numbers and min(numbers) >= 0 else None


class RateEstimate:
    """The server's rate, bounded by what its headers said.

    GCRA with period T and Limit L: after a request, Remaining R = floor(L - ttl/T) and
    Reset = ceil(ttl), ttl being the time until the bucket is full. So ttl/T lies in (L-R-1, L-R]
    and ttl in (Reset-1, Reset]: the rate 1/T lies in ((L-R-1)/Reset, (L-R)/(Reset-1)). Each
    response narrows the bounds; the estimate is the lower one (never faster than the server).
    """

    def __init__(self) -> None:
        self.low, self.high = 0.0, math.inf

    def observe(self, limits: LimitHeaders) -> None:
        if not limits.reset:
            return
        used = limits.limit - limits.remaining
        low = (used - 1) / limits.reset
        high = used / (limits.reset - 1) if limits.reset > 1 else math.inf
        if max(low, self.low) > min(high, self.high):  # the server's settings changed
            self.low, self.high = low, high
        else:
            self.low, self.high = max(low, self.low), min(high, self.high)

    def rate(self, guess: float) -> float:
        """The lower bound; `guess` while the headers have not given one (a full bucket says little)."""
        return self.low if self.low > 0 else min(guess, self.high)
