"""Per-key and per-project limits: requests and tokens per minute, concurrency, and
daily and monthly USD ceilings that count open holds.

The windows are meshfast_core.limits (compiled GCRA); this module holds one
:class:`LimitState` per key and per project and decides admission for a call in one
synchronous step (the embedded store calls it inside ``place_hold``, so admission,
hold and balance check are one atomic operation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meshfast import errors
from meshfast.money import nano_to_usd
from meshfast.store.base import Limits
from meshfast_core.limits import Concurrency, Window


def _duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 0)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    return f"{minutes}m{rest}s"


class LimitState:
    """The live limit state of one key or project."""

    __slots__ = ("owner", "limits", "rpm", "tpm", "concurrency", "spend", "held_nano")

    def __init__(self, owner: str, limits: Limits, period: float) -> None:
        self.owner = owner  # "key key_..." or "project proj_...", for messages
        self.limits = limits
        self.rpm = Window(limits.rpm, period) if limits.rpm else None
        self.tpm = Window(limits.tpm, period) if limits.tpm else None
        self.concurrency = Concurrency(limits.concurrency) if limits.concurrency else None
        self.spend: dict[str, int] = {}  # "YYYY-MM" / "YYYY-MM-DD" -> nano-USD settled
        self.held_nano = 0  # open holds of calls admitted under this owner

    def update(self, limits: Limits, period: float) -> None:
        """New limits, live: windows keep their used fraction, counters their count."""
        self.limits = limits
        self.rpm = _resize(self.rpm, limits.rpm, period)
        self.tpm = _resize(self.tpm, limits.tpm, period)
        if limits.concurrency:
            if self.concurrency is None:
                self.concurrency = Concurrency(limits.concurrency)
            else:
                self.concurrency.set_limit(limits.concurrency)
        else:
            self.concurrency = None

    @property
    def active(self) -> bool:
        lim = self.limits
        return bool(lim.rpm or lim.tpm or lim.concurrency or lim.monthly_usd_nano or lim.daily_usd_nano)


def _resize(window: Window | None, limit: int | None, period: float) -> Window | None:
    if not limit:
        return None
    if window is None or window.period != period:
        return Window(limit, period)
    window.set_limit(limit)
    return window


def _refuse(cls: type[errors.MeshError], message: str, retry_after: float) -> errors.MeshError:
    retry = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 3600
    return cls(message, headers=[(b"retry-after", str(retry).encode())])


@dataclass(slots=True)
class Admission:
    """What one admitted call took, to give back or correct when it ends."""

    states: tuple[LimitState, ...]
    tokens: int
    # the Concurrency objects acquired: released as they are, even if a limit changed since
    concurrency: tuple[Concurrency, ...]


def admit(states: tuple[LimitState, ...], now: float, tokens: int, amount_nano: int, month: str, day: str) -> Admission:
    """Check every limit of every state (key first, then project); take them all or none.

    Raises a 429 error with ``Retry-After`` and the code naming the limit."""
    for st in states:
        lim = st.limits
        if st.concurrency is not None and st.concurrency.active >= st.concurrency.limit:
            raise _refuse(
                errors.ConcurrencyLimited,
                f"Too many concurrent requests for this {st.owner}: the limit is {lim.concurrency}.",
                1,
            )
        if st.rpm is not None and st.rpm.retry_after(now, 1) > 0:
            raise _refuse(
                errors.RateLimited,
                f"Rate limit reached for this {st.owner}: {lim.rpm} requests per minute.",
                st.rpm.retry_after(now, 1),
            )
        if st.tpm is not None and st.tpm.retry_after(now, tokens) > 0:
            if tokens > st.tpm.limit:
                message = (
                    f"This request may use up to {tokens} tokens (prompt estimate plus max output), more than the "
                    f"{lim.tpm} tokens per minute allowed for this {st.owner}. Lower max_tokens."
                )
            else:
                message = f"Token rate limit reached for this {st.owner}: {lim.tpm} tokens per minute."
            raise _refuse(errors.TokensLimited, message, st.tpm.retry_after(now, tokens))
        for ceiling, bucket, cls, name, period, reset in (
            (lim.daily_usd_nano, day, errors.DailyBudgetExceeded, "Daily", "today", _seconds_to_next_day),
            (lim.monthly_usd_nano, month, errors.MonthlyBudgetExceeded, "Monthly", "this month", _seconds_to_next_month),
        ):
            if ceiling is None:
                continue
            used = st.spend.get(bucket, 0) + st.held_nano
            if used + amount_nano > ceiling:
                raise _refuse(
                    cls,
                    f"{name} budget of ${nano_to_usd(ceiling)} "
                    f"for this {st.owner} would be exceeded: ${nano_to_usd(used)} spent or held {period}, "
                    f"this call may cost up to ${nano_to_usd(amount_nano)}.",
                    reset(),
                )
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
    """The call ended: release concurrency and the held amount; correct the token windows to
    the actual usage (``None``: nothing was used, give the reservation back)."""
    for slot in adm.concurrency:
        slot.release()
    used = 0 if actual_tokens is None else actual_tokens
    for st in adm.states:
        st.held_nano -= amount_nano
        if st.tpm is not None:
            if used < adm.tokens:
                st.tpm.give_back(now, adm.tokens - used)
            elif used > adm.tokens:
                st.tpm.take_more(now, used - adm.tokens)


def rate_headers(st: LimitState | None, now: float) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-* headers (OpenAI's names) for the key's (else the project's) windows."""
    if st is None:
        return []
    out: list[tuple[bytes, bytes]] = []
    if st.rpm is not None:
        out += [
            (b"x-ratelimit-limit-requests", str(st.rpm.limit).encode()),
            (b"x-ratelimit-remaining-requests", str(st.rpm.remaining(now)).encode()),
            (b"x-ratelimit-reset-requests", _duration(st.rpm.reset_after(now)).encode()),
        ]
    if st.tpm is not None:
        out += [
            (b"x-ratelimit-limit-tokens", str(st.tpm.limit).encode()),
            (b"x-ratelimit-remaining-tokens", str(st.tpm.remaining(now)).encode()),
            (b"x-ratelimit-reset-tokens", _duration(st.tpm.reset_after(now)).encode()),
        ]
    return out


def _seconds_to_next_day() -> float:
    import time

    now = time.time()
    return 86400 - now % 86400


def _seconds_to_next_month() -> float:
    import calendar
    import time

    now = time.time()
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now
