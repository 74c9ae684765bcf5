"""The hot path's pipelined Redis connection (meshfast/store/resp.py), on real sockets:
the real Redis at 127.0.0.1:6379, and small socket servers for failures Redis won't stage."""

from __future__ import annotations

import asyncio
import os

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from meshfast.store.resp import RespConnection
from tests.support import REDIS_URL, free_port, needs_redis


@needs_redis
def test_pipelined_calls_get_their_own_replies_in_order():
    key = "resptest-" + os.urandom(4).hex()

    async def main():
        conn = RespConnection(REDIS_URL)
        try:
            got = await asyncio.gather(*[conn.call("INCR", key) for _ in range(500)])
            assert sorted(got) == list(range(1, 501))
            assert await conn.call("GET", key) == "500"
            assert await conn.call("DEL", key) == 1
            with pytest.raises(ResponseError, match="wrong number of arguments"):
                await conn.call("GET")
            assert await conn.call("PING") == "PONG"  # an error reply leaves the connection usable
        finally:
            conn.close()

    asyncio.run(main())


@needs_redis
def test_a_cancelled_call_does_not_shift_the_replies_of_others():
    key = "resptest-" + os.urandom(4).hex()

    async def main():
        conn = RespConnection(REDIS_URL)
        try:
            await conn.call("SET", key, "v")
            slow = asyncio.ensure_future(conn.call("BLPOP", key + ":empty", "0.2"))
            await asyncio.sleep(0.01)
            slow.cancel()
            after = await conn.call("GET", key)  # queued behind the cancelled BLPOP's reply
            assert after == "v"
            await conn.call("DEL", key)
        finally:
            conn.close()

    asyncio.run(main())


@needs_redis
def test_the_database_number_in_the_url_is_selected():
    key = "resptest-" + os.urandom(4).hex()
    url = REDIS_URL.rsplit("/", 1)[0] + "/7"

    async def main():
        conn = RespConnection(url)
        try:
            await conn.call("SET", key, "in-db-7")
        finally:
            conn.close()

    asyncio.run(main())
    r7 = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert r7.get(key) == "in-db-7"
        assert redis.Redis.from_url(REDIS_URL).get(key) is None
    finally:
        r7.delete(key)


def test_connection_refused_is_a_connection_error():
    async def main():
        conn = RespConnection(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        with pytest.raises(RedisConnectionError):
            await conn.call("PING")
        conn.close()

    asyncio.run(main())


def test_a_server_that_goes_silent_fails_calls_after_the_timeout_and_the_next_call_reconnects():
    """A server that answers the first PING, then swallows everything: the watchdog fails
    the waiting call with a timeout; a new connection is made for the next call."""
    connections = []

    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            silent_after = 1 if len(connections) == 1 else None  # the first connection answers once
            answered = 0
            try:
                while await reader.read(4096):
                    if silent_after is None or answered < silent_after:
                        writer.write(b"+PONG\r\n")
                        answered += 1
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = RespConnection(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        try:
            assert await conn.call("PING") == "PONG"
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(RedisTimeoutError):
                await conn.call("PING")  # the first connection now swallows it
            assert 0.25 < loop.time() - t0 < 1.5
            assert await conn.call("PING") == "PONG"  # on a second connection
            assert len(connections) == 2
        finally:
            conn.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)  # let the handlers see the close

    asyncio.run(main())


def test_a_connection_closed_by_the_server_fails_the_waiting_calls_and_reconnects():
    async def main():
        count = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            if count == 1:
                await reader.read(4096)
                writer.close()  # drops the connection with a call waiting
                return
            try:
                while await reader.read(4096):
                    writer.write(b":42\r\n")
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = RespConnection(f"redis://127.0.0.1:{port}/0")
        try:
            with pytest.raises(RedisConnectionError, match="lost"):
                await conn.call("INCR", "x")
            assert await conn.call("INCR", "x") == 42
        finally:
            conn.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)  # let the handlers see the close

    asyncio.run(main())


@needs_redis
def test_a_refused_login_closes_its_connection():
    url = REDIS_URL.replace("redis://", "redis://:not-the-password@", 1)

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main():
        before = open_fds()
        for _ in range(10):
            conn = RespConnection(url)
            with pytest.raises(RedisConnectionError, match="AUTH"):
                await conn.call("PING")
            conn.close()
        await asyncio.sleep(0.05)
        assert open_fds() <= before + 1  # no socket left behind by the failed logins

    asyncio.run(main())


@needs_redis
def test_an_argument_that_cannot_be_sent_leaves_the_connection_in_step():
    key = "resptest-" + os.urandom(4).hex()

    async def main():
        conn = RespConnection(REDIS_URL)
        try:
            with pytest.raises(TypeError):
                await conn.call("SET", key, None)
            assert await conn.call("SET", key, "1") == "OK"
            assert await conn.call("GET", key) == "1"
            assert await conn.call("DEL", key) == 1
        finally:
            conn.close()

    asyncio.run(main())


def test_a_server_that_refuses_at_once_is_a_connection_error():
    """Redis at maxclients answers a new connection with an error and closes it."""

    async def main():
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"-ERR max number of clients reached\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = RespConnection(f"redis://127.0.0.1:{port}/0")
        try:
            for _ in range(3):
                with pytest.raises((RedisConnectionError, ResponseError)):
                    await conn.call("PING")
                await asyncio.sleep(0.02)
        finally:
            conn.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
