"""API key digests (pure-Python twin of ``_keys.pyx``).

A store keeps only the SHA-256 of a key, in hex. Every call presents its key as
``Authorization: Bearer mesh_live_...``: :func:`bearer_digest` checks that form and
returns the digest the stores look keys up by, ``None`` when the value is not a
well-formed key (the caller answers 401 without saying more).

The form: ``Bearer`` in any case, one space, then the key with surrounding ASCII
whitespace ignored; the key is ``mesh_live_`` and at least 32 more characters.
:func:`call_headers` finds that header, and the call's ``X-Mesh-Privacy``, in one pass.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ("KEY_MIN_LEN", "KEY_PREFIX", "bearer_digest", "call_headers", "key_digest")

KEY_PREFIX = "mesh_live_"
KEY_MIN_LEN = len(KEY_PREFIX) + 32
_PREFIX = KEY_PREFIX.encode()


def key_digest(secret: str | bytes) -> str:
    """The SHA-256 of the whole secret, in lower-case hex."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).hexdigest()


def bearer_digest(raw: bytes) -> str | None:
    """:func:`key_digest` of the key in an ``Authorization`` value, or ``None``."""
    secret = raw[7:].strip()
    if raw[:7].lower() != b"bearer " or not secret.startswith(_PREFIX) or len(secret) < KEY_MIN_LEN:
        return None
    return key_digest(secret)


def call_headers(headers: Any) -> tuple[bytes | None, bytes | None]:
    """``(Authorization, X-Mesh-Privacy)`` of an ASGI header list (lower-case names), the
    first of each, in one pass over the list."""
    auth = privacy = None
    for k, v in headers:
        if k == b"authorization":
            if auth is None:
                auth = v
        elif k == b"x-mesh-privacy" and privacy is None:
            privacy = v
    return auth, privacy
