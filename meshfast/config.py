"""Configuration: a TOML file (stdlib tomllib) plus MESHFAST_* environment overrides.

Precedence, highest first: command-line flag, environment variable, file, default.
A bad value raises :class:`~meshfast.errors.ConfigError` naming the file (or the
variable), the key and the problem; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from meshfast.errors import ConfigError
from meshfast.money import percent_to_ppm, usd_to_nano

PRIVACY_CLASSES = ("standard", "protected", "private_gateway", "confidential")
PROVIDER_KINDS = ("openai", "sim")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    upstream: str
    input_usd_per_mtok: str = "0"
    output_usd_per_mtok: str = "0"
    cached_input_usd_per_mtok: str | None = None  # None: the input price
    kind: str = "chat"  # chat | embedding
    context_window: int = 128_000
    max_output_tokens: int = 16_384
    # the keys the operator gave in [[providers.models]] (the router lets only these
    # override the catalogue's entry for the same model id; defaults do not)
    given: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str = ""
    api_key_env: str | None = None
    privacy: str = "standard"
    models: tuple[ModelConfig, ...] = ()
    max_connections: int = 256
    connect_timeout: float = 10.0
    first_byte_timeout: float = 120.0
    read_timeout: float = 120.0
    idle_timeout: float = 30.0
    ca_bundle: str | None = None


@dataclass(frozen=True, slots=True)
class SimConfig:
    enabled: bool = True
    ttft_ms: float = 0.0
    tokens_per_second: float = 0.0  # 0: all tokens at once
    fail_models: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BillingConfig:
    margin_ppm: int = 50_000  # 5 %
    fee_nano: int = 0


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """``[router]``: failover bound and circuit-breaker rules (docs/router.md)."""

    max_attempts: int = 3  # candidates tried per call (primary + failovers)
    breaker_failures: int = 5  # consecutive counted failures that open the circuit
    breaker_error_rate_pct: int = 50  # ... or this error rate over the window
    breaker_min_calls: int = 20  # ... with at least this many calls in the window
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 30.0  # open -> half-open after this long


DEFAULT_STORE_PATH = "meshfast-data/meshfast.db"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    kind: str = "embedded"
    path: str = DEFAULT_STORE_PATH  # relative paths are relative to the working directory
    synchronous: str = "FULL"  # SQLite: FULL survives power loss, NORMAL only process crashes
    window_seconds: float = 60.0  # [limits] window_seconds: the RPM / TPM window (60: per minute)
    redis_url: str | None = None  # kind "redis": redis://[:password@]host:port/db (MESHFAST_REDIS_URL)
    redis_prefix: str = "meshfast"  # every Redis key starts with this (several deployments, one Redis)
    hold_ttl_seconds: float = 900.0  # a hold left open this long (its worker died) is released


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "<defaults>"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 10 * 1024 * 1024
    grace_seconds: float = 30.0
    log_level: str = "info"
    sim: SimConfig = field(default_factory=SimConfig)
    providers: tuple[ProviderConfig, ...] = ()
    billing: BillingConfig = field(default_factory=BillingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    admin_token: str | None = None  # MESHFAST_ADMIN_TOKEN only; the admin API is off without it
    router: RouterConfig = field(default_factory=RouterConfig)
    # [[catalogue.models]] tables, as written (validated by load() through load_catalogue)
    catalogue_overrides: tuple[dict[str, Any], ...] = ()


# (config key in [server], env var, type)
SERVER_KEYS: dict[str, tuple[str, type]] = {
    "host": ("MESHFAST_HOST", str),
    "port": ("MESHFAST_PORT", int),
    "workers": ("MESHFAST_WORKERS", int),
    "max_body_bytes": ("MESHFAST_MAX_BODY_BYTES", int),
    "grace_seconds": ("MESHFAST_GRACE_SECONDS", float),
    "log_level": ("MESHFAST_LOG_LEVEL", str),
}
_DEFAULTS = Config()
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, source: str, table: dict[str, Any], prefix: str) -> None:
        self.source = source
        self.table = table
        self.prefix = prefix
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def get(
        self,
        name: str,
        typ: type | tuple[type, ...],
        default: Any = None,
        *,
        required: bool = False,
    ) -> Any:
        self.seen.add(name)
        if name not in self.table:
            if required:
                raise self.fail(name, "is required")
            return default
        value = self.table[name]
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, typ) and not (isinstance(value, bool) and typ in (int, float))
        if not ok:
            want = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise self.fail(name, f"must be {want}, got {type(value).__name__} {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def _decimal_price(reader: _Reader, name: str) -> str:
    value = reader.get(name, (int, float, str), 0)
    # A TOML float is taken by its shortest decimal text (0.15 -> "0.15"), never as binary.
    text = format(Decimal(repr(value)), "f") if isinstance(value, float) else str(value)
    try:
        usd_to_nano(text)
    except ValueError:
        raise reader.fail(
            name, f"must be a non-negative decimal USD amount, got {value!r}"
        ) from None
    return text


def _positive(reader: _Reader, name: str, typ: type, default: Any) -> Any:
    value = reader.get(name, typ, default)
    if value <= 0:
        raise reader.fail(name, f"must be greater than 0, got {value!r}")
    return value


def _model(source: str, table: Any, prefix: str) -> ModelConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, prefix.rstrip("."), "must be a table")
    r = _Reader(source, table, prefix)
    mid = r.get("id", str, required=True)
    if not mid or "/" in mid or mid in ("auto", "fast", "cheapest", "best"):
        raise r.fail(
            "id", f"must be a non-empty model id without '/' and not a router mode, got {mid!r}"
        )
    kind = r.get("kind", str, "chat")
    if kind not in ("chat", "embedding"):
        raise r.fail("kind", f"must be 'chat' or 'embedding', got {kind!r}")
    m = ModelConfig(
        id=mid,
        upstream=r.get("upstream", str, mid),
        input_usd_per_mtok=_decimal_price(r, "input_usd_per_mtok"),
        output_usd_per_mtok=_decimal_price(r, "output_usd_per_mtok"),
        cached_input_usd_per_mtok=_decimal_price(r, "cached_input_usd_per_mtok") if "cached_input_usd_per_mtok" in table else None,
        kind=kind,
        context_window=_positive(r, "context_window", int, 128_000),
        max_output_tokens=_positive(r, "max_output_tokens", int, 16_384),
        given=frozenset(table),
    )
    r.done()
    return m


def _provider(source: str, table: Any, index: int) -> ProviderConfig:
    prefix = f"providers[{index}]."
    if not isinstance(table, dict):
        raise ConfigError(source, f"providers[{index}]", "must be a table")
    r = _Reader(source, table, prefix)
    name = r.get("name", str, required=True)
    if not name or "/" in name:
        raise r.fail("name", f"must be a non-empty name without '/', got {name!r}")
    kind = r.get("kind", str, required=True)
    if kind not in PROVIDER_KINDS:
        raise r.fail("kind", f"must be one of {', '.join(PROVIDER_KINDS)}, got {kind!r}")
    base_url = r.get("base_url", str, "")
    if kind == "openai":
        if not base_url.startswith(("http://", "https://")):
            raise r.fail("base_url", f"must be an http:// or https:// URL, got {base_url!r}")
    privacy = r.get("privacy", str, "standard")
    if privacy not in PRIVACY_CLASSES:
        raise r.fail("privacy", f"must be one of {', '.join(PRIVACY_CLASSES)}, got {privacy!r}")
    models_raw = r.get("models", list, [])
    models = tuple(_model(source, m, f"{prefix}models[{i}].") for i, m in enumerate(models_raw))
    # an openai provider without models must be named after a catalogue provider: load() checks
    ca_bundle = r.get("ca_bundle", str, None)
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise r.fail("ca_bundle", f"file not found: {ca_bundle}")
    p = ProviderConfig(
        name=name,
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_key_env=r.get("api_key_env", str, None),
        privacy=privacy,
        models=models,
        max_connections=_positive(r, "max_connections", int, 256),
        connect_timeout=_positive(r, "connect_timeout", float, 10.0),
        first_byte_timeout=_positive(r, "first_byte_timeout", float, 120.0),
        read_timeout=_positive(r, "read_timeout", float, 120.0),
        idle_timeout=_positive(r, "idle_timeout", float, 30.0),
        ca_bundle=ca_bundle,
    )
    r.done()
    return p


def _sim(source: str, table: Any) -> SimConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, "sim", "must be a table")
    r = _Reader(source, table, "sim.")
    fail_models = r.get("fail_models", dict, {})
    for k, v in fail_models.items():
        if not isinstance(v, str):
            raise r.fail(f"fail_models.{k}", "must be a string such as 'status:503' or 'midstream'")
    sim = SimConfig(
        enabled=r.get("enabled", bool, True),
        ttft_ms=r.get("ttft_ms", float, 0.0),
        tokens_per_second=r.get("tokens_per_second", float, 0.0),
        fail_models=dict(fail_models),
    )
    if sim.ttft_ms < 0 or sim.tokens_per_second < 0:
        raise r.fail("ttft_ms" if sim.ttft_ms < 0 else "tokens_per_second", "must not be negative")
    r.done()
    return sim


def _billing(source: str, table: Any) -> BillingConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, "billing", "must be a table")
    r = _Reader(source, table, "billing.")
    margin = r.get("margin_pct", (int, float, str), "5")
    fee = r.get("fee_usd", (int, float, str), "0")
    r.done()
    try:
        margin_ppm = percent_to_ppm(str(margin))
    except ValueError:
        raise r.fail("margin_pct", f"must be a non-negative decimal percentage, got {margin!r}") from None
    try:
        fee_nano = usd_to_nano(str(fee))
    except ValueError:
        raise r.fail("fee_usd", f"must be a non-negative decimal USD amount, got {fee!r}") from None
    return BillingConfig(margin_ppm, fee_nano)


def redacted_url(url: str) -> str:
    """A URL fit for messages and logs: any password replaced by ***."""
    _head, sep, tail = url.rpartition("@")
    return f"{url.split('://')[0]}://***@{tail}" if sep else url


def _store(source: str, table: Any) -> StoreConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, "store", "must be a table")
    r = _Reader(source, table, "store.")
    env_url = os.environ.get("MESHFAST_REDIS_URL") or None
    redis_url = env_url or r.get("redis_url", str, "") or None
    kind = r.get("kind", str, "redis" if redis_url else "embedded")
    if kind not in ("embedded", "redis"):
        raise r.fail("kind", f"must be 'embedded' or 'redis', got {kind!r}")
    if env_url:
        kind = "redis"  # the environment overrides the file, as for every other setting
    elif kind == "embedded" and redis_url:
        raise r.fail("kind", "is 'embedded' but store.redis_url is set: remove one of them (or set kind = 'redis')")
    if kind == "redis" and not redis_url:
        raise r.fail("redis_url", "is required with kind = 'redis' (or set MESHFAST_REDIS_URL)")
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise r.fail("redis_url", f"must start with redis://, rediss:// or unix://, got {redis_url!r}")
    prefix = os.environ.get("MESHFAST_REDIS_PREFIX") or r.get("redis_prefix", str, "meshfast")
    if not prefix or any(c in prefix for c in "{} "):
        raise r.fail("redis_prefix", f"must be non-empty, without braces or spaces, got {prefix!r}")
    hold_ttl = _positive(r, "hold_ttl_seconds", float, 900.0)
    path = r.get("path", str, DEFAULT_STORE_PATH)
    path = os.environ.get("MESHFAST_STORE_PATH") or path
    sync = r.get("synchronous", str, "FULL").upper()
    if sync not in ("FULL", "NORMAL"):
        raise r.fail("synchronous", f"must be FULL or NORMAL, got {sync!r}")
    r.done()
    return StoreConfig(kind, path, sync, redis_url=redis_url if kind == "redis" else None, redis_prefix=prefix, hold_ttl_seconds=hold_ttl)


def _router(source: str, table: Any) -> RouterConfig:
    if not isinstance(table, dict):
        raise ConfigError(source, "router", "must be a table")
    r = _Reader(source, table, "router.")
    d = RouterConfig()
    rc = RouterConfig(
        max_attempts=_positive(r, "max_attempts", int, d.max_attempts),
        breaker_failures=_positive(r, "breaker_failures", int, d.breaker_failures),
        breaker_error_rate_pct=_positive(r, "breaker_error_rate_pct", int, d.breaker_error_rate_pct),
        breaker_min_calls=_positive(r, "breaker_min_calls", int, d.breaker_min_calls),
        breaker_window_s=_positive(r, "breaker_window_s", float, d.breaker_window_s),
        breaker_cooldown_s=_positive(r, "breaker_cooldown_s", float, d.breaker_cooldown_s),
    )
    if rc.breaker_error_rate_pct > 100:
        raise r.fail("breaker_error_rate_pct", f"must be 1..100, got {rc.breaker_error_rate_pct}")
    if rc.breaker_window_s > 300:
        raise r.fail("breaker_window_s", f"must be at most 300, got {rc.breaker_window_s}")
    r.done()
    return rc


def _catalogue(source: str, table: Any, providers: tuple[ProviderConfig, ...]) -> tuple[dict[str, Any], ...]:
    """``[catalogue]`` with its ``[[catalogue.models]]``: validated against the shipped
    catalogue now, so a bad override fails ``check-config`` rather than a worker."""
    if not isinstance(table, dict):
        raise ConfigError(source, "catalogue", "must be a table")
    r = _Reader(source, table, "catalogue.")
    overrides = r.get("models", list, [])
    r.done()
    bare = [i for i, p in enumerate(providers) if p.kind == "openai" and not p.models]
    if not overrides and not bare:
        return ()
    from meshfast.catalogue import load_catalogue  # the catalogue module imports this one

    cat = load_catalogue(overrides=list(overrides), source_name=source)
    known = {ep.provider for m in cat.values() for ep in m.endpoints}
    for i in bare:
        if providers[i].name not in known:
            raise ConfigError(
                source,
                f"providers[{i}].models",
                "declare at least one [[providers.models]] entry (or name the provider after "
                "a catalogue provider such as 'openai' or 'together' to serve its catalogue models)",
            )
    return tuple(overrides)


def _env_value(var: str, typ: type) -> Any:
    raw = os.environ[var]
    try:
        return typ(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {var}", var, f"must be {typ.__name__}, got {raw!r}"
        ) from None


def load(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Load the configuration: file (``path`` or ``MESHFAST_CONFIG``), env, then ``overrides``."""
    path = path or os.environ.get("MESHFAST_CONFIG") or None
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(source, "-", "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, "-", f"not valid TOML: {exc}") from None
    top = _Reader(source, data, "")
    server_table = top.get("server", dict, {})
    srv = _Reader(source, server_table, "server.")
    values: dict[str, Any] = {}
    for key, (var, typ) in SERVER_KEYS.items():
        default = getattr(_DEFAULTS, key)
        values[key] = srv.get(key, typ, default)
        if os.environ.get(var):
            values[key] = _env_value(var, typ)
    srv.done()
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    _check_server(source, values)
    sim = _sim(source, top.get("sim", dict, {}))
    providers_raw = top.get("providers", list, [])
    providers = tuple(_provider(source, p, i) for i, p in enumerate(providers_raw))
    billing = _billing(source, top.get("billing", dict, {}))
    store = _store(source, top.get("store", dict, {}))
    limits = _Reader(source, top.get("limits", dict, {}), "limits.")
    window = limits.get("window_seconds", float, 60.0)
    if not 0 < window <= 86400:
        raise limits.fail("window_seconds", f"must be in (0, 86400], got {window!r}")
    limits.done()
    store = replace(store, window_seconds=window)
    router = _router(source, top.get("router", dict, {}))
    names = [p.name for p in providers]
    for i, name in enumerate(names):
        if name in names[:i] or (name == "sim" and sim.enabled):
            raise ConfigError(source, f"providers[{i}].name", f"duplicate provider name {name!r}")
    catalogue_overrides = _catalogue(source, top.get("catalogue", dict, {}), providers)
    top.done()
    return Config(
        source=source,
        sim=sim,
        providers=providers,
        billing=billing,
        store=store,
        router=router,
        catalogue_overrides=catalogue_overrides,
        admin_token=os.environ.get("MESHFAST_ADMIN_TOKEN") or None,
        **values,
    )


def _check_server(source: str, values: dict[str, Any]) -> None:
    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(source, f"server.{key}", problem)

    if not 0 <= values["port"] <= 65535:
        raise fail("port", f"must be 0..65535, got {values['port']}")
    if values["workers"] < 1:
        raise fail("workers", f"must be at least 1, got {values['workers']}")
    if values["max_body_bytes"] < 1024:
        raise fail("max_body_bytes", f"must be at least 1024, got {values['max_body_bytes']}")
    if values["grace_seconds"] < 0:
        raise fail("grace_seconds", "must not be negative")
    if values["log_level"] not in LOG_LEVELS:
        raise fail(
            "log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {values['log_level']!r}"
        )
