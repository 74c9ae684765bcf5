"""Type stub of the compiled key digests (twin: ``keys_py.py``)."""

from typing import Any

__all__ = ("KEY_MIN_LEN", "KEY_PREFIX", "bearer_digest", "call_headers", "key_digest")

KEY_PREFIX: str
KEY_MIN_LEN: int

def key_digest(secret: str | bytes) -> str: ...
def bearer_digest(raw: bytes) -> str | None: ...
def call_headers(headers: Any) -> tuple[bytes | None, bytes | None]: ...
