"""Tests of the limit windows (GCRA) and the concurrency cap, over the compiled module and
its Python twin."""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast_core import limits, limits_py
from meshfast_core.exceptions import LimitExceeded
from meshfast_core.limits import ConcurrencyC, ConcurrencyPy, WindowC, WindowPy

_NOT_COMPILED = pytest.mark.skipif(
    WindowC is None, reason="meshfast_core._limits is not compiled (or disabled)"
)
WINDOWS = [pytest.param(WindowPy, id="py"), pytest.param(WindowC, id="c", marks=_NOT_COMPILED)]
# the modules: Limiter, admit, finish, rate_headers, reset_value of each implementation
LIMIT_C = sys.modules[WindowC.__module__] if WindowC is not None else None
IMPLS = [pytest.param(limits_py, id="py"), pytest.param(LIMIT_C, id="c", marks=_NOT_COMPILED)]
CONCURRENCIES = [
    pytest.param(ConcurrencyPy, id="py"),
    pytest.param(ConcurrencyC, id="c", marks=_NOT_COMPILED),
]
# (limit, period): whole-ns intervals, and ones that are not (60/7 s, 1/3 s)
EDGES = [(3, 60.0), (7, 60.0), (10, 1.0), (3, 1.0), (60, 60.0), (1, 60.0), (10_000, 60.0)]
T0 = 12_345.678  # an arbitrary monotonic-clock reading


@pytest.fixture(params=WINDOWS)
def window(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.fixture(params=CONCURRENCIES)
def concurrency(request: pytest.FixtureRequest) -> type:
    return request.param


def test_limits_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert limits.COMPILED, "meshfast_core._limits did not load: build it with setup.py build_ext"
    assert limits.Window is WindowC and limits.Concurrency is ConcurrencyC
    assert WindowC.__module__ == "meshfast_core._limits"
    assert limits.admit.__module__ == limits.Limiter.__module__ == "meshfast_core._limits"


def take_all(w: Any, now: float) -> int:
    n = 0
    while w.try_take(now):
        n += 1
    return n


@pytest.mark.parametrize(("n", "p"), EDGES)
def test_n_pass_then_one_per_interval(window: type, n: int, p: float) -> None:
    w = window(n, p)
    assert [w.try_take(T0) for _ in range(n + 1)] == [True] * n + [False]
    assert w.remaining(T0) == 0
    assert not w.try_take(T0 + p / n - 1e-6)
    assert w.try_take(T0 + p / n)
    assert not w.try_take(T0 + p / n)
    assert w.try_take(T0 + 2 * p / n)
    assert not w.try_take(T0 + 2 * p / n)


@pytest.mark.parametrize(("n", "p"), EDGES)
def test_burst_after_idle(window: type, n: int, p: float) -> None:
    w = window(n, p)
    assert take_all(w, T0) == n
    assert w.remaining(T0 + p - 1e-6) == n - 1
    assert w.remaining(T0 + p) == n
    assert take_all(w, T0 + p) == n
    # a long idle period refills to capacity, not beyond
    assert take_all(w, T0 + 100 * p) == n


def test_reset_and_retry_after_at_edges(window: type) -> None:
    w = window(3, 60.0)
    assert (w.remaining(T0), w.reset_after(T0), w.retry_after(T0)) == (3, 0.0, 0.0)
    assert w.try_take(T0)
    assert (w.remaining(T0), w.reset_after(T0), w.retry_after(T0)) == (2, 20.0, 0.0)
    assert w.retry_after(T0, 3) == 20.0
    assert w.try_take(T0, 2)
    assert (w.remaining(T0), w.reset_after(T0), w.retry_after(T0)) == (0, 60.0, 20.0)
    assert w.retry_after(T0, 2) == 40.0
    assert w.retry_after(T0, 3) == 60.0
    assert w.retry_after(T0, 4) == math.inf
    t = T0 + 5.0
    assert (w.remaining(t), w.reset_after(t), w.retry_after(t)) == (0, 55.0, 15.0)
    t = T0 + 20.0
    assert (w.remaining(t), w.reset_after(t), w.retry_after(t)) == (1, 40.0, 0.0)
    t = T0 + 60.0
    assert (w.remaining(t), w.reset_after(t), w.retry_after(t, 3)) == (3, 0.0, 0.0)
    # a whole-ns interval gives exact seconds; 60/7 s is reported to the ns
    w = window(7, 60.0)
    assert w.try_take(0.0, 7)
    assert w.retry_after(0.0) == 8.571428571
    assert w.reset_after(0.0) == 60.0


def test_tpm_reserve_then_give_back(window: type) -> None:
    w = window(1000, 60.0)  # 1000 tokens/min: 60 ms per token
    assert w.try_take(T0, 600)  # reserve the estimate
    assert w.remaining(T0) == 400
    w.give_back(T0 + 1.0, 350)  # actual usage was 250
    assert w.remaining(T0 + 1.0) == 1000 - 250 + 16  # 1 s refilled 16.67 tokens
    assert not w.try_take(T0 + 1.0, 800)
    assert w.retry_after(T0 + 1.0, 800) == 2.0  # 766.67 available: 33.33 short, 60 ms each
    assert not w.try_take(T0 + 3.0 - 1e-6, 800)
    assert w.try_take(T0 + 3.0, 800)


def test_give_back_never_above_capacity(window: type) -> None:
    w = window(1000, 60.0)
    assert w.try_take(T0, 100)
    w.give_back(T0, 10_000)
    assert w.remaining(T0) == 1000 and w.reset_after(T0) == 0.0
    assert w.try_take(T0, 1000)
    assert not w.try_take(T0, 1)


def test_tpm_take_more_overdraws(window: type) -> None:
    w = window(1000, 60.0)
    assert w.try_take(T0, 500)
    w.take_more(T0, 400)  # actual usage was 900
    assert w.remaining(T0) == 100
    w.take_more(T0, 1100)  # far over: 1000 units of debt beyond capacity
    assert w.remaining(T0) == 0  # never negative
    assert not w.try_take(T0, 0)  # overdrawn: even a zero cost waits
    assert w.reset_after(T0) == 120.0
    assert w.retry_after(T0) == 60.06
    assert w.remaining(T0 + 60.0) == 0
    assert not w.try_take(T0 + 60.06 - 1e-6)
    assert w.try_take(T0 + 60.06)
    assert w.remaining(T0 + 200.0) == 1000


def test_cost_above_limit_is_refused(window: type) -> None:
    w = window(10, 60.0)
    assert not w.try_take(T0, 11)
    assert w.retry_after(T0, 11) == math.inf
    assert w.remaining(T0) == 10  # nothing taken
    assert w.try_take(T0, 10)  # the whole capacity fits a full window
    assert w.try_take(T0, 0)
    assert not w.try_take(T0, 1)


def test_set_limit_keeps_fraction_used(window: type) -> None:
    w = window(10, 60.0)
    assert w.try_take(T0, 5)
    w.set_limit(20)
    assert (w.limit, w.remaining(T0), w.reset_after(T0)) == (20, 10, 30.0)
    w.set_limit(4)
    assert (w.limit, w.remaining(T0), w.reset_after(T0)) == (4, 2, 30.0)
    assert w.try_take(T0, 2)
    assert not w.try_take(T0)
    assert w.try_take(T0 + 15.0)  # a 4/min window refills one every 15 s


def test_attributes_and_validation(window: type) -> None:
    w = window(5, 1.5)
    assert (w.limit, w.period) == (5, 1.5)
    assert repr(w) == "Window(limit=5, period=1.5)"
    with pytest.raises(AttributeError):
        w.limit = 6  # type: ignore[misc]
    for bad in (0, -1, 1 << 41):
        with pytest.raises(ValueError):
            window(bad)
        with pytest.raises(ValueError):
            w.set_limit(bad)
    for bad_period in (0.0, -1.0, math.nan, math.inf, 1e-12):
        with pytest.raises(ValueError):
            window(5, bad_period)
    with pytest.raises(TypeError):
        window(5.0)
    for bad_now in (-1.0, math.nan, math.inf, 5e9):
        for call in (w.try_take, w.remaining, w.reset_after, w.retry_after):
            with pytest.raises(ValueError):
                call(bad_now)
    for call in (w.try_take, w.retry_after, w.give_back, w.take_more):
        with pytest.raises(ValueError):
            call(T0, -1)
        with pytest.raises(TypeError):
            call(T0, 1.5)
    assert w.remaining(T0) == 5  # nothing changed


def test_concurrency_cap(concurrency: type) -> None:
    c = concurrency(2)
    assert (c.limit, c.active) == (2, 0)
    assert [c.try_acquire() for _ in range(3)] == [True, True, False]
    assert c.active == 2
    c.release()
    assert c.try_acquire() and not c.try_acquire()
    c.set_limit(1)  # holders above a lowered cap keep their slot
    assert c.active == 2 and not c.try_acquire()
    c.release()
    assert not c.try_acquire()
    c.release()
    assert c.try_acquire()
    c.release()
    with pytest.raises(RuntimeError):
        c.release()
    assert c.active == 0
    assert repr(c) == "Concurrency(limit=1, active=0)"
    with pytest.raises(ValueError):
        concurrency(0)


# --- properties -------------------------------------------------------------------------

OPS = st.sampled_from(["take", "take", "take", "back", "more", "limit"])
PERIODS = st.one_of(
    st.sampled_from([60.0, 1.0, 1 / 3, 0.7, 86_400.0, 1e-3]),
    st.floats(1e-3, 1e4, allow_nan=False),
)
STEPS = st.lists(
    st.tuples(
        st.one_of(st.integers(0, 10**11).map(lambda ns: ns / 1e9), st.floats(0.0, 200.0)),
        OPS,
        st.integers(0, 60),
    ),
    max_size=60,
)


def trace(cls: type, limit: int, period: float, start: float, steps: list) -> list:
    """Run the steps; every result and every query after each step, in order."""
    w = cls(limit, period)
    now = start
    out: list = []
    for dt, op, arg in steps:
        now += dt
        if op == "take":
            out.append(w.try_take(now, arg))
        elif op == "back":
            out.append(w.give_back(now, arg))
        elif op == "more":
            out.append(w.take_more(now, arg))
        else:
            out.append(w.set_limit(arg + 1))
        out.append((w.limit, w.remaining(now), w.reset_after(now), w.retry_after(now, arg)))
    return out


@pytest.mark.skipif(WindowC is None, reason="meshfast_core._limits is not compiled")
@settings(max_examples=300, deadline=None)
@given(
    limit=st.one_of(st.integers(1, 60), st.integers(1, 10**7)),
    period=PERIODS,
    start=st.floats(0.0, 1e6),
    steps=STEPS,
)
def test_differential_py_c(limit: int, period: float, start: float, steps: list) -> None:
    assert trace(WindowPy, limit, period, start, steps) == trace(
        WindowC, limit, period, start, steps
    )


@pytest.mark.parametrize("cls", WINDOWS)
@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 40),
    period_ns=st.one_of(st.sampled_from([60 * 10**9, 10**9, 333_333_333]), st.integers(1, 10**10)),
    start_ns=st.integers(0, 10**14),
    steps=st.lists(
        st.tuples(st.integers(0, 5 * 10**9), st.sampled_from(["take", "take", "back", "more"])),
        max_size=60,
    ),
    costs=st.lists(st.integers(0, 45), min_size=1),
)
def test_gcra_bound(
    cls: type, limit: int, period_ns: int, start_ns: int, steps: list, costs: list[int]
) -> None:
    """Granted minus given back over any interval of length t <= N + N*(t + 1 ns)/P.

    Along the way: try_take succeeds exactly when retry_after is 0 and remaining covers
    the cost; the window is full after reset_after; cost fits after retry_after, and not
    1 ns before.
    """
    n, p = limit, period_ns
    w = cls(n, p / 1e9)
    t = start_ns
    events: list[tuple[int, int]] = []  # (time in ns, +granted / -given back)
    for i, (dt, op) in enumerate(steps):
        t += dt
        now = t / 1e9
        cost = costs[i % len(costs)]
        if op == "take":
            expect = w.retry_after(now, cost) == 0.0
            if cost:  # a zero cost passes unless overdrawn, whatever remaining says
                assert expect == (w.remaining(now) >= cost)
            assert w.try_take(now, cost) is expect
            if expect:
                events.append((t, cost))
        elif op == "back":
            w.give_back(now, cost)
            events.append((t, -cost))
        else:
            w.take_more(now, cost)
        assert 0 <= w.remaining(now) <= n
        reset_ns = round(w.reset_after(now) * 1e9)
        assert w.remaining((t + reset_ns) / 1e9) == n
        if 0 < cost <= n:
            retry_ns = round(w.retry_after(now, cost) * 1e9)
            assert w.remaining((t + retry_ns) / 1e9) >= cost
            if retry_ns > 0:
                assert w.remaining((t + retry_ns - 1) / 1e9) < cost
    times = [x for x, _ in events]  # non-decreasing
    prefix = [0]
    for _, u in events:
        prefix.append(prefix[-1] + u)
    for i, a in enumerate(times):
        if i and times[i - 1] == a:
            continue  # the interval [a, b] starts at the first event at time a
        for j in range(i, len(times)):
            b = times[j]
            if j + 1 < len(times) and times[j + 1] == b:
                continue  # ... and ends at the last event at time b
            net = prefix[j + 1] - prefix[i]
            assert net * p < n * (p + (b - a) + 1), (a, b, net)


# --- admission over a key and its project -------------------------------------------------

MONTH, DAY = "2026-11", "2026-11-26"


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


def limiter(impl: Any, rpm=None, tpm=None, concurrency=None, daily=None, monthly=None) -> Any:
    lim = impl.Limiter()
    lim.configure(rpm, tpm, concurrency, daily, monthly, 60.0)
    return lim


def state(lim: Any) -> tuple:
    return (
        lim.rpm.remaining(T0) if lim.rpm else None,
        lim.tpm.remaining(T0) if lim.tpm else None,
        lim.concurrency.active if lim.concurrency else None,
        lim.held_nano,
    )


def test_admit_takes_every_limit_or_none(impl: Any) -> None:
    key = limiter(impl, rpm=2, tpm=1000, concurrency=5, daily=10_000, monthly=50_000)
    project = limiter(impl, rpm=10, concurrency=1)
    adm = impl.admit((key, project), T0, 300, 4_000, MONTH, DAY)
    assert state(key) == (1, 700, 1, 4_000) and state(project) == (9, None, 1, 4_000)
    assert adm.tokens == 300 and adm.states == (key, project)
    before = (state(key), state(project))
    with pytest.raises(LimitExceeded) as exc:  # the project's concurrency (1) is taken
        impl.admit((key, project), T0, 300, 4_000, MONTH, DAY)
    assert (exc.value.limit, exc.value.index, exc.value.retry_after) == ("concurrency", 1, 1.0)
    assert (state(key), state(project)) == before  # nothing taken
    impl.finish(adm, T0, 4_000, 120)  # used 120 of the 300 reserved
    assert state(key) == (1, 880, 0, 0) and state(project) == (9, None, 0, 0)


def test_admit_order_and_refusal_details(impl: Any) -> None:
    key = limiter(impl, rpm=1, tpm=100, daily=1_000, monthly=5_000)
    impl.admit((key,), T0, 10, 100, MONTH, DAY)
    with pytest.raises(LimitExceeded) as exc:  # rpm is checked before tpm and the ceilings
        impl.admit((key,), T0, 1_000, 10**6, MONTH, DAY)
    assert exc.value.limit == "rpm" and exc.value.index == 0 and exc.value.retry_after == pytest.approx(60.0)
    key.configure(None, 100, None, 1_000, 5_000, 60.0)  # no rpm limit now
    with pytest.raises(LimitExceeded) as exc:
        impl.admit((key,), T0, 101, 100, MONTH, DAY)  # more tokens than the window holds
    assert exc.value.limit == "tpm" and exc.value.retry_after == math.inf
    key.spend[DAY] = 800
    with pytest.raises(LimitExceeded) as exc:  # 800 spent + 100 held + 200 > 1000
        impl.admit((key,), T0, 1, 200, MONTH, DAY)
    assert (exc.value.limit, exc.value.used, exc.value.retry_after) == ("daily", 900, 0.0)
    key.spend[MONTH] = 4_850
    with pytest.raises(LimitExceeded) as exc:
        impl.admit((key,), T0, 1, 60, MONTH, DAY)
    assert (exc.value.limit, exc.value.used) == ("monthly", 4_950)
    assert key.monthly_left(MONTH) == 50 and key.monthly_left("2026-12") == 4_900
    key.configure(None, 100, None, None, None, 60.0)
    assert key.monthly_left(MONTH) is None


def test_finish_releases_the_slots_it_took(impl: Any) -> None:
    """A limit removed (or changed) while a call runs: the call gives back what it took."""
    key = limiter(impl, concurrency=1)
    slot = key.concurrency
    adm = impl.admit((key,), T0, 0, 0, MONTH, DAY)
    key.configure(None, None, None, None, None, 60.0)
    assert key.concurrency is None
    impl.finish(adm, T0, 0, None)
    assert slot.active == 0
    with pytest.raises(RuntimeError):
        impl.finish(adm, T0, 0, None)  # twice: the slot is not held any more


def test_finish_tolerates_nonsense_usage(impl: Any) -> None:
    key = limiter(impl, tpm=1000)
    impl.finish(impl.admit((key,), T0, 100, 0, MONTH, DAY), T0, 0, -5)
    assert key.tpm.remaining(T0) == 1000
    impl.finish(impl.admit((key,), T0, 100, 0, MONTH, DAY), T0, 0, 10**15)
    assert key.tpm.remaining(T0) == 0 and key.tpm.retry_after(T0, 1) > 1e6


def test_rate_headers(impl: Any) -> None:
    key = limiter(impl, rpm=60, tpm=10_000)
    impl.admit((key,), T0, 2_500, 0, MONTH, DAY)
    assert impl.rate_headers(key, T0) == [
        (b"x-ratelimit-limit-requests", b"60"),
        (b"x-ratelimit-remaining-requests", b"59"),
        (b"x-ratelimit-reset-requests", b"1s"),
        (b"x-ratelimit-limit-tokens", b"10000"),
        (b"x-ratelimit-remaining-tokens", b"7500"),
        (b"x-ratelimit-reset-tokens", b"15s"),
    ]
    assert impl.rate_headers(limiter(impl, concurrency=3), T0) == []


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0.0, b"0ms"), (0.0004, b"1ms"), (0.02, b"20ms"), (1.5, b"1.5s"), (59.99, b"60s"), (60.0, b"1m0s"), (366.2, b"6m7s")],
)
def test_reset_value(impl: Any, seconds: float, value: bytes) -> None:
    assert impl.reset_value(seconds) == value


ADMISSION_STEPS = st.lists(
    st.tuples(
        st.floats(0.0, 30.0),
        st.sampled_from(["admit", "admit", "admit", "finish", "configure", "spend"]),
        st.integers(0, 400),
        st.integers(0, 3_000),
    ),
    max_size=50,
)
LIMIT_SETS = st.tuples(
    *[st.one_of(st.none(), st.integers(1, 500)) for _ in range(3)],
    *[st.one_of(st.none(), st.integers(0, 20_000)) for _ in range(2)],
)


def admission_trace(impl: Any, key_limits: tuple, project_limits: tuple, steps: list) -> list:
    key, project = impl.Limiter(), impl.Limiter()
    key.configure(*key_limits, 60.0)
    project.configure(*project_limits, 60.0)
    now = T0
    open_calls: list[tuple[Any, int]] = []
    out: list = []
    for dt, op, tokens, amount in steps:
        now += dt
        if op == "admit":
            try:
                open_calls.append((impl.admit((key, project), now, tokens, amount, MONTH, DAY), amount))
                out.append("ok")
            except LimitExceeded as exc:
                out.append((exc.limit, exc.index, exc.used, exc.retry_after))
        elif op == "finish" and open_calls:
            adm, held = open_calls.pop(0)
            impl.finish(adm, now, held, None if tokens % 7 == 0 else tokens)
        elif op == "configure":
            (key if tokens % 2 else project).configure(
                tokens or None, amount or None, tokens % 5 or None, amount * 3 or None, None, 60.0
            )
        elif op == "spend":
            key.spend[DAY] = key.spend.get(DAY, 0) + amount
        out.append(
            (impl.rate_headers(key, now), impl.rate_headers(project, now), key.monthly_left(MONTH), key.held_nano, project.held_nano)
        )
    return out


@pytest.mark.skipif(WindowC is None, reason="meshfast_core._limits is not compiled")
@settings(max_examples=200, deadline=None)
@given(key_limits=LIMIT_SETS, project_limits=LIMIT_SETS, steps=ADMISSION_STEPS)
def test_admission_differential_py_c(key_limits: tuple, project_limits: tuple, steps: list) -> None:
    assert admission_trace(limits_py, key_limits, project_limits, steps) == admission_trace(
        LIMIT_C, key_limits, project_limits, steps
    )


@pytest.mark.skipif(WindowC is None, reason="meshfast_core._limits is not compiled")
@given(seconds=st.one_of(st.floats(-1.0, 2.0), st.floats(0.0, 1e7), st.sampled_from([0.999, 0.9995, 1.0, 59.95, 60.0])))
def test_reset_value_differential_py_c(seconds: float) -> None:
    assert limits_py.reset_value(seconds) == LIMIT_C.reset_value(seconds)
