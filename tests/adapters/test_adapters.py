"""The adapters translate every driver and SDK failure into llmbot's own errors (real clients, loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import aiohttp
import httpx
import pytest
from httpx_aiohttp import AiohttpTransport

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
from llmbot.mattermost import MattermostChat, translate
from llmbot.mattermost_socket import EventSocket
from llmbot.retry import with_retries
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
        client = MattermostChat(settings)
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
            (401, "rejected my API key"),
            (404, "no chat completions at its address"),
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
            error_body={"error": {
                "message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error",
                "param": "messages", "code": "context_length_exceeded",
            }},
        )
        with pytest.raises(ContextTooLong):
            await collect(llm)

    async def test_a_stream_cut_mid_way_is_an_llm_error(self, llm, llm_server):
        llm_server.enqueue(["a", "b", "c"], fail_after=1)
        with pytest.raises(LLMError, match=r"stopped in the middle|could not be reached"):
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
            error_body={"error": {
                "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter",
            }},
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
        [
            None, [], {}, {"choices": None}, {"choices": [None]}, {"choices": [{"delta": None}]},
            {"choices": [{"delta": {"content": 5}}]}, {"choices": [{"delta": {"role": "assistant"}}]},
        ],
    )
    def test_odd_chunks_from_compatible_servers_give_no_text(self, chunk):
        from llmbot.llm import chunk_text

        assert chunk_text(chunk) == ""


async def thread_root(mm) -> str:
    alice = mm.add_user("alice")
    town = mm.add_channel("town", members=(mm.bot, alice))
    return (await mm.post_as(alice, town, "root", broadcast=False))["id"]


def requests_to(mm, suffix: str) -> int:
    return sum(1 for r in mm.requests if r[1].endswith(suffix))


class TestOneRetryLayer:
    """The driver never retries (max_retries=0): llmbot.retry.with_retries is the only loop."""

    async def test_one_call_is_one_request_even_for_a_503_on_a_get(self, chat, mm):
        root = await thread_root(mm)
        mm.reset_requests()
        mm.fail_next("GET", r"/thread$", 503)  # the driver used to retry this by itself
        with pytest.raises(ChatUnavailable):
            await chat.get_thread(root)
        assert requests_to(mm, "/thread") == 1

    async def test_a_429_is_raised_at_once_with_the_servers_retry_after(self, chat, mm):
        mm.reset_requests()
        mm.fail_next("POST", r"/api/v4/posts$", 429, headers={"Retry-After": "7"})
        with pytest.raises(ChatRateLimited) as info:
            await chat.create_post("c" * 26, "hello", "", {})
        assert info.value.retry_after == 7.0
        assert requests_to(mm, "/api/v4/posts") == 1

    async def test_with_retries_waits_what_the_429_asked_then_posts_once(self, chat, mm):
        town = mm.add_channel("t", members=(mm.bot,))
        mm.fail_next("POST", r"/api/v4/posts$", 429, times=2, headers={"Retry-After": "0.05"})
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)

        post = await with_retries(lambda: chat.create_post(town["id"], "hi", "", {}), "answer", sleep=sleep)
        assert slept == [0.05, 0.05] and post.message == "hi"
        assert len(mm.posts_by(mm.bot)) == 1

    async def test_a_never_answering_thread_read_gives_up_by_the_deadline(self, mm, llm_server):
        client = MattermostChat(make_settings(mm, llm_server, LLMBOT_REQUEST_TIMEOUT="0.3"))
        try:
            await client.login()
            root = await thread_root(mm)
            mm.reset_requests()
            mm.slow_next("GET", r"/thread$", 5.0, times=50)
            started = time.monotonic()
            with pytest.raises(ChatUnavailable):
                await with_retries(lambda: client.get_thread(root), "thread", base=0.05, deadline=started + 1.0)
            elapsed = time.monotonic() - started
            # Before: 4 driver tries of 30 s plus its backoff, under 5 of ours: ~11 minutes.
            assert elapsed < 1.5
            assert 2 <= requests_to(mm, "/thread") <= 4  # one request per try of ours
        finally:
            await client.close()

    async def test_a_try_is_cut_off_at_the_deadline_even_inside_a_long_request_timeout(self, mm, llm_server):
        client = MattermostChat(make_settings(mm, llm_server, LLMBOT_REQUEST_TIMEOUT="30"))
        try:
            await client.login()
            root = await thread_root(mm)
            mm.slow_next("GET", r"/thread$", 5.0)
            started = time.monotonic()
            with pytest.raises(ChatUnavailable, match="deadline"):
                await with_retries(lambda: client.get_thread(root), "thread", deadline=started + 0.3)
            assert time.monotonic() - started < 1.0
        finally:
            await client.close()


class _BuggyTransport(httpx.AsyncBaseTransport):
    """The real transport, except that thread reads hit a bug (KeyError) under the client."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport()
        self.bugs = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/thread"):
            self.bugs += 1
            raise KeyError("a bug, not a flaky server")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class TestUnknownExceptions:
    @pytest.mark.parametrize(
        "exc",
        [httpx.ReadTimeout("slow"), aiohttp.ServerDisconnectedError(), ConnectionResetError("reset"), TimeoutError(),
         json.JSONDecodeError("Expecting value", "<html>", 0)],
    )
    def test_client_failures_become_an_unavailable_server(self, exc):
        assert isinstance(translate(exc), ChatUnavailable)

    @pytest.mark.parametrize("exc", [KeyError("id"), TypeError("bad"), ValueError("ours"), AttributeError("x"), RuntimeError("")])
    def test_anything_else_is_not_translated(self, exc):
        assert translate(exc) is None

    async def test_a_bug_under_a_call_propagates_unchanged_and_is_not_retried(self, mm, llm_server):
        transport = _BuggyTransport()
        client = MattermostChat(make_settings(mm, llm_server), transport=transport)
        try:
            await client.login()
            with pytest.raises(KeyError, match="a bug"):
                await with_retries(lambda: client.get_thread("x" * 26), "thread", base=0.01)
            assert transport.bugs == 1
        finally:
            await client.close()

    async def test_a_success_status_with_an_unreadable_json_body_is_an_unavailable_server(self, chat, mm):
        mm.fail_next("POST", r"/api/v4/posts$", 201, body="{not json")
        with pytest.raises(ChatUnavailable, match="unreadable"):
            await chat.create_post("c" * 26, "hello", "", {})


class TestReactions:
    async def test_the_bot_reacts_to_a_post(self, chat, mm):
        root = await thread_root(mm)
        await chat.add_reaction(root, "eyes")
        assert [(r["user_id"], r["post_id"], r["emoji_name"]) for r in mm.reactions] == [(mm.bot["id"], root, "eyes")]

    async def test_a_post_in_a_channel_the_bot_is_not_in_is_forbidden(self, chat, mm):
        alice = mm.add_user("alice")
        private = mm.add_channel("private", members=(alice,))
        post = await mm.post_as(alice, private, "secret", broadcast=False)
        with pytest.raises(ChatForbidden):
            await chat.add_reaction(post["id"], "eyes")
        assert mm.reactions == []

    @pytest.mark.parametrize(("name", "error"), [("", ChatBadRequest), ("x" * 65, ChatBadRequest), ("thumbs up!", ChatNotFound)])
    async def test_an_impossible_emoji_name_is_a_final_error(self, chat, mm, name, error):
        root = await thread_root(mm)
        with pytest.raises(error):
            await chat.add_reaction(root, name)
        assert mm.reactions == []


class TestEventSocket:
    @pytest.fixture
    async def fast(self, mm, llm_server):
        client = MattermostChat(make_settings(mm, llm_server), reconnect_base=0.01, reconnect_cap=0.05)
        await client.login()
        yield client
        await client.close()

    @staticmethod
    async def stop(task: asyncio.Task[None]) -> None:
        if task.done():
            return  # its outcome was the test's business
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def test_raw_frames_reach_the_callback_and_a_failing_one_is_logged_once_and_skipped(self, fast, mm, caplog):
        alice = mm.add_user("alice")
        town = mm.add_channel("town", members=(mm.bot, alice))
        frames: list[str] = []

        async def on_frame(raw: str) -> None:
            frames.append(raw)
            if "boom" in raw:
                raise RuntimeError("handler bug")

        task = asyncio.create_task(fast.listen(on_frame))
        try:
            await mm.wait_for(lambda: len(frames) >= 2, message="hello and the auth reply")
            assert json.loads(frames[0])["event"] == "hello"
            assert {"status": "OK", "seq_reply": 1} in [json.loads(f) for f in frames[:2]]
            with caplog.at_level(logging.ERROR):
                await mm.post_as(alice, town, "boom")
                await mm.post_as(alice, town, "after")
                await mm.wait_for(lambda: any("after" in f for f in frames), message="the next frame")
            assert isinstance(frames[-1], str) and json.loads(frames[-1])["event"] == "posted"
            skipped = [r for r in caplog.records if "frame skipped" in r.getMessage()]
            assert len(skipped) == 1 and skipped[0].exc_info is not None
            assert mm.ws_clients == 1  # the failing frame did not cost the connection
        finally:
            await self.stop(task)

    async def test_it_reconnects_after_a_drop_and_typing_goes_over_the_new_socket(self, fast, mm):
        town = mm.add_channel("town", members=(mm.bot,))
        hellos: list[str] = []

        async def on_frame(raw: str) -> None:
            if '"hello"' in raw:
                hellos.append(raw)

        task = asyncio.create_task(fast.listen(on_frame))
        try:
            await mm.wait_for(lambda: len(hellos) == 1 and mm.ws_clients == 1)
            await mm.drop_websockets()
            await mm.wait_for(lambda: len(hellos) == 2 and mm.ws_clients == 1, message="reconnected")
            await fast.send_typing(town["id"], "")
            await mm.wait_for(lambda: mm.typing == [(mm.bot["id"], town["id"], "", "ws")])
        finally:
            await self.stop(task)

    async def test_typing_without_a_socket_is_skipped_quietly(self, fast, mm):
        town = mm.add_channel("town", members=(mm.bot,))
        await fast.send_typing(town["id"], "")
        assert mm.typing == []

    async def test_a_refused_token_ends_listen_with_an_auth_error(self, mm, llm_server):
        client = MattermostChat(make_settings(mm, llm_server, MATTERMOST_TOKEN="wrong-token"), reconnect_base=0.01)
        try:
            with pytest.raises(ChatAuthError):
                await asyncio.wait_for(client.listen(lambda raw: asyncio.sleep(0)), timeout=5)
        finally:
            await client.close()

    async def test_a_token_revoked_while_connected_ends_listen_with_an_auth_error(self, fast, mm):
        async def on_frame(raw: str) -> None:
            pass

        task = asyncio.create_task(fast.listen(on_frame))
        try:
            await mm.wait_for(lambda: mm.ws_clients == 1)
            await mm.revoke(mm.bot)
            with pytest.raises(ChatAuthError):
                await asyncio.wait_for(task, timeout=5)
        finally:
            await self.stop(task)

    async def test_close_ends_listen_without_a_reconnect(self, fast, mm):
        async def on_frame(raw: str) -> None:
            pass

        task = asyncio.create_task(fast.listen(on_frame))
        await mm.wait_for(lambda: mm.ws_clients == 1)
        await fast.close()
        await asyncio.wait_for(task, timeout=5)  # returned by itself: no cancel needed
        assert mm.ws_clients == 0

    async def test_backoff_doubles_on_quick_drops_and_resets_after_a_stable_connection(self, mm, caplog):
        now = [0.0]
        url = f"ws://{mm.host}:{mm.port}/api/v4/websocket"
        sock = EventSocket(url, mm.bot_token, reconnect_base=0.1, reconnect_cap=10.0, rng=lambda: 1.0, clock=lambda: now[0])
        hellos: list[str] = []

        async def on_frame(raw: str) -> None:
            if '"hello"' in raw:
                hellos.append(raw)

        async def check_token() -> None:
            raise AssertionError("an accepted connection never asks about the token")

        def delays() -> list[str]:
            return [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records if "reconnecting in" in r.getMessage()]

        task = asyncio.create_task(sock.run(on_frame, check_token))
        try:
            with caplog.at_level(logging.INFO):  # a server's going-away close is an INFO line
                for connection, lived in enumerate([1.0, 1.0, 60.0, 1.0], start=1):
                    await mm.wait_for(lambda n=connection: len(hellos) == n and mm.ws_clients == 1)
                    now[0] += lived
                    await mm.drop_websockets()
                    await mm.wait_for(lambda n=connection: len(delays()) == n)
            assert delays() == ["0.1s", "0.2s", "0.1s", "0.2s"]
        finally:
            await sock.close()
            await self.stop(task)
