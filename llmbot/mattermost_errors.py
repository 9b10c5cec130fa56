"""The Mattermost adapter's failure vocabulary: every driver, httpx and aiohttp failure mapped to
errors.ChatError types in one function. Imports the driver's exceptions, like mattermost.py."""

from __future__ import annotations

import json

import aiohttp
import httpx
from mattermostautodriver import exceptions as mm

from .errors import (
    ChatAuthError,
    ChatBadRequest,
    ChatError,
    ChatForbidden,
    ChatNotFound,
    ChatRateLimited,
    ChatTLSError,
    ChatUnavailable,
)
from .network import tls_problem

# Failures of the client stack that a translation covers; any other exception is a bug.
# TimeoutError is an OSError; JSONDecodeError is an unreadable body, UnicodeDecodeError its bytes.
_CLIENT_ERRORS = (
    httpx.HTTPError, mm.InvalidMattermostError, aiohttp.ClientError, OSError, json.JSONDecodeError, UnicodeDecodeError,
)


def translate(exc: BaseException) -> ChatError | None:
    """One place that maps driver, httpx and aiohttp failures to our error types; None for
    anything else (a bug of ours or a library's), which the caller re-raises unchanged."""
    if isinstance(exc, ChatError):
        return exc
    if not isinstance(exc, _CLIENT_ERRORS):
        return None
    message = str(exc) or type(exc).__name__
    if isinstance(exc, mm.NoAccessTokenProvided):
        return ChatAuthError(f"Mattermost rejected the token: {message}")
    if isinstance(exc, mm.NotEnoughPermissions):
        return ChatForbidden(message)
    if isinstance(exc, mm.ResourceNotFound):
        return ChatNotFound(message)
    if isinstance(exc, mm.TooManyRequests):  # retry_after: the driver reads Retry-After / X-RateLimit-Reset
        return ChatRateLimited(message, exc.retry_after)
    if isinstance(exc, (mm.InvalidOrMissingParameters, mm.ContentTooLarge)):
        return ChatBadRequest(message)
    if isinstance(exc, mm.MattermostError):  # 5xx and the rarer 4xx (405, 501)
        status = exc.status_code
        error = ChatUnavailable if status >= 500 else ChatError
        return error(f"Mattermost answered {status}: {message}", status)
    if isinstance(exc, mm.InvalidMattermostError):  # an error without Mattermost's JSON body (proxy pages)
        return ChatUnavailable(f"Mattermost answered {exc.status_code} with an unreadable body", exc.status_code)
    if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError)):
        return ChatUnavailable(f"Mattermost answered with an unreadable body: {message}")
    problem = tls_problem(exc)
    if problem is not None:
        return ChatTLSError(problem)
    return ChatUnavailable(f"Mattermost could not be reached: {_root_cause(exc)}")


def _root_cause(exc: BaseException) -> str:
    """The transport failure as aiohttp saw it: httpx_aiohttp re-raises a refused connection as
    httpx's ConnectTimeout, whose name would send an admin looking for a slow server."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, aiohttp.ClientError) and cause.__cause__ is not None:
        cause = cause.__cause__
    shown = cause if isinstance(cause, aiohttp.ClientError) else exc
    return f"{type(shown).__name__}: {shown}" if str(shown) else type(shown).__name__
