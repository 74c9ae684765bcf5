"""Micro-benchmarks of the upstream client: compiled vs pure-Python twin vs httpx (no timing asserts).

Each round sends ``REQUESTS`` sequential keep-alive requests on uvloop to a raw in-process
upstream (asyncio Protocol, pre-built responses): a ~600-byte JSON answer, and a chunked
stream of 100 small pieces read with ``next_chunk``.
"""

from __future__ import annotations

import asyncio

import httptools
import orjson
import pytest

from meshfast_core.http import PoolC, PoolPy

uvloop = pytest.importorskip("uvloop")

REQUESTS = 200
JSON_PATH = b"/v1/chat/completions"
STREAM_PATH = b"/v1/stream"
REQ_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
HEADERS = [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-bench")]

_ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "pooling keeps sockets open. " * 16},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 99, "total_tokens": 104},
    }
)
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    % len(_ANSWER)
    + _ANSWER
)
_EVENTS = [b'data: {"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % i for i in range(100)]
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
STREAM_CHUNKS = [b"%x\r\n%s\r\n" % (len(e), e) for e in _EVENTS] + [b"0\r\n\r\n"]
STREAM_BODY = b"".join(_EVENTS)

IMPLS = [
    pytest.param(PoolPy, id="py"),
    pytest.param(
        PoolC,
        id="c",
        marks=pytest.mark.skipif(PoolC is None, reason="meshfast_core._http_c is not compiled"),
    ),
]


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url):
        self.url = url

    def on_message_complete(self):
        if self.url == STREAM_PATH:
            self.transport.write(STREAM_HEAD)
            for chunk in STREAM_CHUNKS:  # one write each, like a token stream
                self.transport.write(chunk)
        else:
            self.transport.write(JSON_RESPONSE)

    def data_received(self, data):
        self.parser.feed_data(data)


@pytest.fixture(scope="module")
def upstream():
    loop = uvloop.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Upstream, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    yield loop, f"http://127.0.0.1:{port}"
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()


async def _json_rounds(pool):
    for _ in range(REQUESTS):
        resp = await pool.request(b"POST", JSON_PATH, HEADERS, REQ_BODY)
        body = await resp.read()
    assert body == _ANSWER


async def _stream_rounds(pool):
    for _ in range(REQUESTS):
        resp = await pool.request(b"POST", STREAM_PATH, HEADERS, REQ_BODY)
        n = 0
        while chunk := await resp.next_chunk():
            n += len(chunk)
    assert n == len(STREAM_BODY)


async def _httpx_json(client, url):
    for _ in range(REQUESTS):
        r = await client.post(url + JSON_PATH.decode(), content=REQ_BODY, headers=dict(HEADERS))
        body = r.content
    assert body == _ANSWER


async def _httpx_stream(client, url):
    for _ in range(REQUESTS):
        async with client.stream(
            "POST", url + STREAM_PATH.decode(), content=REQ_BODY, headers=dict(HEADERS)
        ) as r:
            n = 0
            async for chunk in r.aiter_raw():
                n += len(chunk)
    assert n == len(STREAM_BODY)


def _bench_pool(benchmark, upstream, pool_cls, rounds):
    loop, url = upstream
    pool = pool_cls(url)
    loop.run_until_complete(rounds(pool))  # warm: connection open
    benchmark.extra_info["requests_per_round"] = REQUESTS
    benchmark.pedantic(lambda: loop.run_until_complete(rounds(pool)), rounds=10, iterations=1)
    loop.run_until_complete(pool.close())
    assert pool.created == 1


def _bench_httpx(benchmark, upstream, rounds):
    httpx = pytest.importorskip("httpx")
    loop, url = upstream

    async def make():
        return httpx.AsyncClient(limits=httpx.Limits(max_connections=1))

    client = loop.run_until_complete(make())
    loop.run_until_complete(rounds(client, url))
    benchmark.extra_info["requests_per_round"] = REQUESTS
    benchmark.pedantic(lambda: loop.run_until_complete(rounds(client, url)), rounds=3, iterations=1)
    loop.run_until_complete(client.aclose())


@pytest.mark.benchmark(group="http-client-json")
@pytest.mark.parametrize("pool_cls", IMPLS)
def test_json(benchmark, upstream, pool_cls):
    _bench_pool(benchmark, upstream, pool_cls, _json_rounds)


@pytest.mark.benchmark(group="http-client-json")
def test_json_httpx(benchmark, upstream):
    _bench_httpx(benchmark, upstream, _httpx_json)


@pytest.mark.benchmark(group="http-client-stream")
@pytest.mark.parametrize("pool_cls", IMPLS)
def test_stream(benchmark, upstream, pool_cls):
    _bench_pool(benchmark, upstream, pool_cls, _stream_rounds)


@pytest.mark.benchmark(group="http-client-stream")
def test_stream_httpx(benchmark, upstream):
    _bench_httpx(benchmark, upstream, _httpx_stream)
