"""Micro-benchmarks of the limit windows: compiled vs pure-Python twin (no timing asserts).

Each round is 1000 calls through a cached bound method, so the per-call figure is the
round time / 1000 (the Python loop, ~15-20 ns a call, is included in both).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshfast_core.limits import ConcurrencyC, ConcurrencyPy, WindowC, WindowPy

CALLS = 1000
_NOT_COMPILED = pytest.mark.skipif(WindowC is None, reason="meshfast_core._limits is not compiled")
WINDOWS = [pytest.param(WindowPy, id="py"), pytest.param(WindowC, id="c", marks=_NOT_COMPILED)]
CONCURRENCIES = [
    pytest.param(ConcurrencyPy, id="py"),
    pytest.param(ConcurrencyC, id="c", marks=_NOT_COMPILED),
]
# a monotonic clock reading a few days after boot, advancing 50 us a call
TIMES = [345_600.0 + i * 50e-6 for i in range(CALLS)]


def _takes(w: object, cost: int) -> Callable[[], int]:
    take = w.try_take  # type: ignore[attr-defined]
    times = TIMES

    def run() -> int:
        granted = 0
        for now in times:
            if take(now, cost):
                granted += 1
        return granted

    return run


@pytest.mark.parametrize("cls", WINDOWS)
def test_window_try_take_granted(benchmark, cls: type) -> None:
    benchmark.group = f"limits: Window.try_take, granted (limit 1e12/min), x{CALLS}"
    w = cls(10**12, 60.0)  # never runs out over the benchmark's rounds
    assert benchmark(_takes(w, 1)) == CALLS


@pytest.mark.parametrize("cls", WINDOWS)
def test_window_try_take_refused(benchmark, cls: type) -> None:
    benchmark.group = f"limits: Window.try_take, refused (TPM 150M/min, overdrawn), x{CALLS}"
    w = cls(150_000_000, 60.0)
    w.take_more(TIMES[0], 10**12)
    assert benchmark(_takes(w, 500)) == 0


@pytest.mark.parametrize("cls", CONCURRENCIES)
def test_concurrency_acquire_release(benchmark, cls: type) -> None:
    benchmark.group = f"limits: Concurrency.try_acquire + release, x{CALLS}"
    c = cls(64)
    acquire, release = c.try_acquire, c.release

    def run() -> None:
        for _ in range(CALLS):
            if acquire():
                release()

    benchmark(run)
    assert c.active == 0
