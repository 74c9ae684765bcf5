"""Limits: the compiled ``_limits`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``WindowPy``/``ConcurrencyPy``/``LimiterPy`` are the pure-Python twins, ``WindowC``/
``ConcurrencyC``/``LimiterC`` the compiled classes (``None`` when not available),
``COMPILED`` whether the names below are the compiled ones. ``admit``, ``finish``,
``rate_headers`` and ``reset_value`` come from the same module as ``Limiter`` (they work
on its fields). The rules are in ``limits_py.py``.
"""

from types import ModuleType

from . import limits_py as _py
from ._ext import NO_EXTENSIONS
from .exceptions import LimitExceeded

__all__ = (
    "COMPILED",
    "Admission",
    "Concurrency",
    "ConcurrencyC",
    "ConcurrencyPy",
    "LimitExceeded",
    "Limiter",
    "LimiterC",
    "LimiterPy",
    "Window",
    "WindowC",
    "WindowPy",
    "add_spend",
    "admit",
    "finish",
    "rate_headers",
    "reset_value",
)

WindowPy = _py.Window
ConcurrencyPy = _py.Concurrency
LimiterPy = _py.Limiter
WindowC: type[_py.Window] | None = None
ConcurrencyC: type[_py.Concurrency] | None = None
LimiterC: type[_py.Limiter] | None = None
COMPILED = False

_impl: ModuleType = _py
if not NO_EXTENSIONS:
    try:
        from . import _limits as _c  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        _impl = _c
        WindowC, ConcurrencyC, LimiterC = _c.Window, _c.Concurrency, _c.Limiter
        COMPILED = True

Window: type[_py.Window] = _impl.Window
Concurrency: type[_py.Concurrency] = _impl.Concurrency
Limiter: type[_py.Limiter] = _impl.Limiter
Admission: type[_py.Admission] = _impl.Admission
add_spend = _impl.add_spend
admit = _impl.admit
finish = _impl.finish
rate_headers = _impl.rate_headers
reset_value = _impl.reset_value
