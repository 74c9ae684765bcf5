"""Type stub of the compiled hot-path records (twin: ``records_py.py``)."""

from typing import Any

__all__ = (
    "ID_COUNTER_START", "RECEIPT_FIELDS", "Account", "Hold", "Receipt", "day_of", "month_of", "new_id",
    "priced_receipt", "release_hold", "reseed_ids", "settle_hold", "Settler", "spend_buckets", "take_hold",
)

ID_COUNTER_START: int
RECEIPT_FIELDS: tuple[str, ...]

def new_id(prefix: str) -> str: ...
def month_of(ts: float) -> str: ...
def day_of(ts: float) -> str: ...
def spend_buckets(ts: float) -> tuple[str, str]: ...
def reseed_ids(process_hex: str, start: int) -> None: ...

class Account:
    id: str
    name: str
    balance_nano: int
    held_nano: int
    margin_ppm: int | None
    fee_nano: int | None
    created: float
    spend: dict[str, int]
    def __init__(
        self, id: str, name: str, balance_nano: int = 0, held_nano: int = 0, margin_ppm: int | None = None,
        fee_nano: int | None = None, created: float = 0.0, spend: dict[str, int] | None = None,
    ) -> None: ...
    def public(self) -> dict[str, Any]: ...

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

def take_hold(account: Account, key_id: str, amount_nano: int, admission: Any) -> Hold | None: ...
def release_hold(account: Account, hold: Hold, used_tokens: int | None) -> None: ...
def settle_hold(account: Account, hold: Hold, receipt: Receipt) -> tuple[str, tuple[Any, ...], str, int]: ...

class Settler:
    call_type: type
    accounts: dict[str, Account] | None
    frame: Any
    wake: Any
    margin_ppm: int
    fee_nano: int
    def __init__(
        self, call_type: type, accounts: dict[str, Account] | None, frame: Any, wake: Any, margin_ppm: int,
        fee_nano: int, chars_per_token: int,
    ) -> None: ...
    def settle(self, call: Any, counts: tuple[int, int, int] | None, completion_estimate: int, status: str) -> Receipt: ...
    def body_headers(self, call: Any, receipt: Any, content_type: bytes | None, length: int) -> list[tuple[bytes, bytes]]: ...
    def settle_body(
        self, call: Any, counts: tuple[int, int, int] | None, completion_estimate: int, content_type: bytes | None,
        length: int,
    ) -> list[tuple[bytes, bytes]]: ...
    def stream_head(self, call: Any, tail: Any) -> list[tuple[bytes, bytes]]: ...
    def settle_stream(self, call: Any, scanner: Any, status: str) -> bytes: ...
