"""The adapters translate every driver and SDK failure into llmbot's own errors (real clients, loopback)."""

from __future__ import annotations

import pytest

from llmbot.context import ChatMessage
from llmbot.errors import (
    ChatAuthError,
    ChatBadRequest,
    ChatError,
    ChatForbidden,
    ChatNotFound,
    ChatRateLimited,
    ChatUnavailable,
    ContextTooLong,
    LLMError,
)
from llmbot.llm import OpenAIChat
from llmbot.mattermost import MattermostChat
from tests.conftest import make_settings


@pytest.fixture
async def chat(mm, llm_server):
    client = MattermostChat(make_settings(mm, llm_server, LLMBOT_REQUEST_TIMEOUT="2"))
    await client.login()
    yield client
    await client.close()


@pytest.fixture
async def llm(mm, llm_server):
    client = OpenAIChat(make_settings(mm, llm_server), retries=0)
    yield client
    await client.close()


async def collect(llm: OpenAIChat) -> str:
    return "".join([d async for d in llm.stream([ChatMessage("user", "hi")], 10)])


class TestMattermostErrors:
    @pytest.mark.parametrize(
        ("status", "error"),
        [
            (400, ChatBadRequest),
            (401, ChatAuthError),
            (403, ChatForbidden),
            (404, ChatNotFound),
            (429, ChatRateLimited),
            (500, ChatUnavailable),
            (501, ChatError),
            (503, ChatUnavailable),
        ],
    )
    async def test_each_status_becomes_its_own_error_type(self, chat, mm, status, error):
        mm.fail_next("POST", r"/api/v4/posts$", status, times=5, headers={"Retry-After": "60"} if status == 429 else None)
        with pytest.raises(error) as info:
            await chat.create_post("c", "hello", "", {})
        assert isinstance(info.value, ChatError)

    async def test_a_non_json_success_body_is_an_unavailable_server_not_a_crash(self, chat, mm):
        mm.fail_next("GET", r"/thread$", 200, body="<html>proxy login</html>", content_type="text/html")
        with pytest.raises(ChatUnavailable):
            await chat.get_thread("anything")

    async def test_an_unreachable_server_is_unavailable(self, mm, llm_server):
        settings = make_settings(mm, llm_server, MATTERMOST_URL="http://127.0.0.1:9", LLMBOT_REQUEST_TIMEOUT="1")
        client = MattermostChat(settings, max_retries=0)
        try:
            with pytest.raises(ChatUnavailable):
                await client.login()
        finally:
            await client.close()

    async def test_a_bad_token_is_an_auth_error_at_login(self, mm, llm_server):
        client = MattermostChat(make_settings(mm, llm_server, MATTERMOST_TOKEN="wrong-token"))
        try:
            with pytest.raises(ChatAuthError):
                await client.login()
        finally:
            await client.close()

    async def test_usernames_come_from_the_cache_after_one_lookup(self, chat, mm):
        alice, bob = mm.add_user("alice"), mm.add_user("bob")
        assert await chat.usernames([alice["id"], bob["id"]]) == {alice["id"]: "alice", bob["id"]: "bob"}
        mm.reset_requests()
        assert await chat.usernames([alice["id"]]) == {alice["id"]: "alice"}
        assert mm.requests == []

    async def test_a_failed_name_lookup_degrades_to_no_names(self, chat, mm):
        mm.fail_next("POST", r"/users/ids$", 500, times=5)
        assert await chat.usernames(["x" * 26]) == {}

    async def test_a_thread_is_read_in_pages_and_sorted(self, chat, mm):
        alice = mm.add_user("alice")
        town = mm.add_channel("town", members=(mm.bot, alice))
        root = await mm.post_as(alice, town, "root", broadcast=False)
        for i in range(450):
            await mm.post_as(alice, town, f"reply {i}", root_id=root["id"], broadcast=False)
        mm.reset_requests()
        thread = await chat.get_thread(root["id"])
        assert [p.message for p in thread.posts] == ["root", *[f"reply {i}" for i in range(450)]]
        assert len([r for r in mm.requests if r[1].endswith("/thread")]) == 3


class TestLLMErrors:
    @pytest.mark.parametrize(
        ("status", "reason"),
        [
            (401, "rejected the bot's API key"),
            (404, "does not know the model"),
            (429, "rate-limited"),
            (500, "HTTP 500"),
            (503, "HTTP 503"),
        ],
    )
    async def test_each_status_gives_a_short_safe_reason(self, llm, llm_server, status, reason):
        llm_server.enqueue([], status=status)
        with pytest.raises(LLMError) as info:
            await collect(llm)
        assert reason in info.value.reason
        assert "Traceback" not in info.value.reason

    async def test_context_length_exceeded_is_its_own_error(self, llm, llm_server):
        llm_server.enqueue(
            [],
            status=400,
            error_body={"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}},
        )
        with pytest.raises(ContextTooLong):
            await collect(llm)

    async def test_a_stream_cut_mid_way_is_an_llm_error(self, llm, llm_server):
        llm_server.enqueue(["a", "b", "c"], fail_after=1)
        with pytest.raises(LLMError, match="stopped in the middle|could not be reached"):
            await collect(llm)

    async def test_an_unreachable_server_is_an_llm_error(self, mm, llm_server):
        client = OpenAIChat(make_settings(mm, llm_server, OPENAI_BASE_URL="http://127.0.0.1:9/v1"), retries=0)
        try:
            with pytest.raises(LLMError, match="could not be reached"):
                await collect(client)
        finally:
            await client.close()

    async def test_a_model_wanting_max_completion_tokens_is_retried_with_it(self, llm, llm_server):
        llm_server.enqueue(
            [],
            status=400,
            error_body={"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.", "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}},
        )
        llm_server.enqueue(["fine"])
        assert await collect(llm) == "fine"
        assert "max_completion_tokens" in llm_server.requests[-1] and "max_tokens" not in llm_server.requests[-1]


class TestChunkText:
    def test_text_comes_from_every_choice_delta(self):
        from llmbot.llm import chunk_text

        assert chunk_text({"choices": [{"delta": {"content": "Hel"}}, {"delta": {"content": "lo"}}]}) == "Hello"

    @pytest.mark.parametrize(
        "chunk",
        [None, [], {}, {"choices": None}, {"choices": [None]}, {"choices": [{"delta": None}]}, {"choices": [{"delta": {"content": 5}}]}, {"choices": [{"delta": {"role": "assistant"}}]}],
    )
    def test_odd_chunks_from_compatible_servers_give_no_text(self, chunk):
        from llmbot.llm import chunk_text

        assert chunk_text(chunk) == ""
