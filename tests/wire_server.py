"""A raw HTTP/1.1 upstream on a real socket for client tests; it records what it sees.

Each accepted connection reads requests (head + Content-Length body) and hands each to the
test's ``handler(server, request, writer)`` coroutine, which writes whatever bytes it likes
and returns whether to keep reading requests on that connection, or ``HOLD`` to send
nothing more and wait for the client to close it.
"""

import asyncio
import contextlib
from dataclasses import dataclass, field

HOLD = "hold"


@dataclass
class WireRequest:
    conn_id: int
    method: str
    target: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def response(status=200, body=b"", headers=(), reason="OK"):
    """A whole response with a Content-Length (unless a header says otherwise)."""
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = {name.lower() for name, _ in headers}
    lines += [f"{name}: {value}" for name, value in headers]
    if "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(pieces):
    """A chunked transfer-coding of the pieces, terminated."""
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n\r\n"


async def read_request(reader, conn_id):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    raw = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            raw.append((name, value.strip()))
    headers = {name.lower(): value for name, value in raw}
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return WireRequest(conn_id, method, target, headers, raw, body)


class WireServer:
    def __init__(self, handler, ssl=None):
        self.handler = handler
        self.ssl = ssl
        self.connections = 0  # ever accepted
        self.open = 0  # open now
        self.max_open = 0
        self.requests: list[WireRequest] = []
        self.closed_by_peer = 0  # connections the client closed (EOF or reset)
        self.tasks: set[asyncio.Task] = set()
        self.state: dict = {}  # free for handlers
        self._server = None
        self.port = 0

    @property
    def url(self):
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self):
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)
        await self._server.wait_closed()

    async def wait_for(self, predicate, timeout=2.0):
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not predicate():
            if loop.time() > end:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.005)

    async def _client(self, reader, writer):
        self.tasks.add(asyncio.current_task())
        conn_id = self.connections
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                req = await read_request(reader, conn_id)
                if req is None:
                    self.closed_by_peer += 1
                    break
                self.requests.append(req)
                keep = await self.handler(self, req, writer)
                if keep == HOLD:
                    while await reader.read(65536):
                        pass
                    self.closed_by_peer += 1
                    break
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_peer += 1
        except asyncio.CancelledError:
            pass  # test over; a cancelled callback task would be logged as an error
        finally:
            self.open -= 1
            self.tasks.discard(asyncio.current_task())
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
