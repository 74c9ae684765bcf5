"""nano-USD (1e-9 USD, an integer) as the decimal the receipt headers carry (pure-Python
twin of ``_usd.pyx``).

``usd_bytes(1_500_000) == b"0.0015"``: no trailing zeros, no decimal point for whole
dollars, a leading ``-`` for negative amounts; exact for every integer. Several run on
every call (the receipt's upstream cost, margin and total), hence a compiled twin.
"""

from __future__ import annotations

__all__ = ("usd_bytes",)

NANO = 1_000_000_000


def usd_bytes(nano: int) -> bytes:
    if nano < 0:
        return b"-" + usd_bytes(-nano)
    whole, frac = divmod(nano, NANO)
    if frac:
        return (b"%d.%09d" % (whole, frac)).rstrip(b"0")
    return b"%d" % whole
