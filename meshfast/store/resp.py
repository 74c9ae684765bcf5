"""A lean pipelined Redis connection for the hot path: an asyncio Protocol, hiredis
(the parser redis-py uses) for packing and parsing, one connection per process.

Why not redis-py here: measured on this project's 2-core machine (benchmarks/stores.py),
redis-py's asyncio client spent about 200 µs of CPU per command (pool checkout, locks,
per-command coroutines), so its two calls per request took the Redis store to a third of
the embedded store's throughput. Here a call is one ``write`` and one future: every
concurrent request's command goes down the same connection at once (pipelining) and the
replies come back in order. redis-py still does everything else (control plane,
revocation channel, heartbeat).

Failures: a connection that breaks fails every call waiting on it with ConnectionError
and the next call reconnects; a Redis that stops answering is detected by a watchdog
(the oldest call waiting longer than ``timeout``) and treated the same way.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class _Protocol(asyncio.Protocol):
    def __init__(self, on_lost: Any) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        self.waiters: deque[tuple[asyncio.Future, float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # commands packed this loop iteration, sent together
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()

    def send(self, args: tuple[Any, ...]) -> asyncio.Future:
        """Queue one command; every command queued in one loop iteration goes out in one
        write (fewer syscalls here and in Redis). The future gets the reply."""
        packed = hiredis.pack_command(args)  # first: a bad argument must not leave a waiter
        loop = self._loop
        fut = loop.create_future()
        self.waiters.append((fut, loop.time()))
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append(packed)
        return fut

    def _flush(self) -> None:
        data, self.pending = self.pending, []
        if data and self.transport is not None:
            self.transport.write(b"".join(data) if len(data) > 1 else data[0])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:  # not Redis on the other end
                self.fail(RedisConnectionError(f"the server does not speak the Redis protocol: {exc}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            if reply is False:
                break
            if not waiters:  # a reply nobody asked for (e.g. "max number of clients"): drop the link
                self.fail(RedisConnectionError(f"Redis sent an unexpected reply: {reply!r}"))
                if self.transport is not None:
                    self.transport.abort()
                return
            fut = waiters.popleft()[0]
            if fut.done():  # its caller was cancelled; the reply is dropped
                continue
            if isinstance(reply, ResponseError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))
        self._on_lost(self)

    def fail(self, exc: Exception) -> None:
        while self.waiters:
            fut = self.waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(exc)


class RespConnection:
    """``await conn.call("FCALL", name, 1, key, *args)``: one pipelined command."""

    def __init__(self, url: str, *, timeout: float = 2.0, connect_timeout: float = 1.0) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {u.scheme}://")
        self.ssl = ssl.create_default_context() if u.scheme == "rediss" else None
        self.unix_path = u.path if u.scheme == "unix" else None
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.password = unquote(u.password) if u.password else None
        self.username = unquote(u.username) if u.username else None
        db = (u.path or "/0").lstrip("/") if u.scheme != "unix" else dict(p.split("=", 1) for p in u.query.split("&") if "=" in p).get("db", "0")
        self.db = int(db or 0)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        factory = lambda: _Protocol(self._lost)  # noqa: E731
        try:
            if self.unix_path:
                conn = loop.create_unix_connection(factory, self.unix_path)
            else:
                conn = loop.create_connection(factory, self.host, self.port, ssl=self.ssl)
            _transport, proto = await asyncio.wait_for(conn, self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        setup: list[tuple[Any, ...]] = []
        if self.password is not None:
            setup.append(("AUTH", self.password) if self.username is None else ("AUTH", self.username, self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        try:
            for cmd in setup:
                fut = loop.create_future()
                proto.waiters.append((fut, loop.time()))
                proto.transport.write(hiredis.pack_command(cmd))  # type: ignore[union-attr]
                await asyncio.wait_for(fut, self.timeout)
        except (ResponseError, RedisConnectionError, TimeoutError, AttributeError) as exc:
            if proto.transport is not None:
                proto.transport.close()
            raise RedisConnectionError(f"Redis refused the connection setup (AUTH/SELECT): {exc}") from None
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout / 2, self._watch)
        return proto

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None

    def _watch(self) -> None:
        """Abort a connection whose oldest call has waited longer than ``timeout``."""
        loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is not None and proto.waiters and loop.time() - proto.waiters[0][1] > self.timeout:
            proto.fail(RedisTimeoutError(f"Redis did not answer within {self.timeout:g} s"))
            if proto.transport is not None:
                proto.transport.abort()
            self._proto = None
        self._watchdog = loop.call_later(self.timeout / 2, self._watch)

    async def call(self, *args: Any) -> Any:
        """Send one command and wait for its reply."""
        return await (self.send_now(args) or await self.start(args))

    def send_now(self, args: tuple[Any, ...]) -> asyncio.Future | None:
        """``start`` without a coroutine when the connection is up (the hot path's usual
        case); None when it must connect first."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return None
        return proto.send(args)

    def flush(self) -> None:
        """Write the commands queued so far now, not at the end of this loop iteration."""
        proto = self._proto
        if proto is not None:
            proto._flush()

    async def start(self, args: tuple[Any, ...]) -> asyncio.Future:
        """Send one command and return the future of its reply without waiting for it (the
        command runs even if the caller is cancelled afterwards)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            proto = await self._open()
            if proto.transport is None:  # lost again while connecting
                raise RedisConnectionError("connection to Redis lost")
        return proto.send(args)

    async def _open(self) -> _Protocol:
        # one connect at a time; concurrent callers wait for it
        if self._connecting is None:
            connecting = asyncio.ensure_future(self._connect())
            self._connecting = connecting
            connecting.add_done_callback(self._connected)
        proto = await asyncio.shield(self._connecting)
        self._proto = proto
        return proto

    def _connected(self, task: asyncio.Future) -> None:
        """A connect finished (even if every caller waiting for it was cancelled): the next
        call connects anew when this one failed."""
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled() and task.exception() is None and self._proto is None:
            self._proto = task.result()

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


class ClusterRespConnection:
    """The hot path on Redis Cluster: one pipelined :class:`RespConnection` per node, each
    command sent to the node that serves its key's slot. The slot map starts as redis-py's
    (the cluster client the control plane uses) and is kept here: a MOVED reply moves its
    slot (``moved``), and ``reload`` reads the whole map again with CLUSTER SLOTS from any
    node that answers (after a node stopped answering: a failover promotes a replica at
    another address, and a dead node sends no MOVED). The caller treats MOVED, ASK and a
    lost node as an outage of that call."""

    SLOTS = 16384

    def __init__(self, cluster: Any, url: str, *, timeout: float = 2.0, connect_timeout: float = 1.0) -> None:
        u = urlparse(url)
        self._auth = u.netloc.rpartition("@")[0]
        self._scheme = u.scheme
        self._timeout, self._connect_timeout = timeout, connect_timeout
        self._conns: dict[tuple[str, int], RespConnection] = {}
        self._slots: list[tuple[str, int]] = [("", 0)] * self.SLOTS
        for slot, nodes in cluster.nodes_manager.slots_cache.items():
            self._slots[slot] = (nodes[0].host, nodes[0].port)
        self._reloading: asyncio.Task | None = None
        self._reloaded_at = 0.0

    def url_for(self, host: str, port: int) -> str:
        auth = f"{self._auth}@" if self._auth else ""
        return f"{self._scheme}://{auth}{f'[{host}]' if ':' in host else host}:{port}/0"

    def nodes(self) -> list[tuple[str, int]]:
        """The nodes that serve slots, as the map has them."""
        return sorted({addr for addr in self._slots if addr[1]})

    def _conn(self, args: tuple[Any, ...]) -> RespConnection:
        key = args[3] if args[0] == "FCALL" else args[1]  # FCALL fn numkeys key ... | CMD key ...
        return self._conn_at(self._slots[key_slot(key.encode() if isinstance(key, str) else key)])

    def _conn_at(self, addr: tuple[str, int]) -> RespConnection:
        conn = self._conns.get(addr)
        if conn is None:
            conn = self._conns[addr] = RespConnection(self.url_for(*addr), timeout=self._timeout, connect_timeout=self._connect_timeout)
        return conn

    async def call(self, *args: Any) -> Any:
        return await self._conn(args).call(*args)

    def send_now(self, args: tuple[Any, ...]) -> asyncio.Future | None:
        return self._conn(args).send_now(args)

    async def start(self, args: tuple[Any, ...]) -> asyncio.Future:
        return await self._conn(args).start(args)

    def flush(self) -> None:
        for conn in self._conns.values():
            conn.flush()

    def moved(self, reply: str) -> None:
        """A node answered "MOVED <slot> <host>:<port>": that slot is served there now (an
        empty host means the host already used for it)."""
        _, slot, addr = reply.split(" ", 2)
        host, _, port = addr.rpartition(":")
        self._slots[int(slot)] = (host.strip("[]") or self._slots[int(slot)][0], int(port))

    async def call_all(self, *args: Any) -> None:
        """The same command on every node of the map (e.g. FUNCTION LOAD)."""
        for addr in self.nodes():
            await self._conn_at(addr).call(*args)

    def reload(self) -> None:
        """Read the slot map again in the background, at most once a second."""
        loop = asyncio.get_running_loop()
        if (self._reloading is None or self._reloading.done()) and loop.time() - self._reloaded_at >= 1.0:
            self._reloaded_at = loop.time()
            self._reloading = loop.create_task(self._reload())

    async def reload_now(self) -> None:
        """Read the slot map again and wait for it (one read at a time; one that finished
        less than a second ago counts)."""
        loop = asyncio.get_running_loop()
        if self._reloading is None or self._reloading.done():
            if loop.time() - self._reloaded_at < 1.0:
                return
            self._reloaded_at = loop.time()
            self._reloading = loop.create_task(self._reload())
        await asyncio.shield(self._reloading)

    async def _reload(self) -> None:
        for addr in self.nodes():
            probe = RespConnection(self.url_for(*addr), timeout=self._timeout, connect_timeout=self._connect_timeout)
            try:
                ranges = await asyncio.wait_for(probe.call("CLUSTER", "SLOTS"), self._timeout)
            except (RedisConnectionError, ResponseError, TimeoutError, OSError):
                continue
            finally:
                probe.close()
            for start, end, primary, *_replicas in ranges:
                node = (primary[0] or addr[0], int(primary[1]))  # "" or nil: the node that answered
                for slot in range(int(start), int(end) + 1):
                    self._slots[slot] = node
            live = set(self._slots)
            for gone in [a for a in self._conns if a not in live]:  # nodes no longer in the map
                self._conns.pop(gone).close()
            return

    def close(self) -> None:
        if self._reloading is not None:
            self._reloading.cancel()
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
