"""Thread -> chat messages for the LLM, within a token budget. Pure.

Roles come from who wrote a post, never from its text: the bot's own answers are `assistant`,
every human post is `user` with the author's username in `name` and as an "@name:" prefix the
author cannot remove, so typing "assistant: ..." or "@llmbot: ..." stays a user's words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .record import KIND_ANSWER, STATUS_LINE, kind_of
from .thread import Post, Thread
from .tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, Tokenizer
from .triggers import strip_call

# Below this many tokens of room, a cut message says too little to be worth its place.
MIN_USEFUL_CUT = 48
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        out = {"role": self.role, "content": self.content}
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class Speaker:
    """Who the bot is, for telling its posts apart and stripping its calls."""

    user_id: str
    mention: re.Pattern[str]
    triggers: tuple[re.Pattern[str], ...]


def chat_name(username: str) -> str:
    """A username in the form the chat API's `name` field accepts."""
    return _NAME_UNSAFE.sub("_", username)[:64] or "user"


def post_turn(post: Post, me: Speaker, names: Mapping[str, str]) -> ChatMessage | None:
    """The chat turn one post stands for, or None if it is not part of the conversation."""
    if post.delete_at or post.is_system:
        return None
    if post.user_id == me.user_id:
        if kind_of(post) not in (None, KIND_ANSWER) or not post.message:
            return None  # notices, usage hints and goodbyes are not part of the conversation
        return ChatMessage("assistant", post.message.split(STATUS_LINE, 1)[0])
    if post.from_bot or post.from_webhook or not post.user_id:
        return None
    text = _human_text(post, me)
    if not text:
        return None
    username = names.get(post.user_id) or post.user_id[:8]
    return ChatMessage("user", f"@{username}: {text}", chat_name(username))


def _append(turns: list[ChatMessage], turn: ChatMessage) -> None:
    if turn.role == "assistant" and turns and turns[-1].role == "assistant":  # one answer over several posts
        turns[-1] = ChatMessage("assistant", turns[-1].content + "\n" + turn.content)
    else:
        turns.append(turn)


def thread_turns(thread: Thread, me: Speaker, names: Mapping[str, str]) -> list[ChatMessage]:
    """The conversation in the thread, oldest first, without anything that is not a chat turn."""
    turns: list[ChatMessage] = []
    for post in thread.posts:
        turn = post_turn(post, me, names)
        if turn is not None:
            _append(turns, turn)
    return turns


def recent_turns(thread: Thread, me: Speaker, names: Mapping[str, str], budget: int, tokenizer: Tokenizer) -> list[ChatMessage]:
    """Like thread_turns, but only the first question and as many newest turns as could fit `budget`.

    Long threads are mostly history the budget drops anyway; not converting it keeps a turn in a
    2,000-post thread cheap.
    """
    posts = thread.posts
    first: ChatMessage | None = None
    first_at = len(posts)
    for i, post in enumerate(posts):
        turn = post_turn(post, me, names)
        if turn is not None and turn.role == "user":
            first, first_at = turn, i
            break
    newest: list[ChatMessage] = []  # newest first
    spent = 0
    for post in reversed(posts[first_at + 1 :]):
        turn = post_turn(post, me, names)
        if turn is None:
            continue
        if turn.role == "assistant" and newest and newest[-1].role == "assistant":
            newest[-1] = ChatMessage("assistant", turn.content + "\n" + newest[-1].content)
        else:
            if spent > budget:
                break  # already more than any room there is: older turns would be dropped
            newest.append(turn)
        spent += tokenizer.count_message(turn.content)
    turns = [first] if first is not None else []
    turns.extend(reversed(newest))
    return turns


def _human_text(post: Post, me: Speaker) -> str:
    text = strip_call(post.message, me.triggers, me.mention) if post.message else ""
    if not text and post.message and me.triggers:
        # the call was all there was ("tl;dr"): it is the request, so the model reads it
        text = strip_call(post.message, (), me.mention)
    if post.file_count:
        files = f"{post.file_count} attached file{'s' if post.file_count > 1 else ''}, which you cannot open"
        text = f"{text} ({files})" if text else f"({files})"
    return text


def fit_to_budget(system: str, turns: Sequence[ChatMessage], budget: int, tokenizer: Tokenizer) -> list[ChatMessage]:
    """System prompt, first question and newest message always; then the newest middle turns that fit.

    A message too big for the room left is cut in the middle (head and tail kept, marked),
    not dropped. `budget` covers every token of the prompt, message overheads included.
    """

    def cost(message: ChatMessage) -> int:
        return tokenizer.count_message(message.content) + (1 if message.name else 0)

    def cut(message: ChatMessage, room: int) -> ChatMessage:
        content = tokenizer.cut_middle(message.content, max(room - MESSAGE_OVERHEAD - 1, 1))
        return ChatMessage(message.role, content, message.name)

    system_message = ChatMessage("system", system)
    if cost(system_message) > budget // 2:  # a runaway prompt file must not starve the conversation
        system_message = cut(system_message, budget // 2)
    room = budget - REPLY_PRIMING - cost(system_message)
    if not turns:
        return [system_message]

    first_index = next((i for i, t in enumerate(turns) if t.role == "user"), 0)
    last_index = len(turns) - 1
    newest = turns[last_index]
    if first_index == last_index:
        return [system_message, cut(newest, room) if cost(newest) > room else newest]

    first = turns[first_index]
    if cost(first) + cost(newest) > room:
        first_room = max(room - cost(newest), room // 3)
        if cost(first) > first_room:
            first = cut(first, first_room)
        if cost(first) + cost(newest) > room:
            newest = cut(newest, room - cost(first))
    room -= cost(first) + cost(newest)

    middle: list[ChatMessage] = []
    for turn in reversed(turns[first_index + 1 : last_index]):
        size = cost(turn)
        if size <= room:
            middle.append(turn)
            room -= size
            continue
        if room >= MIN_USEFUL_CUT:
            middle.append(cut(turn, room))
        break  # everything older than this is dropped: the oldest middle turns go first
    middle.reverse()
    return [system_message, first, *middle, newest]


def build_messages(
    thread: Thread,
    system: str,
    me: Speaker,
    names: Mapping[str, str],
    budget: int,
    tokenizer: Tokenizer,
) -> list[ChatMessage]:
    return fit_to_budget(system, recent_turns(thread, me, names, budget, tokenizer), budget, tokenizer)


def participants(thread: Thread, me: Speaker, names: Mapping[str, str]) -> list[str]:
    """Usernames of the humans in the thread, in order of first appearance."""
    seen: dict[str, None] = {}
    for post in thread.posts:
        if post.user_id and post.user_id != me.user_id and not (post.from_bot or post.from_webhook or post.is_system):
            seen.setdefault(names.get(post.user_id) or post.user_id[:8], None)
    return list(seen)
