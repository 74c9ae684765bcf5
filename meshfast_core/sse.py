"""Incremental SSE scanner and usage readers: the compiled ``_sse`` unless
``MESHFAST_NO_EXTENSIONS`` is set.

``SSEScannerPy`` is the pure-Python twin, ``SSEScannerC`` the compiled class (``None``
when it is not available), ``COMPILED`` whether ``SSEScanner`` is the compiled one.
``body_usage`` (the token counts of a whole JSON answer) and ``usage_counts`` (of a usage
object) come from the same module as ``SSEScanner``.
"""

from ._ext import compiled
from .sse_py import SSEScanner as SSEScannerPy
from .sse_py import body_usage as _body_usage_py
from .sse_py import usage_counts as _usage_counts_py

__all__ = ("COMPILED", "SSEScanner", "SSEScannerC", "SSEScannerPy", "body_usage", "usage_counts")

_c = compiled("_sse")
COMPILED = _c is not None
SSEScannerC: type[SSEScannerPy] | None = None if _c is None else _c.SSEScanner
SSEScanner: type[SSEScannerPy] = SSEScannerC or SSEScannerPy
body_usage = _body_usage_py if _c is None else _c.body_usage
usage_counts = _usage_counts_py if _c is None else _c.usage_counts
