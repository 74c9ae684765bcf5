"""What a call costs in nano-USD: the worst case a hold reserves and the actual cost a
receipt bills (pure-Python twin of ``_pricing.pyx``).

All amounts are integers: prices are nano-USD per million tokens, so ``t`` tokens cost
``ceil(t * price / 1e6)`` (rounded up: the gateway never undercharges by a rounding step),
and the MESH margin is ``ceil(upstream * ppm / 1e6) + fee``. Both functions run on every
call (``hold_worst`` before it, ``call_cost`` after it), hence a compiled twin; this one is
exact for integers of any size, and the compiled one hands such cases to it.
"""

from __future__ import annotations

from typing import Any

__all__ = ("MTOK", "PPM", "Tariff", "call_cost", "hold_worst", "margin_of", "token_cost")

MTOK = 1_000_000
PPM = 1_000_000


class Tariff:
    """What ``hold_worst`` and ``priced_receipt`` read of an endpoint, as one record
    (``Endpoint.tariff``): its input, cached input and output prices, its model's
    ``max_output_tokens``, the provider's name, the upstream model and the privacy class.
    The compiled twin keeps the numbers as C integers too; these functions here read the
    endpoint's own fields, which the tariff copies."""

    __slots__ = ("cached_price", "input_price", "max_output", "output_price", "privacy", "provider", "upstream")

    def __init__(
        self, input_price: Any, cached_price: Any, output_price: Any, max_output: Any, provider: Any, upstream: Any, privacy: Any
    ) -> None:
        self.input_price, self.cached_price, self.output_price, self.max_output = input_price, cached_price, output_price, max_output
        self.provider, self.upstream, self.privacy = provider, upstream, privacy

    def __repr__(self) -> str:
        return (
            f"Tariff({self.input_price!r}, {self.cached_price!r}, {self.output_price!r}, {self.max_output!r}, "
            f"{self.provider!r}, {self.upstream!r}, {self.privacy!r})"
        )


def token_cost(tokens: int, nano_per_mtok: int) -> int:
    """Cost of ``tokens`` at a price in nano-USD per million tokens, rounded up."""
    return -(-tokens * nano_per_mtok // MTOK)


def margin_of(upstream_nano: int, margin_ppm: int, fee_nano: int) -> int:
    """MESH margin: a share of the upstream cost (rounded up) plus the fixed fee."""
    return -(-upstream_nano * margin_ppm // PPM) + fee_nano


def call_cost(
    prompt: int, completion: int, cached: int, input_price: int, cached_price: int, output_price: int, margin_ppm: int, fee_nano: int
) -> tuple[int, int]:
    """``(upstream, margin)`` of a call's tokens: the uncached prompt at the input price,
    the cached prompt at the cached-input price, the completion at the output price (each
    term rounded up), and the margin on their sum."""
    upstream = token_cost(prompt - cached, input_price) + token_cost(cached, cached_price) + token_cost(completion, output_price)
    return upstream, margin_of(upstream, margin_ppm, fee_nano)


def hold_worst(
    candidates: Any, prompt_tokens: int, asked: int, n: int, max_output: int | None, margin_ppm: int, fee_nano: int
) -> tuple[int, int]:
    """``(nano-USD, tokens)`` a hold reserves: the worst case over the endpoints a failover
    may use (``candidates``: each with ``input_nano_per_mtok``, ``output_nano_per_mtok`` and
    ``model.max_output_tokens``).

    Per endpoint: the prompt at its input price plus the output cap at its output price.
    The output cap is ``max_output`` when given, else ``asked`` (the request's
    ``max_completion_tokens`` / ``max_tokens``, 0 if none) when below the model's limit,
    else that limit, times ``n``. The margin grows with the upstream cost, so the worst case
    is the margin of the highest upstream cost. Tokens: the prompt plus the largest cap.
    """
    upstream = out_max = 0
    for ep in candidates:
        if max_output is None:
            cap = ep.model.max_output_tokens
            out = (asked if 0 < asked < cap else cap) * n
        else:
            out = max_output
        cost = token_cost(prompt_tokens, ep.input_nano_per_mtok) + token_cost(out, ep.output_nano_per_mtok)
        if cost > upstream:
            upstream = cost
        if out > out_max:
            out_max = out
    return upstream + margin_of(upstream, margin_ppm, fee_nano), prompt_tokens + out_max
