"""What the core needs from the outside world. The adapters implement these; tests may too."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .context import ChatMessage
from .router import Identity
from .thread import Post, Thread


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel the bot is a member of, as the catch-up needs it."""

    id: str
    type: str
    name: str
    display_name: str
    team_id: str
    last_post_at: int


class ChatAPI(Protocol):
    """Mattermost, in the bot's terms (adapter: mattermost.MattermostChat)."""

    async def login(self) -> Identity: ...

    async def listen(self, on_frame: Callable[[str], Awaitable[None]]) -> None: ...

    async def close(self) -> None: ...

    async def get_thread(self, root_id: str) -> Thread: ...

    async def recent_thread(self, root_id: str, enough: Callable[[Sequence[Post]], bool]) -> Thread: ...

    async def recent_roots(
        self, channel_id: str, enough: Callable[[Sequence[Post]], bool], began_after: Callable[[Post, Post], bool]
    ) -> Thread:
        """A DM's running conversation: its root posts, newest first until `enough`, or until
        `began_after(older, newer)` says the conversation began after `older` (dm_flow.py)."""
        ...

    async def usernames(self, user_ids: Iterable[str]) -> dict[str, str]: ...

    def remember_name(self, user_id: str, username: str) -> None: ...

    async def create_post(
        self, channel_id: str, message: str, root_id: str, props: dict[str, Any], pending_id: str = ""
    ) -> Post: ...

    async def patch_post(self, post_id: str, message: str) -> None: ...

    async def send_typing(self, channel_id: str, parent_id: str) -> None: ...

    async def add_reaction(self, post_id: str, emoji_name: str) -> None: ...

    async def channels(self) -> list[Channel]: ...

    async def posts_since(self, channel_id: str, since_ms: int) -> tuple[list[Post], bool]: ...

    async def teams(self) -> dict[str, str]: ...


class LLMClient(Protocol):
    """A chat model that streams (adapter: llm.OpenAIChat)."""

    def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, *, near_limit: bool = False
    ) -> AsyncGenerator[str, None]: ...

    async def close(self) -> None: ...
