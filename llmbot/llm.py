"""LLM adapter over openai.AsyncOpenAI: the only module that imports openai.

One call, `stream(messages, max_tokens)`, yields text deltas; every SDK error becomes LLMError.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence

import openai

from .config import Settings
from .context import ChatMessage
from .errors import ContextTooLong, LLMError

log = logging.getLogger(__name__)


def translate(exc: BaseException, model: str) -> LLMError:
    """Map an SDK or transport failure to an LLMError whose reason is safe to post."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, openai.APIConnectionError) and _refused(exc):
        # the aiohttp transport reports a refused connection as a connect *timeout*
        return LLMError("the language model server could not be reached", retryable=True)
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return LLMError("the language model took too long to answer", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("the language model server could not be reached", retryable=True)
    if isinstance(exc, openai.RateLimitError):
        return LLMError("the language model is rate-limited right now", retryable=True)
    if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return LLMError("the language model server rejected the bot's API key")
    if isinstance(exc, openai.NotFoundError):
        return LLMError(f"the language model server does not know the model {model!r}")
    if isinstance(exc, openai.BadRequestError):
        text = f"{getattr(exc, 'code', '') or ''} {exc}".lower()
        if "context_length" in text or "context length" in text or "maximum context" in text or "too many tokens" in text:
            return ContextTooLong("the conversation is too long for the model")
        return LLMError("the language model server refused the request")
    if isinstance(exc, openai.APIStatusError):
        return LLMError(f"the language model server failed (HTTP {exc.status_code})", retryable=exc.status_code >= 500)
    return LLMError("the language model stopped in the middle of the answer", retryable=True)


def chunk_text(chunk: object) -> str:
    """The text of one streamed chat.completion.chunk (JSON); "" for anything else."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return ""
    parts = []
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


def _refused(exc: BaseException) -> bool:
    """Does the cause chain hold an OS-level connection failure (refused, unreachable, DNS)?"""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class OpenAIChat:
    """Chat completions from any OpenAI-compatible server (OpenAI, Azure, vLLM, Ollama...)."""

    def __init__(self, settings: Settings, *, max_retries: int = 2) -> None:
        self.model = settings.model
        self._total_timeout = settings.llm_timeout
        # The SDK's timeout bounds connecting and each read, i.e. also the silence between chunks.
        self._client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout,
            max_retries=max_retries,
            http_client=openai.DefaultAioHttpClient(),  # aiohttp: far less CPU per request than httpcore
        )
        # Newer OpenAI models want max_completion_tokens; most compatible servers know only max_tokens.
        self._limit_param = "max_tokens"

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, messages: Sequence[ChatMessage], max_tokens: int) -> AsyncGenerator[str, None]:
        """Yield the answer's text as it arrives. Raises LLMError."""
        try:
            async with asyncio.timeout(self._total_timeout):
                stream = await self._open(messages, max_tokens)
                try:
                    async for chunk in stream:
                        delta = chunk_text(chunk)
                        if delta:
                            yield delta
                finally:
                    await stream.close()
        except (Exception, asyncio.TimeoutError) as exc:  # noqa: BLE001 - translated, never leaked
            error = translate(exc, self.model)
            log.warning("LLM call failed: %s (%s: %s)", error.reason, type(exc).__name__, exc)
            raise error from exc

    async def _open(self, messages: Sequence[ChatMessage], max_tokens: int) -> openai.AsyncStream[object]:
        payload = [m.as_dict() for m in messages]
        try:
            return await self._create(payload, max_tokens)
        except openai.BadRequestError as exc:
            if self._limit_param == "max_tokens" and "max_completion_tokens" in str(exc):
                self._limit_param = "max_completion_tokens"
                log.info("model %s wants max_completion_tokens; using it from now on", self.model)
                return await self._create(payload, max_tokens)
            raise

    async def _create(self, payload: list[dict[str, str]], max_tokens: int) -> openai.AsyncStream[object]:
        # The request chat.completions.create(stream=True) sends, through the SDK's documented
        # client.post, with chunks left as plain JSON: our messages are plain JSON already, and
        # skipping the SDK's request transform and per-chunk model building saves milliseconds of
        # CPU per turn when hundreds of turns run at once (bench/bench_concurrency.py).
        body = {"model": self.model, "messages": payload, "stream": True, self._limit_param: max_tokens}
        return await self._client.post(
            "/chat/completions", body=body, cast_to=object, stream=True, stream_cls=openai.AsyncStream[object]
        )

    async def check(self) -> str | None:
        """None if the server answers and knows the model, else a one-line problem."""
        try:
            models = [m.id async for m in self._client.models.list()]
        except openai.NotFoundError:
            return None  # some compatible servers have no /models; the first turn will tell
        except Exception as exc:  # noqa: BLE001
            return f"LLM: {translate(exc, self.model).reason} (OPENAI_BASE_URL={self._client.base_url})"
        if models and self.model not in models:
            return f"LLM: the server does not list the model {self.model!r} (LLMBOT_MODEL); it has: {', '.join(models[:10])}"
        return None
