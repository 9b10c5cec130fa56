"""How a human calls the bot in text: trigger words, @mentions, end words. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Words that may stand beside an end word in a goodbye: "thanks, bye", "ok bye", "bye, thank you!".
COURTESY = frozenset(
    "thanks thank thx ty you ok okay k cool great perfect nice alright all right good got it so well then "
    "again and cheers much lot a very for help that's thats".split()
)
MAX_GOODBYE_WORDS = 5  # longer than this, it is a sentence that merely contains the word
_WORD = re.compile(r"[\w']+")
# A person addressed with @name (not @here/@channel/@all, not an e-mail address).
_ADDRESSED = re.compile(r"(?<![\w@.-])@([a-z0-9][a-z0-9._-]*)", re.IGNORECASE)
_EVERYONE = frozenset({"here", "channel", "all"})


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
    """True for a goodbye: an end word, alone or among a few courtesy words, the bot's @mention
    anywhere ("bye", "Bye!", "thanks, bye", "ok bye", "bye @llmbot"). A sentence that merely
    contains the word ("say bye to the old API") is not one."""
    out = mention.sub(" ", text) if mention is not None and "@" in text else text
    words = _WORD.findall(out.casefold())
    if not words or len(words) > MAX_GOODBYE_WORDS:
        return False
    ends = set(end_words)
    return any(w in ends for w in words) and all(w in ends or w in COURTESY for w in words)


def addressed_to_others(text: str, mention: re.Pattern[str]) -> bool:
    """Does the post @mention someone, and not the bot? ("@marc what do you think?")"""
    if "@" not in text or mention.search(text):
        return False
    return any(m.casefold() not in _EVERYONE for m in _ADDRESSED.findall(text))


def matches_any(text: str, triggers: Iterable[re.Pattern[str]]) -> bool:
    return any(t.search(text) for t in triggers)


def trigger_word(trigger: re.Pattern[str]) -> str | None:
    """The plain word a simple trigger like ^gpt\\b stands for, to show in hints."""
    pattern = re.sub(r"\(\?=.*\)$", "", trigger.pattern)  # a lookahead at the end: what may follow the word
    match = re.fullmatch(r"\^?\(?\??:?(?:i\))?([A-Za-z0-9_!./-]+)\)?(?:\\b|\\s|\s)*", pattern)
    return match.group(1) if match else None
