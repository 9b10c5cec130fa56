"""The reply writer against FakeChat and FakeLLM on a fake clock: pages, retried updates,
failures marked in the answer's own post, idempotent creates (also past the server's pending-id
window), closing posts made once, a log line for every notice, and a reader that never hangs."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator

import pytest

from llmbot.creates import PENDING_WINDOW
from llmbot.errors import AnswerCut, ChatUnavailable, ContextTooLong, LLMError, StateError
from llmbot.record import KIND_ANSWER, KIND_END, KIND_NOTICE, PROP_KIND, PROP_PAGE, PROP_STATE, STATUS_LINE, state_of
from llmbot.reply import INTERRUPTED_NOTICE, ReplyWriter, Where
from llmbot.retry import ATTEMPTS
from llmbot.streaming import MAX_POST_RUNES
from llmbot.thread import Post

from .payloads import BOT_ID
from .ports_fakes import PENDING_POST_TTL, SAFETY_NET, FakeChat, FakeClock, FakeLLM, within

BROADCAST = re.compile(r"(?<![\w.@-])@(channel|all|here)(?![\w-])", re.IGNORECASE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def chat(clock: FakeClock) -> FakeChat:
    return FakeChat(clock=clock)


@pytest.fixture
def llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
def root(chat: FakeChat) -> Post:
    return chat.seed("gpt what is the answer?")


@pytest.fixture
def writer(chat: FakeChat, clock: FakeClock, root: Post) -> ReplyWriter:
    where = Where(root.channel_id, root.id, BOT_ID, "gpt", conversation=root.id)
    return ReplyWriter(chat, where, root.id, clock=clock, sleep=clock.sleep)


def answer_of(llm: FakeLLM) -> AsyncGenerator[str, None]:
    return llm.stream([], 100)


def status(message: str) -> str:
    """The line the writer appends under a partial answer."""
    return f"{STATUS_LINE}{message.removeprefix('⚠️ ')}_"


class TestPages:
    async def test_a_long_answer_is_split_into_pages_each_within_the_limit_once_defused(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        # Dense broadcasts: defusing adds a rune to every five, so raw-length pages would overflow.
        text = "ping @all and @here now.\n" * 2000  # 50,000 runes
        llm.enqueue([text[i : i + 997] for i in range(0, len(text), 997)])

        await writer.stream(answer_of(llm))

        posts = chat.bot_posts(root.id)
        assert len(posts) >= 3
        assert [p.props[PROP_PAGE] for p in posts] == list(range(len(posts)))
        assert all(p.props[PROP_KIND] == KIND_ANSWER for p in posts)
        for post in posts:
            assert len(post.message) <= MAX_POST_RUNES
            assert BROADCAST.search(post.message) is None
        assert "".join(p.message for p in posts).replace("\u200b", "") == text


class TestUpdates:
    async def test_a_failed_update_is_retried_at_the_next_flush(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, clock: FakeClock, root: Post, caplog: pytest.LogCaptureFixture
    ) -> None:
        reply = llm.enqueue(["Hello", " world"], hold_at=(1, 2))
        task = asyncio.create_task(writer.stream(answer_of(llm)))
        await chat.until_calls("create_post", 1)

        chat.fail_next("patch_post", ChatUnavailable("502 Bad Gateway"))
        clock.advance(writer.edit_interval)
        reply.release()  # " world": its update fails
        await chat.until_calls("patch_post", 1)
        assert [p.message for p in chat.bot_posts(root.id)] == ["Hello"]

        reply.release()  # the end: the final flush carries the text the failed update missed
        await within(task)

        assert [p.message for p in chat.bot_posts(root.id)] == ["Hello world"]
        assert len(chat.calls_of("patch_post")) == 2
        assert any("updating the answer failed" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


class TestFailures:
    async def test_an_llm_error_mid_answer_marks_the_partial_text_in_the_same_post(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        reply = llm.enqueue(["Partial ", "answer"], raises=LLMError("the connection to the model dropped"), hold_at=1)
        task = asyncio.create_task(writer.stream(answer_of(llm)))
        await chat.until_calls("create_post", 1)  # "Partial " is on screen
        reply.release()
        await within(task)

        expected = "Partial answer" + status("⚠️ I could not finish this answer: the connection to the model dropped. Please try again.")
        assert [p.message for p in chat.bot_posts(root.id)] == [expected]
        assert len(chat.calls_of("create_post")) == 1

    async def test_an_answer_cut_at_the_length_limit_keeps_all_its_text_and_says_so(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        llm.enqueue(["All of ", "the text"], raises=AnswerCut("the answer reached the 100-token limit"))

        await writer.stream(answer_of(llm))

        posts = chat.bot_posts(root.id)
        assert [p.message for p in posts] == ["All of the text" + status("⚠️ Cut short: the answer reached the 100-token limit.")]
        assert posts[0].props[PROP_KIND] == KIND_ANSWER

    @pytest.mark.parametrize("chunks", [[], ["", " \n", "\t"]], ids=["nothing", "whitespace"])
    async def test_an_empty_answer_gives_one_notice_and_a_log_line(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post, chunks: list[str],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        llm.enqueue(chunks)

        await writer.stream(answer_of(llm))

        posts = chat.bot_posts(root.id)
        assert len(posts) == 1 and posts[0].props[PROP_KIND] == KIND_NOTICE
        assert "empty answer" in posts[0].message
        assert [r.levelno for r in caplog.records if "(empty answer)" in r.getMessage()] == [logging.WARNING]

    async def test_a_context_too_long_before_any_text_is_raised_for_the_caller_to_trim(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        llm.enqueue(raises=ContextTooLong("prompt of 9000 tokens is over the 8192 window"))

        with pytest.raises(ContextTooLong):
            await writer.stream(answer_of(llm))

        assert chat.bot_posts(root.id) == []


class TestIdempotentCreates:
    async def test_a_create_retried_within_the_servers_window_gets_its_post_back_with_its_text_brought_up_to_date(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        reply = llm.enqueue(["Hel", "lo"], hold_at=1)
        chat.lose_next_create()
        task = asyncio.create_task(writer.stream(answer_of(llm)))
        await chat.until_calls("create_post", 1)
        reply.release()
        await within(task)

        assert [p.message for p in chat.bot_posts(root.id)] == ["Hello"]
        assert len(chat.calls_of("get_thread")) == 0  # the pending id did it; no look-up needed

    async def test_a_lost_create_retried_after_the_server_forgot_its_pending_id_finds_its_post_by_props(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, clock: FakeClock, root: Post
    ) -> None:
        assert PENDING_WINDOW < PENDING_POST_TTL  # the writer looks before the server forgets
        reply = llm.enqueue(["Hel", "lo"], hold_at=1)
        chat.lose_next_create()
        task = asyncio.create_task(writer.stream(answer_of(llm)))
        await chat.until_calls("create_post", 1)  # made "Hel", but the answer never came back

        clock.advance(PENDING_POST_TTL + 1)  # the server no longer knows the pending id
        reply.release()
        await within(task)

        posts = chat.bot_posts(root.id)
        assert [p.message for p in posts] == ["Hello"]
        assert len(chat.calls_of("get_thread")) == 1

    async def test_an_answer_whose_create_was_lost_and_every_retry_failed_is_found_not_joined_by_a_notice(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        # found by bench_faults: the first create made its post, its answer was lost, the retries
        # all failed, and a "could not post" notice then stood beside the answer's own post
        reply = llm.enqueue(["Hel", "lo"], hold_at=1)
        chat.lose_next_create()
        task = asyncio.create_task(writer.stream(answer_of(llm)))
        await chat.until_calls("create_post", 1)
        chat.fail_next("create_post", ChatUnavailable("Mattermost answered 503"), times=5)
        reply.release()
        await within(task)

        assert [p.message for p in chat.bot_posts(root.id)] == ["Hello"]
        assert chat.notices(root.id) == []

    async def test_a_lost_closing_post_finished_after_the_window_is_not_doubled(
        self, writer: ReplyWriter, chat: FakeChat, clock: FakeClock, root: Post
    ) -> None:
        chat.lose_next_create()
        chat.fail_next("create_post", ChatUnavailable("503 Service Unavailable"), times=4)
        await writer.notice("⚠️ I could not read this thread.", "thread read failed")  # every try failed, as far as it knows
        assert not writer.closed

        clock.advance(PENDING_POST_TTL + 1)
        await writer.mark_interrupted()  # shutdown finishes the notice that was on its way

        assert [p.message for p in chat.bot_posts(root.id)] == ["⚠️ I could not read this thread."]
        assert writer.closed


class TestClosingPosts:
    async def test_a_closing_post_posted_again_is_not_doubled(self, writer: ReplyWriter, chat: FakeChat, root: Post) -> None:
        await writer.post("👋 Conversation ended.", KIND_END)
        await writer.post("👋 Conversation ended.", KIND_END)

        assert [p.message for p in chat.bot_posts(root.id)] == ["👋 Conversation ended."]

    async def test_a_shutdown_after_the_closing_post_was_made_adds_nothing(
        self, writer: ReplyWriter, chat: FakeChat, root: Post
    ) -> None:
        await writer.post("👋 Conversation ended.", KIND_END)
        await writer.mark_interrupted()

        assert [p.message for p in chat.bot_posts(root.id)] == ["👋 Conversation ended."]
        assert len(chat.calls_of("create_post")) == 1

    async def test_a_shutdown_while_the_closing_posts_response_was_lost_finishes_that_post(
        self, writer: ReplyWriter, chat: FakeChat, root: Post
    ) -> None:
        chat.lose_next_create(times=5)
        with pytest.raises(ChatUnavailable):
            await writer.post("👋 Conversation ended.", KIND_END)

        await writer.mark_interrupted()

        assert [p.message for p in chat.bot_posts(root.id)] == ["👋 Conversation ended."]
        assert INTERRUPTED_NOTICE not in {p.message for p in chat.posts.values()}


async def _empty_answer(writer: ReplyWriter, chat: FakeChat, llm: FakeLLM) -> str:
    llm.enqueue([])
    await writer.stream(answer_of(llm))
    return "empty answer"


async def _llm_error_before_text(writer: ReplyWriter, chat: FakeChat, llm: FakeLLM) -> str:
    llm.enqueue(raises=LLMError("the model is loading"))
    await writer.stream(answer_of(llm))
    return "the model is loading"


async def _delivery_failed(writer: ReplyWriter, chat: FakeChat, llm: FakeLLM) -> str:
    llm.enqueue(["Hello"])
    chat.fail_next("create_post", ChatUnavailable("502 Bad Gateway"), times=1 + 2 * ATTEMPTS)  # the first flush and every retry of the last update
    await writer.stream(answer_of(llm))
    return "delivery failed"


async def _failed_turn(writer: ReplyWriter, chat: FakeChat, llm: FakeLLM) -> str:
    await writer.fail("⚠️ I could not finish this in time. Please try again.", "the turn took longer than 60s")
    return "the turn took longer than 60s"


async def _shutdown_before_anything(writer: ReplyWriter, chat: FakeChat, llm: FakeLLM) -> str:
    await writer.mark_interrupted()
    return "shutdown"


class TestNoticeLogLines:
    @pytest.mark.parametrize(
        "scenario", [_empty_answer, _llm_error_before_text, _delivery_failed, _failed_turn, _shutdown_before_anything]
    )
    async def test_every_notice_has_a_warning_log_line_naming_its_cause(
        self, scenario, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post, caplog: pytest.LogCaptureFixture
    ) -> None:
        cause = await scenario(writer, chat, llm)

        notices = chat.notices(root.id)
        assert len(notices) == 1
        lines = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "llmbot.reply"]
        assert any(cause in r.getMessage() and notices[0].message in r.getMessage() for r in lines), [
            r.getMessage() for r in lines
        ]


class TestReader:
    @pytest.mark.parametrize("after", [0, 2], ids=["before any text", "after some text"])
    async def test_a_source_raising_a_bug_makes_stream_raise_it_rather_than_hang(
        self, writer: ReplyWriter, llm: FakeLLM, after: int
    ) -> None:
        bug = RuntimeError("the source has a bug")
        llm.enqueue(["Hel", "lo", "!"], raises=bug, after=after)

        task = asyncio.create_task(writer.stream(answer_of(llm)))
        done, _ = await asyncio.wait({task}, timeout=SAFETY_NET)  # a safety net: it is done long before

        try:
            assert task in done, "stream() still waits on a reader that died"
            assert task.exception() is bug
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class TestState:
    async def test_state_rides_on_the_answer_s_first_post_and_comes_back_from_the_thread(
        self, writer: ReplyWriter, chat: FakeChat, llm: FakeLLM, root: Post
    ) -> None:
        writer.remember({"step": "choose", "day": "monday"})
        llm.enqueue(["x" * (MAX_POST_RUNES + 10)])  # two pages
        await within(writer.stream(answer_of(llm)))
        first, second = chat.bot_posts(root.id)
        assert first.props[PROP_STATE] == {"step": "choose", "day": "monday"} and PROP_STATE not in second.props
        thread = await chat.get_thread(root.id)
        assert state_of(thread, BOT_ID, "gpt", root.id) == {"step": "choose", "day": "monday"}

    async def test_a_closing_post_carries_state_too(self, writer: ReplyWriter, chat: FakeChat, root: Post) -> None:
        writer.remember({"step": "done"})
        await within(writer.post("Bye!", KIND_END))
        (goodbye,) = chat.bot_posts(root.id)
        assert goodbye.props[PROP_STATE] == {"step": "done"}

    def test_state_that_cannot_be_kept_is_a_clear_error_before_anything_is_posted(self, writer: ReplyWriter) -> None:
        with pytest.raises(StateError, match="32768"):
            writer.remember({"blob": "x" * 40_000})
        assert writer.state is None
