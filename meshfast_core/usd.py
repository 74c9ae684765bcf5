"""nano-USD as decimal bytes: the compiled ``_usd`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``usd_bytes_py`` is the pure-Python twin, ``usd_bytes_c`` the compiled function (``None``
when it is not available), ``COMPILED`` whether ``usd_bytes`` is the compiled one;
``cost_headers`` (the four receipt headers) follows the same choice.
"""

from collections.abc import Callable

from ._ext import compiled
from .usd_py import cost_headers as cost_headers_py
from .usd_py import usd_bytes as usd_bytes_py

__all__ = ("COMPILED", "cost_headers", "cost_headers_py", "usd_bytes", "usd_bytes_c", "usd_bytes_py")

_c = compiled("_usd")
COMPILED = _c is not None
usd_bytes_c: Callable[[int], bytes] | None = None if _c is None else _c.usd_bytes
usd_bytes: Callable[[int], bytes] = usd_bytes_c or usd_bytes_py
cost_headers: Callable[[str, int, int, int], list[tuple[bytes, bytes]]] = cost_headers_py if _c is None else _c.cost_headers
