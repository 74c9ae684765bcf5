"""Small ASGI helpers shared by the server, the pipeline and the admin API."""

from __future__ import annotations

from typing import Any

from meshfast import errors


async def send_json(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Any, exc: errors.MeshError) -> None:
    await send_json(send, exc.status, exc.body(), exc.headers)


def header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None
