# cython: language_level=3
"""nano-USD as decimal bytes (compiled twin of ``usd_py.py``; see it for the format)."""

from cpython.bytes cimport PyBytes_FromStringAndSize

from .usd_py import usd_bytes as _usd_bytes_py

__all__ = ("cost_headers", "usd_bytes")

cdef object _py = _usd_bytes_py


cpdef bytes usd_bytes(object nano):
    cdef long long v
    cdef unsigned long long u, whole
    cdef unsigned int frac
    cdef char buf[40]
    cdef char* end = buf + 40
    cdef char* p = end
    cdef int i
    cdef bint neg
    if type(nano) is not int:
        return _py(nano)
    try:
        v = nano
    except OverflowError:  # beyond 9.2 billion USD: the twin is exact for any size
        return _py(nano)
    neg = v < 0
    u = <unsigned long long>(-(v + 1)) + 1 if neg else <unsigned long long>v
    whole = u // 1000000000
    frac = <unsigned int>(u % 1000000000)
    if frac:
        i = 9
        while frac % 10 == 0:  # trailing zeros are not written
            frac //= 10
            i -= 1
        while i > 0:
            p -= 1
            p[0] = <char>(48 + frac % 10)
            frac //= 10
            i -= 1
        p -= 1
        p[0] = b"."
    while True:
        p -= 1
        p[0] = <char>(48 + whole % 10)
        whole //= 10
        if whole == 0:
            break
    if neg:
        p -= 1
        p[0] = b"-"
    return PyBytes_FromStringAndSize(p, end - p)


def cost_headers(str receipt_id, object upstream_nano, object margin_nano, object total_nano):
    """The four receipt headers of a JSON answer (see ``usd_py.cost_headers``)."""
    return [
        (b"x-mesh-receipt-id", receipt_id.encode("ascii")),
        (b"x-mesh-upstream-cost-usd", usd_bytes(upstream_nano)),
        (b"x-mesh-margin-usd", usd_bytes(margin_nano)),
        (b"x-mesh-total-usd", usd_bytes(total_nano)),
    ]
