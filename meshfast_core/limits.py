"""Limit windows: the compiled ``_limits`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``WindowPy``/``ConcurrencyPy`` are the pure-Python twins, ``WindowC``/``ConcurrencyC``
the compiled classes (``None`` when not available), ``COMPILED`` whether ``Window`` and
``Concurrency`` are the compiled ones. The rules are in ``limits_py.py``.
"""

from ._ext import NO_EXTENSIONS
from .limits_py import Concurrency as ConcurrencyPy
from .limits_py import Window as WindowPy

__all__ = (
    "COMPILED",
    "Concurrency",
    "ConcurrencyC",
    "ConcurrencyPy",
    "Window",
    "WindowC",
    "WindowPy",
)

Window: type[WindowPy] = WindowPy
Concurrency: type[ConcurrencyPy] = ConcurrencyPy
WindowC: type[WindowPy] | None = None
ConcurrencyC: type[ConcurrencyPy] | None = None
COMPILED = False

if not NO_EXTENSIONS:
    try:
        from ._limits import Concurrency as ConcurrencyC  # type: ignore[assignment]
        from ._limits import Window as WindowC  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        Window = WindowC
        Concurrency = ConcurrencyC
        COMPILED = True
