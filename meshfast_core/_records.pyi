"""Type stub of the compiled hot-path records (twin: ``records_py.py``)."""

from typing import Any

__all__ = ("ID_COUNTER_START", "RECEIPT_FIELDS", "Hold", "Receipt", "new_id", "priced_receipt", "reseed_ids")

ID_COUNTER_START: int
RECEIPT_FIELDS: tuple[str, ...]

def new_id(prefix: str) -> str: ...
def reseed_ids(process_hex: str, start: int) -> None: ...

class Hold:
    id: str
    account_id: str
    key_id: str
    amount_nano: int
    admission: Any
    closed: bool
    def __init__(self, id: str, account_id: str, key_id: str, amount_nano: int, admission: Any = None, closed: bool = False) -> None: ...

class Receipt:
    id: str
    created: float
    account_id: str
    project_id: str
    key_id: str
    kind: str
    model: str
    route_mode: str
    provider: str
    upstream_model: str
    privacy: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokens_source: str
    upstream_cost_nano: int
    margin_nano: int
    total_nano: int
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    status: str
    capped: bool
    attempts: str
    def __init__(
        self, id: str, created: float, account_id: str, project_id: str, key_id: str, kind: str, model: str,
        route_mode: str, provider: str, upstream_model: str, privacy: str, prompt_tokens: int,
        completion_tokens: int, cached_tokens: int, tokens_source: str, upstream_cost_nano: int,
        margin_nano: int, total_nano: int, latency_ms: float, ttft_ms: float | None, stream: bool, status: str,
        capped: bool = False, attempts: str = "",
    ) -> None: ...
    def row(self) -> tuple[Any, ...]: ...
    def as_dict(self) -> dict[str, Any]: ...
    def public(self) -> dict[str, Any]: ...

def priced_receipt(
    receipt_id: str, account: Any, key: Any, endpoint: Any, kind: str, requested_model: str,
    counts: tuple[int, int, int] | None, estimated_prompt: int, estimated_completion: int,
    started: float, first_byte: float, stream: bool, status: str, route_mode: str, attempts: str,
    margin_ppm: int, fee_nano: int,
) -> Receipt: ...
