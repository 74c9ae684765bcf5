"""Incremental SSE scanner and usage readers: the compiled ``_sse`` unless
``MESHFAST_NO_EXTENSIONS`` is set.

``SSEScannerPy`` is the pure-Python twin, ``SSEScannerC`` the compiled class (``None``
when it is not available), ``COMPILED`` whether ``SSEScanner`` is the compiled one.
``body_usage`` (the token counts of a whole JSON answer), ``usage_counts`` (of a usage
object) and ``usage_with_costs`` (a usage-only chunk with the call's costs added) come
from the same module as ``SSEScanner``.
"""

from ._ext import compiled
from .sse_py import SSEScanner as SSEScannerPy
from .sse_py import body_usage as _body_usage_py
from .sse_py import usage_counts as _usage_counts_py
from .sse_py import usage_with_costs as usage_with_costs_py

__all__ = (
    "COMPILED",
    "SSEScanner",
    "SSEScannerC",
    "SSEScannerPy",
    "body_usage",
    "usage_counts",
    "usage_with_costs",
    "usage_with_costs_py",
)

_c = compiled("_sse")
COMPILED = _c is not None
SSEScannerC: type[SSEScannerPy] | None = None if _c is None else _c.SSEScanner
SSEScanner: type[SSEScannerPy] = SSEScannerC or SSEScannerPy
body_usage = _body_usage_py if _c is None else _c.body_usage
usage_counts = _usage_counts_py if _c is None else _c.usage_counts
usage_with_costs = usage_with_costs_py if _c is None else _c.usage_with_costs
