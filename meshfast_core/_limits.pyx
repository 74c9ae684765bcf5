# cython: language_level=3, cdivision=True
# distutils: extra_compile_args = -ffp-contract=off
"""Limit windows checked on every call (compiled twin of ``limits_py.py``).

See ``limits_py.py`` for the rules; both behave identically.
"""

cimport cython
from cpython.long cimport PyLong_CheckExact
from libc.math cimport ceil, floor

from cpython.bytes cimport PyBytes_FromFormat
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

import math
from operator import index as _index

from .exceptions import LimitExceeded

__all__ = ("Admission", "Concurrency", "Limiter", "Window", "admit", "finish", "rate_headers", "reset_value")

# tat is kept in units of 1/limit ns: now_ns * limit overflows int64 for ordinary
# limits, so state and intermediates are 128-bit (``i128``, declared in _limits.pxd with
# the classes' C fields). Cython sees a long long; every division below has non-negative
# operands, so C truncation equals Python's floor.

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


cdef inline long long _check_cost(object cost) except -1:
    cdef long long c = _as_int(cost)
    if c < 0:
        raise ValueError(f"cost must be >= 0, got {c}")
    return c


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

    # C fields: see _limits.pxd

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

    # -- C-level cores (``now_ns``: a checked ``now`` in ns; costs checked by the caller)
    cdef bint _take(self, long long now_ns, long long c) noexcept:
        if c > self._limit:
            return False
        cdef i128 now_s = <i128>now_ns * self._limit
        cdef i128 tat = self._tat
        if tat < now_s:
            tat = now_s
        tat += <i128>c * self._p
        if tat < now_s + self._edge:
            self._tat = tat
            return True
        return False

    cdef void _give(self, long long now_ns, long long u) noexcept:
        cdef i128 now_s = <i128>now_ns * self._limit
        cdef i128 tat = self._tat - <i128>u * self._p
        self._tat = tat if tat > now_s else now_s

    cdef void _more(self, long long now_ns, long long u) noexcept:
        cdef i128 now_s = <i128>now_ns * self._limit
        cdef i128 tat = self._tat
        if tat < now_s:
            tat = now_s
        self._tat = tat + <i128>u * self._p

    cdef long long _remaining(self, long long now_ns) noexcept:
        cdef i128 now_s = <i128>now_ns * self._limit
        cdef i128 tat = self._tat
        if tat < now_s:
            tat = now_s
        cdef i128 room = now_s + self._edge - tat
        if room <= 0:
            return 0
        cdef i128 n = (room - 1) / self._p
        return <long long>n if n < self._limit else self._limit

    cdef double _reset(self, long long now_ns) noexcept:
        cdef i128 ns = self._tat / self._limit - now_ns  # 128-bit: an overdrawn window can be far ahead
        return <double>ns / 1e9 if ns > 0 else 0.0

    cdef double _retry(self, long long now_ns, long long c) noexcept:
        if c > self._limit:
            return _INF
        cdef i128 ns = (self._tat + <i128>c * self._p) / self._limit - self._p - now_ns
        return <double>ns / 1e9 if ns > 0 else 0.0

    # -- Python API
    def try_take(self, double now, object cost=1):
        """Take ``cost`` units if they fit now (True), else take nothing (False)."""
        _check_now(now)
        return self._take(_ns(now), _check_cost(cost))

    def give_back(self, double now, object units):
        """Return ``units`` taken earlier (never beyond full capacity)."""
        _check_now(now)
        self._give(_ns(now), _check_units(units))

    def take_more(self, double now, object units):
        """Take ``units`` more, even beyond capacity (later callers wait longer)."""
        _check_now(now)
        self._more(_ns(now), _check_units(units))

    def remaining(self, double now):
        """Units available now: the largest cost ``try_take`` would grant (0 to ``limit``)."""
        _check_now(now)
        return self._remaining(_ns(now))

    def reset_after(self, double now):
        """Seconds until the window is full again (``x-ratelimit-reset-*``); 0.0 if it is."""
        _check_now(now)
        return self._reset(_ns(now))

    def retry_after(self, double now, object cost=1):
        """Seconds until ``cost`` units would fit: 0.0 if now, ``inf`` if ``cost > limit``."""
        _check_now(now)
        return self._retry(_ns(now), _check_cost(cost))


@cython.auto_pickle(False)
@cython.final
cdef class Concurrency:
    """At most ``limit`` holders at a time."""

    # C fields: see _limits.pxd

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


def reset_value(double seconds):
    """OpenAI's reset format, as a header value: b"20ms", b"1.5s", b"6m0s"."""
    return _reset_value(seconds)


cdef object _reset_value(double seconds):
    cdef double ms
    if seconds < 1:
        ms = ceil(seconds * 1000)
        return PyBytes_FromFormat("%ldms", <long>ms if ms > 0 else 0)
    if seconds < 60:
        return b"%.3gs" % seconds
    minutes, rest = divmod(math.ceil(seconds), 60)
    return b"%dm%ds" % (minutes, rest)


cdef Window _resize(Window window, object limit, double period):
    if not limit:
        return None
    if window is None or window._period != period:
        return Window(limit, period)
    window.set_limit(limit)
    return window


@cython.auto_pickle(False)
cdef class Limiter:
    """The live limits of one key or project (see ``limits_py.Limiter``)."""

    # C fields: see _limits.pxd. ``spend`` is ``_spend`` with the running totals of the
    # current month and day, which ``_records.settle_hold`` adds to in C, folded in.

    def __init__(self):
        self.rpm = None
        self.tpm = None
        self.concurrency = None
        self.daily_nano = None
        self.monthly_nano = None
        self._spend = {}
        self._cur_month = self._cur_day = None
        self._month_total = self._day_total = 0
        self.held_nano = 0
        self.rpm_header = None
        self.tpm_header = None

    @property
    def spend(self):
        """Settled spend by bucket (``"YYYY-MM"`` / ``"YYYY-MM-DD"`` -> nano-USD): the
        dict itself, with the running totals folded in first (so it may be changed)."""
        fold_limiter(self)
        return self._spend

    @spend.setter
    def spend(self, dict spend not None):
        self._spend = spend
        self._cur_month = self._cur_day = None
        self._month_total = self._day_total = 0

    def configure(self, rpm, tpm, concurrency, daily_nano, monthly_nano, double period):
        """Set the limits, live: windows keep their used fraction, the cap its holders."""
        self.rpm = _resize(self.rpm, rpm, period)
        self.tpm = _resize(self.tpm, tpm, period)
        if concurrency:
            if self.concurrency is None:
                self.concurrency = Concurrency(concurrency)
            else:
                self.concurrency.set_limit(concurrency)
        else:
            self.concurrency = None
        self.daily_nano = daily_nano
        self.monthly_nano = monthly_nano
        self.rpm_header = (b"x-ratelimit-limit-requests", b"%d" % rpm) if rpm else None
        self.tpm_header = (b"x-ratelimit-limit-tokens", b"%d" % tpm) if tpm else None

    def monthly_left(self, str month):
        """nano-USD left under the monthly ceiling (at least 0); ``None`` without one."""
        if self.monthly_nano is None:
            return None
        left = self.monthly_nano - _spent(self, month) - self.held_nano
        return left if left > 0 else 0


cdef int fold_limiter(Limiter st) except -1:
    # the running totals into ``_spend`` (their buckets made even for a total of 0, as the
    # dict path would have); none pending after
    cdef str bucket = st._cur_month
    if bucket is not None:
        spend_add(st._spend, bucket, st._month_total)
        st._cur_month = None
        st._month_total = 0
    bucket = st._cur_day
    if bucket is not None:
        spend_add(st._spend, bucket, st._day_total)
        st._cur_day = None
        st._day_total = 0
    return 0


cdef object _spent(Limiter st, str bucket):
    # the settled spend of a bucket: the dict's, plus the running total of that bucket
    cdef PyObject* v = PyDict_GetItem(st._spend, bucket)
    spent = 0 if v is NULL else <object>v
    if st._cur_day is not None and (st._cur_day is bucket or st._cur_day == bucket):
        spent = spent + st._day_total
    if st._cur_month is not None and (st._cur_month is bucket or st._cur_month == bucket):
        spent = spent + st._month_total  # both: only for a month named like a day
    return spent


@cython.auto_pickle(False)
@cython.final
cdef class Admission:
    """What one admitted call took, to give back or correct when it ends."""

    cdef readonly tuple states
    cdef readonly object tokens
    # the Concurrency objects acquired: released as they are, even if a limit changed since
    cdef readonly tuple concurrency

    def __init__(self, tuple states, tokens, tuple concurrency):
        self.states = states
        self.tokens = tokens
        self.concurrency = concurrency


def admit(tuple states, double now, object tokens, object amount_nano, str month, str day):
    """Check every limit of every limiter and take them all, or raise LimitExceeded for
    the first that does not fit and take nothing (see ``limits_py.admit``)."""
    _check_now(now)
    cdef long long t = _check_units(tokens)
    cdef long long now_ns = _ns(now)
    cdef Limiter st
    cdef Concurrency c
    cdef double wait
    cdef Py_ssize_t i
    cdef Py_ssize_t n = len(states)
    cdef int acquired = 0
    for i in range(n):
        st = <Limiter?>states[i]
        c = st.concurrency
        if c is not None:
            acquired += 1
            if c._active >= c._limit:
                raise LimitExceeded("concurrency", i, 0, 1.0)
        if st.rpm is not None:
            wait = st.rpm._retry(now_ns, 1)
            if wait > 0:
                raise LimitExceeded("rpm", i, 0, wait)
        if st.tpm is not None:
            wait = st.tpm._retry(now_ns, t)
            if wait > 0:
                raise LimitExceeded("tpm", i, 0, wait)
        if st.daily_nano is not None:
            used = _spent(st, day) + st.held_nano
            if used + amount_nano > st.daily_nano:
                raise LimitExceeded("daily", i, used, 0.0)
        if st.monthly_nano is not None:
            used = _spent(st, month) + st.held_nano
            if used + amount_nano > st.monthly_nano:
                raise LimitExceeded("monthly", i, used, 0.0)
    took = [] if acquired else None
    for i in range(n):
        st = <Limiter>states[i]
        c = st.concurrency
        if c is not None:
            c._active += 1
            took.append(c)
        if st.rpm is not None:
            st.rpm._take(now_ns, 1)
        if st.tpm is not None:
            st.tpm._take(now_ns, t)
        st.held_nano = st.held_nano + amount_nano
    return Admission(states, t, tuple(took) if acquired else ())


def finish(Admission adm, double now, object amount_nano, object actual_tokens):
    """The call ended: release its slots and held amount, correct the token windows to the
    actual usage (``None``: nothing used) (see ``limits_py.finish``)."""
    _check_now(now)
    cdef long long now_ns = _ns(now)
    cdef Concurrency c
    for slot in adm.concurrency:
        c = <Concurrency>slot
        if c._active <= 0:
            raise RuntimeError("Concurrency.release() without a matching acquire")
        c._active -= 1
    cdef long long used
    if actual_tokens is None or actual_tokens < 0:
        used = 0
    elif actual_tokens > MAX_UNITS:
        used = MAX_UNITS
    else:
        used = _as_int(actual_tokens)
    cdef long long reserved = adm.tokens
    cdef Limiter st
    for s in adm.states:
        st = <Limiter>s
        st.held_nano = st.held_nano - amount_nano
        if st.tpm is not None:
            if used < reserved:
                st.tpm._give(now_ns, reserved - used)
            elif used > reserved:
                st.tpm._more(now_ns, used - reserved)


def rate_headers(Limiter st, double now):
    """OpenAI's ``x-ratelimit-*`` headers for the limiter's windows (see ``limits_py``)."""
    _check_now(now)
    cdef long long now_ns = _ns(now)
    cdef list out = []
    cdef Window w = st.rpm
    if w is not None:
        out.append(st.rpm_header)
        out.append((b"x-ratelimit-remaining-requests", PyBytes_FromFormat("%ld", <long>w._remaining(now_ns))))
        out.append((b"x-ratelimit-reset-requests", _reset_value(w._reset(now_ns))))
    w = st.tpm
    if w is not None:
        out.append(st.tpm_header)
        out.append((b"x-ratelimit-remaining-tokens", PyBytes_FromFormat("%ld", <long>w._remaining(now_ns))))
        out.append((b"x-ratelimit-reset-tokens", _reset_value(w._reset(now_ns))))
    return out
