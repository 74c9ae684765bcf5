"""Keep-alive HTTP/1.1 client with per-upstream connection pools: the data path to providers.

This file is plain Python and is also compiled, unchanged, by Cython in pure-Python mode as
``meshfast_core._http_c`` (``_http_c.py`` is a symlink here; ``_http_c.pxd`` adds the types).
Import it through ``meshfast_core.http``, which picks the compiled module when it loaded.

Per request: one bytes join for the request, one future for the response head, one timer
handle per wait; body pieces are buffered in the Response and the socket stops being read
above ``HIGH_WATER`` buffered bytes until the consumer drains them.
"""

import asyncio
import ssl as _ssl
from collections import deque
from urllib.parse import urlsplit

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .exceptions import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = ("Pool", "Response", "HIGH_WATER")

# Buffered body bytes above which the socket stops being read; it resumes when the
# consumer takes the buffer (next_chunk and read take all of it at once).
HIGH_WATER = 256 * 1024

# _Connection.state
_IN_USE = 0
_IDLE = 1
_DROPPED = 2

# Caller headers the pool writes itself (framing and connection management).
_OWN_HEADERS = frozenset(
    (b"host", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"upgrade")
)
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


class Response:
    """An upstream response whose head has arrived; the body is read with read() or next_chunk()."""

    def __init__(self, conn, loop, read_timeout):
        self.status = 0
        self.headers = []
        self.buffered = 0
        self._conn = conn  # None once the message is complete, failed or abandoned
        self._loop = loop
        self._read_timeout = read_timeout
        self._chunks = []
        self._done = False
        self._exc = None
        self._waiter = None
        self._stale = False  # failed on a reused connection before any response byte

    def __repr__(self):
        return f"<Response {self.status} done={self._done}>"

    def header(self, name):
        """The value of the first header called ``name`` (lower-case), or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    async def read(self):
        """The whole body; the connection goes back to the pool when it is complete."""
        parts = None
        while True:
            chunks = self._chunks
            if chunks:
                if self._done and parts is None:
                    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    chunks.clear()
                    self.buffered = 0
                    return data
                if parts is None:
                    parts = []
                parts.extend(chunks)
                chunks.clear()
                self._drained()
            if self._done:
                return b"".join(parts) if parts is not None else b""
            if self._exc is not None:
                raise self._exc
            await self._wait()

    async def next_chunk(self):
        """The body bytes buffered so far (waiting for some if none), or b"" at the end."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._drained()
                return data
            if self._done:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._wait()

    async def _wait(self):
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._read_timeout, self._on_read_timeout)
        try:
            await waiter
        except BaseException:
            self.close()  # cancelled or timed out: the connection cannot be reused
            raise
        finally:
            timer.cancel()

    def close(self):
        """Abandon the response; an unfinished body closes the connection. Idempotent."""
        self._chunks.clear()
        self.buffered = 0
        conn = self._conn
        if conn is not None:
            conn._fail(UpstreamClosed("response closed before the body was read"))

    # -- called by the connection --

    def _drained(self):
        self.buffered = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.paused = False
            conn.transport.resume_reading()

    def _wake(self):
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self):
        self._conn = None
        self._done = True
        self._wake()

    def _fail(self, exc):
        self._conn = None
        if self._done or self._exc is not None:
            return
        self._exc = exc
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(exc)

    def _on_head_timeout(self):
        conn = self._conn
        if conn is not None and self.status == 0:
            conn._fail(UpstreamTimeout("first_byte", "no response head from upstream in time"))

    def _on_read_timeout(self):
        conn = self._conn
        if conn is not None and self._waiter is not None:
            conn._fail(UpstreamTimeout("read", "upstream stalled while sending the body"))


class _Connection:
    """One upstream socket: the asyncio protocol and the llhttp callbacks."""

    def __init__(self, pool):
        self.pool = pool
        self.transport = None
        self.parser = HttpResponseParser(self)
        self.resp = None
        self.headers = None
        self.state = _IN_USE
        self.idle_since = 0.0
        self.requests = 0
        self.got_bytes = False
        self.paused = False
        self.lost = False
        self.head_only = False
        self.interim = False
        self.framed = False
        self.lost_waiter = None

    def _factory(self):
        return self

    # -- asyncio protocol --

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.resp is None:
            # bytes nobody asked for: the framing is lost, never reuse this socket
            self._fail(UpstreamProtocolError("unsolicited data from upstream"))
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(UpstreamProtocolError("upstream switched protocols"))
        except HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid HTTP response from upstream: {exc}"))

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.lost = True
        resp = self.resp
        if resp is not None:
            self.resp = None
            if resp.status and not self.framed and not self.interim:
                resp._finish()  # body delimited by the end of the connection
            else:
                resp._stale = self.requests > 1 and not self.got_bytes
                if exc is not None:
                    resp._fail(UpstreamClosed(f"upstream connection lost: {exc!r}"))
                else:
                    resp._fail(UpstreamClosed("upstream closed the connection mid-response"))
        self.pool._drop(self)
        self.transport = None
        waiter = self.lost_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    # -- llhttp callbacks --

    def on_header(self, name, value):
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self.framed = True
        self.headers.append((name, value))

    def on_headers_complete(self):
        resp = self.resp
        if resp is None:
            return
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:
                self._fail(UpstreamProtocolError("upstream switched protocols"))
                return
            self.interim = True  # 1xx: skip it, the real head follows
            self.headers = []
            self.framed = False
            return
        resp.status = status
        resp.headers = self.headers
        resp._wake()
        if self.head_only:
            # llhttp cannot be told the request was HEAD: end the message here and
            # give the next request a fresh parser
            self.on_message_complete()
            self.parser = HttpResponseParser(self)

    def on_body(self, body):
        resp = self.resp
        if resp is None:
            return
        resp._chunks.append(body)
        resp.buffered += len(body)
        if resp.buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        resp._wake()

    def on_message_complete(self):
        if self.interim:
            self.interim = False
            return
        resp = self.resp
        if resp is None:
            return
        self.resp = None
        keep = self.parser.should_keep_alive()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        resp._finish()
        self.pool._release(self, keep)

    # -- internal --

    def _fail(self, exc):
        resp = self.resp
        if resp is not None:
            self.resp = None
            resp._fail(exc)
        self.pool._drop(self)


def _waiter_timeout(waiters, waiter):
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout("pool", "no upstream connection free in time"))
        try:
            waiters.remove(waiter)
        except ValueError:
            pass


class Pool:
    """Keep-alive HTTP/1.1 connections to one upstream origin (``http://`` or ``https://``).

    A pool belongs to the event loop of its first request. ``size`` counts open (and opening)
    connections, ``idle`` pooled ones, ``in_use`` those carrying a request, ``created`` every
    connection opened, ``reused`` requests sent on a connection that had served one before.
    """

    def __init__(
        self,
        url,
        *,
        max_size=256,
        idle_timeout=30.0,
        connect_timeout=10.0,
        first_byte_timeout=120.0,
        read_timeout=120.0,
        ssl_context=None,
    ):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream url must be http://host[:port] or https://..., got {url!r}")
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.url = url
        self.host = parts.hostname
        tls = scheme == "https"
        default_port = 443 if tls else 80
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != default_port:
            host = f"{host}:{self.port}"
        self._host_header = host.encode("idna" if not host.isascii() else "ascii")
        if tls:
            self._ssl = ssl_context if ssl_context is not None else _ssl.create_default_context()
        else:
            self._ssl = None
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.read_timeout = read_timeout
        self.size = 0  # connections open or being opened
        self.in_use = 0  # connections carrying a request
        self.created = 0  # connections ever opened
        self.reused = 0  # requests sent on an already used connection
        self.closed = False
        self._idle = []  # LIFO: the most recently used is the last
        self._waiters = deque()  # futures: a connection, or None for a free slot
        self._sweeper = None
        self._loop = None

    def __repr__(self):
        return (
            f"<Pool {self.url} size={self.size} idle={len(self._idle)} in_use={self.in_use}"
            f" waiting={len(self._waiters)}>"
        )

    @property
    def idle(self):
        """Number of idle keep-alive connections."""
        return len(self._idle)

    async def request(self, method, target, headers, body):
        """Send one request; return the Response once its status line and headers arrived."""
        if self.closed:
            raise UpstreamClosed("pool is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", self._host_header, b"\r\n"]
        for name, value in headers:
            if name.lower() not in _OWN_HEADERS:
                parts += (name, b": ", value, b"\r\n")
        if body or method in _BODY_METHODS:
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body)
        else:
            parts.append(b"\r\n")
        data = b"".join(parts)
        head_only = method == b"HEAD"
        fresh = False
        while True:
            conn = None if fresh else self._checkout(loop)
            if conn is None:
                conn = await self._acquire(loop, fresh)
            resp = self._send(conn, data, head_only)
            if resp is None:
                continue  # the connection died while idle or being handed over
            timer = loop.call_later(self.first_byte_timeout, resp._on_head_timeout)
            try:
                await resp._waiter
            except UpstreamClosed:
                if resp._stale and not fresh:
                    fresh = True  # stale keep-alive: the upstream closed it as we sent
                    continue
                raise
            except BaseException:
                resp.close()
                raise
            finally:
                timer.cancel()
            return resp

    async def close(self):
        """Close idle connections and refuse new requests; busy ones close when released."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamClosed("pool is closed"))
        waits = self._close_idle()
        if waits:
            await asyncio.wait(waits, timeout=1.0)

    # -- checkout and return --

    def _close_idle(self):
        waits = []
        while self._idle:
            conn = self._idle[len(self._idle) - 1]
            if conn.transport is not None and self._loop is not None:
                conn.lost_waiter = self._loop.create_future()
                waits.append(conn.lost_waiter)
            self._drop(conn, False)
        return waits

    def _send(self, conn, data, head_only):
        if conn.state == _DROPPED:
            if conn.requests == 0:
                raise UpstreamClosed("upstream closed the connection before the request")
            return None
        if conn.requests:
            self.reused += 1
        conn.requests += 1
        resp = Response(conn, self._loop, self.read_timeout)
        resp._waiter = self._loop.create_future()
        conn.resp = resp
        conn.headers = []
        conn.got_bytes = False
        conn.framed = False
        conn.interim = False
        conn.head_only = head_only
        conn.transport.write(data)
        return resp

    def _checkout(self, loop):
        idle = self._idle
        if not idle:
            return None
        deadline = loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.idle_since <= deadline:
                # LIFO: every connection below this one has been idle longer
                conn.state = _IN_USE
                self.in_use += 1
                self._drop(conn, False)
                while idle:
                    conn = idle.pop()
                    conn.state = _IN_USE
                    self.in_use += 1
                    self._drop(conn, False)
                return None
            conn.state = _IN_USE
            self.in_use += 1
            if conn.lost or conn.transport is None or conn.transport.is_closing():
                self._drop(conn)
                continue
            return conn
        return None

    async def _acquire(self, loop, fresh):
        if self.closed:
            raise UpstreamClosed("pool is closed")
        if self.size < self.max_size:
            self.size += 1
            return await self._connect(loop)
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self.connect_timeout, _waiter_timeout, self._waiters, waiter)
        try:
            conn = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                conn = waiter.result()  # handed over just as we were cancelled: give it back
                if conn is None:
                    self.size -= 1
                    self._wake_slot()
                else:
                    self._release(conn, True)
            raise
        finally:
            timer.cancel()
        if conn is None:
            return await self._connect(loop)
        return conn

    async def _connect(self, loop):
        # the caller reserved a slot in self.size
        conn = _Connection(self)
        self.in_use += 1
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    conn._factory,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            self._drop(conn)
            raise UpstreamTimeout("connect", f"connecting to {self.url} timed out") from exc
        except OSError as exc:
            self._drop(conn)
            raise UpstreamConnectError(f"cannot connect to {self.url}: {exc}") from exc
        except BaseException:
            self._drop(conn)
            raise
        self.created += 1
        return conn

    def _release(self, conn, keep):
        if conn.state != _IN_USE:
            return
        if not keep or self.closed or conn.lost:
            self._drop(conn, False)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # stays in use, by the next caller
                return
        conn.state = _IDLE
        self.in_use -= 1
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + self.idle_timeout, self._sweep)

    def _drop(self, conn, abort=True):
        state = conn.state
        if state == _DROPPED:
            return
        conn.state = _DROPPED
        if state == _IDLE:
            self._idle.remove(conn)
        else:
            self.in_use -= 1
        self.size -= 1
        transport = conn.transport
        if transport is not None and not conn.lost:
            if abort:
                transport.abort()
            else:
                transport.close()
        self._wake_slot()

    def _wake_slot(self):
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self.size += 1  # the slot passes to the waiter, who connects
                waiter.set_result(None)
                return

    def _sweep(self):
        self._sweeper = None
        self._expire()

    def _expire(self):
        idle = self._idle
        deadline = self._loop.time() - self.idle_timeout + 0.005
        while idle:
            conn = idle[0]
            if conn.idle_since > deadline:
                break
            self._drop(conn, False)
        if idle and not self.closed:
            conn = idle[0]
            self._sweeper = self._loop.call_at(conn.idle_since + self.idle_timeout, self._sweep)
