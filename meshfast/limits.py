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


def reset_value(seconds: float) -> bytes:
    """OpenAI's reset format, as a header value: b"20ms", b"1.5s", b"6m0s"."""
    if seconds < 1:
        return b"%dms" % max(math.ceil(seconds * 1000), 0)
    if seconds < 60:
        return b"%.3gs" % seconds
    minutes, rest = divmod(int(math.ceil(seconds)), 60)
    return b"%dm%ds" % (minutes, rest)


class LimitState:
    """The live limit state of one key or project."""

    __slots__ = ("owner", "limits", "rpm", "tpm", "concurrency", "spend", "held_nano", "rpm_header", "tpm_header")

    def __init__(self, owner: str, limits: Limits, period: float) -> None:
        self.owner = owner  # "key key_..." or "project proj_...", for messages
        self.limits = limits
        self.rpm = Window(limits.rpm, period) if limits.rpm else None
        self.tpm = Window(limits.tpm, period) if limits.tpm else None
        self.concurrency = Concurrency(limits.concurrency) if limits.concurrency else None
        self.spend: dict[str, int] = {}  # "YYYY-MM" / "YYYY-MM-DD" -> nano-USD settled
        self.held_nano = 0  # open holds of calls admitted under this owner
        self._limit_headers()

    def _limit_headers(self) -> None:
        """The x-ratelimit-limit-* headers change only with the limits: built once."""
        lim = self.limits
        self.rpm_header = (b"x-ratelimit-limit-requests", b"%d" % lim.rpm) if lim.rpm else None
        self.tpm_header = (b"x-ratelimit-limit-tokens", b"%d" % lim.tpm) if lim.tpm else None

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
        self._limit_headers()

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


def refusal(limit: str, st_owner: str, lim: Limits, tokens: int, amount_nano: int, used_nano: int, retry_after: float) -> errors.MeshError:
    """The 429 for one refused limit (``limit``: concurrency, rpm, tpm, daily or monthly)
    of one owner ("key mesh_live_AbCd..." or "project 'name'"); every store words it so."""
    if limit == "concurrency":
        return _refuse(
            errors.ConcurrencyLimited,
            f"Too many concurrent requests for this {st_owner}: the limit is {lim.concurrency}.",
            1,
        )
    if limit == "rpm":
        return _refuse(
            errors.RateLimited, f"Rate limit reached for this {st_owner}: {lim.rpm} requests per minute.", retry_after
        )
    if limit == "tpm":
        if lim.tpm is not None and tokens > lim.tpm:
            message = (
                f"This request may use up to {tokens} tokens (prompt estimate plus max output), more than the "
                f"{lim.tpm} tokens per minute allowed for this {st_owner}. Lower max_tokens."
            )
        else:
            message = f"Token rate limit reached for this {st_owner}: {lim.tpm} tokens per minute."
        return _refuse(errors.TokensLimited, message, retry_after)
    daily = limit == "daily"
    ceiling = lim.daily_usd_nano if daily else lim.monthly_usd_nano
    assert ceiling is not None
    return _refuse(
        errors.DailyBudgetExceeded if daily else errors.MonthlyBudgetExceeded,
        f"{'Daily' if daily else 'Monthly'} budget of ${nano_to_usd(ceiling)} "
        f"for this {st_owner} would be exceeded: ${nano_to_usd(used_nano)} spent or held "
        f"{'today' if daily else 'this month'}, this call may cost up to ${nano_to_usd(amount_nano)}.",
        _seconds_to_next_day() if daily else _seconds_to_next_month(),
    )


def insufficient_balance(amount_nano: int, balance_nano: int, held_nano: int) -> errors.InsufficientBalance:
    """The 402 for a hold the available balance (balance minus open holds) cannot cover."""
    available = balance_nano - held_nano
    return errors.InsufficientBalance(
        f"Insufficient balance: this call may cost up to ${nano_to_usd(amount_nano)} "
        f"but the account has ${nano_to_usd(max(available, 0))} available "
        f"(balance ${nano_to_usd(balance_nano)}, held by calls in flight ${nano_to_usd(held_nano)}). "
        "Top up the account to continue."
    )


def admit(states: tuple[LimitState, ...], now: float, tokens: int, amount_nano: int, month: str, day: str) -> Admission:
    """Check every limit of every state (key first, then project); take them all or none.

    Raises a 429 error with ``Retry-After`` and the code naming the limit."""
    for st in states:
        lim = st.limits
        if st.concurrency is not None and st.concurrency.active >= st.concurrency.limit:
            raise refusal("concurrency", st.owner, lim, tokens, amount_nano, 0, 1)
        if st.rpm is not None and st.rpm.retry_after(now, 1) > 0:
            raise refusal("rpm", st.owner, lim, tokens, amount_nano, 0, st.rpm.retry_after(now, 1))
        if st.tpm is not None and st.tpm.retry_after(now, tokens) > 0:
            raise refusal("tpm", st.owner, lim, tokens, amount_nano, 0, st.tpm.retry_after(now, tokens))
        for ceiling, bucket, name in ((lim.daily_usd_nano, day, "daily"), (lim.monthly_usd_nano, month, "monthly")):
            if ceiling is None:
                continue
            used = st.spend.get(bucket, 0) + st.held_nano
            if used + amount_nano > ceiling:
                raise refusal(name, st.owner, lim, tokens, amount_nano, used, 0)
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
    rpm, tpm = st.rpm, st.tpm
    if rpm is not None:
        out += (
            st.rpm_header,
            (b"x-ratelimit-remaining-requests", b"%d" % rpm.remaining(now)),
            (b"x-ratelimit-reset-requests", reset_value(rpm.reset_after(now))),
        )
    if tpm is not None:
        out += (
            st.tpm_header,
            (b"x-ratelimit-remaining-tokens", b"%d" % tpm.remaining(now)),
            (b"x-ratelimit-reset-tokens", reset_value(tpm.reset_after(now))),
        )
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
