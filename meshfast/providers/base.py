"""The provider interface.

A provider turns a validated OpenAI-shaped request into an upstream call and
returns a :class:`Reply`: the response head plus a body read whole (``read``)
or piece by piece (``next_chunk``). The upstream client's ``Response``
(meshfast_core.http) is a Reply; the in-process simulator builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meshfast.config import ModelConfig
from meshfast.money import usd_to_nano


class Reply(Protocol):
    status: int

    def header(self, name: bytes) -> bytes | None: ...

    async def read(self) -> bytes: ...

    async def next_chunk(self) -> bytes: ...

    def close(self) -> None: ...


class Provider:
    """Base class: a named upstream with a wire format and a privacy class."""

    kind = "base"

    def __init__(self, name: str, privacy: str) -> None:
        self.name = name
        self.privacy = privacy

    async def start(self) -> None:
        """Open resources (connection pools); called once per worker at startup."""

    async def close(self) -> None:
        """Release resources; called at shutdown."""

    async def chat(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        stream: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> Reply:
        raise NotImplementedError

    async def embeddings(
        self, endpoint: Endpoint, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
    ) -> Reply:
        raise NotImplementedError


@dataclass(slots=True)
class Endpoint:
    """One model as served by one provider: what the router picks."""

    provider: Provider
    model: ModelConfig
    input_nano_per_mtok: int
    output_nano_per_mtok: int
    cached_input_nano_per_mtok: int
    headers: tuple[tuple[bytes, bytes], ...] = ()  # response headers naming this endpoint

    @classmethod
    def of(cls, provider: Provider, model: ModelConfig) -> Endpoint:
        return cls(
            provider,
            model,
            usd_to_nano(model.input_usd_per_mtok),
            usd_to_nano(model.output_usd_per_mtok),
            usd_to_nano(model.cached_input_usd_per_mtok or model.input_usd_per_mtok),
            ((b"x-mesh-provider", provider.name.encode()), (b"x-mesh-model", model.id.encode())),
        )

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def upstream(self) -> str:
        return self.model.upstream
