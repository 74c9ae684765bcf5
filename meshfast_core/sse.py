"""Incremental SSE scanner and usage readers: the compiled ``_sse`` unless
``MESHFAST_NO_EXTENSIONS`` is set.

``SSEScannerPy`` is the pure-Python twin, ``SSEScannerC`` the compiled class (``None``
when it is not available), ``COMPILED`` whether ``SSEScanner`` is the compiled one.
``body_usage`` (the token counts of a whole JSON answer) and ``usage_counts`` (of a usage
object) come from the same module as ``SSEScanner``.
"""

from ._ext import NO_EXTENSIONS
from .sse_py import SSEScanner as SSEScannerPy
from .sse_py import body_usage, usage_counts

__all__ = ("COMPILED", "SSEScanner", "SSEScannerC", "SSEScannerPy", "body_usage", "usage_counts")

SSEScanner: type[SSEScannerPy] = SSEScannerPy
SSEScannerC: type[SSEScannerPy] | None = None
COMPILED = False

if not NO_EXTENSIONS:
    try:
        from ._sse import SSEScanner as SSEScannerC  # type: ignore[assignment]
        from ._sse import body_usage, usage_counts  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        SSEScanner = SSEScannerC
        COMPILED = True
