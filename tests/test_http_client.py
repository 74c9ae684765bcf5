"""The upstream keep-alive client (``meshfast_core.http``) against a raw socket upstream.

Every test runs over both implementations: ``py`` (``http_py.py``) and ``c`` (the same
source compiled as ``_http_c``).
"""

import asyncio
import os
import socket
import ssl

import pytest

from meshfast_core import http
from meshfast_core.http import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

from .wire_server import HOLD, WireServer, chunked, response


def test_http_compiled_loaded():
    if os.environ.get("MESHFAST_NO_EXTENSIONS"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert http.COMPILED, "meshfast_core._http_c did not load: run `make compile`"
    assert http.Pool is http.PoolC


@pytest.fixture(params=["py", "c"])
def pool_cls(request):
    if request.param == "c":
        if http.PoolC is None:
            pytest.skip("meshfast_core._http_c is not compiled (or MESHFAST_NO_EXTENSIONS)")
        return http.PoolC
    return http.PoolPy


def run(coro):
    return asyncio.run(coro)


async def ok_handler(server, req, writer):
    writer.write(response(200, b'{"path": "%s"}' % req.target.encode()))
    await writer.drain()
    return True


GET = b"GET"
POST = b"POST"


def test_keep_alive_reuse(pool_cls):
    async def main():
        async with WireServer(ok_handler) as srv:
            pool = pool_cls(srv.url)
            try:
                for i in range(5):
                    method = POST if i % 2 else GET
                    body = b'{"n": %d}' % i if i % 2 else b""
                    resp = await pool.request(
                        method, b"/v1/x%d" % i, [(b"Authorization", b"Bearer k")], body
                    )
                    assert resp.status == 200
                    assert resp.header(b"content-length") is not None
                    assert all(name == name.lower() for name, _ in resp.headers)
                    assert await resp.read() == b'{"path": "/v1/x%d"}' % i
                    resp.close()  # safe after a complete read
                assert srv.connections == 1
                assert (pool.created, pool.reused) == (1, 4)
                assert (pool.size, pool.idle, pool.in_use) == (1, 1, 0)
                get, post = srv.requests[0], srv.requests[1]
                assert get.headers["host"] == f"127.0.0.1:{srv.port}"
                assert "content-length" not in get.headers
                assert post.headers["content-length"] == str(len(post.body))
                assert post.body == b'{"n": 1}'
                assert post.headers["authorization"] == "Bearer k"
            finally:
                await pool.close()
            assert pool.size == 0

    run(main())


def test_own_headers_replace_callers(pool_cls):
    async def main():
        async with WireServer(ok_handler) as srv:
            pool = pool_cls(srv.url)
            try:
                hdrs = [(b"Host", b"evil"), (b"Content-Length", b"99"), (b"X-A", b"1")]
                resp = await pool.request(POST, b"/", hdrs, b"")
                await resp.read()
                req = srv.requests[0]
                assert [n.lower() for n, _ in req.raw_headers] == ["host", "x-a", "content-length"]
                assert req.headers["content-length"] == "0"
            finally:
                await pool.close()

    run(main())


def test_concurrency_limit_and_queue(pool_cls):
    async def slow(server, req, writer):
        await asyncio.sleep(0.05)
        writer.write(response(200, b"ok"))
        await writer.drain()
        return True

    async def one(pool):
        resp = await pool.request(GET, b"/", [], b"")
        return await resp.read()

    async def main():
        async with WireServer(slow) as srv:
            pool = pool_cls(srv.url, max_size=3)
            try:
                results = await asyncio.gather(*(one(pool) for _ in range(10)))
                assert results == [b"ok"] * 10
                assert srv.connections == 3
                assert srv.max_open == 3
                assert (pool.size, pool.idle, pool.in_use, pool.created) == (3, 3, 0, 3)
                assert pool.reused == 7
            finally:
                await pool.close()

    run(main())


def test_pool_wait_times_out(pool_cls):
    async def stall(server, req, writer):
        await asyncio.sleep(0.5)
        writer.write(response(200, b"late"))
        await writer.drain()
        return True

    async def main():
        async with WireServer(stall) as srv:
            pool = pool_cls(srv.url, max_size=1, connect_timeout=0.1)
            try:
                first = asyncio.ensure_future(pool.request(GET, b"/", [], b""))
                await asyncio.sleep(0.02)
                with pytest.raises(UpstreamTimeout) as info:
                    await pool.request(GET, b"/", [], b"")
                assert info.value.phase == "pool"
                assert await (await first).read() == b"late"
                assert (pool.size, pool.in_use) == (1, 0)
            finally:
                await pool.close()

    run(main())


async def _write_slowly(writer, data, step):
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
        await writer.drain()
        await asyncio.sleep(0)


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_content_length_and_chunked_split(pool_cls, step):
    pieces = [b"alpha", b"b" * 300, b"", b"gamma\r\n", b"0123456789abcdef" * 20]

    async def handler(server, req, writer):
        if req.target == "/cl":
            data = response(200, b"".join(pieces))
        else:
            data = response(200, headers=[("Transfer-Encoding", "chunked")]) + chunked(pieces)
        await _write_slowly(writer, data, step)
        return True

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                for target in (b"/cl", b"/chunked", b"/cl", b"/chunked"):
                    resp = await pool.request(GET, target, [], b"")
                    assert await resp.read() == b"".join(pieces)
                resp = await pool.request(GET, b"/chunked", [], b"")
                got = []
                while chunk := await resp.next_chunk():
                    got.append(chunk)
                assert b"".join(got) == b"".join(pieces)
                assert await resp.next_chunk() == b""
                assert srv.connections == 1
                assert pool.in_use == 0 and pool.idle == 1
            finally:
                await pool.close()

    run(main())


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_read_to_close_body(pool_cls, version):
    async def handler(server, req, writer):
        writer.write(f"HTTP/{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode())
        await _write_slowly(writer, b"streamed until close" * 50, 333)
        return False

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                for _ in range(2):
                    resp = await pool.request(GET, b"/", [], b"")
                    assert await resp.read() == b"streamed until close" * 50
                    assert pool.size == 0
                assert srv.connections == 2 and pool.created == 2
            finally:
                await pool.close()

    run(main())


def test_truncated_body_raises_closed(pool_cls):
    async def handler(server, req, writer):
        writer.write(response(200, headers=[("Content-Length", "100")]) + b"x" * 40)
        await writer.drain()
        return False

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                resp = await pool.request(GET, b"/", [], b"")
                with pytest.raises(UpstreamClosed):
                    await resp.read()
                assert (pool.size, pool.in_use) == (0, 0)
            finally:
                await pool.close()

    run(main())


def test_upstream_closes_idle_connection(pool_cls):
    async def handler(server, req, writer):
        writer.write(response(200, b"bye"))
        await writer.drain()
        return False  # close without saying Connection: close

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                assert await (await pool.request(GET, b"/", [], b"")).read() == b"bye"
                await srv.wait_for(lambda: pool.size == 0)
                assert pool.idle == 0
                assert await (await pool.request(GET, b"/", [], b"")).read() == b"bye"
                assert srv.connections == 2 and pool.created == 2
            finally:
                await pool.close()

    run(main())


def test_stale_keep_alive_retried_once(pool_cls):
    async def handler(server, req, writer):
        if req.target == "/first":
            writer.write(response(200, b"one"))
            await writer.drain()
            return True
        if req.conn_id == 0:
            return False  # the old connection dies as the request arrives: no byte back
        writer.write(response(200, b"two"))
        await writer.drain()
        return True

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                assert await (await pool.request(GET, b"/first", [], b"")).read() == b"one"
                assert pool.idle == 1
                resp = await pool.request(POST, b"/second", [], b"{}")
                assert await resp.read() == b"two"
                assert srv.connections == 2 and pool.created == 2
                assert [r.conn_id for r in srv.requests] == [0, 0, 1]
                assert (pool.size, pool.idle) == (1, 1)
            finally:
                await pool.close()

    run(main())


def test_fresh_connection_closed_is_not_retried(pool_cls):
    async def handler(server, req, writer):
        return False

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                with pytest.raises(UpstreamClosed):
                    await pool.request(GET, b"/", [], b"")
                assert srv.connections == 1
                assert (pool.size, pool.in_use) == (0, 0)
            finally:
                await pool.close()

    run(main())


def test_connection_close_header_not_reused(pool_cls):
    async def handler(server, req, writer):
        writer.write(response(200, b"x", headers=[("Connection", "close")]))
        await writer.drain()
        return True  # the client must be the one to close

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                for _ in range(2):
                    assert await (await pool.request(GET, b"/", [], b"")).read() == b"x"
                    assert (pool.size, pool.idle) == (0, 0)
                assert srv.connections == 2 and pool.reused == 0
                await srv.wait_for(lambda: srv.closed_by_peer == 2)
            finally:
                await pool.close()

    run(main())


def test_no_body_statuses_and_head(pool_cls):
    async def handler(server, req, writer):
        if req.method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        elif req.target == "/204":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n")
        elif req.target == "/103":
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(response(200, b"after hints"))
        else:
            writer.write(response(200, b"plain"))
        await writer.drain()
        return True

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                for method, target, status, body in [
                    (b"HEAD", b"/", 200, b""),
                    (GET, b"/", 200, b"plain"),
                    (GET, b"/204", 204, b""),
                    (GET, b"/304", 304, b""),
                    (b"HEAD", b"/", 200, b""),
                    (GET, b"/103", 200, b"after hints"),
                    (GET, b"/", 200, b"plain"),
                ]:
                    resp = await pool.request(method, target, [], b"")
                    assert resp.status == status
                    assert await resp.read() == body
                assert srv.connections == 1
                assert resp.header(b"link") is None
            finally:
                await pool.close()

    run(main())


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["status", "garbage", "upgrade", "chunk-size"],
)
def test_protocol_errors(pool_cls, wire):
    async def handler(server, req, writer):
        writer.write(wire)
        await writer.drain()
        return True  # then read: sees the client close

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                with pytest.raises(UpstreamProtocolError):
                    resp = await pool.request(GET, b"/", [], b"")
                    await resp.read()
                assert (pool.size, pool.in_use) == (0, 0)
                await srv.wait_for(lambda: srv.closed_by_peer == 1)
            finally:
                await pool.close()

    run(main())


def test_first_byte_timeout(pool_cls):
    async def handler(server, req, writer):
        await asyncio.sleep(1.0)
        return False

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url, first_byte_timeout=0.1)
            try:
                with pytest.raises(UpstreamTimeout) as info:
                    await pool.request(GET, b"/", [], b"")
                assert info.value.phase == "first_byte"
                assert (pool.size, pool.in_use) == (0, 0)
            finally:
                await pool.close()

    run(main())


def test_read_timeout_mid_body(pool_cls):
    async def handler(server, req, writer):
        writer.write(response(200, headers=[("Transfer-Encoding", "chunked")]) + b"5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(1.0)
        return False

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url, read_timeout=0.1)
            try:
                resp = await pool.request(GET, b"/", [], b"")
                assert await resp.next_chunk() == b"hello"
                with pytest.raises(UpstreamTimeout) as info:
                    await resp.next_chunk()
                assert info.value.phase == "read"
                assert (pool.size, pool.in_use) == (0, 0)
                await srv.wait_for(lambda: srv.open == 0)
                resp.close()
            finally:
                await pool.close()

    run(main())


def test_connect_refused(pool_cls):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()

    async def main():
        pool = pool_cls(f"http://127.0.0.1:{port}")
        with pytest.raises(UpstreamConnectError):
            await pool.request(GET, b"/", [], b"")
        assert (pool.size, pool.in_use, pool.created) == (0, 0, 0)
        await pool.close()

    run(main())


def test_connect_timeout(pool_cls):
    # a listener that never accepts, with its backlog filled: SYNs go unanswered
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            fillers.append(s)
            try:
                s.connect(("127.0.0.1", port))
            except (BlockingIOError, OSError):
                pass
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            pass
        else:
            pytest.skip("this kernel accepts connections past a full backlog")
        finally:
            probe.close()

        async def main():
            pool = pool_cls(f"http://127.0.0.1:{port}", connect_timeout=0.1)
            with pytest.raises(UpstreamTimeout) as info:
                await pool.request(GET, b"/", [], b"")
            assert info.value.phase == "connect"
            assert (pool.size, pool.in_use) == (0, 0)
            await pool.close()

        run(main())
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.parametrize("where", ["body", "head"])
def test_cancel_closes_connection(pool_cls, where):
    async def handler(server, req, writer):
        if where == "body":
            writer.write(response(200, headers=[("Transfer-Encoding", "chunked")]))
            writer.write(b"3\r\nabc\r\n")
            await writer.drain()
        return HOLD

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url, max_size=1)
            try:
                if where == "body":
                    resp = await pool.request(GET, b"/", [], b"")
                    assert await resp.next_chunk() == b"abc"
                    task = asyncio.ensure_future(resp.next_chunk())
                else:
                    task = asyncio.ensure_future(pool.request(GET, b"/", [], b""))
                waiting = asyncio.ensure_future(pool.request(GET, b"/", [], b""))
                await asyncio.sleep(0.05)
                assert pool.in_use == 1 and not waiting.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await srv.wait_for(lambda: srv.closed_by_peer >= 1)
                # the waiter got the freed slot and opened a fresh connection
                await srv.wait_for(lambda: srv.connections == 2)
                assert pool.reused == 0 and pool.created == 2
                await asyncio.sleep(0.02)
                waiting.cancel()
                try:
                    (await waiting).close()  # "body": its head had arrived
                except asyncio.CancelledError:
                    assert where == "head"
                assert (pool.size, pool.in_use, pool.idle) == (0, 0, 0)
            finally:
                await pool.close()

    run(main())


def test_abandoned_response_not_pooled(pool_cls):
    async def handler(server, req, writer):
        writer.write(response(200, headers=[("Content-Length", "10")]) + b"12345")
        await writer.drain()
        return HOLD

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                resp = await pool.request(GET, b"/", [], b"")
                resp.close()
                resp.close()
                assert (pool.size, pool.in_use, pool.idle) == (0, 0, 0)
                with pytest.raises(UpstreamClosed):
                    await resp.read()
                await srv.wait_for(lambda: srv.closed_by_peer == 1)
            finally:
                await pool.close()

    run(main())


def test_backpressure_bounds_buffer(pool_cls):
    total = 20 * 1024 * 1024
    block = b"z" * 65536

    async def handler(server, req, writer):
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 65536
        )
        writer.write(response(200, headers=[("Content-Length", str(total))]))
        sent = 0
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)
            server.state["sent"] = sent
        return True

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                resp = await pool.request(GET, b"/", [], b"")
                await asyncio.sleep(0.3)  # the consumer does not read
                first = srv.state["sent"]
                await asyncio.sleep(0.2)
                assert srv.state["sent"] == first, "upstream kept writing to a paused reader"
                assert first < total // 2
                assert resp.buffered <= 1024 * 1024
                got = 0
                while chunk := await resp.next_chunk():
                    got += len(chunk)
                    assert resp.buffered == 0
                assert got == total
                assert pool.idle == 1
            finally:
                await pool.close()

    run(main())


def test_idle_expiry(pool_cls):
    async def main():
        async with WireServer(ok_handler) as srv:
            pool = pool_cls(srv.url, idle_timeout=0.1)
            try:
                await (await pool.request(GET, b"/", [], b"")).read()
                assert pool.idle == 1
                await srv.wait_for(lambda: pool.idle == 0)
                assert pool.size == 0
                await srv.wait_for(lambda: srv.closed_by_peer == 1)
                await (await pool.request(GET, b"/", [], b"")).read()
                assert pool.created == 2
            finally:
                await pool.close()

    run(main())


def test_closed_pool_refuses(pool_cls):
    async def main():
        async with WireServer(ok_handler) as srv:
            pool = pool_cls(srv.url)
            await (await pool.request(GET, b"/", [], b"")).read()
            await pool.close()
            assert (pool.size, pool.idle) == (0, 0)
            with pytest.raises(UpstreamClosed):
                await pool.request(GET, b"/", [], b"")
            await srv.wait_for(lambda: srv.closed_by_peer == 1)

    run(main())


def test_under_uvloop(pool_cls):
    uvloop = pytest.importorskip("uvloop")

    async def handler(server, req, writer):
        data = response(200, headers=[("Transfer-Encoding", "chunked")])
        writer.write(data + chunked([b"data: %d\n\n" % i for i in range(20)]))
        await writer.drain()
        return True

    async def main():
        async with WireServer(handler) as srv:
            pool = pool_cls(srv.url)
            try:
                for _ in range(3):
                    resp = await pool.request(POST, b"/", [], b"{}")
                    body = await resp.read()
                    assert body == b"".join(b"data: %d\n\n" % i for i in range(20))
                assert srv.connections == 1
            finally:
                await pool.close()

    uvloop.run(main())


# -- TLS --


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    """(server context, client context trusting the test CA) for 127.0.0.1."""
    try:
        import trustme
    except ImportError:
        trustme = None
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client_ctx = ssl.create_default_context()
    if trustme is not None:
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        ca.configure_trust(client_ctx)
        return server_ctx, client_ctx
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("neither trustme nor the openssl CLI is available for a test certificate")
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx.load_cert_chain(cert, key)
    client_ctx.load_verify_locations(cert)
    return server_ctx, client_ctx


def test_tls(pool_cls, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def handler(server, req, writer):
        writer.write(response(200, headers=[("Transfer-Encoding", "chunked")]))
        writer.write(chunked([b"secure ", b"stream"]))
        await writer.drain()
        return True

    async def main():
        async with WireServer(handler, ssl=server_ctx) as srv:
            pool = pool_cls(srv.url, ssl_context=client_ctx)
            try:
                for _ in range(3):
                    resp = await pool.request(GET, b"/", [], b"")
                    assert await resp.read() == b"secure stream"
                assert srv.connections == 1 and pool.reused == 2
            finally:
                await pool.close()

    run(main())


def test_tls_verification_failure(pool_cls, tls_contexts):
    server_ctx, _ = tls_contexts

    async def main():
        async with WireServer(ok_handler, ssl=server_ctx) as srv:
            pool = pool_cls(srv.url)  # default context: the test CA is not trusted
            with pytest.raises(UpstreamConnectError):
                await pool.request(GET, b"/", [], b"")
            assert (pool.size, pool.in_use) == (0, 0)
            await pool.close()

    run(main())
