"""How a human calls the bot in text: trigger words, @mentions, end words. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Trailing characters that still leave "bye" a bare end word: "Bye!", "bye.", "bye :)".
_TRAILING = " \t\r\n.,;:!?…~)(-'\"*_`"


def mention_pattern(username: str) -> re.Pattern[str]:
    """Matches `@username` as Mattermost does: not inside a longer name or an e-mail address."""
    return re.compile(rf"(?<![\w@.-])@{re.escape(username)}(?![\w-]|\.\w)", re.IGNORECASE)


def strip_call(text: str, triggers: Iterable[re.Pattern[str]], mention: re.Pattern[str] | None) -> str:
    """The text without the trigger word or @mention that called the bot.

    A leading mention is dropped with the punctuation after it ("@llmbot, hi" -> "hi"); a mention
    elsewhere keeps the name without the "@", so the sentence still reads.
    """
    out = text.strip()
    if mention is not None:
        lead = mention.match(out)
        if lead:
            out = out[lead.end() :].lstrip(" \t,:;")
    for trigger in triggers:
        match = trigger.match(out)
        if match and match.end() > 0:
            out = out[match.end() :].lstrip(" \t,:;")
            break
    if mention is not None:
        out = mention.sub(lambda m: m.group(0)[1:], out)
    return out.strip()


def is_end_word(text: str, end_words: Iterable[str], mention: re.Pattern[str] | None = None) -> bool:
    """True for a message that is only an end word ("bye", "Bye!", "@llmbot bye.")."""
    out = text.strip()
    if mention is not None:
        lead = mention.match(out)
        if lead:
            out = out[lead.end() :]
    word = out.strip(_TRAILING).casefold()
    return bool(word) and word in end_words


def matches_any(text: str, triggers: Iterable[re.Pattern[str]]) -> bool:
    return any(t.search(text) for t in triggers)


def trigger_word(trigger: re.Pattern[str]) -> str | None:
    """The plain word a simple trigger like ^gpt\\b stands for, to show in hints."""
    match = re.fullmatch(r"\^?\(?\??:?(?:i\))?([A-Za-z0-9_!./-]+)\)?(?:\\b|\\s|\s)*", trigger.pattern)
    return match.group(1) if match else None
