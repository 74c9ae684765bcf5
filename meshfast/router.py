"""The router: which provider endpoints serve a request, and in which order.

``Router.plan(model, needs)`` turns the request's ``model`` and what it needs
(:class:`Needs`) into ``(mode, candidates)``: the primary endpoint first, then the
failover order, at most ``max_attempts`` long. ``model`` is one of

* ``provider/model``   pinned: that endpoint only (mode ``"pinned"``)
* a model id           every routable endpoint that serves it, in the order the
                       providers are configured (the simulator first) (mode ``"model"``)
* ``cheapest``         lowest estimated cost of this request:
                       ``prompt_tokens * input_price + expected_output * output_price``
                       with ``expected_output = min(max_output or 512, 512)``
                       (0 for embeddings); ties: higher quality first
* ``best``             highest quality; ties: cheaper first
* ``fast``             lowest time-to-first-token EWMA (alpha 0.2) of the endpoint;
                       an endpoint never observed counts as 0 s, so each gets tried
* ``auto``             highest ``0.5*Q + 0.3*P + 0.2*S`` with
                       ``Q = quality / 100``,
                       ``P = 1 / (1 + c)``, ``c`` = this request's estimated cost per
                       million tokens in USD (the ``cheapest`` estimate divided by
                       ``prompt_tokens + expected_output``),
                       ``S = 1 / (1 + t)``, ``t`` = TTFT EWMA in seconds (1 s if never observed)

Remaining ties break by provider name, then model id. In every mode healthy
endpoints come before degraded ones: an endpoint whose last call failed less than
``breaker_cooldown_s`` ago, or a half-open one taking its one probe (after the cool-down a
failed-once endpoint takes its normal place again, so one blip does not demote it for
good); endpoints whose circuit is open are skipped.

Candidates are filtered by the request's needs, in this order, and the first
requirement nothing meets is the error: kind (chat / embedding), ``tools``,
``vision`` (image parts), ``json_schema`` (``response_format``), ``streaming``,
context window (``prompt_tokens + max_output <= context_window``), then privacy
(the endpoint's class >= the asked one; 403 ``privacy_class_unavailable``).
Failover therefore never crosses the privacy class: every candidate meets it.

Health: ``record(endpoint, ok, latency_s, ttft_s, error, status)`` after each
attempt. A failure counts for the breaker when there was no answer (connect error,
timeout, broken stream) or the answer was 429 or 5xx; other 4xx are the client's.
The circuit opens on ``breaker_failures`` consecutive counted failures or an error
rate >= ``breaker_error_rate_pct`` over >= ``breaker_min_calls`` calls in the last
``breaker_window_s``; after ``breaker_cooldown_s`` it is half-open: one probe at a
time (a plan that includes it holds the probe for up to ``PROBE_LEASE_S``), closed
on success, reopened on failure. State is per worker process. See docs/router.md.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from meshfast import errors
from meshfast.catalogue import CatalogueEndpoint, CatalogueModel, load_catalogue
from meshfast.config import PRIVACY_CLASSES, Config, ModelConfig, RouterConfig
from meshfast.money import nano_to_usd
from meshfast.providers.base import Endpoint, Provider
from meshfast.providers.openai import OpenAIProvider
from meshfast.providers.sim import SimProvider
from meshfast_core.tokens import needs_mask

MODES = ("auto", "fast", "cheapest", "best")
PRIVACY_RANK = {name: i for i, name in enumerate(PRIVACY_CLASSES)}
EXPECTED_OUTPUT_TOKENS = 512  # output estimate of cheapest/auto when max_output is 0 or larger
EWMA_ALPHA = 0.2
UNOBSERVED_TTFT_FAST_S = 0.0  # fast: an endpoint never observed is tried first
UNOBSERVED_TTFT_AUTO_S = 1.0  # auto: a neutral prior (S = 0.5)
AUTO_WEIGHTS = (0.5, 0.3, 0.2)  # quality, price, speed
AUTO_PRICE_REF_USD_PER_MTOK = 1.0  # P = 0.5 at this price
AUTO_TTFT_REF_S = 1.0  # S = 0.5 at this TTFT
PROBE_LEASE_S = 30.0  # a half-open probe handed out by plan() and never recorded frees after this
STATS_WINDOW_S = 300  # health statistics cover the last 5 minutes
STATS_BUCKET_S = 10
SAMPLES = 512  # latency / TTFT samples kept per endpoint (ring buffer)
ERROR_MAX_CHARS = 200
CAP_PARAMS = {
    "tools": ("tools", "tools"),
    "vision": ("vision (image inputs)", "messages"),
    "json_schema": ("response_format json_schema", "response_format"),
    "streaming": ("streaming", "stream"),
}

CLOSED, OPEN, HALF_OPEN = 0, 1, 2
CIRCUIT_NAMES = ("closed", "open", "half_open")


# -- what a request needs ---------------------------------------------------------------


@dataclass(slots=True)
class Needs:
    """What a request needs from an endpoint. ``max_output`` is the client's
    ``max_completion_tokens``/``max_tokens`` (0: not given)."""

    kind: str = "chat"  # chat | embedding
    tools: bool = False
    vision: bool = False
    json_schema: bool = False
    streaming: bool = False
    prompt_tokens: int = 0
    max_output: int = 0
    privacy: str = "standard"

    def capabilities(self) -> tuple[str, ...]:
        return _CAPS_BY_MASK[
            self.tools | (self.vision << 1) | (self.json_schema << 2) | (self.streaming << 3)
        ]


_CAP_ORDER = ("tools", "vision", "json_schema", "streaming")
_CAPS_BY_MASK = tuple(
    tuple(c for i, c in enumerate(_CAP_ORDER) if mask >> i & 1) for mask in range(16)
)
_FLAGS_BY_MASK = tuple((bool(m & 1), bool(m & 2), bool(m & 4), bool(m & 8)) for m in range(16))


def needs_of_mask(mask: int, prompt_tokens: int, max_output: int, privacy: str) -> Needs:
    """Needs of a chat request from its ``meshfast_core.tokens.needs_mask`` bits (tools,
    vision, json_schema, streaming: the order of the capability mask above)."""
    tools, vision, json_schema, streaming = _FLAGS_BY_MASK[mask]  # unpacked: a starred call costs more
    return Needs("chat", tools, vision, json_schema, streaming, prompt_tokens, max_output, privacy)


def needs_of_chat(req: dict[str, Any], prompt_tokens: int, max_output: int, privacy: str) -> Needs:
    """Needs of a (validated) chat request: tools, image parts, json_schema, stream."""
    return needs_of_mask(needs_mask(req), prompt_tokens, max_output, privacy)


def _unknown_privacy(privacy: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"Unknown privacy class `{privacy}`; expected one of {', '.join(PRIVACY_CLASSES)}.",
        param="mesh.privacy",
        code="invalid_privacy_class",
    )


def counts_as_failure(status: int | None) -> bool:
    """Whether a failed attempt counts against the endpoint (and is worth a failover):
    no answer at all (``None``: connect error, timeout, broken stream), 429 or 5xx."""
    return status is None or status == 429 or status >= 500 or status < 400


# -- per-endpoint health ----------------------------------------------------------------


class _Buckets:
    """Call and failure counts in fixed time buckets (bounded memory)."""

    __slots__ = ("width", "epochs", "calls", "fails")

    def __init__(self, width: float, n: int) -> None:
        self.width = width
        self.epochs = [-1] * n
        self.calls = [0] * n
        self.fails = [0] * n

    def add(self, now: float, failed: bool) -> None:
        e = int(now // self.width)
        i = e % len(self.epochs)
        if self.epochs[i] != e:
            self.epochs[i] = e
            self.calls[i] = 0
            self.fails[i] = 0
        self.calls[i] += 1
        if failed:
            self.fails[i] += 1

    def totals(self, now: float) -> tuple[int, int]:
        e = int(now // self.width)
        lo = e - len(self.epochs) + 1
        calls = fails = 0
        for i, epoch in enumerate(self.epochs):
            if lo <= epoch <= e:
                calls += self.calls[i]
                fails += self.fails[i]
        return calls, fails

    def clear(self) -> None:
        for i in range(len(self.epochs)):
            self.epochs[i] = -1


class Health:
    """One endpoint's circuit breaker, TTFT EWMA and recent statistics."""

    __slots__ = (
        "circuit",
        "reopen_at",
        "opened_at",
        "probe_until",
        "consecutive",
        "ewma_ttft",
        "window",
        "stats",
        "samples",
        "pos",
        "last_error",
        "last_status",
        "last_error_at",
    )

    def __init__(self, window_s: float) -> None:
        self.circuit = CLOSED
        self.reopen_at = 0.0
        self.opened_at = 0.0
        self.probe_until = 0.0
        self.consecutive = 0
        self.ewma_ttft: float | None = None
        self.window = _Buckets(window_s / 12, 12)
        self.stats = _Buckets(STATS_BUCKET_S, STATS_WINDOW_S // STATS_BUCKET_S)
        self.samples: list[tuple[float, float, float | None] | None] = [None] * SAMPLES
        self.pos = 0
        self.last_error: str | None = None
        self.last_status: int | None = None
        self.last_error_at = 0.0

    def group(self, now: float, demote_s: float) -> int:
        """0 healthy, 1 degraded (its last call failed, less than ``demote_s`` ago),
        2 half-open with the probe free, -1 not to be used now."""
        c = self.circuit
        if c == CLOSED:
            return 1 if self.consecutive and now - self.last_error_at < demote_s else 0
        if c == OPEN:
            if now < self.reopen_at:
                return -1
            self.circuit = HALF_OPEN
            self.probe_until = 0.0
        return 2 if now >= self.probe_until else -1

    def state(self, now: float) -> str:
        if self.circuit != CLOSED:
            return "down"
        if self.consecutive:
            return "degraded"
        calls, fails = self.stats.totals(now)
        return "degraded" if calls and fails * 20 > calls else "healthy"  # > 5 % failed


# -- the router -------------------------------------------------------------------------


def build_providers(cfg: Config) -> list[Provider]:
    providers: list[Provider] = []
    if cfg.sim.enabled:
        providers.append(SimProvider(cfg.sim))
    for p in cfg.providers:
        if p.kind == "sim":
            continue  # the simulator is configured under [sim]
        providers.append(OpenAIProvider(p))
    return providers


def build_router(cfg: Config, *, clock: Callable[[], float] = time.monotonic) -> Router:
    """Providers from the config, the shipped catalogue with the operator's overrides."""
    catalogue = load_catalogue(overrides=list(cfg.catalogue_overrides), source_name=cfg.source)
    return Router(build_providers(cfg), catalogue, settings=cfg.router, clock=clock)


def _min_privacy(a: str, b: str) -> str:
    return a if PRIVACY_RANK[a] <= PRIVACY_RANK[b] else b


def _merged_model(
    cm: CatalogueModel, ce: CatalogueEndpoint | None, declared: ModelConfig | None
) -> ModelConfig:
    """A catalogue model as one provider serves it; keys the operator gave win."""
    given = declared.given if declared is not None else frozenset()

    def pick(key: str, fallback: Any) -> Any:
        return getattr(declared, key) if key in given else fallback

    if ce is not None:
        prices = (
            nano_to_usd(ce.input_nano_per_mtok),
            nano_to_usd(ce.output_nano_per_mtok),
            None
            if ce.cached_input_nano_per_mtok is None
            else nano_to_usd(ce.cached_input_nano_per_mtok),
        )
        upstream = ce.upstream
    else:  # the operator serves a catalogue model through a provider the catalogue lacks
        assert declared is not None
        prices = (
            declared.input_usd_per_mtok,
            declared.output_usd_per_mtok,
            declared.cached_input_usd_per_mtok,
        )
        upstream = declared.upstream
    return ModelConfig(
        id=cm.id,
        upstream=pick("upstream", upstream),
        input_usd_per_mtok=pick("input_usd_per_mtok", prices[0]),
        output_usd_per_mtok=pick("output_usd_per_mtok", prices[1]),
        cached_input_usd_per_mtok=pick("cached_input_usd_per_mtok", prices[2]),
        kind=pick("kind", cm.kind),
        context_window=pick("context_window", cm.context_window),
        max_output_tokens=pick("max_output_tokens", cm.max_output_tokens or 1),
        given=given,
    )


def _pricing(ep: Endpoint) -> dict[str, str]:
    return {
        "input": nano_to_usd(ep.input_nano_per_mtok),
        "output": nano_to_usd(ep.output_nano_per_mtok),
        "cached_input": nano_to_usd(ep.cached_input_nano_per_mtok),
    }


def _cat_pricing(ce: CatalogueEndpoint) -> dict[str, str]:
    cached = ce.cached_input_nano_per_mtok
    return {
        "input": nano_to_usd(ce.input_nano_per_mtok),
        "output": nano_to_usd(ce.output_nano_per_mtok),
        "cached_input": nano_to_usd(ce.input_nano_per_mtok if cached is None else cached),
    }


def _blended(input_nano: int, output_nano: int) -> int:
    return 3 * input_nano + output_nano  # the usual 3:1 input:output blend, for listings


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    values.sort()
    n = len(values)

    def at(q: float) -> float:
        return round(values[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000, 1)

    return {"p50": at(0.50), "p95": at(0.95)}


def _clean_error(message: str | None) -> str | None:
    if message is None:
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in message)
    return text[:ERROR_MAX_CHARS]


class Router:
    def __init__(
        self,
        providers: list[Provider],
        catalogue: dict[str, CatalogueModel] | None = None,
        *,
        settings: RouterConfig | None = None,
        max_attempts: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.providers = providers
        self.catalogue = catalogue or {}
        self.settings = settings or RouterConfig()
        self.max_attempts = max_attempts or self.settings.max_attempts
        self._clock = clock
        self._wall = wall
        s = self.settings
        self._window_s = s.breaker_window_s
        self.endpoints: list[Endpoint] = []  # routable, in provider order
        self._unroutable: list[Endpoint] = []  # configured providers without credentials
        self._by_key: dict[str, Endpoint] = {}
        by_id: dict[str, list[Endpoint]] = {}
        for provider in providers:
            routable = bool(getattr(provider, "has_credentials", True))
            for ep in self._endpoints_of(provider):
                if not routable:
                    self._unroutable.append(ep)
                    continue
                ep.health = Health(self._window_s)
                self.endpoints.append(ep)
                self._by_key[ep.key] = ep
                by_id.setdefault(ep.id, []).append(ep)
        self._by_id: dict[str, tuple[Endpoint, ...]] = {k: tuple(v) for k, v in by_id.items()}
        # the pools the modes rank, in tie-break order (provider name, model id)
        order = sorted(self.endpoints, key=lambda e: (e.provider.name, e.id))
        self._pool: dict[str, tuple[Endpoint, ...]] = {
            kind: tuple(e for e in order if e.model.kind == kind) for kind in ("chat", "embedding")
        }
        self._tables = {kind: _ModeTable(pool) for kind, pool in self._pool.items()}
        # The Health objects that are not pristine (circuit not closed, or a failure
        # streak), kept by record() -- the only writer of health besides Health.group,
        # which only turns open into half-open. While it is empty every endpoint is
        # healthy and plan() takes the modes' shortcuts (see _plan_mode); record() also
        # mirrors each new TTFT EWMA into the endpoint's _ModeTable (_table_of).
        self._troubled: set[Health] = set()
        self._table_of = {h: (t, i) for t in self._tables.values() for i, h in enumerate(t.healths)}
        self._build_listing()

    # -- construction ----------------------------------------------------------------
    def _endpoints_of(self, provider: Provider) -> list[Endpoint]:
        if isinstance(provider, SimProvider):
            return [Endpoint.of(provider, m, family="sim") for m in provider.models]
        declared: dict[str, ModelConfig] = {m.id: m for m in provider.cfg.models}  # type: ignore[attr-defined]
        out: list[Endpoint] = []
        for m in declared.values():
            cm = self.catalogue.get(m.id)
            if cm is None:
                out.append(Endpoint.of(provider, m))
                continue
            ce = cm.endpoint(provider.name)
            privacy = provider.privacy if ce is None else _min_privacy(ce.privacy, provider.privacy)
            out.append(self._catalogue_endpoint(provider, cm, ce, m, privacy))
        for cm in self.catalogue.values():
            if cm.id in declared:
                continue
            ce = cm.endpoint(provider.name)
            if ce is not None:
                privacy = _min_privacy(ce.privacy, provider.privacy)
                out.append(self._catalogue_endpoint(provider, cm, ce, None, privacy))
        return out

    @staticmethod
    def _catalogue_endpoint(
        provider: Provider,
        cm: CatalogueModel,
        ce: CatalogueEndpoint | None,
        declared: ModelConfig | None,
        privacy: str,
    ) -> Endpoint:
        model = _merged_model(cm, ce, declared)
        return Endpoint.of(
            provider,
            model,
            privacy=privacy,
            capabilities=cm.capabilities,
            quality=cm.quality,
            family=cm.family,
        )

    def _build_listing(self) -> None:
        created = int(self._wall())
        routable: dict[str, list[Endpoint]] = {}
        for ep in self.endpoints:
            routable.setdefault(ep.id, []).append(ep)
        unroutable: dict[str, list[Endpoint]] = {}
        for ep in self._unroutable:
            unroutable.setdefault(ep.id, []).append(ep)
        configured = {p.name for p in self.providers}
        ids = list(routable)
        ids += [i for i in unroutable if i not in routable]
        ids += [i for i in self.catalogue if i not in routable and i not in unroutable]
        objects: dict[str, dict[str, Any]] = {}
        for mid in ids:
            eps = routable.get(mid, [])
            cm = self.catalogue.get(mid)
            entries: list[dict[str, Any]] = [
                {
                    "provider": e.provider.name,
                    "routable": True,
                    "privacy": e.privacy,
                    "pricing": _pricing(e),
                }
                for e in eps
            ]
            blends = [_blended(e.input_nano_per_mtok, e.output_nano_per_mtok) for e in eps]
            seen = {e.provider.name for e in eps}
            for e in unroutable.get(mid, []):
                seen.add(e.provider.name)
                entries.append(
                    {
                        "provider": e.provider.name,
                        "routable": False,
                        "privacy": e.privacy,
                        "pricing": _pricing(e),
                    }
                )
                blends.append(_blended(e.input_nano_per_mtok, e.output_nano_per_mtok))
            if cm is not None:
                for ce in cm.endpoints:
                    if ce.provider in seen:
                        continue
                    entries.append(
                        {
                            "provider": ce.provider,
                            "routable": False,
                            "privacy": ce.privacy,
                            "pricing": _cat_pricing(ce),
                            **({} if ce.provider in configured else {"configured": False}),
                        }
                    )
                    blends.append(_blended(ce.input_nano_per_mtok, ce.output_nano_per_mtok))
            first = eps[0] if eps else (unroutable.get(mid) or [None])[0]
            # the cheapest routable endpoint (or the cheapest of all when none is routable)
            n = len(eps) or len(entries)
            i = min(range(n), key=lambda j: (blends[j], entries[j]["provider"]))
            pricing = {**entries[i]["pricing"], "provider": entries[i]["provider"]}
            pricing["unit"] = "USD per 1M tokens"
            if first is not None:
                kind, family = first.model.kind, first.family
                ctx, max_out = first.context_window, first.model.max_output_tokens
                caps, quality = first.capabilities, first.quality
            else:
                assert cm is not None
                kind, family, ctx, max_out = (
                    cm.kind,
                    cm.family,
                    cm.context_window,
                    cm.max_output_tokens,
                )
                caps, quality = cm.capabilities, cm.quality
            classes = {x["privacy"] for x in entries if x["routable"] or not eps}
            objects[mid] = {
                "id": mid,
                "object": "model",
                "created": created,
                "owned_by": entries[0]["provider"],
                "kind": kind,
                "family": family,
                "context_length": ctx,
                "max_output_tokens": max_out if kind == "chat" else 0,
                "capabilities": [
                    c
                    for c in ("tools", "vision", "json_schema", "streaming", "embeddings")
                    if c in caps
                ],
                "quality": quality,
                "routable": bool(eps),
                "providers": [x["provider"] for x in entries],
                "privacy_classes": [c for c in PRIVACY_CLASSES if c in classes],
                "pricing": pricing,
                "endpoints": entries,
            }
        self._model_objects = objects
        self._model_bodies = {mid: orjson.dumps(obj) for mid, obj in objects.items()}
        self.models_body = orjson.dumps({"object": "list", "data": list(objects.values())})

    # -- listing ---------------------------------------------------------------------
    def model_body(self, name: str) -> bytes:
        body = self._model_bodies.get(name)
        if body is None and "/" in name:
            ep = self._by_key.get(name)
            body = self._model_bodies.get(ep.id) if ep is not None else None
        if body is None:
            raise errors.ModelNotFound(
                f"The model `{name}` does not exist or is not served here.", param="model"
            )
        return body

    def resolve(self, name: str) -> Endpoint:
        """The first routable endpoint for ``name`` (model id or provider/model), no checks.
        Kept for callers that do not plan yet; prefer :meth:`plan`."""
        ep = self._by_key.get(name) if "/" in name else None
        if ep is None and "/" not in name:
            eps = self._by_id.get(name)
            ep = eps[0] if eps else None
        if ep is None:
            raise self._not_found(name)
        return ep

    def _not_found(self, name: str) -> errors.ModelNotFound:
        if "/" in name:
            provider, _, mid = name.partition("/")
            names = {p.name for p in self.providers}
            if provider not in names:
                why = f"no provider named `{provider}` is configured"
            elif any(e.key == name for e in self._unroutable):
                why = f"provider `{provider}` has no credentials"
            else:
                why = f"provider `{provider}` does not serve `{mid}`"
            return errors.ModelNotFound(
                f"The model `{name}` is not served here: {why}.", param="model"
            )
        if name in self.catalogue or any(e.id == name for e in self._unroutable):
            return errors.ModelNotFound(
                f"The model `{name}` is known but not routable here: no configured provider with "
                "credentials serves it (see GET /v1/models for its providers).",
                param="model",
            )
        return errors.ModelNotFound(
            f"The model `{name}` does not exist or is not served here.", param="model"
        )

    # -- planning --------------------------------------------------------------------
    def plan(self, model: str, needs: Needs) -> tuple[str, list[Endpoint]]:
        """``(mode, candidates)``: the primary first, then the failover order.

        Raises ModelNotFound (404), InvalidRequest / UnsupportedOperation (400, naming the
        requirement nothing meets), PrivacyUnavailable (403) or NoHealthyEndpoint (503).
        """
        rank = PRIVACY_RANK.get(needs.privacy)
        if rank is None:
            raise _unknown_privacy(needs.privacy)
        if model in MODES:
            table = self._tables.get(needs.kind)
            if table is not None:
                return self._plan_mode(model, needs, rank, table)
        caps = needs.capabilities()
        planned = self._plan_pool(model, needs.kind, caps, needs.prompt_tokens + needs.max_output, rank, needs)
        if planned is None:
            mode, pool = self._pool_of(model, needs.kind)
            raise self._explain(model, mode, pool, needs, caps)
        return planned

    def plan_chat(self, model: str, mask: int, prompt_tokens: int, max_output: int, privacy: str) -> tuple[str, list[Endpoint]]:
        """:meth:`plan` of a chat request given as its ``meshfast_core.tokens.needs_mask``
        bits: a model or provider/model is planned without a :class:`Needs` record (the
        pipeline's common case; building one costs more than the pool's loop), a mode
        or an error gets one."""
        rank = PRIVACY_RANK.get(privacy)
        if rank is not None and model not in MODES:
            planned = self._plan_pool(model, "chat", _CAPS_BY_MASK[mask], prompt_tokens + max_output, rank, None)
            if planned is not None:
                return planned
        return self.plan(model, needs_of_mask(mask, prompt_tokens, max_output, privacy))

    def _pool_of(self, model: str, kind: str) -> tuple[str, tuple[Endpoint, ...]]:
        """``(mode, endpoints)`` a model name plans from: a mode's pool, one provider/model
        endpoint (``pinned``) or a model's endpoints (404 for an unknown name)."""
        if model in MODES:
            return model, self._pool.get(kind, ())
        if "/" in model:
            ep = self._by_key.get(model)
            if ep is None:
                raise self._not_found(model)
            return "pinned", (ep,)
        pool = self._by_id.get(model)
        if pool is None:
            raise self._not_found(model)
        return "model", pool

    def _plan_pool(
        self, model: str, kind: str, caps: tuple[str, ...], total: int, rank: int, needs: Needs | None
    ) -> tuple[str, list[Endpoint]] | None:
        """:meth:`plan` by a loop over the pool: its fits, healthy ones first (a mode's by
        its key, which needs ``needs``); None when nothing fits (the caller explains why)."""
        mode, pool = self._pool_of(model, kind)
        demote = self.settings.breaker_cooldown_s
        now = self._clock()
        fits = 0
        picked: list[tuple[int, Endpoint]] = []
        for ep in pool:
            if (
                ep.model.kind != kind
                or ep.privacy_rank < rank
                or total > ep.context_window
                or (caps and not all(c in ep.capabilities for c in caps))
            ):
                continue
            fits += 1
            g = ep.health.group(now, demote)
            if g >= 0:
                picked.append((g, ep))
        if not fits:
            return None
        if not picked:
            raise self._all_open(model, pool, now)
        if mode in MODES and len(picked) > 1:
            assert needs is not None
            picked.sort(key=self._key_fn(mode, needs))  # stable: pool order breaks ties
        if any(g for g, _ in picked):
            picked.sort(key=_unhealthy_last)  # stable
        out = [ep for _, ep in picked[: self.max_attempts]]
        for ep in out:
            h = ep.health
            if h.circuit == HALF_OPEN:
                h.probe_until = now + PROBE_LEASE_S  # this plan holds the one probe
        return mode, out

    def _plan_mode(
        self, mode: str, needs: Needs, rank: int, t: _ModeTable
    ) -> tuple[str, list[Endpoint]]:
        """:meth:`plan` for the modes, on the precomputed :class:`_ModeTable` of the kind;
        the same result as the generic loop + ``_key_fn`` sort.

        Common case -- no endpoint has breaker state (``_troubled`` empty) and every
        static fit meets the context window: ``fast`` takes the first fits in the live
        TTFT order, ``cheapest`` / ``best`` rank only their precomputed shortlist, ``auto``
        scores in bound order until nothing unscored can make the list. Otherwise: pool indices in pool order, the
        mode's keys for the healthy ones (and the degraded ones only when the healthy do
        not fill ``max_attempts``); stable sort / ``heapq.nsmallest`` keep pool order on ties.
        """
        mask = needs.tools | (needs.vision << 1) | (needs.json_schema << 2) | (needs.streaming << 3)
        idxs, min_ctx = t.static[mask][rank]
        total = needs.prompt_tokens + needs.max_output
        now = self._clock()
        if total > min_ctx:
            ctx = t.ctx
            idxs = [i for i in idxs if total <= ctx[i]]
        if not idxs:
            raise self._explain(mode, mode, t.pool, needs, needs.capabilities())
        n = self.max_attempts
        if (
            not self._troubled
            and n > 0
            and total <= min_ctx
            and needs.prompt_tokens >= 0
            and needs.max_output >= 0
        ):  # every fit healthy, none dropped by the context window
            if mode == "fast":
                return mode, [t.pool[i] for i in t.fastest(mask, rank, n)]
            if mode == "auto":
                return mode, [t.pool[i] for i in t.auto_top(needs, mask, rank, n)]
            # cheapest / best: static keys, rank the shortlist only
            tokens = needs.prompt_tokens > 0 or needs.kind != "embedding"  # cost can be > 0
            short = t.shortlist(mode, mask, rank, n, tokens)
            return mode, [t.pool[i] for i in _smallest(short, t.key_fn(mode, needs), n)]
        hs = t.healths
        healthy = [i for i in idxs if not hs[i].circuit and not hs[i].consecutive]
        degraded: list[int] = []
        if len(healthy) != len(idxs):  # some breaker state: classify as Health.group does
            demote = self.settings.breaker_cooldown_s
            healthy = []
            for i in idxs:
                g = hs[i].group(now, demote)
                if g == 0:
                    healthy.append(i)
                elif g > 0:
                    degraded.append(i)
            if not healthy and not degraded:
                raise self._all_open(mode, t.pool, now)
        keys = t.key_fn(mode, needs)
        out = _smallest(healthy, keys, n)
        if len(out) < n and degraded:
            out += _smallest(degraded, keys, n - len(out))
        eps = t.pool
        picked = [eps[i] for i in out]
        for i in out:
            h = hs[i]
            if h.circuit == HALF_OPEN:
                h.probe_until = now + PROBE_LEASE_S  # this plan holds the one probe
        return mode, picked

    def _all_open(self, model: str, pool: tuple[Endpoint, ...], now: float) -> errors.MeshError:
        wait = min(
            max(ep.health.reopen_at, ep.health.probe_until) - now
            for ep in pool
            if ep.health.circuit != CLOSED
        )
        retry = max(1, math.ceil(wait))
        return errors.NoHealthyEndpoint(
            f"Every endpoint that can serve `{model}` is failing (circuit open); retry in {retry} s.",
            headers=[(b"retry-after", str(retry).encode())],
        )

    def _key_fn(self, mode: str, needs: Needs) -> Callable[[tuple[int, Endpoint]], Any]:
        p = needs.prompt_tokens
        o = (
            0
            if needs.kind == "embedding"
            else min(needs.max_output or EXPECTED_OUTPUT_TOKENS, EXPECTED_OUTPUT_TOKENS)
        )
        if mode == "cheapest":
            return lambda ge: (
                p * ge[1].input_nano_per_mtok + o * ge[1].output_nano_per_mtok,
                -ge[1].quality,
            )
        if mode == "best":
            return lambda ge: (
                -ge[1].quality,
                p * ge[1].input_nano_per_mtok + o * ge[1].output_nano_per_mtok,
            )
        if mode == "fast":
            return lambda ge: (
                UNOBSERVED_TTFT_FAST_S if ge[1].health.ewma_ttft is None else ge[1].health.ewma_ttft
            )
        tokens = p + o
        wq, wp, ws = AUTO_WEIGHTS

        def auto(ge: tuple[int, Endpoint]) -> float:
            ep = ge[1]
            if tokens:
                usd_per_mtok = (
                    (p * ep.input_nano_per_mtok + o * ep.output_nano_per_mtok) / tokens / 1e9
                )
            else:
                usd_per_mtok = _blended(ep.input_nano_per_mtok, ep.output_nano_per_mtok) / 4e9
            t = ep.health.ewma_ttft
            t = UNOBSERVED_TTFT_AUTO_S if t is None else t
            score = (
                wq * ep.quality / 100
                + wp / (1 + usd_per_mtok / AUTO_PRICE_REF_USD_PER_MTOK)
                + ws / (1 + t / AUTO_TTFT_REF_S)
            )
            return -score

        return auto

    def _explain(
        self, model: str, mode: str, pool: tuple[Endpoint, ...], needs: Needs, caps: tuple[str, ...]
    ) -> errors.MeshError:
        """Why nothing in ``pool`` fits ``needs``: the first requirement nothing meets."""
        subject = "no routable model" if mode in MODES else f"the model `{model}`"
        eps = [e for e in pool if e.model.kind == needs.kind]
        if not eps:
            if mode in MODES:
                return errors.InvalidRequest(
                    f"No routable {needs.kind} model is configured for mode `{model}`.",
                    param="model",
                )
            if needs.kind == "chat":
                return errors.UnsupportedOperation(
                    f"The model `{model}` is an embedding model; use /v1/embeddings.", param="model"
                )
            return errors.UnsupportedOperation(
                f"The model `{model}` is a chat model and cannot create embeddings.", param="model"
            )
        for cap in caps:
            left = [e for e in eps if cap in e.capabilities]
            if not left:
                what, param = CAP_PARAMS[cap]
                verb = "supports" if mode in MODES else "does not support"
                return errors.InvalidRequest(
                    f"{subject[0].upper()}{subject[1:]} {verb} {what}.",
                    param=param,
                    code="capability_unavailable",
                )
            eps = left
        total = needs.prompt_tokens + needs.max_output
        left = [e for e in eps if total <= e.context_window]
        if not left:
            largest = max(e.context_window for e in eps)
            return errors.InvalidRequest(
                f"The prompt of {needs.prompt_tokens} tokens + max output {needs.max_output} exceeds "
                f"the context window of every candidate (largest: {largest}).",
                param="messages",
                code="context_length_exceeded",
            )
        best = max(left, key=lambda e: e.privacy_rank).privacy
        return errors.PrivacyUnavailable(
            f"No routable endpoint for {'this request' if mode in MODES else f'`{model}`'} meets "
            f"privacy class `{needs.privacy}` (the highest available is `{best}`); meshfast "
            "never serves a request below the class it asks for.",
            param="mesh.privacy",
        )

    # -- health ----------------------------------------------------------------------
    def record(
        self,
        endpoint: Endpoint,
        ok: bool,
        latency_s: float,
        ttft_s: float | None = None,
        error: str | None = None,
        status: int | None = None,
    ) -> None:
        """One attempt's outcome. ``ttft_s``: time to the upstream's first byte (for a
        non-stream call, to the response head); ``None`` uses ``latency_s``. ``error``:
        a short message without prompt or completion content (e.g. the MeshError message).
        """
        h = endpoint.health
        if h is None:
            known = self._by_key.get(endpoint.key)
            if known is None:
                return
            h = known.health
        now = self._clock()
        failed = not ok and counts_as_failure(status)
        h.window.add(now, failed)
        h.stats.add(now, failed)
        if not failed:
            first = latency_s if ttft_s is None else ttft_s
            h.samples[h.pos] = (now, latency_s, first)
            h.pos = (h.pos + 1) % SAMPLES
            h.ewma_ttft = (
                first if h.ewma_ttft is None else h.ewma_ttft + EWMA_ALPHA * (first - h.ewma_ttft)
            )
            h.consecutive = 0
            at = self._table_of.get(h)
            if at is not None:
                at[0].set_ttft(at[1], h.ewma_ttft)
            if h.circuit == HALF_OPEN:
                h.circuit = CLOSED
                h.probe_until = 0.0
                h.window.clear()  # a fresh window: the failures that opened it are history
            if h.circuit == CLOSED:
                self._troubled.discard(h)
            return
        self._troubled.add(h)
        h.consecutive += 1
        h.last_error = _clean_error(error) or (f"HTTP {status}" if status else "no response")
        h.last_status = status
        h.last_error_at = now
        s = self.settings
        if h.circuit == HALF_OPEN:
            self._open(h, now)
        elif h.circuit == CLOSED:
            if h.consecutive >= s.breaker_failures:
                self._open(h, now)
            else:
                calls, fails = h.window.totals(now)
                if calls >= s.breaker_min_calls and fails * 100 >= s.breaker_error_rate_pct * calls:
                    self._open(h, now)

    def _open(self, h: Health, now: float) -> None:
        h.circuit = OPEN
        h.opened_at = now
        h.reopen_at = now + self.settings.breaker_cooldown_s
        h.probe_until = 0.0

    @staticmethod
    def should_failover(status: int | None) -> bool:
        """Whether a failed attempt (before any byte reached the client) may go to the next
        candidate: the same rule as what counts against the endpoint."""
        return counts_as_failure(status)

    def health_body(self) -> bytes:
        """GET /v1/providers/health: per provider, per endpoint (model). No secrets."""
        now = self._clock()
        wall = self._wall()
        providers = []
        for p in self.providers:
            eps = [e for e in self.endpoints if e.provider is p]
            routable = bool(getattr(p, "has_credentials", True))
            rows = [self._health_row(e, now, wall) for e in eps]
            states = {r["state"] for r in rows}
            if not routable or (rows and states == {"down"}):
                state = "down"
            elif states <= {"healthy"}:
                state = "healthy"
            else:
                state = "degraded"
            providers.append(
                {
                    "name": p.name,
                    "kind": p.kind,
                    "privacy": p.privacy,
                    "routable": routable,
                    "state": state,
                    "endpoints": rows,
                }
            )
        return orjson.dumps(
            {
                "object": "providers.health",
                "window_s": STATS_WINDOW_S,
                "generated_at": int(wall),
                "providers": providers,
            }
        )

    def _health_row(self, ep: Endpoint, now: float, wall: float) -> dict[str, Any]:
        h: Health = ep.health
        h.group(now, 0.0)  # open -> half_open once the cool-down is over
        calls, fails = h.stats.totals(now)
        since = now - STATS_WINDOW_S
        recent = [s for s in h.samples if s is not None and s[0] >= since]
        last_error = None
        if h.last_error is not None:
            last_error = {
                "message": h.last_error,
                "status": h.last_status,
                "at": int(wall - (now - h.last_error_at)),
                "age_s": round(now - h.last_error_at, 1),
            }
        return {
            "model": ep.id,
            "key": ep.key,
            "upstream": ep.upstream,
            "privacy": ep.privacy,
            "state": h.state(now),
            "circuit": CIRCUIT_NAMES[h.circuit],
            "retry_at": int(wall + (h.reopen_at - now)) if h.circuit == OPEN else None,
            "calls": calls,
            "failures": fails,
            "success_rate": round((calls - fails) / calls, 4) if calls else None,
            "consecutive_failures": h.consecutive,
            "latency_ms": _percentiles([s[1] for s in recent]),
            "ttft_ms": {
                **_percentiles([s[2] for s in recent if s[2] is not None]),
                "ewma": None if h.ewma_ttft is None else round(h.ewma_ttft * 1000, 1),
            },
            "last_error": last_error,
        }


def _unhealthy_last(ge: tuple[int, Endpoint]) -> bool:
    return ge[0] > 0


def _smallest(idxs: list[int], keys: Callable[[list[int]], list[tuple[Any, ...]]], n: int) -> list[int]:
    """The ``n`` entries of ``idxs`` with the smallest keys, ties in pool order: each key
    ends with its pool index, so plain tuple order breaks them."""
    if not idxs or n <= 0:
        return []
    if len(idxs) == 1:
        return list(idxs)
    k = keys(idxs)
    chosen = heapq.nsmallest(n, k) if len(k) > 8 * n else sorted(k)[:n]
    return [e[-1] for e in chosen]


class _ModeTable:
    """What the modes need of one kind's pool, precomputed so that ``plan`` does
    integer compares and arithmetic on parallel tuples instead of attribute lookups.

    Everything is indexed by the endpoint's position in ``pool`` (the tie-break order):

    * ``healths``, ``ctx`` (context window), ``inp`` / ``out`` (nano-USD per Mtok),
      the TTFT EWMA is read live from ``healths``, and mirrored by ``record()`` (via
      :meth:`set_ttft`) in ``fast_order`` (``(fast key, index)`` ascending) and ``auto_t``;
    * ``q_tie``: ``qmax - quality`` (>= 0, smaller is better);
    * ``auto_q``: ``wq * quality / 100`` exactly as the auto formula computes it;
      ``auto_ub``: ``auto_q + wp / (1 + lower price / ref)``, an upper bound of the
      quality + price terms for any request (its estimate per Mtok is a mix of the
      input and output prices, so never below the lower one);
    * ``static[capability mask][privacy rank]``: ``(indices, min_ctx)`` -- the pool
      indices (ascending) whose capabilities cover the mask (bits in ``_CAP_ORDER``)
      and whose privacy rank is >= the asked one, and their smallest context window
      (when the request fits that, no per-endpoint context check is needed).

    Endpoint attributes are fixed once the router is built (only ``health`` changes:
    read live, TTFTs mirrored by ``record()``), so the table never goes stale.
    """

    __slots__ = (
        "pool",
        "healths",
        "ctx",
        "inp",
        "out",
        "q_tie",
        "auto_q",
        "auto_ub",
        "auto_t",
        "static",
        "static_sets",
        "fast_t",
        "fast_order",
        "_shortlists",
        "_auto_orders",
    )

    def __init__(self, pool: tuple[Endpoint, ...]) -> None:
        self.pool = pool
        self.healths = tuple(e.health for e in pool)
        self.ctx = tuple(e.context_window for e in pool)
        self.inp = tuple(e.input_nano_per_mtok for e in pool)
        self.out = tuple(e.output_nano_per_mtok for e in pool)
        qmax = max((e.quality for e in pool), default=0)
        self.q_tie = tuple(qmax - e.quality for e in pool)
        self.auto_q = tuple(AUTO_WEIGHTS[0] * e.quality / 100 for e in pool)
        cap_bits = [
            sum(1 << b for b, c in enumerate(_CAP_ORDER) if c in e.capabilities) for e in pool
        ]
        ranks = [e.privacy_rank for e in pool]
        static = []
        for mask in range(1 << len(_CAP_ORDER)):
            by_rank = []
            for rank in range(len(PRIVACY_CLASSES)):
                idxs = tuple(
                    i for i in range(len(pool)) if cap_bits[i] & mask == mask and ranks[i] >= rank
                )
                by_rank.append((idxs, min((self.ctx[i] for i in idxs), default=0)))
            static.append(tuple(by_rank))
        self.static = tuple(static)
        self.static_sets = tuple(tuple(frozenset(idxs) for idxs, _ in s) for s in static)
        self.fast_t = [UNOBSERVED_TTFT_FAST_S] * len(pool)
        self.auto_t = [UNOBSERVED_TTFT_AUTO_S] * len(pool)
        wp = AUTO_WEIGHTS[1]
        self.auto_ub = tuple(
            q + wp / (1 + min(i, o) / 1e9 / AUTO_PRICE_REF_USD_PER_MTOK)
            for q, i, o in zip(self.auto_q, self.inp, self.out, strict=True)
        )
        self._auto_orders: dict[tuple[int, int], tuple[int, ...]] = {}
        self.fast_order = [(UNOBSERVED_TTFT_FAST_S, i) for i in range(len(pool))]
        self._shortlists: dict[tuple[str, int, int, int, bool], list[int]] = {}

    def set_ttft(self, i: int, ttft: float) -> None:
        """Mirror endpoint ``i``'s new TTFT EWMA in ``fast_order`` and ``auto_t``."""
        order = self.fast_order
        del order[bisect.bisect_left(order, (self.fast_t[i], i))]
        bisect.insort(order, (ttft, i))
        self.fast_t[i] = ttft
        self.auto_t[i] = ttft

    def auto_top(self, needs: Needs, mask: int, rank: int, n: int) -> list[int]:
        """The first ``n`` of ``static[mask][rank]`` by the auto key (ties: index), scoring
        them in descending ``auto_ub`` order and stopping once no unscored endpoint can
        reach the ``n``-th score (its bound + the best speed term, with a margin far
        above float rounding, stays below it)."""
        order = self._auto_orders.get((mask, rank))
        if order is None:
            ub = self.auto_ub
            order = tuple(sorted(self.static[mask][rank][0], key=lambda i: (-ub[i], i)))
            self._auto_orders[(mask, rank)] = order
        _, wp, ws = AUTO_WEIGHTS
        s_max = ws / (1 + min(self.auto_t, default=0.0) / AUTO_TTFT_REF_S)
        key = self.auto_key(needs)
        ub = self.auto_ub
        top: list[tuple[float, int]] = []  # (key, index) ascending, at most n
        for i in order:
            if len(top) == n and ub[i] + s_max + 1e-9 < -top[-1][0]:
                break
            entry = (key(i), i)
            if len(top) < n:
                bisect.insort(top, entry)
            elif entry < top[-1]:
                top.pop()
                bisect.insort(top, entry)
        return [i for _, i in top]

    def fastest(self, mask: int, rank: int, n: int) -> list[int]:
        """The first ``n`` of ``static[mask][rank]`` in ``fast_order``."""
        fit = self.static_sets[mask][rank]
        out: list[int] = []
        for _, i in self.fast_order:
            if i in fit:
                out.append(i)
                if len(out) == n:
                    break
        return out

    def _precedes(self, mode: str, d: int, e: int, tokens: bool) -> bool:
        """Whether ``d`` ranks before ``e`` in ``cheapest`` / ``best`` for every request
        (any prompt and output token counts >= 0; ``tokens``: not both 0). Conservative:
        a strictly lower cost needs both prices strictly lower."""
        di, do, ei, eo = self.inp[d], self.out[d], self.inp[e], self.out[e]
        cheaper = di <= ei and do <= eo
        strictly_cheaper = tokens and di < ei and do < eo
        qd, qe = self.q_tie[d], self.q_tie[e]  # smaller is better
        if mode == "cheapest":
            return strictly_cheaper or (cheaper and (qd, d) < (qe, e))
        return qd < qe or (qd == qe and (strictly_cheaper or (cheaper and d < e)))  # best

    def shortlist(self, mode: str, mask: int, rank: int, n: int, tokens: bool) -> list[int]:
        """The fits (``static[mask][rank]``, pool order) that fewer than ``n`` other fits
        always precede: nothing else can make the first ``n`` while every fit is healthy.
        Computed on first use; at most 2 modes x 64 masks/ranks x 2 per ``n``."""
        key = (mode, mask, rank, n, tokens)
        short = self._shortlists.get(key)
        if short is None:
            idxs = self.static[mask][rank][0]
            short = [
                e for e in idxs if sum(1 for d in idxs if self._precedes(mode, d, e, tokens)) < n
            ]
            self._shortlists[key] = short
        return short

    def key_fn(self, mode: str, needs: Needs) -> Callable[[list[int]], list[tuple[Any, ...]]]:
        """Sort keys of pool indices for ``mode``, each ending with the index; the same
        order as ``Router._key_fn`` with pool order breaking the remaining ties."""
        p = needs.prompt_tokens
        o = (
            0
            if needs.kind == "embedding"
            else min(needs.max_output or EXPECTED_OUTPUT_TOKENS, EXPECTED_OUTPUT_TOKENS)
        )
        inp, out, q_tie = self.inp, self.out, self.q_tie
        if mode == "cheapest":  # (cost, -quality)
            return lambda idxs: [(p * inp[i] + o * out[i], q_tie[i], i) for i in idxs]
        if mode == "best":  # (-quality, cost)
            return lambda idxs: [(q_tie[i], p * inp[i] + o * out[i], i) for i in idxs]
        hs = self.healths
        if mode == "fast":
            unobserved = UNOBSERVED_TTFT_FAST_S
            return lambda idxs: [(unobserved if (t := hs[i].ewma_ttft) is None else t, i) for i in idxs]
        key = self.auto_key(needs)
        return lambda idxs: [(key(i), i) for i in idxs]

    def auto_key(self, needs: Needs) -> Callable[[int], float]:
        """The auto key of pool index ``i``: ``-score``, computed as ``Router._key_fn``."""
        p = needs.prompt_tokens
        o = (
            0
            if needs.kind == "embedding"
            else min(needs.max_output or EXPECTED_OUTPUT_TOKENS, EXPECTED_OUTPUT_TOKENS)
        )
        tokens = p + o
        _, wp, ws = AUTO_WEIGHTS
        inp, out, auto_q, hs = self.inp, self.out, self.auto_q, self.healths
        prior = UNOBSERVED_TTFT_AUTO_S
        price_ref = AUTO_PRICE_REF_USD_PER_MTOK
        ttft_ref = AUTO_TTFT_REF_S

        def key(i: int) -> float:
            if tokens:
                usd = (p * inp[i] + o * out[i]) / tokens / 1e9
            else:
                usd = _blended(inp[i], out[i]) / 4e9
            t = hs[i].ewma_ttft
            t = prior if t is None else t
            return -(auto_q[i] + wp / (1 + usd / price_ref) + ws / (1 + t / ttft_ref))

        return key
