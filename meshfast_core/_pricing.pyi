"""Type stub of the compiled pricing functions (twin: ``pricing_py.py``)."""

from typing import Any

__all__ = ("call_cost", "hold_worst")

def call_cost(
    prompt: int, completion: int, cached: int, input_price: int, cached_price: int, output_price: int, margin_ppm: int, fee_nano: int
) -> tuple[int, int]: ...
def hold_worst(
    candidates: Any, prompt_tokens: int, asked: int, n: int, max_output: int | None, margin_ppm: int, fee_nano: int
) -> tuple[int, int]: ...
