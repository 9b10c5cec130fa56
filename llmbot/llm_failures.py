"""The LLM adapter's failure vocabulary: which exceptions a server (or the way to it) can cause,
what each means for the user, and how long to wait before trying again. Imports openai, like llm.py.

Failures that pass (a 429, a 5xx, the network) are retryable LLMErrors; the ones only an admin can
cure (a rejected key, an unknown model, a wrong address, an untrusted certificate) are
LLMMisconfigured, naming the setting to fix."""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Callable, Mapping
from datetime import UTC

import aiohttp
import httpx2
import openai

from .alternation import is_alternation_error
from .errors import ContextTooLong, LLMError, LLMMisconfigured
from .network import tls_problem

BACKOFF_BASE = 0.5  # seconds before the first retry, at most (full jitter)
BACKOFF_CAP = 8.0
RETRY_AFTER_CAP = 60.0  # a server asking for longer is waited on this long, budget permitting

TOO_SLOW = "the language model took too long to answer"
STALLED = "the language model stopped answering"
MIDWAY = "the language model stopped in the middle of the answer"
EMPTY = "the language model sent no answer"
TOO_LONG = "the conversation is too long for the model"
CUT = "the answer reached its length limit (LLMBOT_MAX_REPLY_TOKENS)"
UNMERGEABLE = "the language model's chat template refused the conversation (roles must alternate), merged or not"

# What a server, or the way to it, can do to a request; only these are translated. httpx2 and aiohttp
# are the SDK's transport; json: a malformed chunk; OSError takes in TimeoutError and ssl errors.
FAILURES: tuple[type[Exception], ...] = (
    openai.APIError, httpx2.HTTPError, aiohttp.ClientError, OSError, UnicodeError, json.JSONDecodeError,
)


class EmptyStream(Exception):
    """The event stream ended with no text and no finish_reason: llama.cpp's way to fail after its 200."""

    def __str__(self) -> str:
        return "HTTP 200, but the event stream ended with no text, no finish_reason and no [DONE]"


CAUGHT: tuple[type[Exception], ...] = (LLMError, EmptyStream, *FAILURES)


def attempt_error(
    exc: BaseException, model: str, base_url: str, *, timed_out_early: bool, yielded: bool, near_limit: bool, merged: bool
) -> LLMError:
    """What one failed attempt of a streamed answer means: `timed_out_early` when our window was
    cut short by the answer's whole time limit; `yielded` when text went out already; `near_limit`
    when the prompt was near its budget; `merged` when its user turns were merged."""
    if isinstance(exc, EmptyStream):
        return ContextTooLong(TOO_LONG) if near_limit else LLMError(EMPTY, retryable=True)
    if merged and refuses_roles(exc):
        return LLMError(UNMERGEABLE)
    if isinstance(exc, asyncio.TimeoutError):  # one of our windows ran out
        if timed_out_early:
            return LLMError(TOO_SLOW, retryable=True)  # the whole budget, not the idle limit
        return LLMError(STALLED if yielded else TOO_SLOW, retryable=True)
    if yielded and isinstance(exc, openai.APIConnectionError):
        return LLMError(MIDWAY, retryable=True)  # it was reached: it answered in part
    return translate(exc, model, base_url)


def translate(exc: BaseException, model: str, base_url: str = "") -> LLMError:
    """Map an LLMError or a FAILURES exception to an LLMError whose reason is safe to post."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, UnicodeError):  # text that can't be sent as UTF-8: retrying can't help
        return LLMError("the conversation holds text that cannot be sent to the language model")
    misconfigured = _misconfigured(exc, model, base_url)
    if misconfigured is not None:
        return misconfigured
    if isinstance(exc, openai.APIConnectionError) and _refused(exc):
        # the aiohttp transport reports a refused connection as a connect *timeout*
        return LLMError("the language model server could not be reached", retryable=True)
    if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
        return LLMError("the language model took too long to answer", retryable=True)
    if isinstance(exc, openai.APIConnectionError):
        return LLMError("the language model server could not be reached", retryable=True)
    if isinstance(exc, openai.RateLimitError):
        return LLMError("the language model is rate-limited right now", retryable=True)
    if isinstance(exc, openai.BadRequestError):
        text = f"{getattr(exc, 'code', '') or ''} {exc}".lower()
        if "context_length" in text or "context length" in text or "maximum context" in text or "too many tokens" in text:
            return ContextTooLong(TOO_LONG)
        return LLMError("the language model server refused the request")
    if isinstance(exc, openai.APIStatusError):
        return LLMError(f"the language model server failed (HTTP {exc.status_code})", retryable=exc.status_code >= 500)
    if isinstance(exc, json.JSONDecodeError):
        return LLMError("the language model server sent a malformed answer", retryable=True)
    return LLMError(MIDWAY, retryable=True)  # the rest of FAILURES: the transport broke mid-way


def _misconfigured(exc: BaseException, model: str, base_url: str) -> LLMMisconfigured | None:
    """The failures no retry cures, each with the setting that does."""
    at = f" at {base_url}" if base_url else ""
    problem = tls_problem(exc)
    if problem is not None:
        return LLMMisconfigured("the language model server's TLS certificate was not accepted", setting="SSL_CERT_FILE",
                                fix=f"{problem} (OPENAI_BASE_URL={base_url})" if base_url else problem)
    if isinstance(exc, openai.AuthenticationError):
        return LLMMisconfigured("the language model rejected my API key", setting="OPENAI_API_KEY",
                                fix=f"set OPENAI_API_KEY to a key the server{at} accepts")
    if isinstance(exc, openai.PermissionDeniedError):
        return LLMMisconfigured("the language model refused my API key access", setting="OPENAI_API_KEY",
                                fix=f"give the key access to the model {model!r} (LLMBOT_MODEL), "
                                    "or set OPENAI_API_KEY to a key that has it")
    if isinstance(exc, openai.NotFoundError):
        if getattr(exc, "code", None) == "model_not_found" or "model" in str(exc).lower():  # str(): matched, never logged
            return LLMMisconfigured(f"the language model server does not know the model {model!r}", setting="LLMBOT_MODEL",
                                    fix="set LLMBOT_MODEL to a model the server lists (`llmbot check` shows them)")
        return LLMMisconfigured("the language model server has no chat completions at its address", setting="OPENAI_BASE_URL",
                                fix=f"OPENAI_BASE_URL={base_url or '?'} answers 404: set it to the API's base URL, "
                                    "which usually ends in /v1")
    return None


def retry_after(headers: Mapping[str, str] | None, now: float) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, or Retry-After in seconds or as an
    HTTP date, `now` being the wall clock), within [0, RETRY_AFTER_CAP]; None if it did not say.

    `headers` must look names up case-insensitively, as the SDK's response headers do.
    """
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds == seconds:  # not NaN
            return min(max(seconds, 0.0), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(headers.get("retry-after") or "")
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC too
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now, 0.0), RETRY_AFTER_CAP)


def backoff(attempt: int, rng: Callable[[], float]) -> float:
    """The wait after failed attempt number `attempt` (1, 2, ...): exponential with full jitter."""
    return rng() * min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(attempt - 1, 32))


def describe(exc: BaseException, reason: str = "") -> str:
    """The exception's type (and HTTP status, unless `reason` says it) for a log line; never its text,
    which may echo secrets. A connection failure names aiohttp's exception too: the transport
    reports a refused connection or an untrusted certificate as a connect *timeout*."""
    if isinstance(exc, openai.APIStatusError):
        status = f"HTTP {exc.status_code}"
        return type(exc).__name__ if status in reason else f"{type(exc).__name__}, {status}"
    if isinstance(exc, EmptyStream):
        return str(exc)  # our own words
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, aiohttp.ClientError):
            cause = cause.__cause__
        if cause is not None:
            return f"{type(exc).__name__} from {type(cause).__name__}"
    return type(exc).__name__


def refuses_roles(exc: BaseException) -> bool:
    """Is this the error of a chat template that wants user and assistant turns to alternate?"""
    return isinstance(exc, openai.APIStatusError) and is_alternation_error(str(exc))  # str(): matched, never logged


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
