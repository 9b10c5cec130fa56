"""For chat templates that demand strict user/assistant alternation (Mistral v0.2 style). Pure.

Such a server fails a request where two humans spoke in a row ("Conversation roles must
alternate user/assistant/user/assistant/..."). `merge_user_turns` rewrites each run of user
messages as one user message holding one JSON object per post, e.g.
    {"from": "alice", "text": "hi"}
JSON escaping keeps every post on its own line and inside its own string, so nothing a
speaker types can close their post or open one in another speaker's name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from .context import ChatMessage, chat_name

# llama.cpp / jinja templates, vLLM and HF say "Conversation roles must alternate user/assistant/...".
_ALTERNATION_ERROR = re.compile(r"roles\s+must\s+alternate", re.IGNORECASE)
# Characters json.dumps(ensure_ascii=False) leaves raw that str.splitlines() (and maybe a model) reads
# as a line break; escaped too, so one post stays one line whatever its text.
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})
_PREFIX = re.compile(r"@([^\s:]+): ")


def is_alternation_error(text: str) -> bool:
    """Does a server's error text say the chat template wants alternating roles?"""
    return _ALTERNATION_ERROR.search(text) is not None


def alternates(messages: Sequence[ChatMessage]) -> bool:
    """Do the non-system messages go user, assistant, user, ... starting with a user?"""
    turns = [m.role for m in messages if m.role != "system"]
    return all(role == ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(turns))


def post_line(message: ChatMessage) -> str:
    """One user message as one JSON line: who wrote it, and the text without the "@name: " prefix."""
    speaker, text = message.name, message.content
    found = _PREFIX.match(text)
    # the prefix context.py puts in front of a user's words names the same person as `name`
    if found is not None and message.name is not None and chat_name(found.group(1)) == message.name:
        speaker, text = found.group(1), text[found.end() :]
    line = json.dumps({"from": speaker, "text": text}, ensure_ascii=False)
    return line.translate(_LINE_BREAKS)


def merge_user_turns(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """`messages` with every run of consecutive user messages made one user message of JSON lines.

    System and assistant messages are kept as they are. A single user message takes the same
    form, so the model sees one form throughout. The merged message keeps `name` only when one
    person wrote the whole run.
    """
    out: list[ChatMessage] = []
    run: list[ChatMessage] = []

    def flush() -> None:
        if run:
            names = {m.name for m in run}
            name = run[0].name if len(names) == 1 else None
            out.append(ChatMessage("user", "\n".join(post_line(m) for m in run), name))
            run.clear()

    for message in messages:
        if message.role == "user":
            run.append(message)
            continue
        flush()
        out.append(message)
    flush()
    return out
