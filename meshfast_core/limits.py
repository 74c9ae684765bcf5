"""Limits: the compiled ``_limits`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``WindowPy``/``ConcurrencyPy``/``LimiterPy`` are the pure-Python twins, ``WindowC``/
``ConcurrencyC``/``LimiterC`` the compiled classes (``None`` when not available),
``COMPILED`` whether the names below are the compiled ones. ``admit``, ``finish``,
``rate_headers`` and ``reset_value`` come from the same module as ``Limiter`` (they work
on its fields). The rules are in ``limits_py.py``.
"""

from types import ModuleType

from . import limits_py as _py
from ._ext import compiled
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
    "admit",
    "finish",
    "rate_headers",
    "reset_value",
)

WindowPy = _py.Window
ConcurrencyPy = _py.Concurrency
LimiterPy = _py.Limiter
_c = compiled("_limits")
COMPILED = _c is not None
_impl: ModuleType = _py if _c is None else _c
WindowC: type[_py.Window] | None = None if _c is None else _c.Window
ConcurrencyC: type[_py.Concurrency] | None = None if _c is None else _c.Concurrency
LimiterC: type[_py.Limiter] | None = None if _c is None else _c.Limiter

Window: type[_py.Window] = _impl.Window
Concurrency: type[_py.Concurrency] = _impl.Concurrency
Limiter: type[_py.Limiter] = _impl.Limiter
Admission: type[_py.Admission] = _impl.Admission
admit = _impl.admit
finish = _impl.finish
rate_headers = _impl.rate_headers
reset_value = _impl.reset_value
