"""API key digests (meshfast_core.keys), over the compiled module and its Python twin."""

from __future__ import annotations

import hashlib
import os
import sysconfig

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast_core import keys
from meshfast_core.keys import bearer_digest_c, bearer_digest_py, key_digest_c, key_digest_py

DIGESTS = [pytest.param(key_digest_py, id="py")]
BEARERS = [pytest.param(bearer_digest_py, id="py")]
if key_digest_c is not None:
    DIGESTS.append(pytest.param(key_digest_c, id="c"))
    BEARERS.append(pytest.param(bearer_digest_c, id="c"))
KEY = "mesh_live_" + "Ab3" * 11  # 33 characters after the prefix


def test_keys_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    include = [sysconfig.get_paths()["include"], "/usr/include", "/usr/local/include"]
    if not any(os.path.exists(os.path.join(d, "openssl/sha.h")) for d in include):
        pytest.skip("OpenSSL's headers are not installed, so meshfast_core._keys is not built")
    assert keys.COMPILED, "meshfast_core._keys did not load: build it with setup.py build_ext"
    assert keys.bearer_digest is bearer_digest_c and keys.key_digest is key_digest_c


@pytest.mark.parametrize("digest", DIGESTS)
@pytest.mark.parametrize("secret", [KEY, KEY.encode(), bytearray(KEY.encode()), b"", "é ü", b"\x00" * 200])
def test_key_digest_is_sha256_hex(digest, secret) -> None:
    data = secret.encode() if isinstance(secret, str) else bytes(secret)
    assert digest(secret) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("bearer", BEARERS)
@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"Bearer " + KEY.encode(), KEY),
        (b"bearer " + KEY.encode(), KEY),
        (b"BEARER   " + KEY.encode() + b" \t\r\n", KEY),  # whitespace around the key is not part of it
        (b"Bearer mesh_live_" + b"x" * 32, "mesh_live_" + "x" * 32),
        (b"Bearer mesh_live_" + b"x" * 31, None),  # too short
        (b"Bearer " + KEY.encode().replace(b"live", b"test"), None),
        (b"Bearer\t" + KEY.encode(), None),  # one space after the scheme
        (b"Basic " + KEY.encode(), None),
        (b"Bearer", None),
        (b"", None),
        (KEY.encode(), None),
    ],
)
def test_bearer_digest(bearer, raw: bytes, key: str | None) -> None:
    assert bearer(raw) == (None if key is None else hashlib.sha256(key.encode()).hexdigest())


_PIECES = st.sampled_from([b"Bearer ", b"bearer ", b"BeArEr", b" ", b"\t", b"\x0b", b"mesh_live_", b"mesh_", b"x", b"\xff", b"\x00"])


@settings(max_examples=400, deadline=None)
@given(head=st.lists(_PIECES, max_size=5), body=st.binary(max_size=48), tail=st.lists(_PIECES, max_size=3))
def test_bearer_digest_twins_agree(head: list[bytes], body: bytes, tail: list[bytes]) -> None:
    raw = b"".join(head) + body + b"".join(tail)
    expected = bearer_digest_py(raw)
    if bearer_digest_c is not None:
        assert bearer_digest_c(raw) == expected
    secret = raw[7:].strip()
    ok = raw[:7].lower() == b"bearer " and secret.startswith(b"mesh_live_") and len(secret) >= 42
    assert expected == (hashlib.sha256(secret).hexdigest() if ok else None)


HEADERS = [pytest.param(keys.call_headers_py, id="py")]
if keys.call_headers_c is not None:
    HEADERS.append(pytest.param(keys.call_headers_c, id="c"))


@pytest.mark.parametrize("find", HEADERS)
@pytest.mark.parametrize(
    ("headers", "found"),
    [
        ([], (None, None)),
        ([(b"host", b"x"), (b"authorization", b"Bearer a"), (b"x-mesh-privacy", b"private")], (b"Bearer a", b"private")),
        ([(b"authorization", b"first"), (b"authorization", b"second")], (b"first", None)),  # the first wins
        ([(b"x-mesh-privacy", b"one"), (b"x-mesh-privacy", b"two")], (None, b"one")),
        ([(b"Authorization", b"upper"), (b"authorizatio", b"short"), (b"authorizationx", b"long")], (None, None)),
        ([[b"authorization", b"a list pair"]], (b"a list pair", None)),  # any 2-item pairs
        (((b"authorization", b"a tuple of pairs"),), (b"a tuple of pairs", None)),
        ([(b"authorization", b"")], (b"", None)),  # present but empty: the pipeline answers 401
    ],
)
def test_call_headers_finds_the_first_of_each(find, headers, found) -> None:
    assert find(headers) == found


@pytest.mark.parametrize("find", HEADERS)
@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from([b"authorization", b"x-mesh-privacy", b"host", b"content-type", b"x-mesh"]), st.binary(max_size=20)),
        max_size=8,
    )
)
def test_call_headers_twins_agree(find, headers) -> None:
    assert find(headers) == keys.call_headers_py(headers)
    auth = next((v for k, v in headers if k == b"authorization"), None)
    privacy = next((v for k, v in headers if k == b"x-mesh-privacy"), None)
    assert find(headers) == (auth, privacy)
