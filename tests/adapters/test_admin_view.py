"""What users and admins see of the adapters, end to end (the real bot on the loopback fakes): notices
that name the real cause, one log line per failure with its cause once, tokens per answer, and a
server restart that reads as a reconnect."""

from __future__ import annotations

import logging

import pytest

from llmbot.errors import ChatTLSError, ChatUnavailable
from llmbot.retry import with_retries
from tests.loopback.fake_openai import FakeOpenAI

MISCONFIGURED = "⚠️ I can't answer right now: I'm not set up correctly ({}). An admin has been told."


@pytest.fixture
def people(mm):
    alice = mm.add_user("alice")
    town = mm.add_channel("town-square", members=(mm.bot, alice))
    return alice, town


async def ask(run, mm, people, text: str = "gpt what is the capital of Peru?") -> tuple[dict, dict]:
    alice, town = people
    post = await mm.post_as(alice, town, text)
    (reply,) = await run.wait_replies(post["id"], 1)
    return post, reply


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("llmbot")]


class TestMisconfiguredLLM:
    async def test_a_rejected_api_key_tells_the_user_an_admin_knows_and_logs_one_error_naming_the_setting(
        self, start_bot, mm, llm_server, people, caplog
    ):
        caplog.set_level(logging.INFO)
        run = await start_bot()
        llm_server.api_key = "sk-rotated"  # the key the bot has is no longer accepted
        post, reply = await ask(run, mm, people)
        assert reply["message"] == MISCONFIGURED.format("the language model rejected my API key")
        (error,) = [r for r in ours(caplog) if r.levelno >= logging.ERROR]
        assert error.getMessage() == (
            f"thread {post['id']}: the LLM is not set up correctly: the language model rejected my API key "
            f"(AuthenticationError, HTTP 401): set OPENAI_API_KEY to a key the server at {llm_server.base_url} "
            "accepts; not retried"
        )
        assert error.exc_info is None
        assert [r for r in ours(caplog) if "rejected my API key" in r.getMessage()] == [error]  # the cause, once

    async def test_an_unknown_model_names_the_model_setting(self, start_bot, mm, llm_server, people, caplog):
        llm_server.check_model = True
        run = await start_bot(LLMBOT_MODEL="gpt-9")
        post, reply = await ask(run, mm, people)
        assert reply["message"] == MISCONFIGURED.format("the language model server does not know the model 'gpt-9'")
        (error,) = [r for r in ours(caplog) if r.levelno >= logging.ERROR]
        assert "set LLMBOT_MODEL to a model the server lists" in error.getMessage()
        assert error.getMessage().startswith(f"thread {post['id']}: ")

    async def test_a_base_url_without_v1_names_the_address_setting(self, start_bot, mm, llm_server, people, caplog):
        run = await start_bot(OPENAI_BASE_URL=llm_server.base_url.removesuffix("/v1"))
        _, reply = await ask(run, mm, people)
        assert reply["message"] == MISCONFIGURED.format("the language model server has no chat completions at its address")
        (error,) = [r for r in ours(caplog) if r.levelno >= logging.ERROR]
        assert "set it to the API's base URL, which usually ends in /v1" in error.getMessage()
        assert "OPENAI_BASE_URL=" in error.getMessage()

    async def test_a_passing_fault_still_asks_to_try_again_with_its_cause_logged_once(
        self, start_bot, mm, llm_server, people, caplog
    ):
        caplog.set_level(logging.INFO)
        run = await start_bot()
        llm_server.enqueue([], status=503)
        post, reply = await ask(run, mm, people)
        assert reply["message"] == "⚠️ I could not finish this answer: the language model server failed (HTTP 503). Please try again."
        lines = [r.getMessage() for r in ours(caplog) if "503" in r.getMessage()]
        assert lines == [
            f"thread {post['id']}: LLM attempt 1/1 failed: the language model server failed (HTTP 503) "
            "(InternalServerError); giving up after 1 attempt(s)"
        ]
        assert not [r for r in ours(caplog) if r.levelno >= logging.ERROR]


class TestTokensPerAnswer:
    async def test_the_answered_line_names_the_thread_and_the_tokens_the_server_reported(
        self, start_bot, mm, llm_server, people, caplog
    ):
        caplog.set_level(logging.INFO)
        run = await start_bot()
        llm_server.enqueue(["Lima", " is the capital", " of Peru."])
        post, _ = await ask(run, mm, people)
        prompt = FakeOpenAI._prompt_tokens(llm_server.requests[-1])
        (line,) = [r.getMessage() for r in ours(caplog) if "answered in" in r.getMessage()]
        assert line.startswith(f"thread {post['id']}: answered in 1 post(s), 28 chars, ")
        assert line.endswith(f"; tokens: {prompt} prompt + 3 completion (reported)")

    async def test_a_server_without_usage_gets_the_tokens_counted(self, start_bot, mm, llm_server, people, caplog):
        caplog.set_level(logging.INFO)
        llm_server.reject_stream_options = True
        run = await start_bot()
        llm_server.enqueue(["Lima."])
        await ask(run, mm, people)
        (line,) = [r.getMessage() for r in ours(caplog) if "answered in" in r.getMessage()]
        assert line.endswith(" completion (counted)")
        assert "; tokens: " in line


class TestServerRestart:
    async def test_a_going_away_close_is_an_info_line_and_the_bot_reconnects(self, start_bot, mm, llm_server, people, caplog):
        caplog.set_level(logging.INFO)
        run = await start_bot()
        await mm.drop_websockets()  # code 1001, as a server shutting down sends
        await mm.wait_for(lambda: mm.ws_clients == 1, timeout=10, message="reconnected")
        await ask(run, mm, people)
        (line,) = [r for r in ours(caplog) if "reconnecting in" in r.getMessage()]
        assert line.levelno == logging.INFO
        assert line.getMessage().startswith("websocket closed by the server (code 1001, going away); reconnecting in ")
        assert not [r for r in ours(caplog) if r.levelno >= logging.WARNING]

    async def test_a_restart_reads_as_one_line_per_try_with_its_cause_once_and_no_traceback(
        self, start_bot, mm, llm_server, people, caplog
    ):
        caplog.set_level(logging.INFO)
        run = await start_bot()
        port = mm.port
        await mm.stop()

        def refused() -> list[logging.LogRecord]:
            return [r for r in ours(caplog) if "cannot connect to Mattermost" in r.getMessage()]

        await mm.wait_for(refused, timeout=10, message="a try while the server is down")
        await mm.start(port=port)
        await mm.wait_for(lambda: mm.ws_clients == 1, timeout=15, message="reconnected after the restart")
        await ask(run, mm, people)
        line = refused()[0]
        assert line.levelno == logging.WARNING
        assert line.getMessage().count(f"127.0.0.1:{port}") == 1
        assert not [r for r in ours(caplog) if r.levelno >= logging.ERROR or r.exc_info is not None]
        assert not [r for r in ours(caplog) if "not reachable" in r.getMessage()]  # the socket's line says it


class TestMattermostRetries:
    async def test_a_cause_repeated_try_after_try_is_printed_once(self, caplog):
        calls: list[int] = []

        async def call() -> None:
            calls.append(1)
            raise ChatUnavailable("Mattermost answered 502: Bad Gateway", 502)

        with pytest.raises(ChatUnavailable):
            await with_retries(call, "thread t: posting", attempts=3, base=0.0)
        lines = [r.getMessage() for r in caplog.records if r.name == "llmbot.retry"]
        assert lines == [
            "thread t: posting failed (try 1 of 3): Mattermost answered 502: Bad Gateway",
            "thread t: posting failed (try 2 of 3): the same again",
            "thread t: posting failed (try 3 of 3): the same again",
        ]

    async def test_an_untrusted_certificate_is_not_tried_again(self):
        calls: list[int] = []

        async def call() -> None:
            calls.append(1)
            raise ChatTLSError("TLS: certificate verify failed: unable to get local issuer certificate")

        with pytest.raises(ChatTLSError):
            await with_retries(call, "users/me", attempts=5, base=0.0)
        assert calls == [1]
