"""The model catalogue shipped with meshfast (``meshfast/catalogue.toml``).

:func:`load_catalogue` reads the shipped file (or another path), validates it strictly
and returns ``{model id: CatalogueModel}``. Prices become integer nano-USD per million
tokens (:func:`meshfast.money.usd_to_nano`); a bad value raises
:class:`~meshfast.errors.ConfigError` naming the file and the key, e.g.
``models[12].endpoints[0].privacy``.

Operator overrides come as a list of tables in the same shape as ``[[models]]`` (from
``[[catalogue.models]]`` in the operator's config file). An override whose id is in
the catalogue replaces the fields it gives; its endpoints merge per provider name (a
known provider's endpoint takes the fields given, a new provider's endpoint is added
and must be complete). An override with a new id adds a model and must be complete.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from meshfast.config import PRIVACY_CLASSES, _Reader
from meshfast.errors import ConfigError
from meshfast.money import usd_to_nano

PRIVACY_ORDER: tuple[str, ...] = (
    PRIVACY_CLASSES  # standard < protected < private_gateway < confidential
)
CAPABILITIES = ("tools", "vision", "json_schema", "streaming", "embeddings")
ROUTER_MODES = ("auto", "fast", "cheapest", "best")
SHIPPED = "catalogue.toml"

_MODEL_KEYS = ("id", "family", "context_window", "max_output_tokens", "capabilities", "quality")
_ENDPOINT_REQUIRED = (
    "provider",
    "upstream",
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "privacy",
)
_PRICES = ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok")


def privacy_rank(name: str) -> int:
    """The position of a privacy class in :data:`PRIVACY_ORDER` (standard is 0)."""
    try:
        return PRIVACY_ORDER.index(name)
    except ValueError:
        raise ValueError(
            f"unknown privacy class {name!r}; expected one of {', '.join(PRIVACY_ORDER)}"
        ) from None


@dataclass(frozen=True, slots=True)
class CatalogueEndpoint:
    provider: str
    upstream: str
    input_nano_per_mtok: int
    output_nano_per_mtok: int
    cached_input_nano_per_mtok: int | None  # None: billed at the input price
    privacy: str


@dataclass(frozen=True, slots=True)
class CatalogueModel:
    id: str
    family: str
    context_window: int
    max_output_tokens: int  # 0 for embedding models
    capabilities: frozenset[str]
    quality: int
    endpoints: tuple[CatalogueEndpoint, ...]
    kind: str  # "chat" | "embedding"

    def endpoint(self, provider: str) -> CatalogueEndpoint | None:
        for ep in self.endpoints:
            if ep.provider == provider:
                return ep
        return None


# --- parsing: each table becomes a dict of the fields it gives, type-checked -------------


def _table(source: str, value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(source, key, f"must be a table, got {type(value).__name__}")
    return value


def _price(r: _Reader, name: str) -> int:
    value = r.get(name, (str, int, float))
    if isinstance(value, float):
        raise r.fail(name, f'must be a quoted decimal string such as "0.15", got float {value!r}')
    try:
        return usd_to_nano(value)
    except ValueError:
        raise r.fail(name, f"must be a non-negative decimal USD amount, got {value!r}") from None


def _positive_int(r: _Reader, name: str) -> int:
    value = r.get(name, int)
    if value <= 0:
        raise r.fail(name, f"must be greater than 0, got {value!r}")
    return value


def _name(r: _Reader, name: str) -> str:
    value = r.get(name, str)
    if not value.strip():
        raise r.fail(name, "must not be empty")
    return value


def _endpoint_fields(source: str, value: Any, key: str) -> dict[str, Any]:
    table = _table(source, value, key)
    r = _Reader(source, table, key + ".")
    out: dict[str, Any] = {}
    for name in ("provider", "upstream"):
        if name in table:
            out[name] = _name(r, name)
    if "provider" in out and "/" in out["provider"]:
        raise r.fail("provider", f"must be a provider name without '/', got {out['provider']!r}")
    for name in _PRICES:
        if name in table:
            out[name] = _price(r, name)
    if "privacy" in table:
        privacy = r.get("privacy", str)
        if privacy not in PRIVACY_ORDER:
            raise r.fail("privacy", f"must be one of {', '.join(PRIVACY_ORDER)}, got {privacy!r}")
        out["privacy"] = privacy
    r.done()
    return out


def _model_fields(source: str, value: Any, key: str) -> dict[str, Any]:
    """The fields a [[models]] table gives, validated one by one (completeness is later)."""
    table = _table(source, value, key)
    r = _Reader(source, table, key + ".")
    mid = r.get("id", str, required=True)
    if not mid or "/" in mid or mid in ROUTER_MODES:
        raise r.fail(
            "id", f"must be a non-empty model id without '/' and not a router mode, got {mid!r}"
        )
    out: dict[str, Any] = {"id": mid}
    if "family" in table:
        out["family"] = _name(r, "family")
    for name in ("context_window", "max_output_tokens"):
        if name in table:
            out[name] = _positive_int(r, name)
    if "capabilities" in table:
        caps = r.get("capabilities", list)
        for cap in caps:
            if cap not in CAPABILITIES:
                raise r.fail(
                    "capabilities",
                    f"unknown capability {cap!r}; expected a subset of {', '.join(CAPABILITIES)}",
                )
        if len(set(caps)) != len(caps):
            raise r.fail("capabilities", "lists a capability twice")
        out["capabilities"] = frozenset(caps)
    if "quality" in table:
        quality = r.get("quality", int)
        if not 0 <= quality <= 100:
            raise r.fail("quality", f"must be between 0 and 100, got {quality!r}")
        out["quality"] = quality
    if "endpoints" in table:
        raw = r.get("endpoints", list)
        eps = [_endpoint_fields(source, e, f"{key}.endpoints[{i}]") for i, e in enumerate(raw)]
        for i, ep in enumerate(eps):
            if "provider" not in ep:
                raise ConfigError(source, f"{key}.endpoints[{i}].provider", "is required")
            if any(other["provider"] == ep["provider"] for other in eps[:i]):
                raise ConfigError(
                    source,
                    f"{key}.endpoints[{i}].provider",
                    f"duplicate endpoint for provider {ep['provider']!r}",
                )
        out["endpoints"] = eps
    r.done()
    return out


# --- building: complete field sets become dataclasses -------------------------------------


def _build_endpoint(source: str, fields: dict[str, Any], key: str) -> CatalogueEndpoint:
    for name in _ENDPOINT_REQUIRED:
        if name not in fields:
            raise ConfigError(source, f"{key}.{name}", "is required")
    return CatalogueEndpoint(
        provider=fields["provider"],
        upstream=fields["upstream"],
        input_nano_per_mtok=fields["input_usd_per_mtok"],
        output_nano_per_mtok=fields["output_usd_per_mtok"],
        cached_input_nano_per_mtok=fields.get("cached_input_usd_per_mtok"),
        privacy=fields["privacy"],
    )


def _build_model(
    source: str, fields: dict[str, Any], key: str, endpoint_keys: list[str]
) -> CatalogueModel:
    caps = fields.get("capabilities")
    embedding = caps is not None and "embeddings" in caps
    required = [k for k in _MODEL_KEYS if not (embedding and k == "max_output_tokens")]
    for name in [*required, "endpoints"]:
        if name not in fields:
            raise ConfigError(source, f"{key}.{name}", "is required")
    if not fields["endpoints"]:
        raise ConfigError(source, f"{key}.endpoints", "declare at least one [[models.endpoints]]")
    max_out = fields.get("max_output_tokens", 0)
    if max_out > fields["context_window"]:
        raise ConfigError(
            source,
            f"{key}.max_output_tokens",
            f"must not exceed context_window ({fields['context_window']}), got {max_out}",
        )
    return CatalogueModel(
        id=fields["id"],
        family=fields["family"],
        context_window=fields["context_window"],
        max_output_tokens=max_out,
        capabilities=caps,
        quality=fields["quality"],
        endpoints=tuple(
            _build_endpoint(source, ep, ek)
            for ep, ek in zip(fields["endpoints"], endpoint_keys, strict=True)
        ),
        kind="embedding" if embedding else "chat",
    )


def _read(path: str | Path | None) -> tuple[str, dict[str, Any]]:
    if path is None:
        ref = resources.files("meshfast").joinpath(SHIPPED)
        source = str(ref)
        try:
            text = ref.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(source, "-", "the shipped catalogue is missing") from None
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(source, "-", "file not found") from None
    try:
        return source, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "-", f"not valid TOML: {exc}") from None


def load_catalogue(
    path: str | Path | None = None,
    overrides: list[dict[str, Any]] | None = None,
    source_name: str = "catalogue",
    *,
    overrides_key: str = "catalogue.models",
) -> dict[str, CatalogueModel]:
    """Load the catalogue (the shipped file unless ``path``), then apply ``overrides``.

    ``overrides`` are the operator's ``[[catalogue.models]]`` tables; their errors name
    ``source_name`` (the operator's file) and keys under ``overrides_key``.
    """
    source, data = _read(path)
    top = _Reader(source, data, "")
    top.get("as_of", str, None)  # informational: the date of the prices
    raw_models = top.get("models", list, required=True)
    top.done()

    # id -> (fields, key of each field's origin for completeness errors, endpoint keys)
    merged: dict[str, tuple[dict[str, Any], str, list[str]]] = {}
    for i, raw in enumerate(raw_models):
        key = f"models[{i}]"
        fields = _model_fields(source, raw, key)
        if fields["id"] in merged:
            raise ConfigError(source, f"{key}.id", f"duplicate model id {fields['id']!r}")
        ep_keys = [f"{key}.endpoints[{j}]" for j in range(len(fields.get("endpoints", ())))]
        merged[fields["id"]] = (fields, key, ep_keys)
    models = {
        mid: _build_model(source, fields, key, ep_keys)
        for mid, (fields, key, ep_keys) in merged.items()
    }

    if overrides is None:
        return models
    if not isinstance(overrides, list):
        raise ConfigError(source_name, overrides_key, "must be an array of tables")
    seen: set[str] = set()
    for i, raw in enumerate(overrides):
        key = f"{overrides_key}[{i}]"
        fields = _model_fields(source_name, raw, key)
        mid = fields["id"]
        if mid in seen:
            raise ConfigError(source_name, f"{key}.id", f"model {mid!r} is overridden twice")
        seen.add(mid)
        if mid not in merged:
            ep_keys = [f"{key}.endpoints[{j}]" for j in range(len(fields.get("endpoints", ())))]
            models[mid] = _build_model(source_name, fields, key, ep_keys)
            continue
        base, _, base_ep_keys = merged[mid]
        new = {**base, **{k: v for k, v in fields.items() if k != "endpoints"}}
        eps = [dict(ep) for ep in base.get("endpoints", ())]
        ep_keys = list(base_ep_keys)
        for j, ep in enumerate(fields.get("endpoints", ())):
            for k, old in enumerate(eps):
                if old["provider"] == ep["provider"]:
                    eps[k] = {**old, **ep}
                    ep_keys[k] = f"{key}.endpoints[{j}]"
                    break
            else:
                eps.append(ep)
                ep_keys.append(f"{key}.endpoints[{j}]")
        new["endpoints"] = eps
        models[mid] = _build_model(source_name, new, key, ep_keys)
    return models
