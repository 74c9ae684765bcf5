"""The request pipeline: auth -> route -> limits + hold -> call (with failover) -> relay -> settle.

One file a reader can follow top to bottom. Each stage is a method with one job:
``begin`` runs authenticate, context (the key's account and project), route and the hold
(limits and the balance check are one store call); ``open_reply`` tries the router's
candidates in order; ``relay_body`` and ``call_stream`` forward the answer and settle it;
``release`` gives back any hold a failed call leaves open.

A store whose hot-path calls never suspend (``Store.immediate``: the embedded one) is
called through its plain ``*_now`` methods (``admit_now`` here): an await of a coroutine
that returns at once still costs about 700 instructions, and a call went through eight of
them. There, a key the store's gate knows is admitted in two compiled calls around the
router (``begin``: ``Gate.enter`` and ``Gate.hold``), and every settlement is one call of
the store's ``records.Settler`` (price, settle, and the answer's headers or a stream's
usage line), which also makes the headers for a store that settles by its coroutines
(``close`` and ``settle`` then).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from meshfast import errors
from meshfast.asgi import header
from meshfast.billing import (
    CONTENT_CHARS_PER_TOKEN,
    Billing,
    estimate_completion_tokens,
    estimate_input_tokens,
)
from meshfast.config import BillingConfig
from meshfast.limits import served_privacy
from meshfast.providers.base import Endpoint, Reply
from meshfast.providers.openai import map_upstream_error
from meshfast.router import Needs, Router
from meshfast.store.base import (
    Account,
    Hold,
    KeyRecord,
    Project,
    Receipt,
    Store,
    new_id,
)
from meshfast_core.exceptions import UpstreamError
from meshfast_core.keys import bearer_digest, call_headers
from meshfast_core.records import asked_privacy, priced_receipt
from meshfast_core.sse import SSEScanner, body_usage, usage_counts, usage_with_costs
from meshfast_core.tokens import scan_chat

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
        "key",
        "account",
        "hold",
        "prompt_estimate",
        "started",
        "first_byte",
        "receipt_id",
        "rate_headers",
        "revoked",
        "task",
        "candidates",
        "mode",
        "tried",
        "attempt_t0",
        "head_at",
        "privacy",
        "needs",
    )

    def __init__(self, kind: str, requested_model: str, stream: bool) -> None:
        self.kind = kind
        self.requested_model = requested_model
        self.stream = stream
        self.include_usage = False
        self.endpoint: Endpoint = None  # type: ignore[assignment]  # set by route()
        self.key: KeyRecord = None  # type: ignore[assignment]  # set by authenticate()
        self.account: Account = None  # type: ignore[assignment]
        self.hold: Hold | None = None  # open until settle() or release()
        self.prompt_estimate = 0
        self.started = time.monotonic()
        self.first_byte = 0.0
        self.receipt_id = ""
        self.rate_headers: list[tuple[bytes, bytes]] = []
        self.revoked = False  # the key was revoked while this stream ran
        self.task: asyncio.Task | None = None
        self.candidates: list[Endpoint] = []  # from the router, in failover order
        self.mode = "model"
        self.tried: list[str] = []  # endpoint keys attempted, for the receipt
        self.attempt_t0 = 0.0
        self.head_at = 0.0
        self.privacy = "standard"  # the class enforced
        self.needs = 0  # a chat's meshfast_core.tokens.needs_mask bits


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


def digest_of(raw: bytes | None) -> str:
    """The key digest of an Authorization header, ``Bearer mesh_live_...`` (401 otherwise,
    with no hint whether a key exists)."""
    if not raw:
        raise errors.AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer mesh_live_...'."
        )
    digest = bearer_digest(raw)  # None: not "Bearer mesh_live_..." with a long enough key
    if digest is None:
        raise errors.AuthenticationFailed("Incorrect API key provided.")
    return digest


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


WATCH_AFTER = 0.05  # seconds a stream runs before its disconnect watcher starts


class _Watch:
    """Cancels the calling task when the ASGI client disconnects.

    The watcher (a task awaiting ``receive()``) costs a fifth of a short stream's time, so
    it starts only once the stream has run for ``WATCH_AFTER``: streams that finish sooner
    never pay for it, and a client that leaves a longer one is noticed at most that late.
    """

    __slots__ = ("fired", "task", "_handle", "_receive", "_target")

    def __init__(self, receive: Any) -> None:
        self.fired = False
        self.task: asyncio.Task | None = None
        self._receive = receive
        self._target = asyncio.current_task()
        self._handle = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start)

    def _start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.fired = True
        if self._target is not None:
            self._target.cancel()

    def stop(self) -> None:
        self._handle.cancel()
        if self.task is not None:
            self.task.cancel()


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
        watch.stop()


class Pipeline:
    def __init__(self, router: Router, store: Store, billing: BillingConfig) -> None:
        self.router = router
        self.store = store
        self.billing = Billing(billing)
        self.immediate = store.immediate  # the store's plain *_now methods may be called
        self.gate = store.gate  # admits a call of a key it knows in two compiled calls (begin)
        self.streams: set[Call] = set()  # the streams in flight (revocation ends a key's)
        # settles a call in one call on an immediate store; makes the answers' headers
        self.settler = store.settler(Call, self.billing.margin_ppm, self.billing.fee_nano, CONTENT_CHARS_PER_TOKEN)
        store.add_revoke_listener(self.end_streams_of, lambda: {call.key.id for call in self.streams})

    def end_streams_of(self, key_id: str) -> None:
        """A key was revoked: its streams in flight end now with an error event."""
        for call in [c for c in self.streams if c.key.id == key_id]:  # rare: a scan is enough
            call.revoked = True
            if call.task is not None:
                call.task.cancel()

    # -- stages ---------------------------------------------------------------
    async def authenticate(self, raw: bytes | None) -> KeyRecord:
        """The Authorization header, ``Bearer mesh_live_...`` -> the key record (401
        otherwise, with no hint whether a key exists; revoked and expired keys say so)."""
        return await self.store.authenticate_digest(digest_of(raw))

    def route(self, call: Call, req: dict[str, Any], project: Project, asked: str, max_output: int) -> Endpoint:
        """The router's plan under the privacy class the call is served under
        (``limits.served_privacy``: what it asked for, else the key's or project's default,
        raised to the higher minimum)."""
        privacy = served_privacy(asked, call.key.limits, project.limits)
        if call.kind == "chat":
            planned = self.router.plan_chat(call.requested_model, call.needs, call.prompt_estimate, max_output, privacy)
        else:
            planned = self.router.plan(call.requested_model, Needs("embedding", prompt_tokens=call.prompt_estimate, privacy=privacy))
        call.mode, call.candidates = planned
        call.endpoint = call.candidates[0]
        call.privacy = privacy
        return call.endpoint

    def route_headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        """Who served the call and under which rules: provider, model, mode, enforced privacy."""
        return [
            *call.endpoint.headers,
            (b"x-mesh-route-mode", call.mode.encode()),
            (b"x-mesh-privacy", call.privacy.encode()),
        ]

    async def open_reply(self, call: Call, req: dict[str, Any], scope: dict[str, Any]) -> Reply:
        """Try the candidates in order until one answers; a connect error, a timeout, or a
        429 / 5xx answer before anything reached the client moves on to the next."""
        last = len(call.candidates) - 1
        for i, ep in enumerate(call.candidates):
            call.endpoint = ep
            call.tried.append(ep.key)
            t0 = time.monotonic()
            try:
                if call.kind == "chat":
                    reply = await ep.provider.chat(ep, req, call.stream, scope["headers"])
                else:
                    reply = await ep.provider.embeddings(ep, req, scope["headers"])
                if reply.status >= 400:
                    err = await _upstream_error(reply)
                    reply.close()
                    raise err
            except errors.UpstreamHTTPError as exc:
                status: int | None = exc.status
                failure: errors.MeshError = exc
            except (errors.UpstreamUnreachable, errors.UpstreamTimedOut, errors.UpstreamBadResponse) as exc:
                status, failure = None, exc
            else:
                call.attempt_t0 = t0
                call.head_at = time.monotonic()
                return reply
            self.router.record(ep, False, time.monotonic() - t0, None, failure.message, status)
            if i == last or (status is not None and not self.router.should_failover(status)):
                raise failure
        raise AssertionError("the router returned no candidates")

    def close(self, call: Call, counts: tuple[int, int, int] | None, completion_estimate: int, status: str) -> tuple[Hold, Receipt]:
        """The call's hold and its receipt (actual cost) for the store to settle: debit the
        balance and release the hold in one call. ``counts``: the upstream's (prompt,
        completion, cached) tokens, if it reported them."""
        assert call.hold is not None
        billing = self.billing
        receipt = priced_receipt(
            call.receipt_id or new_id("rcpt_"), call.account, call.key, call.endpoint, call.kind,
            call.requested_model, counts, call.prompt_estimate, completion_estimate, call.started,
            call.first_byte, call.stream, status, call.mode, ",".join(call.tried), billing.margin_ppm,
            billing.fee_nano,
        )  # positional: a call with 17 keywords costs more than the rest of it
        hold, call.hold = call.hold, None  # settled now, even if this task is cancelled meanwhile
        return hold, receipt

    async def settle(self, call: Call, counts: tuple[int, int, int] | None, completion_estimate: int, status: str) -> Receipt:
        """:meth:`close`, then the store's settlement; the receipt."""
        hold, receipt = self.close(call, counts, completion_estimate, status)
        await self.store.settle(hold, receipt)
        return receipt

    async def release(self, call: Call) -> None:
        """Nothing to bill (the upstream failed without usage): give the hold back."""
        if call.hold is not None:
            await self.store.release(call.hold)
            call.hold = None

    async def begin(self, kind: str, model: str, stream: bool, scope: dict[str, Any], max_output: int | None, req: dict[str, Any]) -> Call:
        """auth -> route -> limits -> hold: everything before the upstream call.

        On a store with a gate (``Store.gate``: the embedded one), a key the gate knows is
        admitted by two compiled calls around the router: ``gate.enter`` (key check,
        account, privacy class) and ``gate.hold`` (hold amount and hold). Any other key
        (first use, revoked, expiring, unknown, malformed) and any other store take the
        stages one by one. Should the store find the account or project changed under it
        (``StaleContext``), the whole start runs once more on fresh state."""
        auth, privacy_header = call_headers(scope["headers"])
        gate = self.gate
        if gate is not None and (found := gate.enter(auth, privacy_header, req)) is not None:
            call = Call(kind, model, stream)
            call.key, call.account, privacy, asked, entry = found
            if kind == "chat":
                call.prompt_estimate, call.needs = scan_chat(req)
                call.mode, call.candidates = self.router.plan_chat(model, call.needs, call.prompt_estimate, asked, privacy)
            else:
                call.prompt_estimate = estimate_input_tokens(req)
                call.mode, call.candidates = self.router.plan(model, Needs("embedding", prompt_tokens=call.prompt_estimate, privacy=privacy))
            call.endpoint = call.candidates[0]
            call.privacy = privacy
            billing = self.billing
            call.hold = gate.hold(call, entry, call.candidates, call.prompt_estimate, asked, req, max_output, billing.margin_ppm, billing.fee_nano)
            return call
        digest = digest_of(auth)
        key = self.store.key_now(digest) if self.immediate else await self.store.authenticate_digest(digest)
        call = Call(kind, model, stream)
        if kind == "chat":
            call.prompt_estimate, call.needs = scan_chat(req)
        else:
            call.prompt_estimate = estimate_input_tokens(req)
        asked = req.get("max_completion_tokens") or req.get("max_tokens") or 0
        route_output = asked if kind == "chat" else 0
        privacy = asked_privacy(req, privacy_header)
        if self.immediate:
            self.admit_now(call, key, req, privacy, route_output, max_output)
            return call
        try:
            await self.admit(call, key, req, privacy, route_output, max_output)
        except errors.StaleContext:  # once more, from authentication on; a second one propagates
            await self.admit(call, await self.store.authenticate_digest(digest), req, privacy, route_output, max_output)
        return call

    async def admit(self, call: Call, key: KeyRecord, req: dict[str, Any], privacy: str, route_output: int, max_output: int | None) -> None:
        """The key's account and project -> route -> limits and hold. The hold reserves
        ``billing.hold_amount``: nano-USD, the worst case over every candidate (a failover
        may change the price), and tokens (prompt + max output, for tokens per minute). The
        store admits the call under the key's and project's limits (429) and holds the
        amount on the balance (402) in one call."""
        call.key = key
        call.account, project = await self.store.context(key)
        self.route(call, req, project, privacy, route_output)
        amount, tokens = self.billing.hold_amount(call.account, call.candidates, call.prompt_estimate, req, max_output)
        call.hold = await self.store.place_hold(key, amount, tokens)
        call.rate_headers = self.store.rate_headers(call.hold)

    def admit_now(self, call: Call, key: KeyRecord, req: dict[str, Any], privacy: str, route_output: int, max_output: int | None) -> None:
        """:meth:`admit` on a store whose hot path never suspends (``Store.immediate``)."""
        call.key = key
        call.account, project = self.store.context_now(key)
        self.route(call, req, project, privacy, route_output)
        amount, tokens = self.billing.hold_amount(call.account, call.candidates, call.prompt_estimate, req, max_output)
        call.hold = self.store.hold_now(key, amount, tokens)
        call.rate_headers = self.store.rate_headers(call.hold)

    # -- endpoints ------------------------------------------------------------
    async def chat(self, scope: dict[str, Any], body: bytes, send: Send, receive: Any) -> None:
        req = decode_json(body)
        model, stream = validate_chat(req)
        call = await self.begin("chat", model, stream, scope, None, req)
        try:
            if stream:
                opts = req.get("stream_options")
                call.include_usage = bool(opts and opts.get("include_usage"))
                await run_until_disconnect(self.call_stream(call, req, scope, send), receive)
            else:
                reply = await self.open_reply(call, req, scope)
                await self.relay_body(call, reply, send)
        finally:
            if call.hold is not None:  # settled calls have none: no coroutine for them
                await self.release(call)

    async def embeddings(self, scope: dict[str, Any], body: bytes, send: Send, receive: Any) -> None:
        req = decode_json(body)
        model = validate_embeddings(req)
        call = await self.begin("embeddings", model, False, scope, 0, req)
        try:
            reply = await self.open_reply(call, req, scope)
            await self.relay_body(call, reply, send)
        finally:
            if call.hold is not None:
                await self.release(call)

    async def receipt(self, scope: dict[str, Any], receipt_id: str) -> bytes:
        key = await self.authenticate(header(scope, b"authorization"))
        r = await self.store.receipt(receipt_id, key.account_id) if receipt_id.startswith("rcpt_") else None
        if r is None or r.account_id != key.account_id:
            raise errors.NotFound(f"No receipt {receipt_id!r} for this account.", code="receipt_not_found")
        return orjson.dumps(r.public())

    async def balance(self, scope: dict[str, Any]) -> bytes:
        key = await self.authenticate(header(scope, b"authorization"))
        out = (await self.store.account(key.account_id)).public()
        out["object"] = "balance"
        return orjson.dumps(out)

    # -- relay ----------------------------------------------------------------
    async def relay_body(self, call: Call, reply: Reply, send: Send) -> None:
        """A whole JSON answer: read it, settle from its usage, send it with the receipt headers."""
        try:
            data = await reply.read()
        except UpstreamError as exc:
            raise map_upstream_error(exc, call.endpoint.provider.name) from None
        finally:
            reply.close()
        call.first_byte = time.monotonic()
        self.router.record(call.endpoint, True, call.first_byte - call.attempt_t0, call.head_at - call.attempt_t0)
        counts = body_usage(data)
        completion = 0 if counts is not None else estimate_completion_tokens(data)
        if self.immediate:  # settlement and headers in one call
            headers = self.settler.settle_body(call, counts, completion, reply.header(b"content-type"), len(data))
        else:
            receipt = await self.settle(call, counts, completion, "ok")
            headers = self.settler.body_headers(call, receipt, reply.header(b"content-type"), len(data))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def call_stream(self, call: Call, req: dict[str, Any], scope: dict[str, Any], send: Send) -> None:
        """Open the stream and forward upstream SSE bytes as they come; end with usage (if
        asked) and [DONE], or with an error event when the upstream broke off: never a
        silent clean end. Settles in every case, a client that went away included (status
        ``cancelled``); a revoked key's stream ends with its error event. (One coroutine:
        every chunk's resume passes through each level of awaits.)"""
        call.task = asyncio.current_task()
        self.streams.add(call)
        settler = self.settler
        try:
            reply = await self.open_reply(call, req, scope)
            try:
                await send({"type": "http.response.start", "status": 200, "headers": settler.stream_head(call, SSE_HEADERS)})
                scanner = SSEScanner()
                tail = b""
                status = "ok"
                try:
                    while chunk := await reply.next_chunk():
                        if not call.first_byte:
                            call.first_byte = time.monotonic()
                        out = scanner.feed(chunk)
                        if out:
                            await send({"type": "http.response.body", "body": out, "more_body": True})
                    scanner.finish()
                    if scanner.error is not None:
                        status = "error"  # the upstream's own error event was forwarded as is
                    elif not (scanner.done or scanner.finish_reason is not None):
                        status = "error"
                        tail = errors.UpstreamStreamFailed("The upstream ended the stream before it was complete.").sse_event()
                except UpstreamError as exc:
                    status = "error"
                    err = map_upstream_error(exc, call.endpoint.provider.name)
                    tail = errors.UpstreamStreamFailed(f"The stream broke off: {err.message}.").sse_event()
                except errors.MeshError as exc:
                    status = "error"
                    tail = exc.sse_event()
                except asyncio.CancelledError:
                    # settled before re-raising: it must complete
                    if self.immediate:
                        settler.settle_stream(call, scanner, "cancelled")
                    else:
                        await self.settle_stream(call, scanner, "cancelled")
                    if not call.revoked:
                        raise  # the client went away: nobody to tell
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    status = "cancelled"
                    tail = errors.KeyRevoked("This API key was revoked; the stream was ended.").sse_event()
                except Exception:
                    status = "error"
                    log.exception("stream relay failed")
                    tail = errors.InternalError("The gateway failed while relaying the stream.").sse_event()
                # the usage line (b"" if none) settles the call (or releases its hold)
                usage = settler.settle_stream(call, scanner, status) if self.immediate else await self.settle_stream(call, scanner, status)
                if status != "cancelled":  # a revoked key says nothing about the endpoint's health
                    ttft = call.first_byte - call.attempt_t0 if call.first_byte else None
                    error = None if status == "ok" else "stream broke off"
                    self.router.record(call.endpoint, status == "ok", time.monotonic() - call.attempt_t0, ttft, error, None)
                if status == "ok":
                    tail = usage + DONE
                await send({"type": "http.response.body", "body": tail, "more_body": False})
            finally:
                reply.close()
        except asyncio.CancelledError:
            if not call.revoked:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            raise errors.KeyRevoked("This API key has been revoked.") from None
        finally:
            self.streams.discard(call)

    async def settle_stream(self, call: Call, scanner: Any, status: str) -> bytes:
        """``Settler.settle_stream`` on a store that settles by its coroutines: settle the
        stream (or release its hold); its usage line (``b""`` if none)."""
        if call.hold is None:
            return b""
        counts = usage_counts(scanner.usage)
        delivered = scanner.content_length
        if status == "error" and counts is None and not delivered:
            await self.release(call)  # the upstream failed before producing anything: no charge
            return b""
        receipt = await self.settle(call, counts, -(-delivered // CONTENT_CHARS_PER_TOKEN), status)
        if status == "ok" and call.include_usage and scanner.usage_chunk is not None:
            r = receipt
            return b"data: " + usage_with_costs(scanner.usage_chunk, r.id, r.upstream_cost_nano, r.margin_nano, r.total_nano) + b"\n\n"
        return b""
