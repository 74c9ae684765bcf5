"""Type stub of the compiled nano-USD formatter (twin: ``usd_py.py``)."""

__all__ = ("usd_bytes",)

def usd_bytes(nano: int) -> bytes: ...
