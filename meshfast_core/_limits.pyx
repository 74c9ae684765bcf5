# cython: language_level=3, cdivision=True
# distutils: extra_compile_args = -ffp-contract=off
"""Limit windows checked on every call (compiled twin of ``limits_py.py``).

See ``limits_py.py`` for the rules; both behave identically.
"""

cimport cython
from cpython.long cimport PyLong_CheckExact
from libc.math cimport floor

import math
from operator import index as _index

__all__ = ("Concurrency", "Window")

# tat is kept in units of 1/limit ns: now_ns * limit overflows int64 for ordinary
# limits, so state and intermediates are 128-bit. Cython sees a long long; every
# division below has non-negative operands, so C truncation equals Python's floor.
cdef extern from *:
    """
    typedef __int128 mf_i128;
    """
    ctypedef long long i128 "mf_i128"

cdef long long MAX_LIMIT = 1 << 40
cdef long long MAX_UNITS = 1 << 40
cdef double MAX_PERIOD = 1e7  # seconds (~115 days)
cdef double MAX_NOW = 4e9  # seconds: now in ns stays far inside int64
cdef double _INF = math.inf


cdef inline long long _check_limit(object limit) except -1:
    limit = _index(limit)
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be in [1, {MAX_LIMIT}], got {limit}")
    return limit


cdef inline int _check_now(double now) except -1:
    # also refuses NaN
    if not (0.0 <= now <= MAX_NOW):
        raise ValueError(f"now must be in [0, {MAX_NOW:g}] seconds, got {now!r}")
    return 0


cdef inline long long _as_int(object x) except? -1:
    # an int, or an object with __index__ (a float is a TypeError, as in the twin)
    if not PyLong_CheckExact(x):
        x = _index(x)
    return x


cdef inline long long _check_units(object value) except -1:
    cdef long long units = _as_int(value)
    if not 0 <= units <= MAX_UNITS:
        raise ValueError(f"units must be in [0, {MAX_UNITS}], got {units}")
    return units


cdef inline long long _ns(double now) noexcept:
    # round half up, the same double operations as the twin's floor(now * 1e9 + 0.5)
    return <long long>floor(now * 1e9 + 0.5)


@cython.auto_pickle(False)
@cython.final
cdef class Window:
    """``limit`` units per ``period`` seconds, as a GCRA (a continuously refilled bucket)."""

    cdef long long _limit
    cdef double _period
    cdef long long _p  # period in ns == the emission interval in 1/limit ns
    cdef i128 _tat  # theoretical arrival time in 1/limit ns; >= 0
    cdef i128 _edge  # (_p + 1) * _limit: grant iff the new tat < now + _edge

    def __init__(self, limit, double period=60.0):
        self._limit = _check_limit(limit)
        if not (0.0 < period <= MAX_PERIOD):
            raise ValueError(f"period must be in (0, {MAX_PERIOD:g}] seconds, got {period!r}")
        cdef long long p = _ns(period)
        if p < 1:
            raise ValueError(f"period must be at least 1 ns, got {period!r}")
        self._period = period
        self._p = p
        self._tat = 0
        self._edge = <i128>(p + 1) * self._limit

    @property
    def limit(self):
        """Units per period."""
        return self._limit

    @property
    def period(self):
        """Seconds."""
        return self._period

    def __repr__(self):
        return f"Window(limit={self._limit}, period={self._period!r})"

    def set_limit(self, limit):
        """Change the limit live, keeping the fraction of the window used."""
        cdef long long n = _check_limit(limit)
        self._tat = self._tat / self._limit * n
        self._limit = n
        self._edge = <i128>(self._p + 1) * n

    def try_take(self, double now, object cost=1):
        """Take ``cost`` units if they fit now (True), else take nothing (False)."""
        _check_now(now)
        cdef long long c = _as_int(cost)
        if c < 0:
            raise ValueError(f"cost must be >= 0, got {c}")
        if c > self._limit:
            return False
        cdef i128 now_s = <i128>_ns(now) * self._limit
        cdef i128 tat = self._tat
        if tat < now_s:
            tat = now_s
        tat += <i128>c * self._p
        if tat < now_s + self._edge:
            self._tat = tat
            return True
        return False

    def give_back(self, double now, object units):
        """Return ``units`` taken earlier (never beyond full capacity)."""
        _check_now(now)
        cdef long long u = _check_units(units)
        cdef i128 now_s = <i128>_ns(now) * self._limit
        cdef i128 tat = self._tat - <i128>u * self._p
        self._tat = tat if tat > now_s else now_s

    def take_more(self, double now, object units):
        """Take ``units`` more, even beyond capacity (later callers wait longer)."""
        _check_now(now)
        cdef long long u = _check_units(units)
        cdef i128 now_s = <i128>_ns(now) * self._limit
        cdef i128 tat = self._tat
        if tat < now_s:
            tat = now_s
        self._tat = tat + <i128>u * self._p

    def remaining(self, double now):
        """Units available now: the largest cost ``try_take`` would grant (0 to ``limit``)."""
        _check_now(now)
        cdef i128 now_s = <i128>_ns(now) * self._limit
        cdef i128 tat = self._tat
        if tat < now_s:
            tat = now_s
        cdef i128 room = now_s + self._edge - tat
        if room <= 0:
            return 0
        cdef i128 n = (room - 1) / self._p
        return <long long>n if n < self._limit else self._limit

    def reset_after(self, double now):
        """Seconds until the window is full again (``x-ratelimit-reset-*``); 0.0 if it is."""
        _check_now(now)
        cdef long long ns = <long long>(self._tat / self._limit) - _ns(now)
        return ns / 1e9 if ns > 0 else 0.0

    def retry_after(self, double now, object cost=1):
        """Seconds until ``cost`` units would fit: 0.0 if now, ``inf`` if ``cost > limit``."""
        _check_now(now)
        cdef long long c = _as_int(cost)
        if c < 0:
            raise ValueError(f"cost must be >= 0, got {c}")
        if c > self._limit:
            return _INF
        cdef long long ns = (
            <long long>((self._tat + <i128>c * self._p) / self._limit) - self._p - _ns(now)
        )
        return ns / 1e9 if ns > 0 else 0.0


@cython.auto_pickle(False)
@cython.final
cdef class Concurrency:
    """At most ``limit`` holders at a time."""

    cdef long long _limit
    cdef long long _active

    def __init__(self, limit):
        self._limit = _check_limit(limit)
        self._active = 0

    @property
    def limit(self):
        """The cap."""
        return self._limit

    @property
    def active(self):
        """Current holders."""
        return self._active

    def __repr__(self):
        return f"Concurrency(limit={self._limit}, active={self._active})"

    def set_limit(self, limit):
        """Change the cap live; holders above a lowered cap keep their slot."""
        self._limit = _check_limit(limit)

    def try_acquire(self):
        """Take a slot if one is free."""
        if self._active < self._limit:
            self._active += 1
            return True
        return False

    def release(self):
        """Give a slot back; RuntimeError if none is held."""
        if self._active <= 0:
            raise RuntimeError("Concurrency.release() without a matching acquire")
        self._active -= 1
