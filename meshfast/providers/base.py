"""The provider interface.

A provider turns a validated OpenAI-shaped request into an upstream call and
returns a :class:`Reply`: the response head plus a body read whole (``read``)
or piece by piece (``next_chunk``). The upstream client's ``Response``
(meshfast_core.http) is a Reply; the in-process simulator builds its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from meshfast.config import PRIVACY_CLASSES, ModelConfig
from meshfast.money import usd_to_nano
from meshfast_core.pricing import Tariff


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


CHAT_CAPABILITIES = frozenset(("tools", "vision", "json_schema", "streaming"))
EMBEDDING_CAPABILITIES = frozenset(("embeddings",))
_PRIVACY_RANK = {name: i for i, name in enumerate(PRIVACY_CLASSES)}


@dataclass(slots=True)
class Endpoint:
    """One model as served by one provider: what the router picks.

    ``privacy`` is the effective class: the lower of the catalogue's class for this
    endpoint and the configured provider's ``privacy``. ``key`` ("provider/model") names
    the endpoint in receipts, health and logs. ``health`` is the router's per-endpoint
    state (circuit breaker, statistics); it is not part of the endpoint's identity.

    ``tariff`` is what the hold (``hold_worst``) and the receipt (``priced_receipt``) read
    of the endpoint, as one compiled record (``meshfast_core.pricing.Tariff``): its prices,
    ``model.max_output_tokens``, ``provider.name``, ``model.upstream`` and ``privacy``. It is
    built after ``__init__`` and again whenever one of ``provider``, ``model``, ``privacy``
    or the three prices is set, so it always holds the endpoint's values (a provider's
    ``name`` is fixed once built, as ``key`` and ``headers`` already assume).
    """

    provider: Provider
    model: ModelConfig
    input_nano_per_mtok: int
    output_nano_per_mtok: int
    cached_input_nano_per_mtok: int
    headers: tuple[tuple[bytes, bytes], ...] = ()  # response headers naming this endpoint
    privacy: str = "standard"
    capabilities: frozenset[str] = CHAT_CAPABILITIES
    quality: int = 50
    context_window: int = 128_000
    family: str = "custom"
    key: str = ""
    privacy_rank: int = 0
    health: Any = field(default=None, compare=False, repr=False)
    tariff: Any = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tariff", _tariff_of(self))

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _TARIFF_FIELDS and hasattr(self, "tariff"):  # not while __init__ runs
            object.__setattr__(self, "tariff", _tariff_of(self))

    @classmethod
    def of(
        cls,
        provider: Provider,
        model: ModelConfig,
        *,
        privacy: str | None = None,
        capabilities: frozenset[str] | None = None,
        quality: int = 50,
        family: str = "custom",
    ) -> Endpoint:
        """``privacy`` defaults to the provider's; capabilities to every chat capability
        (``embeddings`` for an embedding model)."""
        privacy = privacy or provider.privacy
        if capabilities is None:
            capabilities = EMBEDDING_CAPABILITIES if model.kind == "embedding" else CHAT_CAPABILITIES
        return cls(
            provider,
            model,
            usd_to_nano(model.input_usd_per_mtok),
            usd_to_nano(model.output_usd_per_mtok),
            usd_to_nano(model.cached_input_usd_per_mtok or model.input_usd_per_mtok),
            ((b"x-mesh-provider", provider.name.encode()), (b"x-mesh-model", model.id.encode())),
            privacy,
            capabilities,
            quality,
            model.context_window,
            family,
            f"{provider.name}/{model.id}",
            _PRIVACY_RANK[privacy],
        )

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def upstream(self) -> str:
        return self.model.upstream


# the fields an endpoint's tariff copies (setting one rebuilds it)
_TARIFF_FIELDS = frozenset(
    ("provider", "model", "privacy", "input_nano_per_mtok", "output_nano_per_mtok", "cached_input_nano_per_mtok")
)


def _tariff_of(ep: Endpoint) -> Any:
    return Tariff(
        ep.input_nano_per_mtok, ep.cached_input_nano_per_mtok, ep.output_nano_per_mtok, ep.model.max_output_tokens,
        ep.provider.name, ep.model.upstream, ep.privacy,
    )  # fmt: skip
