"""Shared by the adapter tests: the LLM adapter on the loopback fake, with its waits faked."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from llmbot.context import ChatMessage
from llmbot.errors import LLMError
from llmbot.llm import OpenAIChat
from llmbot.settings import Settings, load_settings
from tests.fakes import FakeClock
from tests.loopback.fake_openai import FakeOpenAI


def settings_for_llm(server: FakeOpenAI, **env: str) -> Settings:
    """Settings for the LLM side only; Mattermost gets dummy values the adapter never reads."""
    values = {
        "MATTERMOST_URL": "http://127.0.0.1:9",
        "MATTERMOST_TOKEN": "mm-token",
        "OPENAI_API_KEY": server.api_key,
        "OPENAI_BASE_URL": server.base_url,
        "LLMBOT_LLM_TIMEOUT": "30",
        "LLMBOT_LLM_IDLE_TIMEOUT": "0.2",
    }
    values.update(env)
    return load_settings(values)


@dataclass
class Waits:
    """The sleep and clock handed to OpenAIChat: sleeping only moves the clock, and is recorded."""

    clock: FakeClock = field(default_factory=FakeClock)
    slept: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)


@dataclass
class Answer:
    deltas: list[str]
    error: LLMError | None


HI = [ChatMessage("user", "hi")]


async def answer(llm: OpenAIChat, messages: list[ChatMessage] = HI, *, max_tokens: int = 10, near_limit: bool = False) -> Answer:
    """Every delta stream() yielded, and the LLMError that ended it if any."""
    deltas: list[str] = []
    try:
        async for delta in llm.stream(messages, max_tokens, near_limit=near_limit):
            deltas.append(delta)
    except LLMError as exc:
        return Answer(deltas, exc)
    return Answer(deltas, None)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
async def make_llm(llm_server: FakeOpenAI, waits: Waits) -> AsyncIterator[Callable[..., OpenAIChat]]:
    """`make_llm(retries=..., rng=..., **env)` -> an OpenAIChat on the fake, with faked waits."""
    made: list[OpenAIChat] = []

    def make(*, retries: int | None = 3, rng: Callable[[], float] = lambda: 0.5, **env: str) -> OpenAIChat:
        llm = OpenAIChat(settings_for_llm(llm_server, **env), retries=retries, sleep=waits.sleep, clock=waits.clock, rng=rng)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        await llm.close()
