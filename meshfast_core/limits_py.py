"""Limit windows checked on every call (pure-Python twin of ``_limits.pyx``).

:class:`Window` is a GCRA (generic cell rate algorithm) limiter: ``limit`` units per
``period`` seconds, equivalent to a token bucket of capacity ``limit`` refilled
continuously at ``limit / period`` units a second. It serves both requests per minute
(cost 1) and tokens per minute (reserve the estimate with :meth:`Window.try_take`,
correct at settlement with :meth:`Window.give_back` or :meth:`Window.take_more`).
:class:`Concurrency` caps the requests in flight.

Time is never read here: every method takes ``now``, seconds from a monotonic clock
(``time.monotonic()`` or ``loop.time()``), and the results depend on nothing else.

Rules (``N = limit``, ``P = period`` rounded to whole nanoseconds, ``T = P / N``):

* State is one number, the theoretical arrival time ``tat``, kept exactly as an integer
  in units of ``1/N`` ns, so the emission interval ``T`` is exactly ``P`` such units and
  no rounding error ever accumulates. ``now`` is rounded to the nearest nanosecond.
* ``try_take(now, c)`` succeeds iff ``c <= N`` and
  ``floor(max(tat, now) + c*T) <= now + P`` (in ns), then sets
  ``tat = max(tat, now) + c*T``. The floor is a tolerance of less than 1 ns per
  decision (never accumulated), which makes ``now = t0 + P/N`` pass even when ``P/N``
  is not a whole number of nanoseconds. A cost above ``limit`` never fits and is refused
  (``retry_after`` is ``inf``); a cost of 0 passes unless the window is overdrawn.
* ``give_back(now, u)``: ``tat = max(tat - u*T, now)`` (never above full capacity).
  ``take_more(now, u)``: ``tat = max(tat, now) + u*T``, even beyond capacity.
* ``remaining(now)``: the largest ``c`` in ``[0, N]`` that ``try_take`` would grant now.
  ``reset_after(now)``: seconds until ``remaining == N`` (``floor(tat) - now``, at least
  0). ``retry_after(now, c)``: seconds until ``try_take(c)`` would succeed
  (``floor(tat + c*T) - P - now``, at least 0).
* Bound: the units granted by ``try_take`` minus those given back, over any interval of
  length ``t``, are at most ``N + N * (t + 1 ns) / P``.
* ``set_limit(n)`` keeps ``tat`` (floored to the ns), hence the fraction of the window
  used: 5 of 10 used becomes 10 of 20 used.

:class:`Limiter` is the live limit state of one key or project: its windows, its
concurrency cap, and daily and monthly USD ceilings that count open holds.
:func:`admit` checks every limit of every limiter of a call (key first, then project)
and takes them all or none, raising :class:`~meshfast_core.exceptions.LimitExceeded`
for the first limit that does not fit; :func:`finish` gives back what a call took and
corrects the token windows to its actual usage; :func:`rate_headers` renders OpenAI's
``x-ratelimit-*`` headers.

``meshfast/store/lua/meshfast.lua`` applies the same rules in Redis (in milliseconds).
"""

from __future__ import annotations

import math
from operator import index as _index

from .exceptions import LimitExceeded

__all__ = ("Admission", "Concurrency", "Limiter", "Window", "admit", "finish", "rate_headers", "reset_value")

MAX_LIMIT = 1 << 40
MAX_UNITS = 1 << 40
MAX_PERIOD = 1e7  # seconds (~115 days)
MAX_NOW = 4e9  # seconds: now in ns stays far inside int64


def _check_limit(limit: int) -> int:
    limit = _index(limit)
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be in [1, {MAX_LIMIT}], got {limit}")
    return limit


def _bad_now(now: float) -> ValueError:
    return ValueError(f"now must be in [0, {MAX_NOW:g}] seconds, got {now!r}")


def _check_units(units: int) -> int:
    units = _index(units)
    if not 0 <= units <= MAX_UNITS:
        raise ValueError(f"units must be in [0, {MAX_UNITS}], got {units}")
    return units


class Window:
    """``limit`` units per ``period`` seconds, as a GCRA (a continuously refilled bucket)."""

    __slots__ = ("_edge", "_limit", "_p", "_period", "_tat")

    def __init__(self, limit: int, period: float = 60.0) -> None:
        self._limit = _check_limit(limit)
        if not 0.0 < period <= MAX_PERIOD:
            raise ValueError(f"period must be in (0, {MAX_PERIOD:g}] seconds, got {period!r}")
        period = float(period)
        p = math.floor(period * 1e9 + 0.5)
        if p < 1:
            raise ValueError(f"period must be at least 1 ns, got {period!r}")
        self._period = period
        self._p = p  # period in ns == the emission interval T in units of 1/limit ns
        self._tat = 0  # theoretical arrival time, in 1/limit ns
        self._edge = (p + 1) * self._limit  # grant iff new tat < now + edge

    @property
    def limit(self) -> int:
        """Units per period."""
        return self._limit

    @property
    def period(self) -> float:
        """Seconds."""
        return self._period

    def __repr__(self) -> str:
        return f"Window(limit={self._limit}, period={self._period!r})"

    def set_limit(self, limit: int) -> None:
        """Change the limit live, keeping the fraction of the window used."""
        limit = _check_limit(limit)
        self._tat = self._tat // self._limit * limit
        self._limit = limit
        self._edge = (self._p + 1) * limit

    def try_take(self, now: float, cost: int = 1) -> bool:
        """Take ``cost`` units if they fit now (True), else take nothing (False)."""
        if not 0.0 <= now <= MAX_NOW:
            raise _bad_now(now)
        if cost.__class__ is not int:
            cost = _index(cost)
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        limit = self._limit
        if cost > limit:
            return False
        now_s = math.floor(now * 1e9 + 0.5) * limit
        tat = self._tat
        if tat < now_s:
            tat = now_s
        tat += cost * self._p
        if tat < now_s + self._edge:
            self._tat = tat
            return True
        return False

    def give_back(self, now: float, units: int) -> None:
        """Return ``units`` taken earlier (never beyond full capacity)."""
        if not 0.0 <= now <= MAX_NOW:
            raise _bad_now(now)
        units = _check_units(units)
        now_s = math.floor(now * 1e9 + 0.5) * self._limit
        tat = self._tat - units * self._p
        self._tat = tat if tat > now_s else now_s

    def take_more(self, now: float, units: int) -> None:
        """Take ``units`` more, even beyond capacity (later callers wait longer)."""
        if not 0.0 <= now <= MAX_NOW:
            raise _bad_now(now)
        units = _check_units(units)
        now_s = math.floor(now * 1e9 + 0.5) * self._limit
        tat = self._tat
        if tat < now_s:
            tat = now_s
        self._tat = tat + units * self._p

    def remaining(self, now: float) -> int:
        """Units available now: the largest cost ``try_take`` would grant (0 to ``limit``)."""
        if not 0.0 <= now <= MAX_NOW:
            raise _bad_now(now)
        now_s = math.floor(now * 1e9 + 0.5) * self._limit
        tat = self._tat
        if tat < now_s:
            tat = now_s
        room = now_s + self._edge - tat
        if room <= 0:
            return 0
        n = (room - 1) // self._p
        return n if n < self._limit else self._limit

    def reset_after(self, now: float) -> float:
        """Seconds until the window is full again (``x-ratelimit-reset-*``); 0.0 if it is."""
        if not 0.0 <= now <= MAX_NOW:
            raise _bad_now(now)
        ns = self._tat // self._limit - math.floor(now * 1e9 + 0.5)
        return ns / 1e9 if ns > 0 else 0.0

    def retry_after(self, now: float, cost: int = 1) -> float:
        """Seconds until ``cost`` units would fit: 0.0 if now, ``inf`` if ``cost > limit``."""
        if not 0.0 <= now <= MAX_NOW:
            raise _bad_now(now)
        cost = _index(cost)
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        if cost > self._limit:
            return math.inf
        ns = (self._tat + cost * self._p) // self._limit - self._p - math.floor(now * 1e9 + 0.5)
        return ns / 1e9 if ns > 0 else 0.0


class Concurrency:
    """At most ``limit`` holders at a time."""

    __slots__ = ("_active", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = _check_limit(limit)
        self._active = 0

    @property
    def limit(self) -> int:
        """The cap."""
        return self._limit

    @property
    def active(self) -> int:
        """Current holders."""
        return self._active

    def __repr__(self) -> str:
        return f"Concurrency(limit={self._limit}, active={self._active})"

    def set_limit(self, limit: int) -> None:
        """Change the cap live; holders above a lowered cap keep their slot."""
        self._limit = _check_limit(limit)

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        if self._active < self._limit:
            self._active += 1
            return True
        return False

    def release(self) -> None:
        """Give a slot back; RuntimeError if none is held."""
        if self._active <= 0:
            raise RuntimeError("Concurrency.release() without a matching acquire")
        self._active -= 1


def reset_value(seconds: float) -> bytes:
    """OpenAI's reset format, as a header value: b"20ms", b"1.5s", b"6m0s"."""
    if seconds < 1:
        return b"%dms" % max(math.ceil(seconds * 1000), 0)
    if seconds < 60:
        return b"%.3gs" % seconds
    minutes, rest = divmod(math.ceil(seconds), 60)
    return b"%dm%ds" % (minutes, rest)


def _resize(window: Window | None, limit: int | None, period: float) -> Window | None:
    if not limit:
        return None
    if window is None or window.period != period:
        return Window(limit, period)
    window.set_limit(limit)
    return window


class Limiter:
    """The live limits of one key or project: requests and tokens per minute
    (:class:`Window`), concurrent calls (:class:`Concurrency`), and daily and monthly
    ceilings in nano-USD that count the owner's settled ``spend`` per period
    (``"YYYY-MM"`` / ``"YYYY-MM-DD"`` -> nano-USD) plus its open holds (``held_nano``).
    A limit that is ``None`` (or 0 for the counts) is not enforced. The compiled twin
    keeps the current month's and day's spend as running C totals that ``_records``'
    ``settle_hold`` adds to, and folds them into ``spend`` when it is read (a property);
    both count the same."""

    __slots__ = (
        "concurrency",
        "daily_nano",
        "held_nano",
        "monthly_nano",
        "rpm",
        "rpm_header",
        "spend",
        "tpm",
        "tpm_header",
    )

    def __init__(self) -> None:
        self.rpm: Window | None = None
        self.tpm: Window | None = None
        self.concurrency: Concurrency | None = None
        self.daily_nano: int | None = None
        self.monthly_nano: int | None = None
        self.spend: dict[str, int] = {}
        self.held_nano = 0
        self.rpm_header: tuple[bytes, bytes] | None = None
        self.tpm_header: tuple[bytes, bytes] | None = None

    def configure(
        self,
        rpm: int | None,
        tpm: int | None,
        concurrency: int | None,
        daily_nano: int | None,
        monthly_nano: int | None,
        period: float,
    ) -> None:
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
        # the x-ratelimit-limit-* headers change only with the limits: built here
        self.rpm_header = (b"x-ratelimit-limit-requests", b"%d" % rpm) if rpm else None
        self.tpm_header = (b"x-ratelimit-limit-tokens", b"%d" % tpm) if tpm else None

    def monthly_left(self, month: str) -> int | None:
        """nano-USD left under the monthly ceiling (settled spend and open holds counted,
        at least 0); ``None`` without a ceiling."""
        ceiling = self.monthly_nano
        if ceiling is None:
            return None
        left = ceiling - self.spend.get(month, 0) - self.held_nano
        return left if left > 0 else 0


class Admission:
    """What one admitted call took, to give back or correct when it ends."""

    __slots__ = ("concurrency", "states", "tokens")

    def __init__(self, states: tuple[Limiter, ...], tokens: int, concurrency: tuple[Concurrency, ...]) -> None:
        self.states = states
        self.tokens = tokens
        # the Concurrency objects acquired: released as they are, even if a limit changed since
        self.concurrency = concurrency


def admit(states: tuple[Limiter, ...], now: float, tokens: int, amount_nano: int, month: str, day: str) -> Admission:
    """Check every limit of every limiter (in order; per limiter: concurrency, rpm, tpm,
    daily, monthly) and take them all, or raise :class:`LimitExceeded` for the first that
    does not fit and take nothing. ``tokens`` is the reservation for the token windows,
    ``amount_nano`` the hold counted against the USD ceilings."""
    if not 0.0 <= now <= MAX_NOW:
        raise _bad_now(now)
    tokens = _check_units(tokens)
    for i, st in enumerate(states):
        c = st.concurrency
        if c is not None and c.active >= c.limit:
            raise LimitExceeded("concurrency", i, 0, 1.0)
        w = st.rpm
        if w is not None:
            wait = w.retry_after(now, 1)
            if wait > 0:
                raise LimitExceeded("rpm", i, 0, wait)
        w = st.tpm
        if w is not None:
            wait = w.retry_after(now, tokens)
            if wait > 0:
                raise LimitExceeded("tpm", i, 0, wait)
        ceiling = st.daily_nano
        if ceiling is not None:
            used = st.spend.get(day, 0) + st.held_nano
            if used + amount_nano > ceiling:
                raise LimitExceeded("daily", i, used, 0.0)
        ceiling = st.monthly_nano
        if ceiling is not None:
            used = st.spend.get(month, 0) + st.held_nano
            if used + amount_nano > ceiling:
                raise LimitExceeded("monthly", i, used, 0.0)
    took: list[Concurrency] = []
    for st in states:
        if st.concurrency is not None:
            st.concurrency.try_acquire()
            took.append(st.concurrency)
        if st.rpm is not None:
            st.rpm.try_take(now, 1)
        if st.tpm is not None:
            st.tpm.try_take(now, tokens)
        st.held_nano += amount_nano
    return Admission(states, tokens, tuple(took))


def finish(adm: Admission, now: float, amount_nano: int, actual_tokens: int | None) -> None:
    """The call ended: release its concurrency slots and held amount; correct the token
    windows to the actual usage (``None``: nothing was used, give the reservation back)."""
    if not 0.0 <= now <= MAX_NOW:
        raise _bad_now(now)
    for slot in adm.concurrency:
        slot.release()
    # an upstream's nonsense usage (negative, huge) must not fail the settlement
    used = 0 if actual_tokens is None or actual_tokens < 0 else min(_index(actual_tokens), MAX_UNITS)
    reserved = adm.tokens
    for st in adm.states:
        st.held_nano -= amount_nano
        w = st.tpm
        if w is not None:
            if used < reserved:
                w.give_back(now, reserved - used)
            elif used > reserved:
                w.take_more(now, used - reserved)


def rate_headers(st: Limiter, now: float) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the
    limiter's windows (none for a window it does not have)."""
    out: list[tuple[bytes, bytes]] = []
    w = st.rpm
    if w is not None:
        out.append(st.rpm_header)  # type: ignore[arg-type]
        out.append((b"x-ratelimit-remaining-requests", b"%d" % w.remaining(now)))
        out.append((b"x-ratelimit-reset-requests", reset_value(w.reset_after(now))))
    w = st.tpm
    if w is not None:
        out.append(st.tpm_header)  # type: ignore[arg-type]
        out.append((b"x-ratelimit-remaining-tokens", b"%d" % w.remaining(now)))
        out.append((b"x-ratelimit-reset-tokens", reset_value(w.reset_after(now))))
    return out
