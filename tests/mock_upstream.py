"""A real HTTP mock of an OpenAI-compatible provider, at the far end of the gateway under test.

The gateway forwards to it over real TCP and tests assert on what it recorded. It runs an aiohttp
server on 127.0.0.1 (a free port) in a background thread with its own event loop, so synchronous
tests and a gateway subprocess can both reach it.

Unscripted answers are deterministic and OpenAI-shaped (they validate against the OpenAPI spec):
chat content is ``"echo: " + <last user text>`` (its first text part when the content is a list;
``" #i"`` appended for choice ``i > 0``), streamed
in up to four pieces split at word boundaries. ``script(model, Reply...)`` overrides the next
requests for one model with errors, delays, broken streams or dropped connections. A body field
``mock_cached_tokens`` is reported back as ``usage.prompt_tokens_details.cached_tokens``.

Every request is recorded before any answer. The server runs with handler cancellation, so a
client that goes away (even while the mock sleeps) cancels the handler and marks ``disconnected``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import itertools
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal

import orjson
from aiohttp import web

JSON = dict[str, Any]
_ReplyKind = Literal[
    "error", "raw", "delay", "stream_error", "reset", "slow_stream", "malformed_sse", "close"
]
_TOOL_ARGUMENTS = '{"x": 1}'


def _openrouter_model(
    model_id: str, context_length: int, prompt: str, completion: str, cache_read: str = ""
) -> JSON:
    """A model entry as OpenRouter lists it: OpenAI's four fields plus context and pricing."""
    pricing = {"prompt": prompt, "completion": completion}
    if cache_read:
        pricing["input_cache_read"] = cache_read
    return {
        "id": model_id,
        "object": "model",
        "created": 1700000000,
        "owned_by": "mock",
        "context_length": context_length,
        "pricing": pricing,
    }


_DEFAULT_MODELS = [
    _openrouter_model("mock/gpt", 8192, "0.000001", "0.000002", cache_read="0.0000001"),
    _openrouter_model("mock/small", 2048, "0.0000005", "0.000001"),
    _openrouter_model("mock/tool", 8192, "0.000002", "0.000004"),
]


@dataclass
class Recorded:
    """One request the mock received; the last two fields are updated as the answer goes out."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any  # parsed body, or None when absent or not JSON
    disconnected: bool = False  # the client went away before the answer finished
    completed: bool = False  # the whole answer was handed to the socket


@dataclass(frozen=True)
class Reply:
    """One scripted behaviour; build it with the classmethods, not the constructor."""

    kind: _ReplyKind
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    n_chunks: int = 0
    stream_error: Any = None  # the inner error object for stream_error_after

    @classmethod
    def error(cls, status: int, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        """JSON error; default body is OpenAI's ``{"error": {message, type, param, code}}``."""
        payload = _error_body(status) if body is None else body
        return cls("error", status=status, body=orjson.dumps(payload), headers=dict(headers or {}))

    @classmethod
    def raw(
        cls,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Exactly these bytes, e.g. malformed JSON or an HTML error page from a proxy."""
        return cls("raw", status, body, content_type, dict(headers or {}))

    @classmethod
    def delay(cls, seconds: float) -> Reply:
        """Sleep, then answer as if nothing was scripted (for client timeouts)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def stream_error_after(cls, n_chunks: int, error: Any = None) -> Reply:
        """Stream ``n_chunks`` normal chunks, then a ``data: {"error": ...}`` event, and end."""
        return cls("stream_error", n_chunks=n_chunks, stream_error=error)

    @classmethod
    def reset_after(cls, n_chunks: int) -> Reply:
        """Stream ``n_chunks`` normal chunks, then reset the TCP connection (RST)."""
        return cls("reset", n_chunks=n_chunks)

    @classmethod
    def slow_stream(cls, n_chunks: int, interval: float) -> Reply:
        """Stream ``n_chunks`` content chunks (``"part{i} "``), ``interval`` seconds apart."""
        return cls("slow_stream", n_chunks=n_chunks, seconds=interval)

    @classmethod
    def malformed_sse(cls) -> Reply:
        """A 200 event stream whose data lines are not JSON, then ``[DONE]``."""
        return cls("malformed_sse")

    @classmethod
    def close_connection(cls) -> Reply:
        """Read the request, then close the socket without sending any response."""
        return cls("close")


class MockUpstream:
    """The mock provider: ``with MockUpstream() as upstream: ... upstream.base_url ...``."""

    def __init__(self, models: list[JSON] | None = None) -> None:
        self.models: list[JSON] = copy.deepcopy(_DEFAULT_MODELS if models is None else models)
        self.requests: list[Recorded] = []
        self.port = 0
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self._ids = itertools.count(1)
        self.responses: dict[str, JSON] = {}  # what /v1/responses created, by id (its own store)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> MockUpstream:
        if self._loop is not None:
            raise RuntimeError("MockUpstream is already running")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="mock-upstream", daemon=True
        )
        self._thread.start()
        try:
            self._runner = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._shutdown(self._runner), loop).result(15)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)
            loop.close()
            self._loop = self._thread = self._runner = None

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def script(self, model: str, *replies: Reply) -> None:
        """Queue replies for requests whose JSON ``model`` is ``model``, one per request."""
        with self._lock:
            self._scripts.setdefault(model, deque()).extend(replies)

    def requests_for(self, model: str) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if isinstance(r.json, dict) and r.json.get("model") == model
            ]

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 5.0) -> Recorded:
        """Poll until a recorded request matches; ``AssertionError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                seen = list(self.requests)
            for recorded in seen:
                if predicate(recorded):
                    return recorded
            if time.monotonic() >= deadline:
                summary = [(r.method, r.path, r.disconnected, r.completed) for r in seen]
                raise AssertionError(f"no recorded request matched within {timeout}s: {summary}")
            time.sleep(0.01)

    # --- server lifecycle (runs on the mock's own loop) ---

    async def _serve(self) -> web.AppRunner:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Cancellation is how a vanished client is noticed while a handler sleeps; a short
        # shutdown_timeout because answers still in flight at teardown are not worth waiting for.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.port = runner.addresses[0][1]
        return runner

    @staticmethod
    async def _shutdown(runner: web.AppRunner) -> None:
        await runner.cleanup()
        current = asyncio.current_task()
        leftovers = [task for task in asyncio.all_tasks() if task is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await asyncio.sleep(0)  # let closed transports run connection_lost and release sockets
        await asyncio.get_running_loop().shutdown_asyncgens()
        await asyncio.get_running_loop().shutdown_default_executor()

    # --- request handling ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        reply = self._next_reply(recorded.json)
        try:
            if reply is not None and reply.kind != "delay":
                return await self._scripted(request, recorded, reply)
            if reply is not None:
                await asyncio.sleep(reply.seconds)
            return await self._default(request, recorded)
        except asyncio.CancelledError:
            recorded.disconnected = True
            raise
        except ConnectionResetError:
            recorded.disconnected = True
            return web.Response()  # aiohttp finds the socket dead and drops it quietly

    async def _record(self, request: web.Request) -> Recorded:
        body = await request.read()
        recorded = Recorded(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={name.lower(): value for name, value in request.headers.items()},
            body=body,
            json=_parse_json(body),
        )
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _next_reply(self, body: Any) -> Reply | None:
        model = body.get("model") if isinstance(body, dict) else None
        with self._lock:
            queue = self._scripts.get(model) if isinstance(model, str) else None
            return queue.popleft() if queue else None

    async def _default(self, request: web.Request, recorded: Recorded) -> web.StreamResponse:
        method, path = request.method, request.path
        if (method, path) == ("POST", "/v1/chat/completions"):
            return await self._chat(request, recorded)
        if (method, path) == ("POST", "/v1/responses"):
            return await self._responses(request, recorded)
        if (method, path) == ("POST", "/v1/messages"):
            return await _messages(request, recorded)
        if (method, path) == ("POST", "/v1/embeddings"):
            return await _send_json(request, recorded, *_embeddings(recorded.json))
        if (method, path) == ("GET", "/v1/models"):
            return await _send_json(request, recorded, 200, {"object": "list", "data": self.models})
        if method == "GET" and path.startswith("/v1/models/"):
            return await _send_json(
                request, recorded, *self._model(path.removeprefix("/v1/models/"))
            )
        message = f"Invalid URL ({method} {path})"
        return await _send_json(request, recorded, 404, _error_body(404, message, code=None))

    def _model(self, model_id: str) -> tuple[int, JSON]:
        for model in self.models:
            if model.get("id") == model_id:
                return 200, model
        message = f"The model '{model_id}' does not exist"
        return 404, _error_body(404, message, param="model")

    async def _chat(self, request: web.Request, recorded: Recorded) -> web.StreamResponse:
        problem = _chat_problem(recorded.json)
        if problem is not None:
            return await _send_json(request, recorded, 400, problem)
        plan = self._plan(recorded.json)
        if not recorded.json.get("stream"):
            return await _send_json(request, recorded, 200, _completion(plan))
        events = [(0.0, _sse(chunk)) for chunk in _chunks(plan)]
        return await _stream(request, recorded, [*events, (0.0, b"data: [DONE]\n\n")])

    async def _responses(self, request: web.Request, recorded: Recorded) -> web.StreamResponse:
        """OpenAI's Responses API, as a provider that serves it natively: ``echo: <the first text
        part of the latest user item>`` or a call of the first function tool; ``store`` honoured
        and ``previous_response_id`` checked against what it stored."""
        body = recorded.json
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return await _send_json(request, recorded, 400, _error_body(400, param="model"))
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.responses:
            message = f"Previous response with id '{previous}' not found."
            error = _error_body(400, message, param="previous_response_id", code=None)
            return await _send_json(request, recorded, 400, error)
        resp_id = f"resp_mock{next(self._ids):06d}"
        response = _response_object(resp_id, body)
        if body.get("store", True):
            self.responses[resp_id] = response
        if not body.get("stream"):
            return await _send_json(request, recorded, 200, response)
        return await _stream(request, recorded, [(0.0, e) for e in _response_events(response)])

    async def _scripted(
        self, request: web.Request, recorded: Recorded, reply: Reply
    ) -> web.StreamResponse:
        if reply.kind in ("error", "raw"):
            headers = {"Content-Type": reply.content_type, **reply.headers}
            response = web.Response(status=reply.status, body=reply.body, headers=headers)
            return await _send(request, recorded, response)
        if reply.kind == "close":
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never written: the socket is already closing
        if reply.kind == "malformed_sse":
            junk = [b"data: this is not json\n\n", b'data: {"id": "chatcmpl-\n\n']
            return await _stream(
                request, recorded, [(0.0, b) for b in [*junk, b"data: [DONE]\n\n"]]
            )
        problem = _chat_problem(recorded.json)
        if problem is not None:
            return await _send_json(request, recorded, 400, problem)
        return await self._broken_stream(request, recorded, reply, self._plan(recorded.json))

    async def _broken_stream(
        self, request: web.Request, recorded: Recorded, reply: Reply, plan: _Plan
    ) -> web.StreamResponse:
        if reply.kind == "slow_stream":
            pieces = [f"part{i} " for i in range(reply.n_chunks)]
            plan = replace(
                plan, choices=[replace(c, pieces=pieces, tool_call=None) for c in plan.choices]
            )
            events = [(reply.seconds if _has_content(c) else 0.0, _sse(c)) for c in _chunks(plan)]
            return await _stream(request, recorded, [*events, (0.0, b"data: [DONE]\n\n")])
        head = [(0.0, _sse(chunk)) for chunk in _chunks(plan)[: reply.n_chunks]]
        if reply.kind == "stream_error":
            error = (
                reply.stream_error if reply.stream_error is not None else _error_body(500)["error"]
            )
            return await _stream(request, recorded, [*head, (0.0, _sse({"error": error}))])
        return await _stream(request, recorded, head, then_reset=True)

    def _plan(self, body: JSON) -> _Plan:
        text = _last_user_text(body["messages"])
        tool = _tool_name(body)
        fmt = body.get("response_format")
        as_json = isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")
        call_id = hashlib.sha1(f"{body['model']}:{text}".encode()).hexdigest()[:20]
        choices = [_choice(i, text, tool, as_json, call_id) for i in range(body.get("n") or 1)]
        top = body.get("top_logprobs") or 0
        return _Plan(
            id=f"chatcmpl-mock{next(self._ids):06d}",
            created=int(time.time()),
            model=body["model"],
            choices=choices,
            prompt_tokens=max(1, sum(_words(_text_of(m.get("content"))) for m in body["messages"])),
            top_logprobs=top if body.get("logprobs") else None,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            cached_tokens=body.get("mock_cached_tokens", 0),
        )


# --- completions: what the default chat answer contains ---


@dataclass(frozen=True)
class _Choice:
    index: int
    pieces: list[str]  # content as streamed; joined for the non-stream message
    tool_call: JSON | None


@dataclass(frozen=True)
class _Plan:
    id: str
    created: int
    model: str
    choices: list[_Choice]
    prompt_tokens: int
    top_logprobs: int | None  # None when logprobs were not requested
    include_usage: bool
    cached_tokens: Any = 0  # reported as usage.prompt_tokens_details.cached_tokens


def _choice(index: int, text: str, tool: str | None, as_json: bool, call_id: str) -> _Choice:
    suffix = f" #{index}" if index else ""
    if tool is not None:
        function = {"name": tool, "arguments": _TOOL_ARGUMENTS}
        return _Choice(
            index, [], {"id": f"call_{call_id}{index}", "type": "function", "function": function}
        )
    content = orjson.dumps({"echo": text + suffix}).decode() if as_json else f"echo: {text}{suffix}"
    return _Choice(index, _split(content, 4), None)


def _completion(plan: _Plan) -> JSON:
    choices = [
        {
            "index": c.index,
            "message": {
                "role": "assistant",
                "content": None if c.tool_call else "".join(c.pieces),
                "refusal": None,
                "annotations": [],
                **({"tool_calls": [c.tool_call]} if c.tool_call else {}),
            },
            "logprobs": _logprobs(plan, None if c.tool_call else "".join(c.pieces)),
            "finish_reason": "tool_calls" if c.tool_call else "stop",
        }
        for c in plan.choices
    ]
    return {**_envelope(plan, "chat.completion"), "choices": choices, "usage": _usage(plan)}


def _chunks(plan: _Plan) -> list[JSON]:
    """Every stream chunk but ``[DONE]``, choices interleaved as OpenAI does for ``n > 1``."""
    per_choice = [_choice_deltas(plan, c) for c in plan.choices]
    rounds = itertools.zip_longest(*per_choice)
    chunks = [_chunk(plan, [d]) for deltas in rounds for d in deltas if d is not None]
    if plan.include_usage:
        chunks.append({**_chunk(plan, []), "usage": _usage(plan)})
    return chunks


def _choice_deltas(plan: _Plan, choice: _Choice) -> list[JSON]:
    def delta(body: JSON, logprobs: JSON | None = None, finish: str | None = None) -> JSON:
        return {"index": choice.index, "delta": body, "logprobs": logprobs, "finish_reason": finish}

    if choice.tool_call is None:
        first = delta({"role": "assistant", "content": "", "refusal": None})
        body = [delta({"content": p}, _logprobs(plan, p)) for p in choice.pieces]
        return [first, *body, delta({}, finish="stop")]
    call = choice.tool_call
    head = {"index": 0, "id": call["id"], "type": "function"}
    head["function"] = {"name": call["function"]["name"], "arguments": ""}
    args = [{"index": 0, "function": {"arguments": a}} for a in _split(_TOOL_ARGUMENTS, 3)]
    return [
        delta({"role": "assistant", "content": None, "refusal": None}),
        delta({"tool_calls": [head]}),
        *(delta({"tool_calls": [a]}) for a in args),
        delta({}, finish="tool_calls"),
    ]


def _chunk(plan: _Plan, choices: list[JSON]) -> JSON:
    chunk = {**_envelope(plan, "chat.completion.chunk"), "choices": choices}
    return {**chunk, "usage": None} if plan.include_usage else chunk


def _envelope(plan: _Plan, kind: str) -> JSON:
    return {
        "id": plan.id,
        "object": kind,
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "fp_mock",
        "service_tier": "default",
    }


def _usage(plan: _Plan) -> JSON:
    completion = sum(_words("".join(c.pieces)) + (5 if c.tool_call else 0) for c in plan.choices)
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _logprobs(plan: _Plan, text: str | None) -> JSON | None:
    """Token entries for ``text``; tokens are words with their trailing space, like pieces."""
    if plan.top_logprobs is None:
        return None
    if text is None:
        return {"content": None, "refusal": None}

    def entry(token: str, logprob: float) -> JSON:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    content = []
    for token in _split(text, len(text)):
        best = -round(0.01 * (len(token.strip()) % 10 + 1), 4)
        alternatives = [entry(f" alt{j}", best - j) for j in range(1, plan.top_logprobs)]
        top = [entry(token, best), *alternatives] if plan.top_logprobs else []
        content.append({**entry(token, best), "top_logprobs": top})
    return {"content": content, "refusal": None}


def _chat_problem(body: Any) -> JSON | None:
    """The 400 a provider would send for a body it cannot read, or None if it is usable."""
    if not isinstance(body, dict):
        message = "We could not parse the JSON body of your request. The API expects a JSON object."
        return _error_body(400, message)
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _error_body(400, "you must provide a model parameter", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error_body(400, "'messages' must be a non-empty array", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return _error_body(400, "each message must be an object with a 'role'", param="messages")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        return _error_body(400, f"{n!r} is not a valid value for 'n'", param="n")
    return None


def _last_user_text(messages: list[JSON]) -> str:
    # The first text part only: a model answers the user's words, not the reference data a
    # gateway may append to the same message as a part of its own.
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
                content = content[:1]
            return _text_of(content)
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return " ".join(str(p.get("text", "")) for p in parts)
    return ""


def _tool_name(body: JSON) -> str | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return str(choice["function"].get("name", "tool"))
    first = tools[0] if isinstance(tools[0], dict) else {}
    spec = first.get("function") or first.get("custom") or {}
    return str(spec.get("name", "tool"))


def _split(text: str, parts: int) -> list[str]:
    """Up to ``parts`` pieces cut where whitespace meets a word, so they join back exactly."""
    words = [w for w in re.split(r"(?<=\s)(?=\S)", text) if w] or [text]
    size = -(-len(words) // max(1, parts))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _words(text: str) -> int:
    return len(text.split())


def _has_content(chunk: JSON) -> bool:
    return any(c["delta"].get("content") for c in chunk["choices"])


# --- the Responses API, served natively ---


def _response_object(resp_id: str, body: JSON) -> JSON:
    items = body.get("input")
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items or []
    user = [i for i in items if isinstance(i, dict) and i.get("role") == "user"]
    text = _first_text(user[-1].get("content"), "input_text") if user else ""
    tools = [
        t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"
    ]
    if tools and body.get("tool_choice") != "none":
        output = [{"type": "function_call", "id": f"fc_{resp_id}", "call_id": f"call_{resp_id}",
                   "name": tools[0].get("name", "tool"), "arguments": _TOOL_ARGUMENTS,
                   "status": "completed"}]  # fmt: skip
        out_words = 5
    else:
        part = {"type": "output_text", "text": f"echo: {text}", "annotations": [], "logprobs": []}
        output = [{"type": "message", "id": f"msg_{resp_id}", "status": "completed",
                   "role": "assistant", "content": [part]}]  # fmt: skip
        out_words = _words(f"echo: {text}")
    in_words = max(1, sum(_words(_first_text(i.get("content"), "input_text")) for i in user))
    return {
        "id": resp_id, "object": "response", "created_at": int(time.time()),
        "status": "completed", "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": None,
        "model": body["model"], "output": output, "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"), "store": body.get("store", True),
        "temperature": 1.0, "top_p": 1.0, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "metadata": body.get("metadata") or {},
        "text": {"format": {"type": "text"}}, "truncation": "disabled",
        "usage": {"input_tokens": in_words, "output_tokens": out_words,
                  "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": in_words + out_words},
    }  # fmt: skip


def _response_events(response: JSON) -> list[bytes]:
    """The event sequence OpenAI streams for ``response``: created, each item, completed."""
    started = {k: v for k, v in response.items() if k != "usage"}
    events: list[JSON] = [
        {"type": "response.created", "response": {**started, "status": "in_progress", "output": []}}
    ]
    for index, item in enumerate(response["output"]):
        events.append({"type": "response.output_item.added", "output_index": index,
                       "item": {**item, "status": "in_progress"}})  # fmt: skip
        if item["type"] == "message":
            text = item["content"][0]["text"]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            empty = {**item["content"][0], "text": ""}
            events.append({"type": "response.content_part.added", **where, "part": empty})
            for piece in _split(text, 4):
                events.append({"type": "response.output_text.delta", **where, "delta": piece,
                               "logprobs": []})  # fmt: skip
            events.append({"type": "response.output_text.done", **where, "text": text,
                           "logprobs": []})  # fmt: skip
            events.append({"type": "response.content_part.done", **where,
                           "part": item["content"][0]})  # fmt: skip
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": response})
    return [
        f"event: {e['type']}\n".encode() + _sse({**e, "sequence_number": n})
        for n, e in enumerate(events)
    ]


# --- Anthropic's Messages API, served natively ---


async def _messages(request: web.Request, recorded: Recorded) -> web.StreamResponse:
    """``echo: <the first text block of the latest user message>``, or a ``tool_use`` of the
    first tool; errors in Anthropic's shape."""
    body = recorded.json
    if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
        error = {"type": "error", "error": {"type": "invalid_request_error",
                                            "message": "max_tokens: Field required"}}  # fmt: skip
        return await _send_json(request, recorded, 400, error)
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    user = [m for m in messages if m.get("role") == "user"]
    text = _first_text(user[-1].get("content"), "text") if user else ""
    msg_id = f"msg_mock{uuid.uuid4().hex[:12]}"
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    if tools and choice.get("type") != "none":
        block = {"type": "tool_use", "id": f"toolu_{msg_id}", "name": tools[0].get("name", "tool"),
                 "input": orjson.loads(_TOOL_ARGUMENTS)}  # fmt: skip
        stop, out_words = "tool_use", 5
    else:
        block = {"type": "text", "text": f"echo: {text}"}
        stop, out_words = "end_turn", _words(block["text"])
    in_words = max(1, sum(_words(_first_text(m.get("content"), "text")) for m in user))
    usage = {"input_tokens": in_words, "output_tokens": out_words,
             "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}  # fmt: skip
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [block],
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return await _send_json(request, recorded, 200, message)
    return await _stream(request, recorded, [(0.0, e) for e in _message_events(message)])


def _message_events(message: JSON) -> list[bytes]:
    block = message["content"][0]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": 1}}  # fmt: skip
    opened: JSON
    if block["type"] == "text":
        opened = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": p} for p in _split(block["text"], 4)]
    else:
        opened = {**block, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": p}
                  for p in _split(_TOOL_ARGUMENTS, 3)]  # fmt: skip
    events: list[tuple[str, JSON]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": opened}),
        ("ping", {"type": "ping"}),
        *(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
          for d in deltas),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                           "usage": {"output_tokens": message["usage"]["output_tokens"]}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return [f"event: {name}\n".encode() + _sse(data) for name, data in events]


def _first_text(content: Any, kind: str) -> str:
    """A content's own words: the string, or its first ``kind`` part (a gateway may append its
    reference data as a later part of the same message)."""
    if isinstance(content, str):
        return content
    parts = [p for p in content if isinstance(p, dict) and p.get("type") == kind] if isinstance(
        content, list) else []  # fmt: skip
    return str(parts[0].get("text", "")) if parts else ""


# --- embeddings ---


def _embeddings(body: Any) -> tuple[int, JSON]:
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return 400, _error_body(400, "you must provide a model parameter", param="model")
    inputs = _embedding_inputs(body.get("input"))
    dimensions = body.get("dimensions") or 8
    if inputs is None or not isinstance(dimensions, int) or dimensions < 1:
        return 400, _error_body(400, "'input' must be a string or an array of them", param="input")
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(text, dimensions, as_base64)}
        for i, text in enumerate(inputs)
    ]
    tokens = max(1, sum(_words(text) for text in inputs))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, {"object": "list", "data": data, "model": body["model"], "usage": usage}


def _embedding_inputs(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, int) for v in value):  # one pre-tokenised input
        return [" ".join(map(str, value))]
    if all(isinstance(v, str) for v in value):
        return list(value)
    if all(isinstance(v, list) for v in value):
        return [" ".join(map(str, v)) for v in value]
    return None


def _vector(text: str, dimensions: int, as_base64: bool) -> list[float] | str:
    """A unit vector derived from a hash of ``text``: equal texts embed identically."""
    raw = hashlib.shake_256(text.encode()).digest(dimensions)
    values = [(b - 127.5) / 127.5 for b in raw]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    vector = [round(v / norm, 6) for v in values]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
    return vector


# --- wire helpers ---


def _error_body(
    status: int, message: str | None = None, *, param: str | None = None, code: Any = ...
) -> JSON:
    kinds = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
    if status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    if message is None:
        message = f"{_phrase(status)} (scripted by the mock upstream)"
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": kinds.get(status) if code is ... else code,
        }
    }


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def _sse(payload: JSON) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _send_json(
    request: web.Request, recorded: Recorded, status: int, payload: Any
) -> web.StreamResponse:
    response = web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json"
    )
    return await _send(request, recorded, response)


async def _send(
    request: web.Request, recorded: Recorded, response: web.Response
) -> web.StreamResponse:
    response.headers.setdefault("x-request-id", f"req_mock_{uuid.uuid4().hex[:16]}")
    await response.prepare(request)
    await response.write_eof()
    recorded.completed = True
    return response


async def _stream(
    request: web.Request,
    recorded: Recorded,
    events: Iterable[tuple[float, bytes]],
    *,
    then_reset: bool = False,
) -> web.StreamResponse:
    """Write each event as its own chunk (after its delay) so streaming is observable."""
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    response.headers["x-request-id"] = f"req_mock_{uuid.uuid4().hex[:16]}"
    await response.prepare(request)
    for delay, event in events:
        if delay:
            await asyncio.sleep(delay)
        await response.write(event)
    if then_reset:
        await _reset(request)
        return response
    await response.write_eof()
    recorded.completed = True
    return response


async def _reset(request: web.Request) -> None:
    """Abort with SO_LINGER 0, so the client sees a TCP RST after the bytes already sent."""
    transport = request.transport
    if transport is None:
        return
    while transport.get_write_buffer_size() and not transport.is_closing():
        await asyncio.sleep(0.005)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
