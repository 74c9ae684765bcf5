"""Incremental SSE scanner: the compiled ``_sse`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``SSEScannerPy`` is the pure-Python twin, ``SSEScannerC`` the compiled class (``None``
when it is not available), ``COMPILED`` whether ``SSEScanner`` is the compiled one.
"""

from ._ext import NO_EXTENSIONS
from .sse_py import SSEScanner as SSEScannerPy

__all__ = ("COMPILED", "SSEScanner", "SSEScannerC", "SSEScannerPy")

SSEScanner: type[SSEScannerPy] = SSEScannerPy
SSEScannerC: type[SSEScannerPy] | None = None
COMPILED = False

if not NO_EXTENSIONS:
    try:
        from ._sse import SSEScanner as SSEScannerC  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        SSEScanner = SSEScannerC
        COMPILED = True
