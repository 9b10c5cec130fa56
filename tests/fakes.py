"""Small test doubles shared by tests and benchmarks: a clock and settings for the loopback fakes."""

from __future__ import annotations

from dataclasses import dataclass

from llmbot.app import Bot
from llmbot.llm import OpenAIChat
from llmbot.mattermost import MattermostChat
from llmbot.prompts import load_system_prompt
from llmbot.settings import Settings, load_settings
from llmbot.store import Store
from tests.loopback.fake_mattermost import FakeMattermost
from tests.loopback.fake_openai import FakeOpenAI


@dataclass
class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings_for(mm: FakeMattermost, llm: FakeOpenAI, **overrides: str) -> Settings:
    """Settings pointing the bot at the two fakes; `overrides` are more environment variables."""
    env = {
        "MATTERMOST_URL": mm.url,
        "MATTERMOST_TOKEN": mm.bot_token,
        "OPENAI_API_KEY": llm.api_key,
        "OPENAI_BASE_URL": llm.base_url,
        "LLMBOT_REQUEST_TIMEOUT": "5",
        "LLMBOT_LLM_TIMEOUT": "10",
    }
    env.update(overrides)
    return load_settings(env)


def bot_for(
    settings: Settings, *, store: Store | None = None, edit_interval: float = 1.0, retry_base: float = 0.02, **kwargs: object
) -> Bot:
    """The real Bot with the real adapters (no LLM retries, so faults show at once)."""
    return Bot(
        settings,
        MattermostChat(settings),
        OpenAIChat(settings, retries=0),
        load_system_prompt(settings.system_prompt_file),
        store=store,
        edit_interval=edit_interval,
        retry_base=retry_base,  # Mattermost retries back off for real: keep the tests quick
        **kwargs,  # type: ignore[arg-type]
    )
