"""Type stub of the compiled pricing functions (twin: ``pricing_py.py``)."""

from typing import Any

__all__ = ("Tariff", "call_cost", "hold_worst")

class Tariff:
    input_price: Any
    cached_price: Any
    output_price: Any
    max_output: Any
    provider: Any
    upstream: Any
    privacy: Any
    def __init__(
        self, input_price: Any, cached_price: Any, output_price: Any, max_output: Any, provider: Any, upstream: Any, privacy: Any
    ) -> None: ...

def call_cost(
    prompt: int, completion: int, cached: int, input_price: int, cached_price: int, output_price: int, margin_ppm: int, fee_nano: int
) -> tuple[int, int]: ...
def hold_worst(
    candidates: Any, prompt_tokens: int, asked: int, n: int, max_output: int | None, margin_ppm: int, fee_nano: int
) -> tuple[int, int]: ...
