"""API key digests: the compiled ``_keys`` unless ``MESHFAST_NO_EXTENSIONS`` is set (or it
was not built: it needs OpenSSL's headers).

``key_digest_py``/``bearer_digest_py`` are the pure-Python twin (hashlib),
``key_digest_c``/``bearer_digest_c`` the compiled functions (``None`` when they are not
available), ``COMPILED`` whether ``key_digest``/``bearer_digest`` are the compiled ones.
``call_headers`` (a call's Authorization and X-Mesh-Privacy values, in one pass over its
headers) follows the same rule, with ``call_headers_py``/``call_headers_c``.
"""

from collections.abc import Callable
from typing import Any

from ._ext import compiled
from .keys_py import KEY_MIN_LEN, KEY_PREFIX
from .keys_py import bearer_digest as bearer_digest_py
from .keys_py import call_headers as call_headers_py
from .keys_py import key_digest as key_digest_py

__all__ = (
    "COMPILED",
    "KEY_MIN_LEN",
    "KEY_PREFIX",
    "bearer_digest",
    "bearer_digest_c",
    "bearer_digest_py",
    "call_headers",
    "call_headers_c",
    "call_headers_py",
    "key_digest",
    "key_digest_c",
    "key_digest_py",
)

_c = compiled("_keys")
COMPILED = _c is not None
key_digest_c: Callable[[str | bytes], str] | None = None if _c is None else _c.key_digest
bearer_digest_c: Callable[[bytes], str | None] | None = None if _c is None else _c.bearer_digest
key_digest: Callable[[str | bytes], str] = key_digest_c or key_digest_py
bearer_digest: Callable[[bytes], str | None] = bearer_digest_c or bearer_digest_py
call_headers_c: Callable[[Any], tuple[bytes | None, bytes | None]] | None = None if _c is None else _c.call_headers
call_headers: Callable[[Any], tuple[bytes | None, bytes | None]] = call_headers_c or call_headers_py
