"""Streaming a reply into posts: when to patch, and how to split long text. No I/O."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Protocol

MAX_POST_RUNES = 16383  # Mattermost's limit; len() of a str counts code points, i.e. runes
_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})(.*)$")
_BROADCAST = re.compile(r"(?<![\w.@-])@(channel|all|here)(?![\w-])", re.IGNORECASE)


def defuse_broadcasts(text: str) -> str:
    """Keep @channel, @all and @here in an answer from notifying everyone.

    The model's text is not the bot's intent: a prompt (or a quoted message) could make it
    write "@channel". A zero-width space after the "@" shows the same text and pings nobody.
    """
    return _BROADCAST.sub("@\u200b\\1", text) if "@" in text else text


def defused_len(text: str) -> int:
    """len(defuse_broadcasts(text)): what a page is once posted."""
    return len(text) + len(_BROADCAST.findall(text)) if "@" in text else len(text)


def fits(text: str, limit: int) -> bool:
    """Whether `text`, once defused, is at most `limit` runes; cheap while it clearly is."""
    n = len(text)
    if n > limit:
        return False
    # Defusing adds one rune per broadcast, and a broadcast ("@all" at the shortest) has an "@"
    # and four runes: the regex only runs near the limit with many "@" in the page.
    if n + n // 4 <= limit or n + text.count("@") <= limit:
        return True
    return defused_len(text) <= limit


class Pace(Protocol):
    """The rate budget's say on one stream's edits (rate_budget.EditPacer)."""

    def __call__(self) -> float:
        """Seconds the next edit should wait (0: it may go now, and will)."""
        ...

    def close(self) -> None: ...


class EditThrottle:
    """Decides when a streamed post is patched: at most once per `interval` seconds, and, with
    `pace`, no sooner than the rate budget allows: under pressure the interval stretches and each
    edit carries more text. close() when the stream is over."""

    def __init__(self, clock: Callable[[], float], interval: float = 1.0, pace: Pace | None = None) -> None:
        self._clock = clock
        self.interval = interval
        self._pace = pace
        self._last = float("-inf")
        self._next = float("-inf")  # no edit before this: the budget said so

    def due(self) -> bool:
        now = self._clock()
        if now - self._last < self.interval or now < self._next:
            return False
        wait = self._pace() if self._pace is not None else 0.0
        if wait > 0:
            self._next = now + wait
            return False
        return True

    def mark(self) -> None:
        self._last = self._clock()

    def close(self) -> None:
        if self._pace is not None:
            self._pace.close()


@dataclass
class ReplyPages:
    """The reply as a list of post texts, each within `limit` runes once defused, code fences kept whole.

    Text arrives in deltas; when the last page outgrows the limit it is closed (a code fence
    open at the cut is closed there and reopened on the next page) and never changes again.
    Pages are kept as the model wrote them: whether "@channel" is a broadcast depends on what
    follows it ("@channels" is not), so they are defused only when posted.
    """

    limit: int = MAX_POST_RUNES
    pages: list[str] = field(default_factory=lambda: [""])

    def add(self, delta: str) -> None:
        self.pages[-1] += delta
        while not fits(self.pages[-1], self.limit):
            head, rest = split_page(self.pages[-1], self.limit)
            self.pages[-1] = head
            self.pages.append(rest)

    @property
    def text(self) -> str:
        return "".join(self.pages)


def split_page(text: str, limit: int) -> tuple[str, str]:
    """Split `text` into a page of at most `limit` runes once defused and the rest, at a natural break."""
    room = limit
    while True:
        head, rest = _split(text, room)
        over = defused_len(head) - limit
        if over <= 0 or room <= 1:
            return head, rest
        # Cut again, shorter by what defusing added: a shorter head holds no more broadcasts
        # (bar one its new cut may end with), so this settles in a pass or two.
        room = max(room - over, 1)


def _split(text: str, limit: int) -> tuple[str, str]:
    """Split `text` into a page of at most `limit` runes and the rest, at a natural break."""
    reserve = 8  # room for closing a fence at the cut; grows for unusually long fence markers
    for _ in range(3):
        window = text[: max(limit - reserve, 1)]
        cut = _keep_fence_lines_whole(text, _break_point(window))
        head, rest = text[:cut], text[cut:]
        fence = open_fence(head)
        if fence is None:
            return head, rest
        opener, marker = fence
        closed = head.rstrip("\n") + "\n" + marker
        if len(closed) <= limit:
            if len(opener) > limit // 4:  # an absurd info string: do not carry it over
                opener = marker
            return closed, opener + "\n" + rest.lstrip("\n")
        reserve += len(closed) - limit
    return text[:limit], text[limit:]  # a fence marker as long as the page: cut without closing it


def _break_point(window: str) -> int:
    """Latest paragraph break, else line break, else space in the second half; else the end."""
    half = len(window) // 2
    for sep in ("\n\n", "\n", " "):
        at = window.rfind(sep, half)
        if at > 0:
            return at + len(sep)
    return len(window)


def _keep_fence_lines_whole(text: str, cut: int) -> int:
    """Move a cut inside a line so that neither side gains or loses a fence line.

    A page starts a new Markdown line: cutting "see ```here" after "see " would turn the
    inline backticks into a fence, and cutting a fence line in two would break it.
    """
    if cut <= 0 or cut >= len(text) or text[cut - 1] == "\n":
        return cut
    line_start = text.rfind("\n", 0, cut) + 1
    line_end = text.find("\n", cut)
    line_end = len(text) if line_end == -1 else line_end
    if _FENCE.match(text[line_start:line_end]):
        return line_start if line_start > 0 else cut  # the whole fence line goes to the next page
    while cut > line_start + 1 and _FENCE.match(text[cut:line_end]):
        cut -= 1
    return cut


def open_fence(text: str) -> tuple[str, str] | None:
    """(opening line, marker) of a code fence still open at the end of `text`, else None."""
    opened: tuple[str, str] | None = None
    for line in text.split("\n"):
        match = _FENCE.match(line)
        if not match:
            continue
        marker, info = match.group(1), match.group(2)
        if opened is None:
            opened = (line.strip(), marker)
        elif marker[0] == opened[1][0] and len(marker) >= len(opened[1]) and not info.strip():
            opened = None
    return opened


async def read_into(source: AsyncGenerator[str, None], out: asyncio.Queue[str | BaseException | None]) -> None:
    """Put the source's deltas on `out`, then None when it is done, or whatever ended it: any
    failure reaches the writer, so a turn never waits on a reader that died."""
    try:
        async with contextlib.aclosing(source):
            async for delta in source:
                out.put_nowait(delta)
    except Exception as exc:  # noqa: BLE001 - handed over, raised by the writer
        out.put_nowait(exc)
        return
    out.put_nowait(None)
