"""OpenAIChat.stream() under LLM faults: the real SDK against the loopback FakeOpenAI.

Time is faked where it is waited on purpose (backoff, Retry-After): `Waits` records each sleep and
moves a FakeClock instead. Idle timeouts are real but short (LLMBOT_LLM_IDLE_TIMEOUT=0.2).
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import time

import pytest

from llmbot.context import ChatMessage
from llmbot.errors import AnswerCut, ContextTooLong, LLMError, LLMMisconfigured
from llmbot.llm import OpenAIChat
from llmbot.llm_failures import CUT, EMPTY, STALLED, TOO_LONG, TOO_SLOW, UNMERGEABLE, backoff, retry_after, translate
from tests.adapters.conftest import HI, Answer, answer, settings_for_llm

CONTEXT_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
MODEL_NOT_FOUND = {
    "error": {
        "message": "The model `gpt-4o-mini` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}


def attempt_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmbot.llm" and r.levelno == logging.WARNING]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestRetries:
    async def test_a_429_waits_as_long_as_retry_after_says_then_succeeds(self, make_llm, llm_server, waits):
        llm_server.enqueue([], status=429, headers={"Retry-After": "2"})
        llm_server.enqueue(["Hel", "lo"])
        result = await answer(make_llm())
        assert result == Answer(["Hel", "lo"], None)
        assert waits.slept == [2.0]
        assert len(llm_server.requests) == 2

    async def test_server_errors_are_retried_with_jittered_exponential_backoff(self, make_llm, llm_server, waits):
        llm_server.enqueue([], status=500)
        llm_server.enqueue([], status=503)
        llm_server.enqueue(["fine"])
        result = await answer(make_llm(rng=lambda: 0.5))
        assert result == Answer(["fine"], None)
        assert waits.slept == [0.25, 0.5]  # half (the rng) of 0.5 s, then of 1 s
        assert len(llm_server.requests) == 3

    async def test_attempts_stop_after_retries_plus_one(self, make_llm, llm_server, waits, caplog):
        for _ in range(4):
            llm_server.enqueue([], status=502)
        result = await answer(make_llm(retries=2))
        assert result.error is not None and "HTTP 502" in result.error.reason
        assert len(llm_server.requests) == 3 and llm_server.pending == 1
        assert len(waits.slept) == 2
        lines = [r.getMessage() for r in attempt_warnings(caplog)]
        assert [line.split(" failed")[0] for line in lines] == ["LLM attempt 1/3", "LLM attempt 2/3", "LLM attempt 3/3"]
        assert "giving up after 3 attempt(s)" in lines[-1]

    async def test_retries_default_to_the_setting(self, make_llm, llm_server):
        for _ in range(3):
            llm_server.enqueue([], status=500)
        result = await answer(make_llm(retries=None, LLMBOT_LLM_RETRIES="1"))
        assert result.error is not None
        assert len(llm_server.requests) == 2

    async def test_an_unreachable_server_is_retried_then_could_not_be_reached(self, make_llm, waits, caplog):
        llm = make_llm(retries=2, OPENAI_BASE_URL=f"http://127.0.0.1:{closed_port()}/v1")
        result = await answer(llm)
        assert result.error is not None and "could not be reached" in result.error.reason
        assert len(waits.slept) == 2
        assert len(attempt_warnings(caplog)) == 3

    @pytest.mark.parametrize("stall", [{"stall_headers": True}, {"stall_after": 0}], ids=["before-headers", "before-first-chunk"])
    async def test_silence_before_any_text_is_an_idle_timeout_and_retried(self, make_llm, llm_server, waits, stall):
        llm_server.enqueue(["late"], **stall)
        llm_server.enqueue(["fine"])
        started = time.monotonic()
        result = await answer(make_llm())
        assert result == Answer(["fine"], None)
        assert time.monotonic() - started < 5  # the 0.2 s idle limit, not the SDK's 30 s backstop
        assert len(llm_server.requests) == 2 and len(waits.slept) == 1

    async def test_a_stream_dropped_before_any_text_is_retried(self, make_llm, llm_server):
        llm_server.enqueue(["lost"], fail_after=0)
        llm_server.enqueue(["fine"])
        assert await answer(make_llm()) == Answer(["fine"], None)
        assert len(llm_server.requests) == 2

    async def test_a_slow_but_steady_stream_is_not_idle(self, make_llm, llm_server):
        llm_server.enqueue(["a", "b", "c", "d", "e"], delay=0.1)  # 0.4 s in all, never 0.2 s silent
        assert await answer(make_llm()) == Answer(["a", "b", "c", "d", "e"], None)
        assert len(llm_server.requests) == 1


class TestNoRetryAfterText:
    async def test_silence_after_text_raises_at_once_keeping_the_partial_text(self, make_llm, llm_server, waits):
        llm_server.enqueue(["Hel", "lo", " there"], stall_after=2)
        llm_server.enqueue(["never sent"])
        started = time.monotonic()
        result = await answer(make_llm())
        assert time.monotonic() - started < 5
        assert result.deltas == ["Hel", "lo"]
        assert result.error is not None and result.error.reason == STALLED and result.error.retryable
        assert len(llm_server.requests) == 1 and waits.slept == []

    async def test_a_connection_dropped_after_text_raises_at_once(self, make_llm, llm_server, waits, caplog):
        llm_server.enqueue(["a", "b", "c"], fail_after=1)
        llm_server.enqueue(["never sent"])
        result = await answer(make_llm())
        assert result.deltas == ["a"]
        assert result.error is not None and "stopped in the middle" in result.error.reason
        assert len(llm_server.requests) == 1 and waits.slept == []
        assert "already streamed" in attempt_warnings(caplog)[-1].getMessage()


class TestNotRetried:
    @pytest.mark.parametrize(
        ("status", "body", "error_type", "reason"),
        [
            (400, CONTEXT_TOO_LONG, ContextTooLong, "too long"),
            (400, None, LLMError, "refused the request"),
            (401, None, LLMMisconfigured, "rejected my API key"),
            (403, None, LLMMisconfigured, "refused my API key access"),
            (404, None, LLMMisconfigured, "no chat completions at its address"),
            (404, MODEL_NOT_FOUND, LLMMisconfigured, "does not know the model 'gpt-4o-mini'"),
        ],
    )
    async def test_errors_a_retry_cannot_fix_fail_at_once(self, make_llm, llm_server, waits, status, body, error_type, reason):
        llm_server.enqueue([], status=status, error_body=body)
        llm_server.enqueue(["never sent"])
        result = await answer(make_llm())
        assert type(result.error) is error_type and reason in result.error.reason
        assert len(llm_server.requests) == 1 and waits.slept == []


class TestTimeLimit:
    async def test_a_retry_after_past_the_time_limit_gives_up_without_sleeping(self, make_llm, llm_server, waits, caplog):
        llm_server.enqueue([], status=429, headers={"Retry-After": "30"})
        llm_server.enqueue(["never sent"])
        result = await answer(make_llm(LLMBOT_LLM_TIMEOUT="10"))
        assert result.error is not None and "rate-limited" in result.error.reason
        assert waits.slept == [] and len(llm_server.requests) == 1
        assert "would pass the time limit" in attempt_warnings(caplog)[-1].getMessage()

    async def test_backoff_waits_count_against_the_time_limit(self, make_llm, llm_server, waits):
        for _ in range(10):
            llm_server.enqueue([], status=503)
        result = await answer(make_llm(retries=10, rng=lambda: 1.0, LLMBOT_LLM_TIMEOUT="2"))
        assert result.error is not None and "HTTP 503" in result.error.reason
        assert waits.slept == [0.5, 1.0]  # a third wait of 2 s would end past 2 s
        assert len(llm_server.requests) == 3

    async def test_the_time_limit_bounds_a_stream_that_goes_quiet(self, llm_server):
        # the real clock: a 0.3 s budget ends before the 5 s idle limit
        llm = OpenAIChat(settings_for_llm(llm_server, LLMBOT_LLM_TIMEOUT="0.3", LLMBOT_LLM_IDLE_TIMEOUT="5"), retries=3)
        try:
            llm_server.enqueue(["a", "b"], stall_after=1)
            result = await answer(llm)
        finally:
            await llm.close()
        assert result.deltas == ["a"]
        assert result.error is not None and result.error.reason == TOO_SLOW
        assert len(llm_server.requests) == 1


class TestSecrets:
    KEY = "sk-live-3f9c1e7a5b2d4c6e8f0a"

    @pytest.mark.parametrize("status", [400, 401, 429, 500])
    async def test_the_api_key_never_reaches_a_log_line_or_a_reason(self, make_llm, llm_server, caplog, status):
        caplog.set_level(logging.DEBUG)
        llm_server.api_key = self.KEY
        echo = {"error": {"message": f"Incorrect API key provided: {self.KEY}", "type": "x", "param": None, "code": None}}
        for _ in range(2):
            llm_server.enqueue([], status=status, error_body=echo)
        result = await answer(make_llm(retries=1))
        assert result.error is not None
        assert self.KEY not in result.error.reason and self.KEY not in str(result.error)
        assert [r for r in caplog.records if r.name == "llmbot.llm" and r.levelno >= logging.WARNING], "each failed attempt logs a line"
        for record in caplog.records:
            assert self.KEY not in record.getMessage()
            assert self.KEY not in (record.exc_text or "")
            if record.name.startswith("llmbot"):
                assert record.exc_info is None  # expected faults log no traceback


class TestFaultInjection:
    async def run(self, llm: OpenAIChat, count: int) -> int:
        failures = 0
        for _ in range(count):
            failures += (await answer(llm)).error is not None
        return failures

    async def test_fail_rate_fails_about_the_asked_fraction_reproducibly(self, make_llm, llm_server):
        llm = make_llm(retries=0)
        llm_server.fail_rate(0.3, seed=7)
        failures = await self.run(llm, 150)
        assert failures == llm_server.faults_injected
        assert 0.2 <= failures / 150 <= 0.4
        assert set(llm_server.faults_by_kind) <= {"429", "500", "502", "503", "drop"}
        assert len(llm_server.faults_by_kind) >= 4
        kinds = dict(llm_server.faults_by_kind)

        llm_server.fail_rate(0.3, seed=7)  # the same run again
        assert await self.run(llm, 150) == failures == llm_server.faults_injected
        assert dict(llm_server.faults_by_kind) == kinds

        llm_server.fail_rate(0.0, seed=7)
        assert await self.run(llm, 20) == 0 == llm_server.faults_injected

    async def test_injected_429s_say_retry_after_zero(self, make_llm, llm_server, waits):
        llm_server.fail_rate(1.0, seed=3, statuses=(429,))
        result = await answer(make_llm(retries=5, rng=lambda: 0.9))
        assert result.error is not None
        assert waits.slept and all(s == 0.0 for s in waits.slept)  # backoff would have waited 0.45 s or more
        assert llm_server.faults_by_kind["429"] == len(waits.slept)


class TestPureParts:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({}, None),
            ({"retry-after": "2"}, 2.0),
            ({"retry-after": "0.5"}, 0.5),
            ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
            ({"retry-after": "600"}, 60.0),
            ({"retry-after": "-3"}, 0.0),
            ({"retry-after": "soon"}, None),
            ({"retry-after": email.utils.formatdate(1_000_010, usegmt=True)}, 10.0),
            ({"retry-after": email.utils.formatdate(999_000, usegmt=True)}, 0.0),
        ],
    )
    def test_retry_after_reads_seconds_milliseconds_or_a_date(self, headers, seconds):
        assert retry_after(headers, now=1_000_000.0) == seconds

    def test_backoff_doubles_from_half_a_second_up_to_eight(self):
        assert [backoff(n, lambda: 1.0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        assert backoff(3, lambda: 0.0) == 0.0
        assert backoff(10_000, lambda: 1.0) == 8.0


class TestEmptyStream:
    """llama.cpp fails an overlong streamed prompt after its 200: an empty body, no [DONE]."""

    async def test_an_empty_stream_is_a_failure_retried_and_logged_with_its_cause(self, make_llm, llm_server, waits, caplog):
        llm_server.enqueue([], empty_stream=True)
        llm_server.enqueue(["fine"])
        assert await answer(make_llm()) == Answer(["fine"], None)
        assert len(llm_server.requests) == 2 and waits.slept == [0.25]
        (line,) = [r.getMessage() for r in attempt_warnings(caplog)]
        assert EMPTY in line and "no finish_reason" in line and "retrying" in line

    async def test_an_empty_stream_every_time_fails_after_the_retries(self, make_llm, llm_server, waits):
        llm_server.context_window = 0  # every prompt is over it
        result = await answer(make_llm(retries=2))
        assert type(result.error) is LLMError and result.error.reason == EMPTY and result.error.retryable
        assert result.deltas == [] and len(llm_server.requests) == 3

    async def test_near_the_limit_an_empty_stream_is_context_too_long_at_once(self, make_llm, llm_server, waits):
        llm_server.context_window = 0
        result = await answer(make_llm(), near_limit=True)
        assert type(result.error) is ContextTooLong and result.error.reason == TOO_LONG
        assert len(llm_server.requests) == 1 and waits.slept == []

    async def test_the_callers_trimmed_retry_is_not_lost_to_the_connection_the_empty_stream_left_dead(self, make_llm, llm_server):
        llm_server.context_window = 3
        llm = make_llm(retries=0)
        long = [ChatMessage("user", "@alice: one two three four", "alice")]
        assert type((await answer(llm, long, near_limit=True)).error) is ContextTooLong
        assert await answer(llm, HI, near_limit=True) == Answer(["ok"], None)  # at once, on the pooled connection
        assert len(llm_server.requests) == 2

    async def test_an_empty_answer_the_server_finished_is_not_a_failure(self, make_llm, llm_server, caplog):
        llm_server.enqueue([])  # a role chunk, finish_reason "stop" and [DONE]: the model said nothing
        assert await answer(make_llm(), near_limit=True) == Answer([], None)
        assert len(llm_server.requests) == 1 and attempt_warnings(caplog) == []


    async def test_text_without_a_finish_reason_is_kept_with_a_warning(self, make_llm, llm_server, caplog):
        llm_server.enqueue(["Hel", "lo"], finish_reason="")
        assert await answer(make_llm()) == Answer(["Hel", "lo"], None)
        assert len(llm_server.requests) == 1
        assert ["may be incomplete" in r.getMessage() for r in attempt_warnings(caplog)] == [True]


class TestAnswerCut:
    async def test_an_answer_over_max_tokens_yields_its_text_then_raises_answer_cut(self, make_llm, llm_server, waits):
        llm_server.enqueue(["a", "b", "c", "d"])
        result = await answer(make_llm(), max_tokens=3)
        assert result.deltas == ["a", "b", "c"]
        assert type(result.error) is AnswerCut and result.error.reason == CUT and not result.error.retryable
        assert len(llm_server.requests) == 1 and waits.slept == []

    async def test_finish_reason_length_is_a_cut_whatever_max_tokens_was(self, make_llm, llm_server):
        llm_server.enqueue(["a", "b"], finish_reason="length")  # llama.cpp lowers max_tokens to what the window leaves
        result = await answer(make_llm(), max_tokens=100)
        assert result.deltas == ["a", "b"] and type(result.error) is AnswerCut

    async def test_no_room_left_for_any_answer_is_context_too_long(self, make_llm, llm_server):
        llm_server.enqueue([], finish_reason="length")
        result = await answer(make_llm())
        assert result.deltas == [] and type(result.error) is ContextTooLong
        assert len(llm_server.requests) == 1


TWO_IN_A_ROW = [
    ChatMessage("system", "be brief"),
    ChatMessage("user", "@alice: hi", "alice"),
    ChatMessage("user", "@bob: hello too", "bob"),
]


def merge_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in attempt_warnings(caplog) if "merging consecutive user messages" in r.getMessage()]


def sent_roles(request: dict) -> list[str]:
    return [m["role"] for m in request["messages"]]


class TestStrictAlternation:
    async def test_a_roles_must_alternate_500_switches_this_model_to_merged_user_turns(self, make_llm, llm_server, waits, caplog):
        llm_server.strict_alternation = True
        llm = make_llm()
        assert await answer(llm, TWO_IN_A_ROW) == Answer(["ok"], None)
        assert [sent_roles(r) for r in llm_server.requests] == [["system", "user", "user"], ["system", "user"]]
        merged = llm_server.requests[1]["messages"][1]["content"].splitlines()
        assert [json.loads(line) for line in merged] == [{"from": "alice", "text": "hi"}, {"from": "bob", "text": "hello too"}]
        assert waits.slept == [] and len(merge_warnings(caplog)) == 1

        assert await answer(llm, TWO_IN_A_ROW) == Answer(["ok"], None)  # remembered: merged at once, no new warning
        assert len(llm_server.requests) == 3 and sent_roles(llm_server.requests[2]) == ["system", "user"]
        assert len(merge_warnings(caplog)) == 1

    async def test_a_strict_server_that_sends_an_empty_stream_is_answered_merged_and_remembered(self, make_llm, llm_server, caplog):
        llm_server.strict_alternation, llm_server.alternation_failure = True, "empty"
        llm = make_llm()
        assert await answer(llm, TWO_IN_A_ROW) == Answer(["ok"], None)
        assert [sent_roles(r) for r in llm_server.requests] == [["system", "user", "user"], ["system", "user"]]
        assert len(merge_warnings(caplog)) == 1
        assert await answer(llm, TWO_IN_A_ROW) == Answer(["ok"], None)
        assert len(llm_server.requests) == 3

    async def test_near_the_limit_an_empty_stream_for_unmerged_turns_is_first_tried_merged(self, make_llm, llm_server, waits):
        llm_server.strict_alternation, llm_server.alternation_failure = True, "empty"
        llm = make_llm()
        assert await answer(llm, TWO_IN_A_ROW, near_limit=True) == Answer(["ok"], None)  # not ContextTooLong
        assert [sent_roles(r) for r in llm_server.requests] == [["system", "user", "user"], ["system", "user"]]
        assert llm.merge_user_turns and waits.slept == []

    async def test_near_the_limit_empty_merged_too_is_context_too_long_and_not_remembered(self, make_llm, llm_server, waits, caplog):
        llm_server.context_window = 3  # the prompt has 6 words
        llm = make_llm()
        result = await answer(llm, TWO_IN_A_ROW, near_limit=True)
        assert type(result.error) is ContextTooLong
        assert [sent_roles(r) for r in llm_server.requests] == [["system", "user", "user"], ["system", "user"]]
        assert not llm.merge_user_turns and merge_warnings(caplog) == [] and waits.slept == []

    async def test_an_empty_stream_then_an_answer_does_not_switch_when_nothing_needed_merging(self, make_llm, llm_server, caplog):
        llm_server.enqueue([], empty_stream=True)
        llm = make_llm()
        alternating = [ChatMessage("user", "@alice: hi", "alice"), ChatMessage("assistant", "yes"), ChatMessage("user", "@bob: so", "bob")]
        assert await answer(llm, alternating) == Answer(["ok"], None)
        assert not llm.merge_user_turns and merge_warnings(caplog) == []
        await answer(llm, TWO_IN_A_ROW)
        assert sent_roles(llm_server.requests[-1]) == ["system", "user", "user"]

    async def test_the_setting_merges_from_the_first_request(self, make_llm, llm_server, caplog):
        llm_server.strict_alternation = True
        assert await answer(make_llm(LLMBOT_MERGE_USER_TURNS="true"), TWO_IN_A_ROW) == Answer(["ok"], None)
        assert [sent_roles(r) for r in llm_server.requests] == [["system", "user"]]
        assert merge_warnings(caplog) == []

    async def test_refused_even_merged_fails_at_once(self, make_llm, llm_server, waits):
        body = {"error": {"code": 500, "message": "Conversation roles must alternate user/assistant/user/assistant/...", "type": "server_error"}}
        for _ in range(3):
            llm_server.enqueue([], status=500, error_body=body)
        result = await answer(make_llm(), TWO_IN_A_ROW)
        assert result.error is not None and result.error.reason == UNMERGEABLE and not result.error.retryable
        assert len(llm_server.requests) == 2 and waits.slept == []


class TestOwnBugs:
    """Only the server's and the transport's failures are translated; a bug of ours propagates as it is."""

    async def test_a_message_that_cannot_be_serialised_raises_its_own_error_unretried(self, make_llm, llm_server, caplog):
        bad = [ChatMessage("user", {"a", "set"})]  # type: ignore[arg-type]  # the bug under test
        with pytest.raises(TypeError, match="not JSON serializable"):
            await answer(make_llm(), bad)
        assert llm_server.requests == [] and attempt_warnings(caplog) == []

    async def test_a_failing_seam_is_not_mistaken_for_a_flaky_server(self, llm_server, waits, caplog):
        calls = 0

        def clock() -> float:
            nonlocal calls
            calls += 1
            if calls == 3:  # the deadline and the first window, then it breaks once
                raise RuntimeError("clock broke")
            return waits.clock()

        llm = OpenAIChat(settings_for_llm(llm_server), retries=3, sleep=waits.sleep, clock=clock)
        try:
            with pytest.raises(RuntimeError, match="clock broke"):
                await answer(llm)
        finally:
            await llm.close()
        assert len(llm_server.requests) == 1 and waits.slept == []
        assert attempt_warnings(caplog) == []  # not "the language model stopped in the middle"

    def test_a_malformed_chunk_from_the_server_is_still_a_retryable_failure(self):
        error = translate(json.JSONDecodeError("Expecting value", "data: {oops", 6), "m")
        assert error.retryable and "malformed" in error.reason
