"""A small closed-loop HTTP/1.1 load generator (the fallback when wrk is not installed).

N keep-alive connections each send a request, wait for the full response (httptools parses
it, chunked or not), record the latency and send the next one, for a warm-up period (not
recorded) and then for the measured duration. Raw asyncio Protocols on uvloop; the request
is pre-built bytes. It prints one JSON line::

    {"requests": 123456, "duration_s": 10.0, "rps": 12345.6, "p50_us": 2100, "p99_us": 5400,
     "non2xx": 0, "errors": 0, ...}

Run it in its own process (``benchmarks.load`` does) so it gets its own core time:

    python -m benchmarks.loadgen --url http://127.0.0.1:8080/v1/chat/completions \\
        --body-file body.json --header "Authorization: Bearer x" -c 32 -d 10 -w 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from urllib.parse import urlsplit

_now = time.perf_counter_ns


class _Stats:
    __slots__ = ("recording", "stopping", "lat", "non2xx", "errors", "reconnects", "t0", "t1")

    def __init__(self) -> None:
        self.recording = False
        self.stopping = False
        self.lat: list[int] = []
        self.non2xx = 0
        self.errors = 0
        self.reconnects = 0
        self.t0 = 0
        self.t1 = 0


class _Conn(asyncio.Protocol):
    __slots__ = ("request", "stats", "transport", "parser", "start", "done", "closed", "busy")

    def __init__(self, request: bytes, stats: _Stats, parser_cls: type) -> None:
        self.request = request
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.parser = parser_cls(self)
        self.start = 0
        self.busy = False
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if self.stats.stopping or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        self.busy = True
        self.start = _now()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.stats.errors += 1
            self.busy = False
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        end = _now()
        stats = self.stats
        self.busy = False
        if stats.recording:
            stats.lat.append(end - self.start)
            if not 200 <= self.parser.get_status_code() < 300:
                stats.non2xx += 1
        if not self.parser.should_keep_alive():
            if self.transport is not None:
                self.transport.close()
            return
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy and self.stats.recording and not self.stats.stopping:
            self.stats.errors += 1  # closed in the middle of a response
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)


async def _connection_loop(
    host: str, port: int, request: bytes, stats: _Stats, parser_cls: type
) -> None:
    loop = asyncio.get_running_loop()
    first = True
    while not stats.stopping:
        if not first:
            stats.reconnects += 1
        first = False
        try:
            _, proto = await loop.create_connection(
                lambda: _Conn(request, stats, parser_cls), host, port
            )
        except OSError:
            if stats.recording:
                stats.errors += 1
            await asyncio.sleep(0.05)
            continue
        await proto.closed


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    k = max(0, min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1))  # nearest rank
    return sorted_ns[k] / 1000.0


def build_request(
    url: str, body: bytes, headers: list[str], method: str = "POST"
) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    if u.scheme != "http":
        raise SystemExit(f"loadgen: only http:// URLs are supported, got {url!r}")
    host = u.hostname or "127.0.0.1"
    port = u.port or 80
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    names = set()
    for h in headers:
        name, _, value = h.partition(":")
        lines.append(f"{name.strip()}: {value.strip()}")
        names.add(name.strip().lower())
    if body or method == "POST":
        if "content-type" not in names:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(
    url: str, body: bytes, headers: list[str], connections: int, duration: float, warmup: float
) -> dict:
    import httptools

    host, port, request = build_request(url, body, headers)
    stats = _Stats()
    tasks = [
        asyncio.create_task(
            _connection_loop(host, port, request, stats, httptools.HttpResponseParser)
        )
        for _ in range(connections)
    ]
    if warmup > 0:
        await asyncio.sleep(warmup)
    stats.recording = True
    stats.t0 = _now()
    await asyncio.sleep(duration)
    stats.t1 = _now()
    stats.recording = False
    stats.stopping = True
    _, pending = await asyncio.wait(tasks, timeout=5)
    for t in pending:
        t.cancel()
    lat = sorted(stats.lat)
    secs = (stats.t1 - stats.t0) / 1e9
    return {
        "requests": len(lat),
        "duration_s": round(secs, 3),
        "rps": round(len(lat) / secs, 1) if secs else 0.0,
        "p50_us": round(_percentile(lat, 0.50), 1),
        "p90_us": round(_percentile(lat, 0.90), 1),
        "p99_us": round(_percentile(lat, 0.99), 1),
        "max_us": round(lat[-1] / 1000.0, 1) if lat else 0.0,
        "non2xx": stats.non2xx,
        "errors": stats.errors,
        "reconnects": stats.reconnects,
        "connections": connections,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--url", required=True, help="http://host:port/path")
    ap.add_argument("--body-file", help="request body (POST); default: empty body")
    ap.add_argument(
        "--header", "-H", action="append", default=[], help="'Name: value' (repeatable)"
    )
    ap.add_argument("--connections", "-c", type=int, default=32)
    ap.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds")
    ap.add_argument(
        "--warmup", "-w", type=float, default=2.0, help="unrecorded seconds before measuring"
    )
    args = ap.parse_args(argv)
    body = b""
    if args.body_file:
        with open(args.body_file, "rb") as f:
            body = f.read()
    coro = run(args.url, body, args.header, args.connections, args.duration, args.warmup)
    try:
        import uvloop
    except ImportError:  # still works, just slower
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
