"""A tiny, fast fake OpenAI upstream for the load benchmark (used when nginx is not available).

It serves two fixed answers, whatever the request body says:

* ``POST /w1/v1/chat/completions``: a non-stream ``chat.completion`` with a ~600-byte answer.
* ``POST /w2/v1/chat/completions``: a ``text/event-stream`` of 100 content chunks, a finish
  chunk, a usage-only chunk and ``data: [DONE]``.

The same bodies (from :func:`w1_body` / :func:`w2_body`) are what the generated nginx config
returns, so "direct" numbers are comparable whichever upstream runs.

Run it alone with ``python -m benchmarks.static_upstream --port 9000``; it prints
``ready <port>`` once it listens. One process, asyncio Protocol on uvloop, httptools parsing,
HTTP/1.1 keep-alive, responses pre-built as bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

W1_PATH = "/w1/v1/chat/completions"
W2_PATH = "/w2/v1/chat/completions"
STREAM_EVENTS = 100

_CREATED = 1_700_000_000
_ID = "chatcmpl-bench0000000000000000000000"

# ~600 bytes of plain prose: no quotes, backslashes, dollar signs or newlines, so the JSON
# needs no escapes and the text can sit verbatim in an nginx `return` string.
_ANSWER = (
    "Connection pooling keeps a small set of open sockets to each upstream and reuses them "
    "across requests, which removes the TCP and TLS handshakes from the hot path. A good pool "
    "caps the number of idle connections per host, evicts sockets that the server has closed, "
    "and retries an idempotent request once when a reused connection turns out to be stale. "
    "For streaming answers the gateway forwards each server-sent event as soon as it arrives, "
    "so time to first token stays close to what the provider delivers, and it counts tokens "
    "from the final usage chunk to price the request exactly without buffering the reply."
)


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def w1_body() -> bytes:
    """The non-stream chat.completion answer (W1, W3)."""
    return _dumps(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": "chat",
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _ANSWER, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 24,
                "completion_tokens": 118,
                "total_tokens": 142,
                "prompt_tokens_details": {"cached_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
    ).encode()


def _chunk(delta: dict, finish: str | None) -> str:
    return _dumps(
        {
            "id": _ID,
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": "chat",
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }
    )


def w2_body(events: int = STREAM_EVENTS) -> bytes:
    """The SSE stream (W2): ``events`` content chunks, finish chunk, usage chunk, [DONE]."""
    words = _ANSWER.split(" ")
    parts = []
    for i in range(events):
        delta = {"content": (" " if i else "") + words[i % len(words)]}
        if i == 0:
            delta = {"role": "assistant", **delta}
        parts.append(f"data: {_chunk(delta, None)}\n\n")
    parts.append(f"data: {_chunk({}, 'stop')}\n\n")
    usage = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": "chat",
        "system_fingerprint": "fp_bench",
        "choices": [],
        "usage": {"prompt_tokens": 24, "completion_tokens": events, "total_tokens": 24 + events},
    }
    parts.append(f"data: {_dumps(usage)}\n\n")
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def _response(status: str, content_type: str, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode() + body


def build_responses() -> dict[tuple[bytes, bool], bytes]:
    """Pre-built full responses keyed by (path, keep_alive)."""
    table: dict[tuple[bytes, bool], bytes] = {}
    for ka in (True, False):
        table[(W1_PATH.encode(), ka)] = _response("200 OK", "application/json", w1_body(), ka)
        table[(W2_PATH.encode(), ka)] = _response("200 OK", "text/event-stream", w2_body(), ka)
        table[(b"/health", ka)] = _response("200 OK", "text/plain", b"ok\n", ka)
        table[(b"", ka)] = _response(
            "404 Not Found", "application/json", b'{"error":{"message":"not found"}}', ka
        )
    return table


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "url", "table")

    def __init__(self, table: dict[tuple[bytes, bool], bytes]) -> None:
        import httptools

        self.table = table
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            if self.transport is not None:
                self.transport.write(
                    _response("400 Bad Request", "text/plain", b"bad request\n", False)
                )
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        path = self.url.partition(b"?")[0]
        self.url = b""
        resp = self.table.get((path, keep_alive)) or self.table[(b"", keep_alive)]
        transport = self.transport
        if transport is None:
            return
        transport.write(resp)
        if not keep_alive:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    table = build_responses()
    server = await loop.create_server(
        lambda: _Conn(table), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"ready {bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.static_upstream", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9000)
    args = ap.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # still works, just slower
        uvloop = None
    if uvloop is not None:
        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
