"""What the core needs from the outside world. The adapters implement these; tests may too."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, Protocol

from .context import ChatMessage
from .thread import Post, Thread


class ChatAPI(Protocol):
    async def get_thread(self, root_id: str) -> Thread: ...

    async def usernames(self, user_ids: Iterable[str]) -> dict[str, str]: ...

    def remember_name(self, user_id: str, username: str) -> None: ...

    async def create_post(
        self, channel_id: str, message: str, root_id: str, props: dict[str, Any], pending_id: str = ""
    ) -> Post: ...

    async def patch_post(self, post_id: str, message: str) -> None: ...

    async def send_typing(self, channel_id: str, parent_id: str) -> None: ...


class LLMClient(Protocol):
    def stream(self, messages: Sequence[ChatMessage], max_tokens: int) -> AsyncGenerator[str, None]: ...
