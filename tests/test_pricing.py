"""Call pricing (meshfast_core.pricing): the compiled module against its Python twin and
against the rules (``token_cost``, ``margin_of``), including the inputs the C path hands
to the twin (beyond int64, negative, not an int)."""

from __future__ import annotations

import itertools
import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast_core import pricing, pricing_py
from meshfast_core.pricing_py import margin_of, token_cost

IMPLS = [pytest.param(pricing_py, id="py")]
if pricing.PRICING_C is not None:
    IMPLS.append(pytest.param(pricing.PRICING_C, id="c"))

# mostly realistic sizes, sometimes far beyond int64 (the C path's products overflow)
COUNTS = st.one_of(st.integers(0, 2_000_000), st.integers(0, 2**70))
PRICES = st.one_of(st.integers(0, 10**12), st.integers(0, 2**66))  # nano-USD per million tokens
PPMS = st.one_of(st.integers(0, 2_000_000), st.integers(0, 2**64))
FEES = st.one_of(st.integers(0, 10**9), st.integers(0, 2**64))


def test_pricing_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert pricing.COMPILED, "meshfast_core._pricing did not load: build it with setup.py build_ext"
    assert pricing.call_cost is pricing.PRICING_C.call_cost and pricing.hold_worst is pricing.PRICING_C.hold_worst


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=400, deadline=None)
@given(prompt=COUNTS, completion=COUNTS, cached=COUNTS, prices=st.tuples(PRICES, PRICES, PRICES), ppm=PPMS, fee=FEES)
def test_call_cost_is_the_priced_terms(impl, prompt, completion, cached, prices, ppm, fee) -> None:
    cached = min(cached, prompt)  # as usage_counts gives them
    upstream = token_cost(prompt - cached, prices[0]) + token_cost(cached, prices[1]) + token_cost(completion, prices[2])
    got = impl.call_cost(prompt, completion, cached, *prices, ppm, fee)
    assert got == (upstream, margin_of(upstream, ppm, fee))
    assert all(type(v) is int for v in got)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "args",
    [
        (10, 5, 20, 1_000_000, 1_000_000, 1_000_000, 50_000, 0),  # more cached than prompt: a negative term
        (-3, 5, 0, 1_000_000, 0, 1_000_000, 50_000, 0),  # a negative count
        (10, 5, 0, 1_000_000, 0, 1_000_000, 50_000, -7),  # a negative fee
        (True, 5, 0, 1_000_000, 0, 1_000_000, 50_000, 0),  # a bool is an int subclass
        (2**63 - 1, 1, 0, 2**63 - 1, 0, 1, 1, 1),  # int64 edges
        (2**63, 1, 0, 1, 0, 1, 1, 1),
    ],
)
def test_call_cost_edges_agree_with_the_twin(impl, args) -> None:
    assert impl.call_cost(*args) == pricing_py.call_cost(*args)


def _endpoint(input_price: int, output_price: int, max_output: int) -> SimpleNamespace:
    return SimpleNamespace(
        input_nano_per_mtok=input_price, output_nano_per_mtok=output_price, model=SimpleNamespace(max_output_tokens=max_output)
    )


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=400, deadline=None)
@given(
    prompt=COUNTS,
    asked=st.one_of(st.just(0), st.integers(1, 300_000), st.integers(0, 2**64)),
    n=st.one_of(st.integers(1, 8), st.integers(1, 2**40)),
    max_output=st.one_of(st.none(), st.just(0), COUNTS),
    endpoints=st.lists(st.tuples(PRICES, PRICES, st.integers(1, 200_000)), min_size=1, max_size=4),
    ppm=PPMS,
    fee=FEES,
)
def test_hold_worst_is_the_worst_candidate(impl, prompt, asked, n, max_output, endpoints, ppm, fee) -> None:
    candidates = [_endpoint(*e) for e in endpoints]
    outs = [max_output if max_output is not None else (asked if 0 < asked < cap else cap) * n for _, _, cap in endpoints]
    costs = [token_cost(prompt, i) + token_cost(out, o) for (i, o, _), out in zip(endpoints, outs, strict=True)]
    worst = max(0, *costs)
    got = impl.hold_worst(candidates, prompt, asked, n, max_output, ppm, fee)
    assert got == (worst + margin_of(worst, ppm, fee), prompt + max(0, *outs))
    assert all(type(v) is int for v in got)


@pytest.mark.parametrize("impl", IMPLS)
def test_hold_worst_hands_odd_inputs_to_the_twin(impl) -> None:
    odd = [_endpoint(1_000_000, 2_000_000, 100), _endpoint(-5, 2_000_000, 100)]  # a negative price
    assert impl.hold_worst(odd, 10, 0, 1, None, 50_000, 3) == pricing_py.hold_worst(odd, 10, 0, 1, None, 50_000, 3)
    plain = [_endpoint(1_000_000, 2_000_000, 100)]
    assert impl.hold_worst(plain, 10, 0, 1, None, 50_000, -3) == pricing_py.hold_worst(plain, 10, 0, 1, None, 50_000, -3)
    assert impl.hold_worst([], 10, 0, 1, None, 50_000, 3) == (3, 10)  # no candidate: the margin's fee alone


# -- the endpoint's tariff (Endpoint.tariff: what hold_worst reads of a real endpoint) --------
EDGE_PRICES = [0, 1, 150_000_000, 2**63 - 1, 2**63, 2**70, -5, True, 1.5e6]
EDGE_CAPS = [1, 4096, 2**63 - 1, 2**63, 0, -1, None, 2.0]


def _real_endpoint(input_price, output_price, cached_price=0, cap=4096, name="p", privacy="standard"):
    from meshfast.config import ModelConfig
    from meshfast.providers.base import Endpoint, Provider

    model = ModelConfig("m", "m-up", max_output_tokens=cap)
    return Endpoint(Provider(name, "standard"), model, input_price, output_price, cached_price, privacy=privacy)


def _outcome(fn, *args):
    """What a call gives, or the type of what it raised (both twins must agree on either)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc)


def test_endpoint_tariff_is_the_selected_record() -> None:
    ep = _real_endpoint(150_000_000, 600_000_000, 75_000_000, cap=8000, name="prov", privacy="protected")
    t = ep.tariff
    assert type(t) is pricing.Tariff
    assert (t.input_price, t.cached_price, t.output_price, t.max_output) == (150_000_000, 75_000_000, 600_000_000, 8000)
    assert (t.provider, t.upstream, t.privacy) == ("prov", "m-up", "protected")


@pytest.mark.parametrize("impl", IMPLS)
def test_hold_worst_on_endpoints_agrees_with_the_twin(impl) -> None:
    """Int64 edges, beyond int64, negative and non-int prices and caps (None too): the
    compiled hold over real endpoints (read through their tariffs) gives what the twin
    gives, or raises what it raises."""
    for input_price, output_price, cap in itertools.product(EDGE_PRICES, EDGE_PRICES, EDGE_CAPS):
        eps = [_real_endpoint(input_price, output_price, cap=cap), _real_endpoint(1_000_000, 2_000_000)]
        for asked, n, max_output in ((0, 1, None), (100, 2, None), (0, 1, 500), (2**62, 4, None)):
            for cands in (eps, eps[::-1], eps[:1]):
                want = _outcome(pricing_py.hold_worst, cands, 1000, asked, n, max_output, 50_000, 3)
                got = _outcome(impl.hold_worst, cands, 1000, asked, n, max_output, 50_000, 3)
                assert got == want, (input_price, output_price, cap, asked, n, max_output)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_changed_endpoint_is_held_at_its_new_values(impl) -> None:
    from meshfast.config import ModelConfig

    ep = _real_endpoint(1_000_000, 2_000_000, cap=100)
    before = impl.hold_worst([ep], 1000, 0, 1, None, 0, 0)
    assert before == (1000 + 200, 1100)
    ep.input_nano_per_mtok = 10_000_000
    ep.output_nano_per_mtok = 2**70  # beyond int64: the twin's path
    assert impl.hold_worst([ep], 1000, 0, 1, None, 0, 0) == (10_000 + token_cost(100, 2**70), 1100)
    ep.output_nano_per_mtok = 4_000_000
    ep.model = ModelConfig("m", "m-up", max_output_tokens=1000)
    assert impl.hold_worst([ep], 1000, 0, 1, None, 0, 0) == (10_000 + 4000, 2000)
    assert ep.tariff.output_price == 4_000_000 and ep.tariff.max_output == 1000
