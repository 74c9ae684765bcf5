"""API key digests: the compiled ``_keys`` unless ``MESHFAST_NO_EXTENSIONS`` is set (or it
was not built: it needs OpenSSL's headers).

``key_digest_py``/``bearer_digest_py`` are the pure-Python twin (hashlib),
``key_digest_c``/``bearer_digest_c`` the compiled functions (``None`` when they are not
available), ``COMPILED`` whether ``key_digest``/``bearer_digest`` are the compiled ones.
"""

from collections.abc import Callable

from ._ext import compiled
from .keys_py import KEY_MIN_LEN, KEY_PREFIX
from .keys_py import bearer_digest as bearer_digest_py
from .keys_py import key_digest as key_digest_py

__all__ = (
    "COMPILED",
    "KEY_MIN_LEN",
    "KEY_PREFIX",
    "bearer_digest",
    "bearer_digest_c",
    "bearer_digest_py",
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
