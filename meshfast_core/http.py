"""Upstream keep-alive HTTP/1.1 client: the compiled ``_http_c`` unless ``MESHFAST_NO_EXTENSIONS``.

``PoolPy`` is the pure-Python twin, ``PoolC`` the compiled class (``None`` when it is not
available), ``COMPILED`` whether ``Pool`` is the compiled one. Both raise the exceptions of
``meshfast_core.exceptions``, re-exported here.
"""

from . import http_py as _py
from ._ext import compiled
from .exceptions import (
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

__all__ = (
    "COMPILED",
    "Pool",
    "PoolC",
    "PoolPy",
    "Response",
    "UpstreamClosed",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
)

_c = compiled("_http_c")
COMPILED = _c is not None
PoolPy: type[_py.Pool] = _py.Pool
PoolC: type[_py.Pool] | None = None if _c is None else _c.Pool
Pool: type[_py.Pool] = _py.Pool if _c is None else _c.Pool
Response: type[_py.Response] = _py.Response if _c is None else _c.Response
