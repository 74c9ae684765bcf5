"""Call pricing (meshfast_core.pricing): the compiled module against its Python twin and
against the rules (``token_cost``, ``margin_of``), including the inputs the C path hands
to the twin (beyond int64, negative, not an int)."""

from __future__ import annotations

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
