"""with_retries: passing Mattermost failures are retried with backoff, final ones are not."""

from __future__ import annotations

import pytest

from llmbot.errors import ChatBadRequest, ChatForbidden, ChatNotFound, ChatRateLimited, ChatUnavailable
from llmbot.retry import retry_wait, with_retries


class Script:
    """A call that fails with the given errors, then returns "ok"; sleeps are recorded, not slept."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.slept: list[float] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_passing_failures_are_retried_with_doubling_waits() -> None:
    call = Script(ChatUnavailable("down"), ChatUnavailable("down"))
    assert await with_retries(call, "x", base=0.5, sleep=call.sleep) == "ok"
    assert call.calls == 3 and call.slept == [0.5, 1.0]


async def test_a_429_waits_as_long_as_it_asked() -> None:
    call = Script(ChatRateLimited("slow down", 3.0))
    assert await with_retries(call, "x", sleep=call.sleep) == "ok"
    assert call.slept == [3.0]


@pytest.mark.parametrize("error", [ChatForbidden("no"), ChatNotFound("gone"), ChatBadRequest("bad root")])
async def test_final_failures_are_raised_at_once(error: Exception) -> None:
    call = Script(error)
    with pytest.raises(type(error)):
        await with_retries(call, "x", sleep=call.sleep)
    assert call.calls == 1 and call.slept == []


async def test_the_last_failure_is_raised_after_all_attempts() -> None:
    call = Script(*[ChatUnavailable(f"down {i}") for i in range(5)])
    with pytest.raises(ChatUnavailable, match="down 2"):
        await with_retries(call, "x", attempts=3, base=1.0, sleep=call.sleep)
    assert call.calls == 3 and call.slept == [1.0, 2.0]


def test_retry_wait_caps_what_a_429_asks_and_backs_off_otherwise() -> None:
    assert retry_wait(0, ChatRateLimited("slow down", 300.0), 0.5) == 30.0
    assert retry_wait(2, ChatRateLimited("slow down"), 0.5) == 2.0
    assert retry_wait(3, ChatUnavailable("down"), 0.5) == 4.0
