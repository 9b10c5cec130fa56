"""A loopback fake of the OpenAI chat completions API (streaming and not).

Each request takes the next scripted reply from a queue (``enqueue``), or asks
``responder`` when the queue is empty. Handlers only ``await asyncio.sleep``,
so any number of slow requests are served concurrently (benchmarks).

Faults, per scripted reply (``enqueue`` keywords):
    status=429, headers={"Retry-After": "2"}   an error reply, with any headers
    fail_after=N       drop the connection after N streamed chunks
    stall_after=N      go silent after N chunks (0: right after the headers), connection open
    stall_headers=True go silent before even the response headers
    finish_reason="length"  end the stream with that finish_reason (default: "stop"; "": the body
                       ends after the chunks, with no finish_reason and no [DONE])
    empty_stream=True  200, event-stream headers, an empty body and the connection closed, as below
                       (not streamed: a 500)
A stalled reply holds until the client hangs up or the server stops.

What llama.cpp's server does (as measured on llama-cpp-python 0.3.36), off by default:
    context_window=N   prompts of N tokens or more (words, as in usage) fail: streamed, with 200,
                       event-stream headers and an empty body (the chunked body just ends: no
                       chunk, no [DONE]); not streamed, with 400
                       context_length_exceeded. A prompt that fits lowers max_tokens to what the
                       window leaves.
    strict_alternation a request whose non-system messages do not go user, assistant, user...
                       gets a 500 "Conversation roles must alternate ..." (vLLM, non-streamed
                       llama-cpp-python); alternation_failure="empty": a streamed one gets the empty
                       stream instead, as llama-cpp-python does
After an empty stream llama-cpp-python closes the connection (~3 ms later) though its headers said
keep-alive: a client quick to reuse it has its next request reset. The fake makes the client always
lose that race: the next request on that connection is reset, unanswered and not recorded.
A reply with more chunks than max_tokens (a chunk being a token) is cut there, with finish_reason "length".

Options of the server, off by default:
    check_model        a request for a model not in ``models`` gets OpenAI's 404 model_not_found
    reject_stream_options  a request with stream_options gets a 400 "Unrecognized request argument
                       supplied: stream_options", as older Azure API versions answer
    send_usage=False   stream_options.include_usage is ignored: no usage chunk, as some servers do
``start(ssl_context=...)`` serves HTTPS (``base_url`` says https then).

Random faults for soak tests: ``fail_rate(0.2, seed=1)`` makes about 20% of the
requests fail, each either with one of the statuses (429 carries Retry-After: 0)
or by dropping the stream after one chunk; the rest are served as usual.
``faults_injected`` and ``faults_by_kind`` ("429", "drop", ...) count them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# (type, code) of the real API's error bodies, by status.
_ERROR_KINDS = {400: ("invalid_request_error", None), 401: ("invalid_request_error", "invalid_api_key"),
                403: ("permission_error", None), 404: ("invalid_request_error", None),
                429: ("requests", "rate_limit_exceeded")}


def _json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status,
                        content_type="application/json", headers=headers)


def _error_body(status: int, message: str) -> dict:
    type_, code = _ERROR_KINDS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


@dataclass
class Reply:
    """One scripted answer (see FakeOpenAI.enqueue)."""

    chunks: list[str] = field(default_factory=list)
    delay: float = 0.0
    first_delay: float = 0.0
    status: int | None = None
    error_body: Any = None
    headers: dict = field(default_factory=dict)
    fail_after: int | None = None
    stall_after: int | None = None
    stall_headers: bool = False
    finish_reason: str | None = None
    empty_stream: bool = False


class FakeOpenAI:
    """In-process OpenAI-compatible server on 127.0.0.1 (random port)."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.api_key = "sk-test"
        self.models = ["gpt-4o-mini"]
        self.responder: Callable[[dict], Any] | None = None
        self.default_first_delay = 0.0
        self.context_window: int | None = None
        self.strict_alternation = False
        self.alternation_failure = "500"  # or "empty"
        self.check_model = False
        self.reject_stream_options = False
        self.send_usage = True
        self.scheme = "http"
        self.requests: list[dict] = []
        self.headers_seen: list[dict] = []
        self.faults_injected = 0
        self.faults_by_kind: Counter[str] = Counter()
        self._queue: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self._dead: set[Any] = set()  # transports whose next request is reset (see the module docstring)
        self._fault_rate = 0.0
        self._fault_rng = random.Random(0)
        self._fault_kinds: tuple[int | str, ...] = ()

    async def start(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._stopping = False
        self.scheme = "https" if ssl_context is not None else "http"
        app = web.Application(middlewares=[self._auth_middleware])
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._list_models)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        # A deep backlog: benchmarks open hundreds of connections at once.
        site = web.TCPSite(self._runner, self.host, 0, backlog=1024, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._stopping = True  # releases stalled replies
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/v1"

    def enqueue(self, chunks: list[str] | tuple[str, ...] = (), *, delay: float = 0.0, first_delay: float = 0.0,
                status: int | None = None, error_body: Any = None, headers: dict | None = None,
                fail_after: int | None = None, stall_after: int | None = None, stall_headers: bool = False,
                finish_reason: str | None = None, empty_stream: bool = False) -> None:
        """Script the reply to the next request (FIFO)."""
        self._queue.append(Reply(list(chunks), delay, first_delay, status, error_body, dict(headers or {}),
                                 fail_after, stall_after, stall_headers, finish_reason, empty_stream))

    def fail_rate(self, probability: float, seed: int, statuses: tuple[int, ...] = (429, 500, 502, 503)) -> None:
        """Fail about `probability` of the chat requests from now on (0 turns it off); see the module docstring.

        The draws come from random.Random(seed) in arrival order, so a run's fault count is reproducible.
        Each call starts a new run: the counters go back to zero.
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], not {probability!r}")
        self.faults_injected = 0
        self.faults_by_kind.clear()
        self._fault_rate = probability
        self._fault_rng = random.Random(seed)
        self._fault_kinds = (*statuses, "drop")

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        return len(self._queue)

    # ---------------------------------------------------------------- handlers
    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return _json_response(_error_body(401, "Incorrect API key provided."), 401)
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _json_response(_error_body(exc.status, exc.reason), exc.status)

    async def _list_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return _json_response({"object": "list", "data": data})

    async def _next_reply(self, body: dict) -> Reply:
        fault = self._draw_fault()
        if fault is not None and fault != "drop":
            headers = {"Retry-After": "0"} if fault == 429 else {}
            return Reply(status=int(fault), headers=headers, first_delay=self.default_first_delay)
        if fault == "drop":
            # The text a normal reply would have, cut after one chunk; the script queue is left alone.
            reply = await self._responder_reply(body)
            reply.fail_after = 1
            return reply
        if self._queue:
            return self._queue.popleft()
        return await self._responder_reply(body)

    async def _responder_reply(self, body: dict) -> Reply:
        chunks: Any = ["ok"]
        if self.responder is not None:
            chunks = self.responder(body)
            if inspect.isawaitable(chunks):
                chunks = await chunks
        return Reply(list(chunks), first_delay=self.default_first_delay)

    def _draw_fault(self) -> int | str | None:
        if not self._fault_rate or self._fault_rng.random() >= self._fault_rate:
            return None
        fault = self._fault_rng.choice(self._fault_kinds)
        self.faults_injected += 1
        self.faults_by_kind[str(fault)] += 1
        return fault

    async def _hold(self, request: web.Request) -> None:
        """Send nothing until the client hangs up or the server stops: a stalled upstream."""
        while not self._stopping and request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110 - polls a transport, which has no event to wait on
            await asyncio.sleep(0.01)

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        if request.transport in self._dead:
            self._dead.discard(request.transport)
            self._abort(request)
            return web.Response()
        try:
            body = await request.json()
        except ValueError:
            return _json_response(_error_body(400, "We could not parse the JSON body of your request."), 400)
        if not isinstance(body, dict):
            return _json_response(_error_body(400, "Request body must be a JSON object."), 400)
        self.requests.append(body)
        self.headers_seen.append(dict(request.headers))
        refused = await self._refuse(request, body)
        if refused is not None:
            return refused
        reply = self._fit(body, await self._next_reply(body))
        if reply.stall_headers:
            await self._hold(request)
            self._abort(request)
            return web.Response()
        if reply.empty_stream and body.get("stream"):
            return await self._empty_stream(request)
        if reply.status is not None or reply.empty_stream:
            reply.status = reply.status or 500
            await asyncio.sleep(reply.first_delay)
            err = reply.error_body
            if err is None:
                err = _error_body(reply.status, f"fake error {reply.status}")
            raw = err.encode() if isinstance(err, str) else json.dumps(err).encode()
            return web.Response(body=raw, status=reply.status, content_type="application/json",
                                headers=reply.headers)
        if body.get("stream"):
            return await self._stream(request, body, reply)
        await asyncio.sleep(reply.first_delay)
        if reply.stall_after is not None:
            await self._hold(request)
        if reply.fail_after is not None or reply.stall_after is not None:
            self._abort(request)
            return web.Response()
        text = "".join(reply.chunks)
        return _json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""), "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": reply.finish_reason or "stop"}],
            "usage": self._usage(body, reply.chunks),
        }, headers=reply.headers)

    async def _stream(self, request: web.Request, body: dict, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           **reply.headers})
        await resp.prepare(request)  # headers go out at once; tokens follow, like the real API
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        include_usage = self.send_usage and bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish_reason: str | None = None, choices: bool = True) -> bytes:
            data = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": body.get("model", ""), "system_fingerprint": None,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
                    if choices else []}
            if include_usage:
                data["usage"] = None if choices else self._usage(body, reply.chunks)
            return f"data: {json.dumps(data)}\n\n".encode()

        await asyncio.sleep(reply.first_delay)
        for i, text in enumerate(reply.chunks):
            if reply.fail_after is not None and i >= reply.fail_after:
                break
            if reply.stall_after is not None and i >= reply.stall_after:
                break
            if i:
                await asyncio.sleep(reply.delay)
            await resp.write(chunk({"role": "assistant", "content": text} if i == 0 else {"content": text}))
        if reply.stall_after is not None:  # past the last chunk: before the final one and [DONE]
            await self._hold(request)
            self._abort(request)
            return resp
        if reply.fail_after is not None:
            self._abort(request)
            return resp
        if reply.finish_reason == "":  # the body just ends: no finish_reason, no [DONE]
            await resp.write_eof()
            return resp
        if not reply.chunks:
            await resp.write(chunk({"role": "assistant", "content": ""}))
        await resp.write(chunk({}, reply.finish_reason or "stop"))
        if include_usage:
            await resp.write(chunk({}, choices=False))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _refuse(self, request: web.Request, body: dict) -> web.StreamResponse | None:
        """The answer to a request this server cannot take (see the module docstring), if any."""
        if self.check_model and body.get("model") not in self.models:
            message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            return _json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                             "code": "model_not_found"}}, 404)
        if self.reject_stream_options and "stream_options" in body:
            message = "Unrecognized request argument supplied: stream_options"
            return _json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                             "code": None}}, 400)
        # the fake's own check, not llmbot's: a test of llmbot's merge must not grade itself
        roles = [m.get("role") for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") != "system"]
        if self.strict_alternation and roles != ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2):
            if body.get("stream") and self.alternation_failure == "empty":
                return await self._empty_stream(request)
            message = "Conversation roles must alternate user/assistant/user/assistant/..."
            return _json_response({"error": {"code": 500, "message": message, "type": "server_error"}}, 500)
        prompt = self._prompt_tokens(body)
        if self.context_window is None or prompt < self.context_window:
            return None
        if body.get("stream"):  # llama.cpp fails only once the 200 and the headers went out
            return await self._empty_stream(request)
        message = (f"This model's maximum context length is {self.context_window} tokens. However, you requested "
                   f"{prompt} tokens in the messages. Please reduce the length of the messages.")
        return _json_response({"error": {"message": message, "type": "invalid_request_error",
                                         "param": "messages", "code": "context_length_exceeded"}}, 400)

    async def _empty_stream(self, request: web.Request) -> web.StreamResponse:
        """200, event-stream headers, then an empty body: no chunk, no [DONE]; the connection is dead."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write_eof()
        self._dead.add(request.transport)
        return resp

    def _fit(self, body: dict, reply: Reply) -> Reply:
        """Cut the reply at max_tokens, lowered to what the context window leaves, as llama.cpp does."""
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        if self.context_window is not None:
            room = self.context_window - self._prompt_tokens(body)
            limit = room if not isinstance(limit, int) else min(limit, room)
        if isinstance(limit, int) and len(reply.chunks) > limit:
            reply.chunks, reply.finish_reason = reply.chunks[:limit], "length"
        return reply

    @staticmethod
    def _abort(request: web.Request) -> None:
        # Drop the TCP connection mid-response: the client sees a truncated
        # chunked body, as when an upstream dies halfway through a stream.
        if request.transport is not None:
            request.transport.abort()

    @staticmethod
    def _prompt_tokens(body: dict) -> int:
        # Rough token counts (words); enough for code that only logs or sums them, or tests a limit.
        return sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []) if isinstance(m, dict))

    @classmethod
    def _usage(cls, body: dict, chunks: list[str]) -> dict:
        prompt = cls._prompt_tokens(body)
        completion = len(chunks)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
