"""Upstream keep-alive HTTP/1.1 client: the compiled ``_http_c`` unless ``MESHFAST_NO_EXTENSIONS``.

``PoolPy`` is the pure-Python twin, ``PoolC`` the compiled class (``None`` when it is not
available), ``COMPILED`` whether ``Pool`` is the compiled one. Both raise the exceptions of
``meshfast_core.exceptions``, re-exported here.
"""

from . import http_py as _py
from ._ext import NO_EXTENSIONS
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

Pool: type[_py.Pool] = _py.Pool
Response: type[_py.Response] = _py.Response
PoolPy: type[_py.Pool] = _py.Pool
PoolC: type[_py.Pool] | None = None
COMPILED = False

if not NO_EXTENSIONS:
    try:
        from . import _http_c as _c  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        Pool = PoolC = _c.Pool
        Response = _c.Response
        COMPILED = True
