"""The router: modes, capability / context / privacy filters, breaker, health, listing.

No network: providers are OpenAIProvider objects built from ProviderConfig pointing at a
closed port; nothing is called. Time is an injected clock.
"""

from __future__ import annotations

import orjson
import pytest

from meshfast import errors
from meshfast.catalogue import load_catalogue
from meshfast.config import ModelConfig, ProviderConfig, SimConfig, load
from meshfast.errors import ConfigError
from meshfast.providers.openai import OpenAIProvider
from meshfast.providers.sim import SimProvider
from meshfast.router import (
    EXPECTED_OUTPUT_TOKENS,
    PRIVACY_RANK,
    PROBE_LEASE_S,
    Needs,
    Router,
    build_router,
    counts_as_failure,
    needs_of_chat,
    needs_of_mask,
)

NOWHERE = "http://127.0.0.1:9/v1"

SMALL_CATALOGUE = """
as_of = "2025-11"

[[models]]
id = "big"
family = "fam-a"
context_window = 200000
max_output_tokens = 32000
capabilities = ["tools", "vision", "json_schema", "streaming"]
quality = 90
endpoints = [
  { provider = "alpha", upstream = "big-up", input_usd_per_mtok = "3", output_usd_per_mtok = "15", cached_input_usd_per_mtok = "0.3", privacy = "protected" },
  { provider = "beta", upstream = "big-b", input_usd_per_mtok = "2.5", output_usd_per_mtok = "12", privacy = "standard" },
]

[[models]]
id = "mid"
family = "fam-a"
context_window = 128000
max_output_tokens = 16000
capabilities = ["tools", "json_schema", "streaming"]
quality = 70
endpoints = [
  { provider = "alpha", upstream = "mid", input_usd_per_mtok = "0.5", output_usd_per_mtok = "1.5", privacy = "protected" },
  { provider = "gamma", upstream = "mid-g", input_usd_per_mtok = "0.4", output_usd_per_mtok = "1.6", privacy = "private_gateway" },
]

[[models]]
id = "small"
family = "fam-b"
context_window = 32000
max_output_tokens = 8000
capabilities = ["streaming"]
quality = 40
endpoints = [
  { provider = "beta", upstream = "small", input_usd_per_mtok = "0.05", output_usd_per_mtok = "0.1", privacy = "standard" },
  { provider = "gamma", upstream = "small", input_usd_per_mtok = "0.1", output_usd_per_mtok = "0.2", privacy = "confidential" },
]

[[models]]
id = "tiny-vision"
family = "fam-c"
context_window = 16000
max_output_tokens = 4000
capabilities = ["vision", "streaming"]
quality = 30
endpoints = [
  { provider = "local", upstream = "org/tiny-vision", input_usd_per_mtok = "0", output_usd_per_mtok = "0", privacy = "confidential" },
]

[[models]]
id = "emb"
family = "fam-e"
context_window = 8192
capabilities = ["embeddings"]
quality = 60
endpoints = [
  { provider = "alpha", upstream = "emb", input_usd_per_mtok = "0.02", output_usd_per_mtok = "0", privacy = "protected" },
  { provider = "beta", upstream = "emb", input_usd_per_mtok = "0.01", output_usd_per_mtok = "0", privacy = "standard" },
]

[[models]]
id = "other"
family = "fam-d"
context_window = 64000
max_output_tokens = 8000
capabilities = ["tools", "streaming"]
quality = 99
endpoints = [
  { provider = "delta", upstream = "other", input_usd_per_mtok = "1", output_usd_per_mtok = "1", privacy = "confidential" },
]
"""


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def prov(name: str, privacy: str = "confidential", models=(), key_env: str | None = None):
    return OpenAIProvider(
        ProviderConfig(
            name, "openai", NOWHERE, api_key_env=key_env, privacy=privacy, models=tuple(models)
        )
    )


@pytest.fixture(scope="module")
def small_cat(tmp_path_factory):
    path = tmp_path_factory.mktemp("cat") / "small.toml"
    path.write_text(SMALL_CATALOGUE)
    return load_catalogue(path)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def router(small_cat, clock, monkeypatch):
    monkeypatch.delenv("MESHFAST_TEST_ABSENT_KEY", raising=False)
    providers = [
        prov("alpha"),
        prov("beta"),
        prov("gamma"),
        prov("local"),
        prov("delta", key_env="MESHFAST_TEST_ABSENT_KEY"),  # configured, no credentials
    ]
    return Router(providers, small_cat, clock=clock, wall=lambda: 1_700_000_000.0)


def keys(cands) -> list[str]:
    return [e.key for e in cands]


def N(**kw) -> Needs:
    kw.setdefault("prompt_tokens", 1000)
    return Needs(**kw)


# -- routing decisions --------------------------------------------------------------------

# cost for prompt 1000, expected output 512 (nano per Mtok units):
#   big/alpha 10680  big/beta 8644  mid/alpha 1268  mid/gamma 1219.2
#   small/beta 101.2  small/gamma 202.4  tiny-vision/local 0
ROUTES = [
    ("cheapest", N(), ["local/tiny-vision", "beta/small", "gamma/small"]),
    ("cheapest", N(tools=True), ["gamma/mid", "alpha/mid", "beta/big"]),
    ("cheapest", N(vision=True), ["local/tiny-vision", "beta/big", "alpha/big"]),
    ("cheapest", N(vision=True, prompt_tokens=20000), ["beta/big", "alpha/big"]),
    ("cheapest", N(privacy="confidential"), ["local/tiny-vision", "gamma/small"]),
    ("cheapest", N(privacy="private_gateway", tools=True), ["gamma/mid"]),
    ("cheapest", N(kind="embedding"), ["beta/emb", "alpha/emb"]),
    ("cheapest", N(kind="embedding", privacy="protected"), ["alpha/emb"]),
    # a small max_output shrinks the output estimate: big/beta 2500+1200 < big/alpha
    ("cheapest", N(json_schema=True, max_output=100), ["gamma/mid", "alpha/mid", "beta/big"]),
    ("best", N(), ["beta/big", "alpha/big", "gamma/mid"]),
    ("best", N(privacy="protected"), ["alpha/big", "gamma/mid", "alpha/mid"]),
    ("best", N(privacy="confidential"), ["gamma/small", "local/tiny-vision"]),
    ("best", N(streaming=True, json_schema=True), ["beta/big", "alpha/big", "gamma/mid"]),
    ("best", N(kind="embedding"), ["beta/emb", "alpha/emb"]),
    ("mid", N(), ["alpha/mid", "gamma/mid"]),  # model id: configured provider order
    ("mid", N(privacy="private_gateway"), ["gamma/mid"]),
    ("gamma/mid", N(), ["gamma/mid"]),  # pinned
    ("beta/big", N(vision=True, tools=True), ["beta/big"]),
    ("emb", N(kind="embedding"), ["alpha/emb", "beta/emb"]),
]


@pytest.mark.parametrize(("model", "needs", "expected"), ROUTES)
def test_routing_table(router, model, needs, expected):
    mode, cands = router.plan(model, needs)
    assert keys(cands) == expected
    assert mode == (
        model
        if model in ("auto", "fast", "cheapest", "best")
        else "pinned"
        if "/" in model
        else "model"
    )
    for ep in cands:  # never below the class asked for
        assert ep.privacy_rank >= PRIVACY_RANK[needs.privacy]


def _mask(needs: Needs) -> int:
    return needs.tools | needs.vision << 1 | needs.json_schema << 2 | needs.streaming << 3


def _outcome(fn, *args):
    try:
        mode, cands = fn(*args)
    except errors.MeshError as exc:
        return type(exc), exc.code, exc.message
    return mode, keys(cands)


PLAN_CHAT_MODELS = ["auto", "fast", "cheapest", "best", "big", "mid", "small", "tiny-vision", "emb", "gamma/mid",
                    "beta/big", "alpha/small", "no-such-model", "nosuch/mid"]  # fmt: skip


@pytest.mark.parametrize("model", PLAN_CHAT_MODELS)
def test_plan_chat_is_plan_of_the_needs_the_mask_describes(router, model):
    """The pipeline's entry (mask bits, no Needs record) plans exactly as plan(needs):
    every capability mask, privacy class (and an unknown one), prompt within and beyond
    the context windows, with and without max_output."""
    for mask in range(16):
        for privacy in (*PRIVACY_RANK, "secret"):
            for prompt, max_output in ((1000, 0), (20000, 100), (40000, 0), (10, 250000)):
                needs = needs_of_mask(mask, prompt, max_output, privacy)
                want = _outcome(router.plan, model, needs)
                got = _outcome(router.plan_chat, model, mask, prompt, max_output, privacy)
                assert got == want, (model, mask, privacy, prompt, max_output)


def auto_reference(ep, needs: Needs, ttft: float | None = None) -> float:
    p = needs.prompt_tokens
    o = min(needs.max_output or EXPECTED_OUTPUT_TOKENS, EXPECTED_OUTPUT_TOKENS)
    usd = (p * ep.input_nano_per_mtok + o * ep.output_nano_per_mtok) / (p + o) / 1e9
    t = 1.0 if ttft is None else ttft
    return 0.5 * ep.quality / 100 + 0.3 / (1 + usd) + 0.2 / (1 + t)


def test_auto_follows_the_documented_formula(router):
    needs = N(tools=True)
    _, cands = router.plan("auto", needs)
    pool = [e for e in router.endpoints if e.model.kind == "chat" and "tools" in e.capabilities]
    ref = sorted(pool, key=lambda e: (-auto_reference(e, needs), e.provider.name, e.id))
    assert keys(cands) == keys(ref[:3])
    # mid: 0.35 + 0.3/(1+0.81) + 0.1 beats big: 0.45 + 0.3/(1+7.0) + 0.1
    assert keys(cands) == ["gamma/mid", "alpha/mid", "beta/big"]
    # a fast big/beta overtakes: its speed term grows from 0.1 toward 0.2
    for _ in range(30):
        router.record(router._by_key["beta/big"], True, 0.2, 0.001)
    _, cands = router.plan("auto", needs)
    ttft = router._by_key["beta/big"].health.ewma_ttft
    assert (
        keys(cands)[0]
        == max(
            pool, key=lambda e: auto_reference(e, needs, ttft if e.key == "beta/big" else None)
        ).key
    )


def test_fast_orders_by_ttft_ewma_unobserved_first(router):
    ep = router._by_key
    router.record(ep["alpha/mid"], True, 1.0, 0.30)
    router.record(ep["gamma/mid"], True, 1.0, 0.10)
    router.record(ep["beta/big"], True, 1.0, 0.20)
    _, cands = router.plan("fast", N(tools=True))
    assert keys(cands) == ["alpha/big", "gamma/mid", "beta/big"]  # alpha/big never observed
    router.record(ep["alpha/big"], True, 1.0, 0.5)
    _, cands = router.plan("fast", N(tools=True))
    assert keys(cands) == ["gamma/mid", "beta/big", "alpha/mid"]
    # EWMA (alpha 0.2): one slow sample moves gamma/mid to 0.1 + 0.2*(1.1-0.1) = 0.3
    router.record(ep["gamma/mid"], True, 2.0, 1.1)
    assert ep["gamma/mid"].health.ewma_ttft == pytest.approx(0.3)
    _, cands = router.plan("fast", N(tools=True))
    assert keys(cands) == ["beta/big", "alpha/mid", "gamma/mid"]  # 0.3 tie: alpha before gamma
    # non-stream calls without a ttft use the latency
    router.record(ep["beta/big"], True, 0.7)
    assert ep["beta/big"].health.ewma_ttft == pytest.approx(0.2 + 0.2 * 0.5)


def test_ties_break_by_provider_then_model(tmp_path, clock):
    path = tmp_path / "twins.toml"
    body = "\n".join(
        f'[[models]]\nid = "{mid}"\nfamily = "f"\ncontext_window = 1000\nmax_output_tokens = 100\n'
        f'capabilities = ["streaming"]\nquality = 50\nendpoints = [\n'
        f'  {{ provider = "p2", upstream = "x", input_usd_per_mtok = "1", output_usd_per_mtok = "1", privacy = "standard" }},\n'
        f'  {{ provider = "p1", upstream = "x", input_usd_per_mtok = "1", output_usd_per_mtok = "1", privacy = "standard" }},\n]\n'
        for mid in ("zeta", "eta")
    )
    path.write_text(body)
    cat = load_catalogue(path)
    for order in (["p2", "p1"], ["p1", "p2"]):
        r = Router([prov(n) for n in order], cat, clock=clock)
        for mode in ("auto", "fast", "cheapest", "best"):
            assert keys(r.plan(mode, N(prompt_tokens=10))[1]) == ["p1/eta", "p1/zeta", "p2/eta"], (
                mode
            )


def test_max_attempts_bounds_the_list(small_cat, clock):
    r = Router(
        [prov("alpha"), prov("beta"), prov("gamma"), prov("local")],
        small_cat,
        clock=clock,
        max_attempts=1,
    )
    assert keys(r.plan("best", N())[1]) == ["beta/big"]
    r = Router(
        [prov("alpha"), prov("beta"), prov("gamma"), prov("local")],
        small_cat,
        clock=clock,
        max_attempts=5,
    )
    assert len(r.plan("cheapest", N())[1]) == 5


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "needs", "exc", "code", "words"),
    [
        ("auto", N(vision=True, tools=True, prompt_tokens=50000, max_output=0), None, None, None),
        (
            "auto",
            N(kind="embedding", tools=True),
            errors.InvalidRequest,
            "capability_unavailable",
            "no routable model supports tools",
        ),
        (
            "cheapest",
            N(vision=True, json_schema=True, privacy="private_gateway"),
            errors.PrivacyUnavailable,
            "privacy_class_unavailable",
            "`private_gateway`",
        ),
        (
            "best",
            N(tools=True, privacy="confidential"),
            errors.PrivacyUnavailable,
            "privacy_class_unavailable",
            "highest available is `private_gateway`",
        ),
        (
            "auto",
            N(prompt_tokens=190000, max_output=20000),
            errors.InvalidRequest,
            "context_length_exceeded",
            "prompt of 190000 tokens + max output 20000 exceeds the context window of every candidate (largest: 200000)",
        ),
        (
            "mid",
            N(vision=True),
            errors.InvalidRequest,
            "capability_unavailable",
            "the model `mid` does not support vision",
        ),
        (
            "small",
            N(json_schema=True),
            errors.InvalidRequest,
            "capability_unavailable",
            "does not support response_format json_schema",
        ),
        (
            "mid",
            N(privacy="confidential"),
            errors.PrivacyUnavailable,
            "privacy_class_unavailable",
            "`mid` meets privacy class `confidential`",
        ),
        (
            "beta/big",
            N(privacy="protected"),
            errors.PrivacyUnavailable,
            "privacy_class_unavailable",
            "`protected`",
        ),
        (
            "small",
            N(prompt_tokens=40000),
            errors.InvalidRequest,
            "context_length_exceeded",
            "(largest: 32000)",
        ),
        ("emb", N(), errors.UnsupportedOperation, "unsupported_operation", "is an embedding model"),
        (
            "mid",
            N(kind="embedding"),
            errors.UnsupportedOperation,
            "unsupported_operation",
            "cannot create embeddings",
        ),
        ("other", N(), errors.ModelNotFound, "model_not_found", "not routable"),
        ("delta/other", N(), errors.ModelNotFound, "model_not_found", "has no credentials"),
        ("nosuch/mid", N(), errors.ModelNotFound, "model_not_found", "no provider named `nosuch`"),
        ("alpha/small", N(), errors.ModelNotFound, "model_not_found", "does not serve `small`"),
        ("no-such-model", N(), errors.ModelNotFound, "model_not_found", "does not exist"),
        (
            "auto",
            N(privacy="secret"),
            errors.InvalidRequest,
            "invalid_privacy_class",
            "Unknown privacy class",
        ),
    ],
)
def test_refusals_name_the_requirement(router, model, needs, exc, code, words):
    if exc is None:  # the one fitting: big serves tools+vision with 50k prompt
        assert keys(router.plan(model, needs)[1])[0] in ("alpha/big", "beta/big")
        return
    with pytest.raises(exc) as info:
        router.plan(model, needs)
    assert info.value.code == code
    assert words.lower() in info.value.message.lower(), info.value.message
    if exc is errors.PrivacyUnavailable:
        assert info.value.status == 403 and info.value.type == "invalid_request_error"
        assert orjson.loads(info.value.body())["error"]["code"] == "privacy_class_unavailable"


def test_effective_privacy_is_the_lower_of_catalogue_and_provider(small_cat, clock):
    r = Router(
        [prov("alpha", privacy="standard"), prov("gamma", privacy="private_gateway")],
        small_cat,
        clock=clock,
    )
    assert r._by_key["alpha/big"].privacy == "standard"  # catalogue says protected
    assert r._by_key["gamma/small"].privacy == "private_gateway"  # catalogue says confidential
    assert r._by_key["gamma/mid"].privacy == "private_gateway"
    with pytest.raises(errors.PrivacyUnavailable):
        r.plan("alpha/big", N(privacy="protected"))
    assert keys(r.plan("best", N(privacy="protected"))[1]) == ["gamma/mid", "gamma/small"]


def test_privacy_never_downgraded_on_shipped_catalogue(clock):
    cat = load_catalogue()
    names = ["openai", "anthropic", "bedrock", "together", "deepseek", "local", "groq"]
    r = Router(
        [SimProvider(SimConfig())] + [prov(n, privacy="confidential") for n in names],
        cat,
        clock=clock,
    )
    served = 0
    for cls in PRIVACY_RANK:
        for mode in ("auto", "fast", "cheapest", "best"):
            for needs in (
                N(privacy=cls),
                N(privacy=cls, tools=True),
                N(privacy=cls, vision=True),
                N(privacy=cls, kind="embedding"),
            ):
                try:
                    _, cands = r.plan(mode, needs)
                except errors.PrivacyUnavailable:
                    continue
                served += 1
                assert cands and all(e.privacy_rank >= PRIVACY_RANK[cls] for e in cands)
                # the effective class is never above the catalogue's for that endpoint
                for e in cands:
                    if e.provider.name != "sim":
                        ce = cat[e.id].endpoint(e.provider.name)
                        assert e.privacy_rank <= PRIVACY_RANK[ce.privacy]
    assert served > 20


def test_cheapest_and_best_match_a_brute_force_reference_on_the_shipped_catalogue(clock):
    cat = load_catalogue()
    names = ["openai", "anthropic", "google", "together", "fireworks", "local"]
    r = Router([prov(n, privacy="confidential") for n in names], cat, clock=clock)
    for needs in (
        N(),
        N(tools=True),
        N(vision=True, prompt_tokens=100000),
        N(json_schema=True, max_output=50),
        N(privacy="confidential"),
        N(kind="embedding", prompt_tokens=300),
    ):
        pool = []
        for cm in cat.values():
            for ce in cm.endpoints:
                if ce.provider not in names or cm.kind != needs.kind:
                    continue
                if any(c not in cm.capabilities for c in needs.capabilities()):
                    continue
                if needs.prompt_tokens + needs.max_output > cm.context_window:
                    continue
                if PRIVACY_RANK[ce.privacy] < PRIVACY_RANK[needs.privacy]:
                    continue
                o = 0 if cm.kind == "embedding" else min(needs.max_output or 512, 512)
                cost = needs.prompt_tokens * ce.input_nano_per_mtok + o * ce.output_nano_per_mtok
                pool.append((cost, cm.quality, ce.provider, cm.id))
        cheapest = sorted(pool, key=lambda x: (x[0], -x[1], x[2], x[3]))[:3]
        best = sorted(pool, key=lambda x: (-x[1], x[0], x[2], x[3]))[:3]
        assert keys(r.plan("cheapest", needs)[1]) == [f"{p}/{m}" for _, _, p, m in cheapest]
        assert keys(r.plan("best", needs)[1]) == [f"{p}/{m}" for _, _, p, m in best]


def test_needs_of_chat_detects_requirements():
    req = {
        "model": "auto",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "stream": True,
    }
    n = needs_of_chat(req, 120, 300, "protected")
    assert n == Needs("chat", True, True, True, True, 120, 300, "protected")
    plain = needs_of_chat(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
        },
        5,
        0,
        "standard",
    )
    assert plain == Needs(prompt_tokens=5)
    assert needs_of_chat({"messages": [], "tools": []}, 0, 0, "standard").tools is False


# -- circuit breaker -----------------------------------------------------------------------


def test_failure_classification():
    assert counts_as_failure(None) and counts_as_failure(429) and counts_as_failure(503)
    assert counts_as_failure(200)  # an answer that broke off
    assert not counts_as_failure(400) and not counts_as_failure(404) and not counts_as_failure(422)
    assert Router.should_failover(502) and not Router.should_failover(401)


def test_breaker_opens_after_consecutive_failures_and_half_opens(router, clock):
    ep = router._by_key["alpha/mid"]
    for i in range(4):
        router.record(ep, False, 0.1, None, "upstream returned HTTP 503", 503)
        assert keys(router.plan("mid", N())[1]) == ["gamma/mid", "alpha/mid"], i  # degraded: last
    router.record(ep, False, 0.1, None, "provider 'alpha' is unreachable", None)
    assert ep.health.circuit == 1
    assert keys(router.plan("mid", N())[1]) == ["gamma/mid"]
    with pytest.raises(errors.NoHealthyEndpoint) as info:
        router.plan("alpha/mid", N())
    assert info.value.status == 503 and (b"retry-after", b"30") in info.value.headers
    clock.t += 29.9
    assert keys(router.plan("mid", N())[1]) == ["gamma/mid"]
    clock.t += 0.1  # cool-down over: half-open, one probe
    assert keys(router.plan("mid", N())[1]) == ["gamma/mid", "alpha/mid"]
    assert ep.health.circuit == 2
    assert keys(router.plan("mid", N())[1]) == ["gamma/mid"]  # the probe is taken
    with pytest.raises(errors.NoHealthyEndpoint):
        router.plan("alpha/mid", N())
    router.record(ep, True, 0.5, 0.2)  # the probe succeeded
    assert ep.health.circuit == 0
    assert keys(router.plan("mid", N())[1]) == ["alpha/mid", "gamma/mid"]


def test_degraded_endpoint_is_demoted_for_the_cool_down_only(router, clock):
    ep = router._by_key["alpha/mid"]
    router.record(ep, False, 0.1, None, "HTTP 503", 503)
    assert keys(router.plan("mid", N())[1]) == ["gamma/mid", "alpha/mid"]
    clock.t += 30
    assert keys(router.plan("mid", N())[1]) == ["alpha/mid", "gamma/mid"]
    assert ep.health.consecutive == 1  # still counts toward the breaker


def test_half_open_probe_failure_reopens(router, clock):
    ep = router._by_key["gamma/small"]
    for _ in range(5):
        router.record(ep, False, 0.1, None, "timeout", None)
    clock.t += 30
    assert keys(router.plan("gamma/small", N())[1]) == ["gamma/small"]
    router.record(ep, False, 0.1, None, "rate limited", 429)
    assert ep.health.circuit == 1
    with pytest.raises(errors.NoHealthyEndpoint):
        router.plan("gamma/small", N())
    clock.t += 30
    assert keys(router.plan("gamma/small", N())[1]) == ["gamma/small"]


def test_unused_probe_lease_expires(router, clock):
    ep = router._by_key["gamma/small"]
    for _ in range(5):
        router.record(ep, False, 0.1, None, "x", 500)
    clock.t += 30
    router.plan("gamma/small", N())  # claimed, never attempted
    with pytest.raises(errors.NoHealthyEndpoint):
        router.plan("gamma/small", N())
    clock.t += PROBE_LEASE_S
    assert keys(router.plan("gamma/small", N())[1]) == ["gamma/small"]


def test_client_errors_do_not_count(router):
    ep = router._by_key["alpha/mid"]
    for _ in range(30):
        router.record(ep, False, 0.1, None, "upstream returned HTTP 400", 400)
    assert ep.health.circuit == 0 and ep.health.consecutive == 0
    assert keys(router.plan("mid", N())[1])[0] == "alpha/mid"


def test_breaker_opens_on_error_rate_in_window(router, clock):
    ep = router._by_key["alpha/mid"]
    for i in range(19):  # alternate: never 5 in a row; 10 failures of 19 calls: under min calls
        router.record(
            ep, i % 2 == 1, 0.1, None, None if i % 2 else "HTTP 502", None if i % 2 else 502
        )
        clock.t += 1
    assert ep.health.circuit == 0
    router.record(ep, False, 0.1, None, "HTTP 502", 502)  # 11 of 20 failed
    assert ep.health.circuit == 1


def test_error_rate_window_forgets_old_calls(router, clock):
    ep = router._by_key["alpha/mid"]
    for _ in range(9):  # 18 calls: under the minimum of 20
        router.record(ep, False, 0.1, None, "x", 503)
        router.record(ep, True, 0.1)
    assert ep.health.circuit == 0
    clock.t += 120  # the window (60 s) has moved on: 26 calls at 50 % would have opened it
    for _ in range(4):
        router.record(ep, False, 0.1, None, "x", 503)
        router.record(ep, True, 0.1)
    assert ep.health.circuit == 0


# -- health --------------------------------------------------------------------------------


def test_health_body_shape_stats_and_no_secrets(small_cat, clock, monkeypatch):
    monkeypatch.setenv("MESHFAST_TEST_SECRET_KEY", "sk-very-secret-123")
    p = OpenAIProvider(
        ProviderConfig(
            "alpha",
            "openai",
            "http://user:hunter2@upstream.example/v1",
            api_key_env="MESHFAST_TEST_SECRET_KEY",
            privacy="protected",
        )
    )
    r = Router([SimProvider(SimConfig()), p], small_cat, clock=clock, wall=lambda: 1_700_000_000.0)
    mid = r._by_key["alpha/mid"]
    for i in range(100):
        r.record(mid, True, 0.100 + i / 1000, 0.010 + i / 10000)
    r.record(mid, False, 2.0, None, "provider 'alpha' timed out (first_byte)", None)
    clock.t += 10
    for _ in range(5):
        r.record(r._by_key["alpha/emb"], False, 0.1, None, "upstream returned HTTP 503", 503)
    raw = r.health_body()
    assert (
        b"sk-very-secret-123" not in raw
        and b"hunter2" not in raw
        and b"upstream.example" not in raw
    )
    body = orjson.loads(raw)
    assert body["window_s"] == 300
    by_name = {x["name"]: x for x in body["providers"]}
    assert set(by_name) == {"sim", "alpha"}
    assert by_name["sim"]["state"] == "healthy" and by_name["sim"]["privacy"] == "standard"
    alpha = by_name["alpha"]
    assert alpha["state"] == "degraded" and alpha["routable"] is True
    rows = {e["model"]: e for e in alpha["endpoints"]}
    m = rows["mid"]
    assert m["key"] == "alpha/mid" and m["upstream"] == "mid" and m["privacy"] == "protected"
    assert m["state"] == "degraded" and m["circuit"] == "closed"
    assert m["calls"] == 101 and m["failures"] == 1
    assert m["success_rate"] == pytest.approx(100 / 101, abs=1e-4)
    assert m["latency_ms"] == {"p50": 149.0, "p95": 194.0}
    assert m["ttft_ms"]["p50"] == 14.9 and m["ttft_ms"]["p95"] == 19.4 and m["ttft_ms"]["ewma"] > 0
    assert m["last_error"] == {
        "message": "provider 'alpha' timed out (first_byte)",
        "status": None,
        "at": 1_700_000_000 - 10,
        "age_s": 10.0,
    }
    e = rows["emb"]
    assert e["state"] == "down" and e["circuit"] == "open" and e["retry_at"] == 1_700_000_030
    assert e["last_error"]["status"] == 503 and e["success_rate"] == 0.0
    assert rows["big"]["state"] == "healthy" and rows["big"]["calls"] == 0
    assert rows["big"]["success_rate"] is None and rows["big"]["latency_ms"] == {
        "p50": None,
        "p95": None,
    }
    clock.t += 301  # five minutes later the statistics are empty again; the error stays
    m = {e["model"]: e for e in orjson.loads(r.health_body())["providers"][1]["endpoints"]}["mid"]
    assert m["calls"] == 0 and m["latency_ms"]["p50"] is None and m["last_error"]["age_s"] == 311.0
    assert m["circuit"] == "closed"


def test_health_error_message_is_bounded_and_printable(router):
    router.record(router._by_key["alpha/mid"], False, 0.1, None, "bad\nthing " + "x" * 1000, 502)
    rows = orjson.loads(router.health_body())["providers"][0]["endpoints"]
    msg = next(r for r in rows if r["model"] == "mid")["last_error"]["message"]
    assert len(msg) == 200 and "\n" not in msg


def test_health_marks_providers_without_credentials_down(router):
    body = orjson.loads(router.health_body())
    delta = next(p for p in body["providers"] if p["name"] == "delta")
    assert delta["state"] == "down" and delta["routable"] is False and delta["endpoints"] == []


# -- listing -------------------------------------------------------------------------------


def test_models_listing_shape(small_cat, clock):
    op = prov(
        "alpha",
        privacy="protected",
        models=[ModelConfig("house-model", "hm", "1", "2", None, "chat", 50000, 1000)],
    )
    r = Router(
        [SimProvider(SimConfig()), op, prov("beta", privacy="confidential")], small_cat, clock=clock
    )
    body = orjson.loads(r.models_body)
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    assert set(models) == {
        "sim-1",
        "sim-1-mini",
        "sim-embed-1",
        "house-model",
        "big",
        "mid",
        "emb",
        "small",
        "tiny-vision",
        "other",
    }
    for m in body["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"]
        assert set(m) >= {
            "pricing",
            "context_length",
            "capabilities",
            "privacy_classes",
            "providers",
            "routable",
        }
    sim1 = models["sim-1"]
    assert (
        sim1["owned_by"] == "sim"
        and sim1["routable"] is True
        and sim1["privacy_classes"] == ["standard"]
    )
    assert sim1["capabilities"] == ["tools", "vision", "json_schema", "streaming"]
    assert sim1["pricing"] == {
        "input": "0.5",
        "output": "1.5",
        "cached_input": "0.5",
        "provider": "sim",
        "unit": "USD per 1M tokens",
    }
    assert (
        models["sim-embed-1"]["capabilities"] == ["embeddings"]
        and models["sim-embed-1"]["kind"] == "embedding"
    )
    house = models["house-model"]
    assert (
        house["quality"] == 50
        and house["context_length"] == 50000
        and house["providers"] == ["alpha"]
    )
    assert house["capabilities"] == ["tools", "vision", "json_schema", "streaming"]
    big = models["big"]
    assert big["routable"] is True and big["providers"] == ["alpha", "beta"]
    assert big["privacy_classes"] == [
        "standard",
        "protected",
    ]  # beta's endpoint is standard at most
    assert (
        big["pricing"]["provider"] == "beta" and big["pricing"]["input"] == "2.5"
    )  # cheaper blend
    assert big["endpoints"][0] == {
        "provider": "alpha",
        "routable": True,
        "privacy": "protected",
        "pricing": {"input": "3", "output": "15", "cached_input": "0.3"},
    }
    other = models["other"]
    assert other["routable"] is False and other["endpoints"][0]["configured"] is False
    assert other["pricing"]["provider"] == "delta"
    assert [m["id"] for m in body["data"]][:3] == ["sim-1", "sim-1-mini", "sim-embed-1"]
    assert orjson.loads(r.model_body("mid"))["id"] == "mid"
    assert orjson.loads(r.model_body("alpha/mid"))["id"] == "mid"
    with pytest.raises(errors.ModelNotFound):
        r.model_body("nope")


# -- configuration -------------------------------------------------------------------------


def test_config_catalogue_overrides_and_catalogue_providers(tmp_path, monkeypatch, clock):
    monkeypatch.setenv("MESHFAST_TEST_OPENAI_KEY", "sk-test")
    path = tmp_path / "meshfast.toml"
    path.write_text(
        "[router]\nmax_attempts = 2\nbreaker_failures = 3\n\n"
        "[[providers]]\nname = 'openai'\nkind = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n"
        "api_key_env = 'MESHFAST_TEST_OPENAI_KEY'\nprivacy = 'protected'\n"
        "[[providers.models]]\nid = 'gpt-4o-mini'\ninput_usd_per_mtok = '0.1'\n\n"
        "[[providers]]\nname = 'local'\nkind = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\nprivacy = 'confidential'\n\n"
        "[[catalogue.models]]\nid = 'gpt-4o'\nquality = 99\n"
        "endpoints = [{ provider = 'openai', input_usd_per_mtok = '2' }]\n\n"
        "[[catalogue.models]]\nid = 'house-llm'\nfamily = 'house'\ncontext_window = 32000\nmax_output_tokens = 4000\n"
        "capabilities = ['streaming']\nquality = 55\nendpoints = [{ provider = 'local', upstream = 'org/house', "
        "input_usd_per_mtok = '0', output_usd_per_mtok = '0', privacy = 'confidential' }]\n"
    )
    cfg = load(path)
    assert len(cfg.catalogue_overrides) == 2 and cfg.router.max_attempts == 2
    r = build_router(cfg, clock=clock)
    assert r.max_attempts == 2 and r.settings.breaker_failures == 3
    gpt4o = r._by_key["openai/gpt-4o"]
    assert gpt4o.quality == 99 and gpt4o.input_nano_per_mtok == 2_000_000_000
    assert gpt4o.output_nano_per_mtok == 10_000_000_000 and gpt4o.upstream == "gpt-4o"
    mini = r._by_key["openai/gpt-4o-mini"]  # the operator's price, the catalogue's output price
    assert mini.input_nano_per_mtok == 100_000_000 and mini.output_nano_per_mtok == 600_000_000
    assert (
        mini.upstream == "gpt-4o-mini"
        and mini.context_window == 128000
        and mini.family == "openai-gpt"
    )
    house = r._by_key["local/house-llm"]
    assert house.upstream == "org/house" and house.privacy == "confidential"
    assert keys(r.plan("house-llm", N())[1]) == ["local/house-llm"]
    assert len(r.plan("cheapest", N())[1]) == 2


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            "[[catalogue.models]]\nid = 'gpt-4o'\nquality = 101\n",
            "catalogue.models[0].quality",
            "between 0 and 100",
        ),
        (
            "[[catalogue.models]]\nid = 'new-one'\nquality = 50\n",
            "catalogue.models[0]",
            "is required",
        ),
        ("[catalogue]\nbogus = 1\n", "catalogue.bogus", "unknown key"),
        ("[router]\nmax_attempts = 0\n", "router.max_attempts", "greater than 0"),
        (
            "[[providers]]\nname = 'mine'\nkind = 'openai'\nbase_url = 'http://h/v1'\n",
            "providers[0].models",
            "at least one",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, key, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert (
        info.value.source == str(path) and key in info.value.key and problem in info.value.problem
    )
