"""The turn runner: every way a handler can fail ends the turn with one word in the thread (and a
log line); ConversationOver and TurnAborted unbind the thread; the turn deadline; shutdown; the
store's TTL restarted at the end of a Start or Continue. FakeChat, FakeLLM, a fake clock."""

from __future__ import annotations

import asyncio
import logging
import re
import string
from collections.abc import Awaitable, Callable

import pytest

from llmbot.errors import ChatNotFound, ChatUnavailable, ConversationOver, LLMError, TurnAborted
from llmbot.events import Posted
from llmbot.handlers.base import Handler, Turn
from llmbot.plugins.gpt import GptChat
from llmbot.plugins.host import PluginHandler
from llmbot.plugins.message import Tools
from llmbot.prompts import PromptTemplate
from llmbot.record import KIND_ANSWER, KIND_END, KIND_NOTICE, PROP_KIND, STATUS_LINE, props_for
from llmbot.reply import INTERRUPTED_MARK, INTERRUPTED_NOTICE
from llmbot.router import Continue, Decision, End, HandlerSpec, Start, Usage
from llmbot.runner import FAILED, TOO_SLOW, Job, TurnRunner
from llmbot.store import MemoryStore
from llmbot.thread import Post
from llmbot.tokens import Tokenizer

from .payloads import ALICE_ID, BOT_ID, BOT_NAME, TEAM_ID
from .ports_fakes import FakeChat, FakeClock, FakeLLM, within

SPEC = HandlerSpec("gpt", (re.compile(r"^gpt\b", re.IGNORECASE),), conversational=True)
SYSTEM = PromptTemplate("system", string.Template("You are $bot_name in $channel on $date, with $participants."))
TTL = 600.0


def status(message: str) -> str:
    return f"{STATUS_LINE}{message.removeprefix('⚠️ ')}_"


class Scripted:
    """A handler whose turn is whatever the test says."""

    spec = SPEC

    def __init__(self, action: Callable[[Turn], Awaitable[None]]) -> None:
        self.action = action

    def call_word(self) -> str:
        return "gpt"

    async def handle(self, turn: Turn) -> None:
        await self.action(turn)


def raising(exc: BaseException) -> Scripted:
    async def action(turn: Turn) -> None:
        raise exc

    return Scripted(action)


def chat_handler(llm: FakeLLM, *, max_turns: int = 0) -> PluginHandler:
    """The built-in chat, as the app builds it: GptChat run by the plugin host."""
    tools = Tools(llm, Tokenizer("estimate", None, None), context_tokens=2000, reply_tokens=200, max_turns=max_turns)
    handler = PluginHandler(GptChat(SPEC.triggers[0], SYSTEM), tools)
    handler.bot_name = BOT_NAME
    return handler


class World:
    """A thread in FakeChat, a store on the fake clock, and a runner for the handler under test."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.chat = FakeChat(clock=self.clock)
        self.store = MemoryStore(TTL, timer=self.clock)
        self.llm = FakeLLM()
        self.root = self.chat.seed("gpt what is the capital of France?")

    def runner(self, handler: Handler, *, deadline: float = 60.0) -> TurnRunner:
        return TurnRunner(
            self.chat, {"gpt": handler}, self.store, me_id=BOT_ID,
            answerable=lambda post, names: True, deadline=deadline, clock=self.clock, sleep=self.clock.sleep,
        )

    def job(self, decision: Decision | None = None, post: Post | None = None, conversation: str | None = None) -> Job:
        post = post or self.root
        event = Posted(post, "O", "town-square", "Town Square", "alice", TEAM_ID)
        return Job(decision or Start("gpt"), event, self.root.id if conversation is None else conversation)

    def bot_answer(self, message: str, answers: str) -> Post:
        props = props_for("gpt", KIND_ANSWER, answers, self.root.id, 0)
        return self.chat.seed(message, user_id=BOT_ID, root_id=self.root.id, props={**props, "from_bot": "true"})

    def replies(self) -> list[Post]:
        return self.chat.bot_posts(self.root.id)


@pytest.fixture
def world() -> World:
    return World()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmbot.runner" and r.levelno == logging.ERROR and r.exc_info]


class TestFailures:
    async def test_a_bug_in_the_llm_stream_ends_the_turn_with_one_notice_and_a_logged_traceback(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        bug = RuntimeError("the LLM client has a bug")
        world.llm.enqueue(raises=bug)

        await within(world.runner(chat_handler(world.llm)).run(world.job()))

        replies = world.replies()
        assert [(p.message, p.props[PROP_KIND]) for p in replies] == [(FAILED, KIND_NOTICE)]
        [record] = tracebacks(caplog)
        assert record.exc_info is not None and record.exc_info[1] is bug

    @pytest.mark.parametrize(
        "bug", [RuntimeError("boom"), KeyError("post"), AttributeError("no such field"), ZeroDivisionError("oops")],
        ids=lambda bug: type(bug).__name__,
    )
    async def test_any_exception_from_a_handler_ends_the_turn_with_one_notice_and_a_logged_traceback(
        self, world: World, bug: Exception, caplog: pytest.LogCaptureFixture
    ) -> None:
        await within(world.runner(raising(bug)).run(world.job()))

        assert [p.message for p in world.replies()] == [FAILED]
        [record] = tracebacks(caplog)
        assert record.exc_info is not None and record.exc_info[1] is bug

    async def test_a_partial_answer_and_a_bug_make_one_post_with_a_status_line(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        reply = world.llm.enqueue(["Paris is the capital", " of"], raises=RuntimeError("a bug mid-answer"), after=1, hold_at=1)
        run = asyncio.create_task(world.runner(chat_handler(world.llm)).run(world.job()))
        await world.chat.until_calls("create_post", 1)  # the partial answer is on screen
        reply.release()
        await within(run)

        assert [p.message for p in world.replies()] == ["Paris is the capital" + status(FAILED)]
        assert len(tracebacks(caplog)) == 1

    async def test_a_bug_after_the_closing_post_adds_no_notice(self, world: World, caplog: pytest.LogCaptureFixture) -> None:
        async def goodbye_then_bug(turn: Turn) -> None:
            await turn.reply.post("👋 Conversation ended.", KIND_END)
            raise RuntimeError("a bug after the goodbye")

        await within(world.runner(Scripted(goodbye_then_bug)).run(world.job(End("gpt"))))

        assert [p.message for p in world.replies()] == ["👋 Conversation ended."]
        assert len(tracebacks(caplog)) == 1

    async def test_a_mattermost_refusal_ends_the_turn_with_one_notice_and_a_warning(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        await within(world.runner(raising(ChatUnavailable("502 Bad Gateway"))).run(world.job()))

        assert [p.message for p in world.replies()] == [FAILED]
        assert any(
            "Mattermost refused a call: 502 Bad Gateway" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
        )

    async def test_an_llm_error_is_said_in_the_thread_and_is_not_a_bug(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        world.llm.enqueue(raises=LLMError("the model server is overloaded"))

        await within(world.runner(chat_handler(world.llm)).run(world.job()))

        [notice] = world.replies()
        assert "the model server is overloaded" in notice.message
        assert tracebacks(caplog) == []


class TestDeadline:
    async def test_a_turn_past_its_deadline_says_it_could_not_finish_in_time(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        world.llm.enqueue(["never sent"], hold_at=0)  # the model never answers

        await within(world.runner(chat_handler(world.llm), deadline=0.05).run(world.job()))

        assert [(p.message, p.props[PROP_KIND]) for p in world.replies()] == [(TOO_SLOW, KIND_NOTICE)]
        assert any("LLMBOT_TURN_DEADLINE" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    async def test_a_partial_answer_past_the_deadline_is_marked_in_its_own_post(self, world: World) -> None:
        world.llm.enqueue(["Paris", " and more"], hold_at=1)  # stalls after the first chunk

        await within(world.runner(chat_handler(world.llm), deadline=0.2).run(world.job()))

        assert [p.message for p in world.replies()] == ["Paris" + status(TOO_SLOW)]


class TestUnbinding:
    async def test_the_turn_cap_ends_the_conversation_with_a_goodbye_and_unbinds_the_thread(self, world: World) -> None:
        await world.store.bind(world.root.id, "gpt", ALICE_ID, world.root.id)
        world.bot_answer("Paris.", answers=world.root.id)
        follow_up = world.chat.seed("and of Italy?", root_id=world.root.id)

        await within(world.runner(chat_handler(world.llm, max_turns=1)).run(world.job(Continue("gpt"), follow_up)))

        assert [p.props[PROP_KIND] for p in world.replies()] == [KIND_ANSWER, KIND_END]
        assert await world.store.get(world.root.id) is None
        assert world.llm.requests == []

    async def test_a_deleted_root_aborts_the_turn_and_unbinds_the_thread_without_a_post(self, world: World) -> None:
        await world.store.bind(world.root.id, "gpt", ALICE_ID, world.root.id)
        follow_up = world.chat.seed("and of Italy?", root_id=world.root.id)
        world.chat.fail_next("recent_thread", ChatNotFound("the root post was deleted"))

        await within(world.runner(chat_handler(world.llm)).run(world.job(Continue("gpt"), follow_up)))

        assert world.replies() == []
        assert await world.store.get(world.root.id) is None

    @pytest.mark.parametrize(
        "ending", [ConversationOver("turn cap reached"), TurnAborted("thread is gone")], ids=lambda e: type(e).__name__
    )
    async def test_conversation_over_and_turn_aborted_unbind_the_thread_and_post_no_notice(
        self, world: World, ending: TurnAborted, caplog: pytest.LogCaptureFixture
    ) -> None:
        await world.store.bind(world.root.id, "gpt", ALICE_ID, world.root.id)

        await within(world.runner(raising(ending)).run(world.job(Continue("gpt"))))

        assert await world.store.get(world.root.id) is None
        assert world.replies() == []
        assert tracebacks(caplog) == []


class TestStore:
    @pytest.mark.parametrize("decision", [Start("gpt"), Continue("gpt")], ids=["start", "continue"])
    async def test_the_conversation_ttl_restarts_at_the_end_of_the_turn(self, world: World, decision: Decision) -> None:
        await world.store.bind(world.root.id, "gpt", ALICE_ID, world.root.id)

        async def slow_answer(turn: Turn) -> None:
            world.clock.advance(40.0)  # the answer took 40 s

        await within(world.runner(Scripted(slow_answer)).run(world.job(decision)))

        binding = await world.store.get(world.root.id)
        assert binding is not None and binding.last_activity == world.clock()

    async def test_a_failed_turn_still_restarts_the_ttl(self, world: World) -> None:
        await world.store.bind(world.root.id, "gpt", ALICE_ID, world.root.id)

        async def slow_bug(turn: Turn) -> None:
            world.clock.advance(40.0)
            raise RuntimeError("a bug late in the turn")

        await within(world.runner(Scripted(slow_bug)).run(world.job(Continue("gpt"))))

        binding = await world.store.get(world.root.id)
        assert binding is not None and binding.last_activity == world.clock()


class TestShutdown:
    async def test_a_turn_cancelled_by_shutdown_marks_its_partial_answer_interrupted(self, world: World) -> None:
        world.llm.enqueue(["Paris", " is"], hold_at=1)
        run = asyncio.create_task(world.runner(chat_handler(world.llm)).run(world.job()))
        await world.chat.until_calls("create_post", 1)

        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await within(run)

        assert [p.message for p in world.replies()] == ["Paris" + status(INTERRUPTED_MARK)]

    async def test_a_queued_turn_left_by_shutdown_is_told_it_was_not_answered(self, world: World) -> None:
        runner = world.runner(chat_handler(world.llm))

        await within(runner.interrupted(world.job(Start("gpt"))))
        await within(runner.interrupted(world.job(Usage("gpt"))))  # a hint was never an answer: nothing to say

        assert [p.message for p in world.replies()] == [INTERRUPTED_NOTICE]

    async def test_a_job_for_a_handler_that_is_gone_is_skipped_with_a_warning(
        self, world: World, caplog: pytest.LogCaptureFixture
    ) -> None:
        runner = world.runner(chat_handler(world.llm))
        runner.handlers = {}

        await within(runner.run(world.job()))

        assert world.replies() == []
        assert any("no handler 'gpt'" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
