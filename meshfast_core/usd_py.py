"""nano-USD (1e-9 USD, an integer) as the decimal the receipt headers carry (pure-Python
twin of ``_usd.pyx``).

``usd_bytes(1_500_000) == b"0.0015"``: no trailing zeros, no decimal point for whole
dollars, a leading ``-`` for negative amounts; exact for every integer. Several run on
every call (the receipt's upstream cost, margin and total), hence a compiled twin.
``cost_headers`` makes the four receipt headers of a JSON answer in one call.
"""

from __future__ import annotations

__all__ = ("cost_headers", "usd_bytes")

NANO = 1_000_000_000


def usd_bytes(nano: int) -> bytes:
    if nano < 0:
        return b"-" + usd_bytes(-nano)
    whole, frac = divmod(nano, NANO)
    if frac:
        return (b"%d.%09d" % (whole, frac)).rstrip(b"0")
    return b"%d" % whole


def cost_headers(receipt_id: str, upstream_nano: int, margin_nano: int, total_nano: int) -> list[tuple[bytes, bytes]]:
    """The receipt headers of a JSON answer: its id, upstream cost, margin and total (USD)."""
    return [
        (b"x-mesh-receipt-id", receipt_id.encode()),
        (b"x-mesh-upstream-cost-usd", usd_bytes(upstream_nano)),
        (b"x-mesh-margin-usd", usd_bytes(margin_nano)),
        (b"x-mesh-total-usd", usd_bytes(total_nano)),
    ]
