"""Per-key and per-project limits: requests and tokens per minute, concurrency, and
daily and monthly USD ceilings that count open holds.

The checks are meshfast_core.limits (compiled, with its Python twin): GCRA windows, the
concurrency cap, the USD ceilings, admission of a call over a key and its project, and the
``x-ratelimit-*`` headers. This module adds whose limits they are (:class:`LimitState`,
one per key and per project) and the OpenAI-shaped 429 for a refusal. The embedded store
calls :func:`admit` inside ``place_hold``, so admission, hold and balance check are one
atomic operation.
"""

from __future__ import annotations

import math
from typing import Any

from meshfast import errors
from meshfast.catalogue import privacy_rank
from meshfast.config import PRIVACY_CLASSES
from meshfast.money import nano_to_usd
from meshfast.store.base import Limits
from meshfast_core.limits import (
    Admission,
    Limiter,
    LimitExceeded,
    finish,
    rate_headers,
    reset_value,
)
from meshfast_core.limits import admit as _admit

__all__ = (
    "Admission",
    "LimitState",
    "admit",
    "finish",
    "insufficient_balance",
    "rate_headers",
    "refusal",
    "reset_value",
    "privacy_table",
    "served_privacy",
)


class LimitState(Limiter):
    """The live limit state of one key or project: :class:`meshfast_core.limits.Limiter`
    (windows, cap, ceilings, spend and holds) plus whose it is and its limits."""

    __slots__ = ("limits", "owner", "plain")

    def __init__(self, owner: str, limits: Limits, period: float) -> None:
        super().__init__()
        self.owner = owner  # "key key_..." or "project proj_...", for messages
        self.update(limits, period)

    def update(self, limits: Limits, period: float) -> None:
        """New limits, live: windows keep their used fraction, counters their count."""
        self.limits = limits
        self.configure(
            limits.rpm, limits.tpm, limits.concurrency, limits.daily_usd_nano, limits.monthly_usd_nano, period
        )
        # no limit to check or count: a hold of a key whose key and project are both plain
        # skips admission (the stores' plain path)
        self.plain = (
            self.rpm is None
            and self.tpm is None
            and self.concurrency is None
            and self.daily_nano is None
            and self.monthly_nano is None
        )


def served_privacy(asked: Any, key_limits: Limits, project_limits: Limits) -> Any:
    """The privacy class a call is served under: what it asked for (``""``: nothing), else
    the key's or project's default, raised to the higher of the key's and project's minimum
    (never lowered). An unknown class is returned as asked: the router answers 400."""
    privacy = asked or key_limits.privacy_default or project_limits.privacy_default or "standard"
    if privacy not in PRIVACY_CLASSES:
        return privacy
    if not (key_limits.privacy_min or project_limits.privacy_min):
        return privacy  # the common case: no minimum to raise it to
    for floor in (key_limits.privacy_min, project_limits.privacy_min):
        if floor and privacy_rank(floor) > privacy_rank(privacy):
            privacy = floor
    return privacy


def privacy_table(key_limits: Limits, project_limits: Limits) -> tuple[Any, dict[str, Any]]:
    """:func:`served_privacy` for one key as a table (what the embedded store's gate keeps
    of a key): the class served when none is asked, and each known class asked -> the
    class served. Raises as :func:`served_privacy` does (an unknown minimum)."""
    served = {c: served_privacy(c, key_limits, project_limits) for c in PRIVACY_CLASSES}
    return served_privacy("", key_limits, project_limits), served


def _refuse(cls: type[errors.MeshError], message: str, retry_after: float) -> errors.MeshError:
    retry = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 3600
    return cls(message, headers=[(b"retry-after", str(retry).encode())])


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
    """Check every limit of every state (key first, then project); take them all or none
    (compiled: meshfast_core.limits). Raises a 429 error with ``Retry-After`` and the code
    naming the limit."""
    try:
        return _admit(states, now, tokens, amount_nano, month, day)
    except LimitExceeded as exc:
        st = states[exc.index]
        raise refusal(exc.limit, st.owner, st.limits, tokens, amount_nano, exc.used, exc.retry_after) from None


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
