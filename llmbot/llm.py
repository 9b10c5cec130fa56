"""LLM adapter over openai.AsyncOpenAI: the only module that imports openai.

One call, `stream(messages, max_tokens)`, yields text deltas; every SDK and transport failure
(FAILURES) becomes an LLMError, while anything else is a bug of ours and propagates unchanged.
Retries and timeouts are ours, not the SDK's: only we know whether text went out already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import httpx2
import openai

from . import metrics, usage
from .alternation import alternates, merge_user_turns
from .chunks import chunk_finish, chunk_text, chunk_usage
from .context import ChatMessage
from .errors import AnswerCut, ContextTooLong, LLMError, LLMMisconfigured
from .llm_failures import (
    CAUGHT,
    CUT,
    EMPTY,
    TOO_LONG,
    TOO_SLOW,
    EmptyStream,
    attempt_error,
    backoff,
    describe,
    refuses_roles,
    retry_after,
)
from .network import proxy_for, ssl_context
from .settings import Settings
from .tokens import Tokenizer, load_tokenizer

__all__ = ["OpenAIChat", "chunk_finish", "chunk_text"]  # the chunk readers: their old home

log = logging.getLogger(__name__)


class OpenAIChat:
    """Chat completions from any OpenAI-compatible server (OpenAI, Azure, vLLM, Ollama...).

    `retries` (None: settings.llm_retries) bounds the retries of one answer; `sleep`, `clock`
    (monotonic seconds) and `rng` (uniform in [0, 1)) are seams for tests. `tokenizer` (None: the
    model's, as the bot loads it) counts an answer's tokens when the server does not report them.

    Runs of user messages are merged (alternation.merge_user_turns) when settings.merge_user_turns
    says so, or from the moment the server shows it wants strictly alternating roles.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        retries: int | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        if retries is None:
            retries = settings.llm_retries
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries}")
        self.model = settings.model
        self.retries = retries
        self._total_timeout = settings.llm_timeout
        self._idle_timeout = settings.llm_idle_timeout
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._tokenizer = tokenizer
        self.base_url = settings.openai_base_url or "https://api.openai.com/v1"  # the SDK's default
        proxy = proxy_for(self.base_url)
        if proxy is not None:
            log.info("LLM: through the proxy %s", proxy)
        self._client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            # stream() bounds every wait itself; the SDK's limits are only a backstop (and bound llmbot check).
            timeout=openai.Timeout(settings.llm_timeout, connect=min(settings.llm_idle_timeout, settings.llm_timeout)),
            max_retries=0,  # stream() retries, knowing whether text went out already
            # aiohttp: far less CPU per request than httpcore. The CA certificates and the proxy are
            # network.py's, as for Mattermost; trust_env=False: httpx2 reads no others of its own.
            http_client=openai.DefaultAioHttpClient(
                verify=ssl_context(), trust_env=False, proxy=httpx2.Proxy(proxy.url, headers=proxy.headers) if proxy else None
            ),
        )
        # Newer OpenAI models want max_completion_tokens; most compatible servers know only max_tokens.
        self._limit_param = "max_tokens"
        self._ask_usage = True  # stream_options.include_usage, until the server refuses it
        self.merge_user_turns = settings.merge_user_turns  # may turn True later: see stream()
        self._dead_connections = 0  # empty streams whose pooled connection no request has yet found reset

    async def close(self) -> None:
        await self._client.close()

    async def stream(
        self, messages: Sequence[ChatMessage], max_tokens: int, *, near_limit: bool = False
    ) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it arrives. Raises LLMError; AnswerCut after all the text when
        the server stopped it at its length limit (finish_reason "length").

        A failure that may pass (429, 5xx, transport, timeout, an empty stream) is retried with
        backoff while no text has been yielded; after that it raises at once, as a retry would
        repeat the text. An empty stream is ContextTooLong at once when the caller says the prompt
        was `near_limit` of its budget: llama.cpp fails an overlong streamed prompt that way (and,
        when user messages follow each other, one its chat template refuses: so those are first
        tried merged, see alternation.py).
        llm_idle_timeout bounds each wait for the server (headers, next chunk); llm_timeout
        bounds the whole answer, retries and waits included.
        """
        deadline = self._clock() + self._total_timeout
        meter = usage.current()
        where, fields = (meter.where, meter.fields) if meter is not None else ("", {})  # for the text and JSON logs
        yielded = False
        texts: list[str] = []
        reported: tuple[int, int] | None = None
        merge = self.merge_user_turns
        guessed = False  # merging because an empty stream hinted at a strict template; not proven yet
        attempt = 0
        while True:
            attempt += 1
            finish: str | None = None
            window = 0.0
            payload = [m.as_dict() for m in (merge_user_turns(messages) if merge else messages)]
            try:
                window = self._window(deadline)
                async with asyncio.timeout(window):
                    stream = await self._open(payload, max_tokens)
                try:
                    chunks = stream.__aiter__()
                    while True:
                        window = self._window(deadline)
                        try:
                            async with asyncio.timeout(window):
                                chunk = await chunks.__anext__()
                        except StopAsyncIteration:
                            break
                        finish = chunk_finish(chunk) or finish
                        reported = chunk_usage(chunk) or reported
                        delta = chunk_text(chunk)
                        if delta:
                            yielded = True
                            texts.append(delta)
                            yield delta
                finally:
                    with contextlib.suppress(Exception):  # the answer is complete or already failed
                        await stream.close()
                if finish is None and not yielded:
                    raise EmptyStream()
                if finish is None:  # kept: some servers may omit it, but it can hide a cut answer
                    log.warning("the LLM stream ended without a finish_reason: the answer may be incomplete")
                break
            except CAUGHT as exc:
                if self._dead_connections and isinstance(exc, openai.APIConnectionError) and not yielded:
                    # llama-cpp-python closes the connection of an empty stream, though it said keep-alive:
                    # a request sent on it at once (this answer's retry, the caller's trimmed one, another
                    # turn's) is reset. Not the server failing: once more, on a new connection.
                    self._dead_connections -= 1
                    log.info("%sLLM attempt %d: the connection of an empty stream was reset (%s); once more",
                             where, attempt, describe(exc))
                    attempt -= 1
                    continue
                if isinstance(exc, EmptyStream):
                    self._dead_connections += 1
                if not merge and (refuses_roles(exc) or (isinstance(exc, EmptyStream) and not alternates(messages))):
                    # Another form of the request, not a retry. llama-cpp-python answers a streamed
                    # request its template refuses with an empty stream, as it does an overlong one:
                    # the merged form tells the two apart, and is remembered only once it is answered.
                    merge, guessed = True, isinstance(exc, EmptyStream)
                    if guessed:
                        log.warning("%sLLM attempt %d failed: %s (%s); trying again with consecutive user messages "
                                    "merged, in case the chat template wants roles to alternate", where, attempt, EMPTY, exc)
                    else:
                        self._merge_from_now_on("it answered that roles must alternate")
                    attempt -= 1
                    continue
                guessed = guessed and not isinstance(exc, EmptyStream)  # empty merged too: not the template
                error = attempt_error(
                    exc, self.model, self.base_url, timed_out_early=window < self._idle_timeout, yielded=yielded,
                    near_limit=near_limit, merged=merge,
                )
                wait, outcome = self._next_wait(error, exc, attempt, yielded, deadline)
                if isinstance(error, LLMMisconfigured):  # an admin's to fix: every answer fails until then
                    log.error("%sthe LLM is not set up correctly: %s (%s): %s; %s",
                              where, error.reason, describe(exc, error.reason), error.fix, outcome, extra=fields)
                else:
                    log.warning("%sLLM attempt %d/%d failed: %s (%s); %s",
                                where, attempt, self.retries + 1, error.reason, describe(exc, error.reason), outcome,
                                extra=fields)
                if wait is None:
                    error.logged = True
                    raise error from exc
                await self._sleep(wait)
        if guessed:
            self._merge_from_now_on("it sent an empty stream for unmerged user messages, and answered merged ones")
        self._measure(payload, "".join(texts), reported, meter)
        if finish == "length":
            log.info("%sthe server stopped the answer at its length limit (finish_reason length, max_tokens %d)",
                     where, max_tokens, extra=fields)
            cut = ContextTooLong(TOO_LONG) if not yielded else AnswerCut(CUT)
            cut.logged = True
            raise cut

    def _measure(
        self, payload: list[dict[str, str]], answer: str, reported: tuple[int, int] | None, meter: usage.Meter | None
    ) -> None:
        """The answer's tokens, as the server reported them or as counted, for the reply's log line
        (or a line of their own when no reply writer asked)."""
        if reported is not None:
            used = usage.Usage(*reported, reported=True)
        else:
            tokenizer = self._tokenizer = self._tokenizer or load_tokenizer(self.model)
            used = usage.counted([str(m.get("content", "")) for m in payload], answer, tokenizer)
        metrics.llm_tokens(used.prompt, used.completion)
        if meter is not None:
            meter.usage = used
        else:
            log.info("LLM answer of %d chars; %s", len(answer), used)

    def _merge_from_now_on(self, why: str) -> None:
        """Merge runs of user messages in every request to this model from now on; say so once."""
        if not self.merge_user_turns:
            self.merge_user_turns = True
            log.warning("model %s wants user and assistant turns to alternate (%s): merging consecutive user "
                        "messages from now on (LLMBOT_MERGE_USER_TURNS=true does so from the start)", self.model, why)

    def _window(self, deadline: float) -> float:
        """How long the next wait for the server may last: the idle timeout, less if the budget ends first."""
        left = deadline - self._clock()
        if left <= 0:
            raise LLMError(TOO_SLOW, retryable=True)
        return min(self._idle_timeout, left)

    def _next_wait(
        self, error: LLMError, exc: BaseException, attempt: int, yielded: bool, deadline: float
    ) -> tuple[float | None, str]:
        """Seconds to wait before trying again, or None to give up; and the outcome for the log."""
        if yielded:
            return None, "not retried: part of the answer was already streamed"
        if not error.retryable:
            return None, "not retried"
        if attempt > self.retries:
            return None, f"giving up after {attempt} attempt(s)"
        headers = exc.response.headers if isinstance(exc, openai.APIStatusError) else None
        wait = retry_after(headers, time.time())
        if wait is None:
            wait = backoff(attempt, self._rng)
        if self._clock() + wait >= deadline:
            return None, f"giving up: waiting {wait:.1f}s would pass the time limit (LLMBOT_LLM_TIMEOUT)"
        return wait, f"retrying in {wait:.1f}s"

    async def _open(self, payload: list[dict[str, str]], max_tokens: int) -> openai.AsyncStream[object]:
        """The request, in the form this server takes: each refused parameter is given up once, for good."""
        while True:
            try:
                return await self._create(payload, max_tokens)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                text = str(exc)  # matched, never logged
                if self._limit_param == "max_tokens" and "max_completion_tokens" in text:
                    self._limit_param = "max_completion_tokens"
                    log.info("model %s wants max_completion_tokens; using it from now on", self.model)
                elif self._ask_usage and "stream_options" in text:
                    self._ask_usage = False
                    log.info("the LLM server refuses stream_options (HTTP %d): the tokens of each answer are "
                             "counted with the bot's tokenizer from now on", exc.status_code)
                else:
                    raise

    async def _create(self, payload: list[dict[str, str]], max_tokens: int) -> openai.AsyncStream[object]:
        # The request chat.completions.create(stream=True) sends, through the SDK's documented
        # client.post, with chunks left as plain JSON: our messages are plain JSON already, and
        # skipping the SDK's request transform and per-chunk model building saves milliseconds of
        # CPU per turn when hundreds of turns run at once (bench/bench_concurrency.py).
        body: dict[str, object] = {"model": self.model, "messages": payload, "stream": True, self._limit_param: max_tokens}
        if self._ask_usage:  # the answer's tokens, in a last chunk (OpenAI, vLLM, llama.cpp, Ollama)
            body["stream_options"] = {"include_usage": True}
        return await metrics.llm_call(self._client.post(  # counted by status: llmbot_llm_requests_total
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
        ))
