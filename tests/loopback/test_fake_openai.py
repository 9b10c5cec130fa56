"""FakeOpenAI behaves as llama.cpp's server does, seen through the real openai SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from tests.loopback.fake_openai import FakeOpenAI


@pytest.fixture
async def client(llm_server: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key=llm_server.api_key, base_url=llm_server.base_url, max_retries=0) as client:
        yield client


async def streamed(client: openai.AsyncOpenAI, messages: list[dict], **extra: object) -> tuple[list[str], str | None]:
    """The text deltas and the last finish_reason of a streamed request."""
    stream = await client.chat.completions.create(model="m", messages=messages, stream=True, **extra)
    deltas, finish = [], None
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return deltas, finish


WORDS_12 = [{"role": "user", "content": "one two three four five six seven eight nine ten eleven twelve"}]


class TestContextWindow:
    async def test_a_streamed_prompt_over_the_window_gets_200_then_an_empty_body(self, llm_server, client):
        llm_server.context_window = 12  # as many as the prompt's words: no room left
        llm_server.enqueue(["kept for the next request"])
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=WORDS_12, stream=True)
        assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
        assert [chunk async for chunk in raw.parse()] == []  # the SDK just ends: no [DONE], no error
        assert llm_server.pending == 1

    async def test_a_scripted_empty_stream_is_the_same_empty_body_once(self, llm_server, client):
        llm_server.enqueue([], empty_stream=True)
        assert await streamed(client, WORDS_12) == ([], None)
        with pytest.raises(openai.APIConnectionError):  # sent at once on the same, now dead, connection
            await streamed(client, WORDS_12)
        assert await streamed(client, WORDS_12) == (["ok"], "stop")
        assert len(llm_server.requests) == 2  # the reset request was never answered

    async def test_a_non_streamed_prompt_over_the_window_gets_400_context_length_exceeded(self, llm_server, client):
        llm_server.context_window = 10
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="m", messages=WORDS_12)
        assert info.value.code == "context_length_exceeded"

    async def test_a_prompt_that_fits_lowers_max_tokens_to_what_is_left(self, llm_server, client):
        llm_server.context_window = 14  # 12 words of prompt leave 2
        llm_server.enqueue(["a", "b", "c", "d"])
        assert await streamed(client, WORDS_12, max_tokens=100) == (["a", "b"], "length")


class TestFinishReason:
    async def test_more_chunks_than_max_tokens_end_with_length(self, llm_server, client):
        llm_server.enqueue(["a", "b", "c"])
        assert await streamed(client, WORDS_12, max_tokens=2) == (["a", "b"], "length")
        llm_server.enqueue(["a", "b", "c"])
        result = await client.chat.completions.create(model="m", messages=WORDS_12, max_tokens=2)
        assert result.choices[0].message.content == "ab" and result.choices[0].finish_reason == "length"

    async def test_a_scripted_finish_reason_is_sent_as_is(self, llm_server, client):
        llm_server.enqueue(["a", "b"], finish_reason="length")
        assert await streamed(client, WORDS_12, max_tokens=10) == (["a", "b"], "length")
        llm_server.enqueue(["a", "b"])
        assert await streamed(client, WORDS_12, max_tokens=2) == (["a", "b"], "stop")
        llm_server.enqueue(["a", "b"], finish_reason="")
        assert await streamed(client, WORDS_12) == (["a", "b"], None)


class TestStrictAlternation:
    TWO_IN_A_ROW = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"}]

    @pytest.mark.parametrize("stream", [True, False])
    async def test_two_user_messages_in_a_row_get_a_500(self, llm_server, client, stream):
        llm_server.strict_alternation = True
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="m", messages=self.TWO_IN_A_ROW, stream=stream)
        assert "Conversation roles must alternate user/assistant/user/assistant/..." in str(info.value)

    @pytest.mark.parametrize(
        "roles",
        [["system", "user"], ["user", "assistant", "user"], ["system", "user", "assistant"]],
    )
    async def test_alternating_messages_are_served(self, llm_server, client, roles):
        llm_server.strict_alternation = True
        llm_server.enqueue(["fine"])
        messages = [{"role": role, "content": role} for role in roles]
        assert await streamed(client, messages) == (["fine"], "stop")

    async def test_starting_with_the_assistant_is_refused_too(self, llm_server, client):
        llm_server.strict_alternation = True
        with pytest.raises(openai.InternalServerError):
            await streamed(client, [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}])

    async def test_the_empty_stream_variant(self, llm_server, client):
        llm_server.strict_alternation, llm_server.alternation_failure = True, "empty"
        assert await streamed(client, self.TWO_IN_A_ROW) == ([], None)
