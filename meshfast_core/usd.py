"""nano-USD as decimal bytes: the compiled ``_usd`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``usd_bytes_py`` is the pure-Python twin, ``usd_bytes_c`` the compiled function (``None``
when it is not available), ``COMPILED`` whether ``usd_bytes`` is the compiled one.
"""

from collections.abc import Callable

from ._ext import NO_EXTENSIONS
from .usd_py import usd_bytes as usd_bytes_py

__all__ = ("COMPILED", "usd_bytes", "usd_bytes_c", "usd_bytes_py")

usd_bytes: Callable[[int], bytes] = usd_bytes_py
usd_bytes_c: Callable[[int], bytes] | None = None
COMPILED = False

if not NO_EXTENSIONS:
    try:
        from ._usd import usd_bytes as usd_bytes_c
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        usd_bytes = usd_bytes_c
        COMPILED = True
