"""Tokens per answer: asked for with stream_options.include_usage, read from the usage chunk, counted
with the bot's tokenizer when the server sends none or refuses the parameter (real SDK, loopback fake)."""

from __future__ import annotations

import logging

from llmbot import usage
from llmbot.context import ChatMessage
from llmbot.tokens import load_tokenizer
from tests.adapters.conftest import answer
from tests.loopback.fake_openai import FakeOpenAI

QUESTION = [ChatMessage("system", "You are terse."), ChatMessage("user", "what is the capital of Peru?")]


def fake_prompt_tokens(server: FakeOpenAI) -> int:
    """What the fake reports as the prompt's tokens (it counts words)."""
    return FakeOpenAI._prompt_tokens(server.requests[-1])


class TestReported:
    async def test_every_request_asks_for_usage_and_the_meter_gets_the_servers_counts(self, make_llm, llm_server):
        llm_server.enqueue(["Li", "ma."])
        with usage.metering("thread-1") as meter:
            result = await answer(make_llm(), QUESTION)
        assert result.deltas == ["Li", "ma."]
        assert llm_server.requests[-1]["stream_options"] == {"include_usage": True}
        assert meter.usage == usage.Usage(prompt=fake_prompt_tokens(llm_server), completion=2, reported=True)
        assert str(meter.usage) == f"tokens: {fake_prompt_tokens(llm_server)} prompt + 2 completion (reported)"

    async def test_without_a_reply_writer_the_adapter_logs_the_tokens_on_a_line_of_its_own(self, make_llm, llm_server, caplog):
        caplog.set_level(logging.INFO, logger="llmbot.llm")
        llm_server.enqueue(["Li", "ma."])
        await answer(make_llm(), QUESTION)
        lines = [r.getMessage() for r in caplog.records if r.name == "llmbot.llm"]
        assert lines == [f"LLM answer of 5 chars; tokens: {fake_prompt_tokens(llm_server)} prompt + 2 completion (reported)"]


class TestCounted:
    async def test_a_server_that_sends_no_usage_chunk_gets_its_tokens_counted(self, make_llm, llm_server):
        llm_server.send_usage = False
        llm_server.enqueue(["Lima", " is the capital."])
        with usage.metering("thread-1") as meter:
            await answer(make_llm(), QUESTION)
        tokenizer = load_tokenizer("gpt-4o-mini")
        assert meter.usage == usage.counted([m.content for m in QUESTION], "Lima is the capital.", tokenizer)
        assert meter.usage is not None and not meter.usage.reported
        assert meter.usage.completion == tokenizer.count("Lima is the capital.") > 0
        assert str(meter.usage).endswith("(counted)")

    async def test_a_server_refusing_stream_options_is_asked_again_without_them_and_never_again(
        self, make_llm, llm_server, waits, caplog
    ):
        caplog.set_level(logging.INFO, logger="llmbot.llm")
        llm_server.reject_stream_options = True
        llm = make_llm()
        llm_server.enqueue(["Lima."])
        llm_server.enqueue(["Cusco."])
        with usage.metering("thread-1") as first:
            assert (await answer(llm, QUESTION)).deltas == ["Lima."]
        with usage.metering("thread-2") as second:
            assert (await answer(llm, QUESTION)).deltas == ["Cusco."]
        assert ["stream_options" in r for r in llm_server.requests] == [True, False, False]
        assert waits.slept == []  # another form of the request, not a retry
        assert first.usage is not None and second.usage is not None
        assert not first.usage.reported and not second.usage.reported
        switched = [r for r in caplog.records if "stream_options" in r.getMessage()]
        assert len(switched) == 1 and switched[0].levelno == logging.INFO
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    async def test_both_refusals_in_turn_are_each_given_up_once(self, make_llm, llm_server):
        llm_server.reject_stream_options = True
        too_new = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                        "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                             "param": "max_tokens", "code": "unsupported_parameter"}}
        llm_server.enqueue([], status=400, error_body=too_new)
        llm_server.enqueue(["ok"])
        assert (await answer(make_llm(), QUESTION)).deltas == ["ok"]
        sent = [("stream_options" in r, "max_tokens" in r) for r in llm_server.requests]
        assert sent == [(True, True), (False, True), (False, False)]
