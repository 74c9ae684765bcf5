"""The request pipeline: auth -> limits -> route -> hold -> call -> relay -> settle.

One file a reader can follow top to bottom. Each stage is a method with one job;
auth, limits, hold and settle are pass-through until the money core and the
limits land, but they already sit where they belong so those issues only fill
them in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from meshfast import errors
from meshfast.providers.base import Endpoint, Reply
from meshfast.providers.openai import map_upstream_error
from meshfast.router import Router
from meshfast_core.exceptions import UpstreamError
from meshfast_core.sse import SSEScanner

Send = Any
log = logging.getLogger("meshfast")
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_INT_FIELDS = ("max_tokens", "max_completion_tokens", "n")
_NUM_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


class Call:
    """What the pipeline knows about one call as it moves through the stages."""

    __slots__ = (
        "kind",
        "requested_model",
        "stream",
        "include_usage",
        "endpoint",
        "principal",
        "hold",
        "started",
        "first_byte",
        "status",
        "usage",
    )

    def __init__(self, kind: str, requested_model: str, stream: bool) -> None:
        self.kind = kind
        self.requested_model = requested_model
        self.stream = stream
        self.include_usage = False
        self.endpoint: Endpoint | None = None
        self.principal: Any = None
        self.hold: Any = None
        self.started = time.monotonic()
        self.first_byte = 0.0
        self.status = "ok"
        self.usage: dict[str, Any] | None = None


def decode_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise errors.InvalidJSON("The request body is empty; send a JSON object.")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJSON(
            f"The request body is not valid JSON: {exc.msg} (at byte {exc.pos})."
        ) from None
    if not isinstance(obj, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    return obj


def _bad(param: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"Invalid value for '{param}': {problem}", param=param)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_chat(req: dict[str, Any]) -> tuple[str, bool]:
    """Check the fields meshfast relies on; everything else passes through untouched."""
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest(
            "You must provide a model parameter (a non-empty string).", param="model"
        )
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.InvalidRequest(
            "'messages' must be a non-empty array of message objects.", param="messages"
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", "expected an object.")
        if not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}].role", "expected a string such as 'user'.")
    stream = req.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise _bad("stream", "expected a boolean.")
    opts = req.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _bad("stream_options", "expected an object.")
    for key in _INT_FIELDS:
        v = req.get(key)
        if v is not None and (not _is_int(v) or v < 1):
            raise _bad(key, "expected a positive integer.")
    for key in _NUM_FIELDS:
        v = req.get(key)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
            raise _bad(key, "expected a number.")
    tools = req.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools", "expected an array of tool objects.")
    fmt = req.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and isinstance(fmt.get("type"), str)):
        raise _bad("response_format", "expected an object with a 'type'.")
    return model, stream


def validate_embeddings(req: dict[str, Any]) -> str:
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise errors.InvalidRequest(
            "You must provide a model parameter (a non-empty string).", param="model"
        )
    inp = req.get("input")
    ok = isinstance(inp, str) and inp != ""
    if isinstance(inp, list) and inp:
        ok = (
            all(isinstance(x, str) for x in inp)
            or all(_is_int(x) for x in inp)
            or all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in inp)
        )
    if not ok:
        raise errors.InvalidRequest(
            "'input' must be a non-empty string, array of strings, array of token ids, or array of token-id arrays.",
            param="input",
        )
    fmt = req.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise _bad("encoding_format", "expected 'float' or 'base64'.")
    dims = req.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise _bad("dimensions", "expected a positive integer.")
    return model


async def _upstream_error(reply: Reply) -> errors.MeshError:
    """An error answer from the upstream, to pass through with its status and body."""
    try:
        body = await reply.read()
    except UpstreamError:
        body = b""
    return errors.UpstreamHTTPError(reply.status, body, reply.header(b"content-type"))


class _Watch:
    """Cancels the calling task when the ASGI client disconnects (one task, no asyncio.wait)."""

    __slots__ = ("fired", "task")

    def __init__(self, receive: Any) -> None:
        self.fired = False
        self.task = asyncio.get_running_loop().create_task(self._run(receive, asyncio.current_task()))

    async def _run(self, receive: Any, target: asyncio.Task) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.fired = True
        target.cancel()


async def run_until_disconnect(work: Any, receive: Any) -> None:
    """Await ``work``; if the client disconnects first, cancel it (closing its upstream request).

    granian drops sends to a closed client silently, so without this a stream whose client
    left would keep reading from the upstream until the end.
    """
    watch = _Watch(receive)
    try:
        await work
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not watch.fired or task is None or task.uncancel() > 0:
            raise  # cancelled from outside, not by the watcher
    finally:
        watch.task.cancel()


class Pipeline:
    def __init__(self, router: Router) -> None:
        self.router = router

    # -- stages ---------------------------------------------------------------
    async def authenticate(self, call: Call, scope: dict[str, Any]) -> None:
        """Key -> account/project/limits. Pass-through until the money core lands."""

    async def check_limits(self, call: Call, req: dict[str, Any]) -> None:
        """RPM / TPM / budget checks. Pass-through until the limits land."""

    def route(self, call: Call, req: dict[str, Any]) -> Endpoint:
        call.endpoint = self.router.resolve(call.requested_model)
        return call.endpoint

    async def place_hold(self, call: Call, req: dict[str, Any]) -> None:
        """Reserve the worst-case cost. Pass-through until the money core lands."""

    async def settle(self, call: Call) -> None:
        """Actual cost, receipt, ledger. Pass-through until the money core lands."""

    def response_headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        assert call.endpoint is not None
        return list(call.endpoint.headers)

    # -- endpoints ------------------------------------------------------------
    async def chat(self, scope: dict[str, Any], body: bytes, send: Send, receive: Any) -> None:
        req = decode_json(body)
        model, stream = validate_chat(req)
        call = Call("chat", model, stream)
        await self.authenticate(call, scope)
        endpoint = self.route(call, req)
        await self.check_limits(call, req)
        await self.place_hold(call, req)
        if stream:
            opts = req.get("stream_options")
            call.include_usage = bool(opts and opts.get("include_usage"))
            await run_until_disconnect(self.call_chat(call, endpoint, req, scope, send), receive)
        else:
            await self.call_chat(call, endpoint, req, scope, send)
        await self.settle(call)

    async def call_chat(
        self, call: Call, endpoint: Endpoint, req: dict[str, Any], scope: dict[str, Any], send: Send
    ) -> None:
        stream = call.stream
        reply = await endpoint.provider.chat(endpoint, req, stream, scope["headers"])
        try:
            if reply.status >= 400:
                raise await _upstream_error(reply)
            if stream:
                await self.relay_stream(call, reply, send)
            else:
                await self.relay_body(call, reply, send)
        finally:
            reply.close()

    async def embeddings(
        self, scope: dict[str, Any], body: bytes, send: Send, receive: Any
    ) -> None:
        req = decode_json(body)
        call = Call("embeddings", validate_embeddings(req), False)
        await self.authenticate(call, scope)
        endpoint = self.route(call, req)
        if endpoint.model.kind != "embedding":
            raise errors.UnsupportedOperation(
                f"The model `{endpoint.id}` is a chat model and cannot create embeddings.",
                param="model",
            )
        await self.check_limits(call, req)
        await self.place_hold(call, req)
        reply = await endpoint.provider.embeddings(endpoint, req, scope["headers"])
        try:
            if reply.status >= 400:
                raise await _upstream_error(reply)
            await self.relay_body(call, reply, send)
        finally:
            reply.close()
        await self.settle(call)

    # -- relay ----------------------------------------------------------------
    async def relay_body(self, call: Call, reply: Reply, send: Send) -> None:
        try:
            data = await reply.read()
        except UpstreamError as exc:
            assert call.endpoint is not None
            raise map_upstream_error(exc, call.endpoint.provider.name) from None
        call.first_byte = time.monotonic()
        headers = self.response_headers(call)
        headers.append((b"content-type", reply.header(b"content-type") or b"application/json"))
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def relay_stream(self, call: Call, reply: Reply, send: Send) -> None:
        """Forward upstream SSE bytes as they come; end with usage (if asked) and [DONE],
        or with an error event when the upstream broke off: never a silent clean end."""
        headers = self.response_headers(call)
        headers.extend(SSE_HEADERS)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        scanner = SSEScanner()
        tail = b""
        try:
            while chunk := await reply.next_chunk():
                if not call.first_byte:
                    call.first_byte = time.monotonic()
                out = scanner.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            scanner.finish()
            if scanner.error is not None:
                call.status = "error"  # the upstream's own error event was forwarded as is
            elif scanner.done or scanner.finish_reason is not None:
                if call.include_usage and scanner.usage_chunk is not None:
                    tail = b"data: " + scanner.usage_chunk + b"\n\n"
                tail += DONE
            else:
                call.status = "error"
                tail = errors.UpstreamStreamFailed(
                    "The upstream ended the stream before it was complete."
                ).sse_event()
        except UpstreamError as exc:
            call.status = "error"
            assert call.endpoint is not None
            err = map_upstream_error(exc, call.endpoint.provider.name)
            tail = errors.UpstreamStreamFailed(f"The stream broke off: {err.message}.").sse_event()
        except errors.MeshError as exc:
            call.status = "error"
            tail = exc.sse_event()
        except asyncio.CancelledError:
            call.status = "cancelled"
            raise
        except Exception:
            call.status = "error"
            log.exception("stream relay failed")
            tail = errors.InternalError("The gateway failed while relaying the stream.").sse_event()
        call.usage = scanner.usage
        await send({"type": "http.response.body", "body": tail, "more_body": False})
