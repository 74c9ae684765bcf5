# cython: language_level=3
# distutils: libraries = crypto
"""API key digests (compiled twin of ``keys_py.py``; see it for the contract).

SHA-256 by OpenSSL's libcrypto (the library Python's hashlib uses) through its direct
interface: hashlib goes through OpenSSL's generic digest layer, whose per-call set-up
costs several times the hash of a key.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcmp, memcpy

from .keys_py import KEY_MIN_LEN, KEY_PREFIX
from .keys_py import call_headers as _call_headers_py

__all__ = ("KEY_MIN_LEN", "KEY_PREFIX", "bearer_digest", "call_headers", "key_digest")

cdef extern from *:
    """
    #define OPENSSL_SUPPRESS_DEPRECATED 1
    #include <openssl/sha.h>
    """
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX* c) nogil
    int SHA256_Update(SHA256_CTX* c, const void* data, size_t n) nogil
    int SHA256_Final(unsigned char* md, SHA256_CTX* c) nogil

cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)

cdef const char* _HEX = b"0123456789abcdef"
cdef char _HEX_PAIRS[512]  # byte b -> its two hex digits at 2 * b
for _b in range(256):
    _HEX_PAIRS[2 * _b] = _HEX[_b >> 4]
    _HEX_PAIRS[2 * _b + 1] = _HEX[_b & 15]
cdef Py_ssize_t _MIN_LEN = KEY_MIN_LEN


cdef str _hex_sha256(const char* data, Py_ssize_t n):
    cdef SHA256_CTX ctx
    cdef unsigned char md[32]
    cdef char out[64]
    cdef int i
    if not (SHA256_Init(&ctx) and SHA256_Update(&ctx, data, <size_t>n) and SHA256_Final(md, &ctx)):
        raise MemoryError("SHA-256 failed")
    for i in range(32):
        memcpy(out + 2 * i, _HEX_PAIRS + 2 * md[i], 2)
    return PyUnicode_DecodeASCII(out, 64, NULL)


def key_digest(secret):
    """The SHA-256 of the whole secret, in lower-case hex."""
    cdef Py_ssize_t n
    cdef const char* s
    if PyBytes_CheckExact(secret):
        return _hex_sha256(PyBytes_AS_STRING(secret), PyBytes_GET_SIZE(secret))
    if isinstance(secret, str):
        s = PyUnicode_AsUTF8AndSize(secret, &n)
        return _hex_sha256(s, n)
    data = bytes(secret)  # any other bytes-like object
    return _hex_sha256(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    # what bytes.strip() removes: ASCII whitespace
    return c == 0x20 or (0x09 <= c <= 0x0D)


def bearer_digest(bytes raw):
    """:func:`key_digest` of the key in an ``Authorization`` value, or ``None``."""
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t start = 7
    cdef Py_ssize_t end = n
    if n < 7 or (d[0] | 0x20) != 0x62 or (d[1] | 0x20) != 0x65 or (d[2] | 0x20) != 0x61 \
            or (d[3] | 0x20) != 0x72 or (d[4] | 0x20) != 0x65 or (d[5] | 0x20) != 0x72 or d[6] != 0x20:
        return None  # not "bearer " in any case
    while start < end and _is_space(d[start]):
        start += 1
    while end > start and _is_space(d[end - 1]):
        end -= 1
    if end - start < _MIN_LEN or memcmp(d + start, b"mesh_live_", 10) != 0:
        return None
    return _hex_sha256(<const char*>d + start, end - start)


cdef inline bint _named(object k, const char* name, Py_ssize_t n):
    return PyBytes_CheckExact(k) and PyBytes_GET_SIZE(k) == n and memcmp(PyBytes_AS_STRING(k), name, n) == 0


def call_headers(headers):
    """``(Authorization, X-Mesh-Privacy)`` of an ASGI header list, the first of each, in
    one pass (a list of 2-tuples here; any other shape goes to the twin)."""
    cdef object auth = None, privacy = None
    if type(headers) is not list:
        return _call_headers_py(headers)
    for item in <list>headers:
        if type(item) is not tuple or PyTuple_GET_SIZE(item) != 2:
            return _call_headers_py(headers)
        k = (<tuple>item)[0]
        if _named(k, b"authorization", 13):
            if auth is None:
                auth = (<tuple>item)[1]
        elif privacy is None and _named(k, b"x-mesh-privacy", 14):
            privacy = (<tuple>item)[1]
    return auth, privacy
