"""The "floor" of the load benchmark: a minimal ASGI passthrough using meshfast's upstream client.

    MESHFAST_BENCH_UPSTREAM=http://127.0.0.1:9000 python -m granian --interface asgi \\
        --loop uvloop --no-ws --workers 1 --backlog 2048 --port 9100 benchmarks.passthrough_app:app

No routing, auth, JSON parsing, accounting or SSE scanning: it reads the request body, POSTs
it unchanged to the upstream with the same compiled ``meshfast_core.http.Pool`` meshfast
uses (``/w2/...`` is relayed as a stream with ``next_chunk``, anything else read whole),
and sends the answer back. Run under the same granian settings as ``meshfast serve``, it
shows what granian's ASGI interface plus the client cost on this machine before any gateway
work. ``GET /health`` answers ``ok`` without touching the upstream.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.static_upstream import W1_PATH, W2_PATH
from meshfast_core import http

UPSTREAM_ENV = "MESHFAST_BENCH_UPSTREAM"

_W1 = W1_PATH.encode()
_W2 = W2_PATH.encode()
_UP_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_HEALTH = b"ok"

_pool: Any = None


def _get_pool() -> Any:
    global _pool
    if _pool is None:  # created in the worker, on its event loop
        _pool = http.Pool(os.environ.get(UPSTREAM_ENV, "http://127.0.0.1:9000"))
    return _pool


async def _lifespan(receive: Any, send: Any) -> None:
    global _pool
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            _get_pool()
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            if _pool is not None:
                await _pool.close()
                _pool = None
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Any) -> bytes:
    msg = await receive()
    body = msg.get("body", b"")
    if not msg.get("more_body"):
        return body
    parts = [body]
    while msg.get("more_body"):
        msg = await receive()
        parts.append(msg.get("body", b""))
    return b"".join(parts)


async def app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":
        status = 200 if scope["path"] == "/health" else 404
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": _HEALTH if status == 200 else b""})
        return

    body = await _read_body(receive)
    stream = scope["path"].startswith("/w2/")
    r = await _get_pool().request(b"POST", _W2 if stream else _W1, _UP_HEADERS, body)
    try:
        if not stream:
            data = await r.read()
            headers = [
                (b"content-type", r.header(b"content-type") or b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ]
            await send({"type": "http.response.start", "status": r.status, "headers": headers})
            await send({"type": "http.response.body", "body": data, "more_body": False})
            return
        await send(
            {"type": "http.response.start", "status": r.status, "headers": list(_SSE_HEADERS)}
        )
        while chunk := await r.next_chunk():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        r.close()
