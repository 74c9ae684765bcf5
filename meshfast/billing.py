"""Pricing a call: the worst-case hold before it; the actual cost after it is the receipt's
(``meshfast_core.records.priced_receipt``).

All amounts are integer nano-USD. A hold is the most a call can cost: the estimated
prompt at the input price plus the output cap (``max_completion_tokens`` / ``max_tokens``,
else the model's limit, times ``n``) at the output price, plus margin. Settlement uses the
upstream's usage when it reports one, otherwise the estimate (and the receipt says so).
"""

from __future__ import annotations

from typing import Any

import orjson

from meshfast.config import BillingConfig
from meshfast.providers.base import Endpoint
from meshfast.store.base import Account
from meshfast_core.records import hold_amount
from meshfast_core.tokens import count_text

# Completion tokens of a stream without upstream usage, from the characters delivered.
CONTENT_CHARS_PER_TOKEN = 4


def estimate_input_tokens(req: dict[str, Any]) -> int:
    """Input tokens of an embeddings request (token-id inputs count exactly)."""
    inp = req.get("input")
    if isinstance(inp, str):
        return count_text(inp)
    total = 0
    for item in inp or ():
        if isinstance(item, str):
            total += count_text(item)
        elif isinstance(item, list):
            total += len(item)
        else:
            total += 1
    return total


def estimate_completion_tokens(body: bytes) -> int:
    """Completion tokens of a JSON answer that reported no usage: its message texts."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return -(-len(body) // CONTENT_CHARS_PER_TOKEN)
    total = 0
    for choice in obj.get("choices") or () if isinstance(obj, dict) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            if isinstance(message.get("content"), str):
                total += count_text(message["content"])
            for call in message.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    total += count_text(fn["arguments"])
    return total


class Billing:
    def __init__(self, cfg: BillingConfig) -> None:
        self.margin_ppm = cfg.margin_ppm
        self.fee_nano = cfg.fee_nano

    def hold_amount(self, account: Account, candidates: list[Endpoint], prompt_tokens: int, req: dict[str, Any], max_output: int | None) -> tuple[int, int]:
        """``(nano-USD, tokens)``: the worst case over the candidates a failover may use
        (``meshfast_core.records.hold_amount``: ``pricing.hold_worst``, which says how,
        with the account's own margin and fee, else the configured ones). The output cap is
        ``max_output`` when given, else the request's ``max_completion_tokens`` /
        ``max_tokens`` (at most the model's limit, else that limit) times ``n``."""
        return hold_amount(
            account, candidates, prompt_tokens, req.get("max_completion_tokens") or req.get("max_tokens") or 0,
            req.get("n") or 1, max_output, self.margin_ppm, self.fee_nano,
        )  # fmt: skip
