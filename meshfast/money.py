"""Money arithmetic: integer nano-USD (1e-9 USD) inside, decimal strings at the edges.

No floats anywhere near money. Prices are nano-USD per million tokens, so the cost of
``t`` tokens is ``ceil(t * price / 1e6)`` nano-USD (rounded up: the gateway never
undercharges by a rounding step). Margins are parts-per-million of the upstream cost.
"""

from __future__ import annotations

from meshfast_core.pricing_py import MTOK, PPM, margin_of, token_cost  # the rules, in one place
from meshfast_core.usd import usd_bytes

__all__ = ("MTOK", "NANO", "PPM", "margin_of", "nano_to_usd", "percent_to_ppm", "token_cost", "usd_bytes", "usd_to_nano")

NANO = 1_000_000_000


def usd_to_nano(text: str | int) -> int:
    """Parse a non-negative decimal USD amount exactly (``"0.15"`` -> 150_000_000)."""
    text = str(text).strip()
    if not text or text.startswith(("-", "+")):
        raise ValueError(f"not a non-negative decimal amount: {text!r}")
    whole, _, frac = text.partition(".")
    if not (whole or frac) or not (whole or "0").isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a non-negative decimal amount: {text!r}")
    if len(frac) > 9:
        if frac[9:].strip("0"):
            raise ValueError(f"{text}: more precision than 1e-9 USD")
        frac = frac[:9]
    return int(whole or "0") * NANO + int(frac.ljust(9, "0") or "0")


def nano_to_usd(nano: int) -> str:
    """Render nano-USD as a decimal string without trailing zeros (``1_500_000`` -> ``"0.0015"``)."""
    return usd_bytes(nano).decode()


def percent_to_ppm(text: str | int) -> int:
    """A percentage as parts per million of the base (``"5"`` -> 50_000, ``"2.5"`` -> 25_000)."""
    # p percent = p * 10_000 ppm; usd_to_nano(p) = p * 1e9, so ppm = nano / 1e5.
    nano = usd_to_nano(text)
    if nano % 100_000:
        raise ValueError(f"{text}: percentages take at most 4 decimal places")
    return nano // 100_000
