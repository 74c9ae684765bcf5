"""OpenAI-compatible upstreams over the compiled keep-alive client (meshfast_core.http).

The request body passes through untouched except ``model`` (mapped to the
upstream id) and, for streams, ``stream_options.include_usage`` (always asked
for, so every stream can be billed; the relay hides the usage chunk from
clients that did not ask for it).
"""

from __future__ import annotations

import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import orjson

from meshfast import errors
from meshfast.config import ProviderConfig
from meshfast.providers.base import Endpoint, Provider, Reply
from meshfast_core import http
from meshfast_core.exceptions import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)


def map_upstream_error(exc: UpstreamError, provider: str) -> errors.MeshError:
    """Translate a transport failure into the client-visible error (502 or 504)."""
    if isinstance(exc, UpstreamTimeout):
        return errors.UpstreamTimedOut(f"provider {provider!r} timed out ({exc.phase})")
    if isinstance(exc, UpstreamConnectError):
        return errors.UpstreamUnreachable(f"provider {provider!r} is unreachable")
    return errors.UpstreamBadResponse(
        f"provider {provider!r} sent an incomplete or malformed response"
    )


class OpenAIProvider(Provider):
    kind = "openai"

    def __init__(self, cfg: ProviderConfig) -> None:
        super().__init__(cfg.name, cfg.privacy)
        self.cfg = cfg
        parts = urlsplit(cfg.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        prefix = parts.path.rstrip("/")
        self.chat_path = f"{prefix}/chat/completions".encode()
        self.embeddings_path = f"{prefix}/embeddings".encode()
        self.base_headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"user-agent", b"meshfast"),
        ]
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if key:
            self.base_headers.append((b"authorization", b"Bearer " + key.encode()))
        self.has_credentials = bool(key) or not cfg.api_key_env
        self.pool: Any = None

    async def start(self) -> None:
        ctx = None
        if self.origin.startswith("https://"):
            ctx = ssl.create_default_context(cafile=self.cfg.ca_bundle)
        self.pool = http.Pool(
            self.origin,
            max_size=self.cfg.max_connections,
            idle_timeout=self.cfg.idle_timeout,
            connect_timeout=self.cfg.connect_timeout,
            first_byte_timeout=self.cfg.first_byte_timeout,
            read_timeout=self.cfg.read_timeout,
            ssl_context=ctx,
        )

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def _post(self, path: bytes, body: dict[str, Any]) -> Reply:
        try:
            return await self.pool.request(b"POST", path, self.base_headers, orjson.dumps(body))
        except UpstreamError as exc:
            raise map_upstream_error(exc, self.name) from None

    async def chat(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        stream: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> Reply:
        body["model"] = endpoint.model.upstream
        if stream:
            opts = body.get("stream_options")
            body["stream_options"] = (
                {**opts, "include_usage": True} if opts else {"include_usage": True}
            )
        return await self._post(self.chat_path, body)

    async def embeddings(
        self, endpoint: Endpoint, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
    ) -> Reply:
        body["model"] = endpoint.model.upstream
        return await self._post(self.embeddings_path, body)
