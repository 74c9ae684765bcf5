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
_IMAGE_PARTS = ("image_url", "input_image")


def needs_of_chat(req: dict[str, Any], prompt_tokens: int, max_output: int, privacy: str) -> Needs:
    """Needs of a (validated) chat request: tools, image parts, json_schema, stream."""
    vision = False
    for m in req.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                    vision = True
                    break
            if vision:
                break
    fmt = req.get("response_format")
    return Needs(
        "chat",
        bool(req.get("tools") or req.get("functions")),
        vision,
        isinstance(fmt, dict) and fmt.get("type") == "json_schema",
        req.get("stream") is True,
        prompt_tokens,
        max_output,
        privacy,
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
            raise errors.InvalidRequest(
                f"Unknown privacy class `{needs.privacy}`; expected one of {', '.join(PRIVACY_CLASSES)}.",
                param="mesh.privacy",
                code="invalid_privacy_class",
            )
        caps = needs.capabilities()
        total = needs.prompt_tokens + needs.max_output
        kind = needs.kind
        demote = self.settings.breaker_cooldown_s
        now = self._clock()
        if model in MODES:
            pool = self._pool.get(kind, ())
            mode = model
        elif "/" in model:
            ep = self._by_key.get(model)
            if ep is None:
                raise self._not_found(model)
            pool = (ep,)
            mode = "pinned"
        else:
            pool = self._by_id.get(model)  # type: ignore[assignment]
            if pool is None:
                raise self._not_found(model)
            mode = "model"
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
            raise self._explain(model, mode, pool, needs, caps)
        if not picked:
            wait = min(
                max(ep.health.reopen_at, ep.health.probe_until) - now
                for ep in pool
                if ep.health.circuit != CLOSED
            )
            retry = max(1, math.ceil(wait))
            raise errors.NoHealthyEndpoint(
                f"Every endpoint that can serve `{model}` is failing (circuit open); retry in {retry} s.",
                headers=[(b"retry-after", str(retry).encode())],
            )
        if mode in MODES and len(picked) > 1:
            picked.sort(key=self._key_fn(mode, needs))  # stable: pool order breaks ties
        if any(g for g, _ in picked):
            picked.sort(key=_unhealthy_last)  # stable
        out = [ep for _, ep in picked[: self.max_attempts]]
        for ep in out:
            h = ep.health
            if h.circuit == HALF_OPEN:
                h.probe_until = now + PROBE_LEASE_S  # this plan holds the one probe
        return mode, out

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
            if h.circuit == HALF_OPEN:
                h.circuit = CLOSED
                h.probe_until = 0.0
                h.window.clear()  # a fresh window: the failures that opened it are history
            return
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
