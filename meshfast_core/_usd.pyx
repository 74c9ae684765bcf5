# cython: language_level=3
"""nano-USD as decimal bytes (compiled twin of ``usd_py.py``; see it for the format)."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcpy

from .usd_py import usd_bytes as _usd_bytes_py

__all__ = ("cost_headers", "usd_bytes")

cdef object _py = _usd_bytes_py

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

# "00" "01" ... "99": two digits per division
cdef const char* _PAIRS = (
    b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    b"8081828384858687888990919293949596979899"
)


cdef bytes _format(long long v):
    # v nano-USD as usd_py.usd_bytes writes it
    cdef char buf[40]
    cdef char* mid = buf + 22  # the decimal point, when there is a fraction
    cdef char* p = mid
    cdef char* end = mid
    cdef unsigned long long u = <unsigned long long>(-(v + 1)) + 1 if v < 0 else <unsigned long long>v
    cdef unsigned long long whole = u // 1000000000
    cdef unsigned int frac = <unsigned int>(u % 1000000000), r
    cdef int i
    if frac:
        # nine digits after the point, then the trailing zeros dropped
        end = mid + 10
        for i in range(4):
            r = frac % 100
            frac //= 100
            end -= 2
            memcpy(end, _PAIRS + 2 * r, 2)
        (end - 1)[0] = <char>(48 + frac)
        mid[0] = b"."
        end = mid + 10
        while (end - 1)[0] == b"0":
            end -= 1
    while whole >= 100:
        r = <unsigned int>(whole % 100)
        whole //= 100
        p -= 2
        memcpy(p, _PAIRS + 2 * r, 2)
    if whole >= 10:
        p -= 2
        memcpy(p, _PAIRS + 2 * whole, 2)
    else:
        p -= 1
        p[0] = <char>(48 + whole)
    if v < 0:
        p -= 1
        p[0] = b"-"
    return PyBytes_FromStringAndSize(p, end - p)


cdef bytes usd_of(object nano):
    cdef int overflow
    cdef long long v
    if type(nano) is not int:
        return _py(nano)
    v = PyLong_AsLongLongAndOverflow(nano, &overflow)
    if overflow:  # beyond 9.2 billion USD: the twin is exact for any size
        return _py(nano)
    return _format(v)


cpdef bytes usd_bytes(object nano):
    return usd_of(nano)


def cost_headers(str receipt_id, object upstream_nano, object margin_nano, object total_nano):
    """The four receipt headers of a JSON answer (see ``usd_py.cost_headers``)."""
    cdef Py_ssize_t size
    if receipt_id is None:
        receipt_id.encode()  # the twin's AttributeError
    # the id's UTF-8, as str.encode() gives it (an ASCII str hands out its own buffer)
    cdef const char* rid = PyUnicode_AsUTF8AndSize(receipt_id, &size)
    return [
        (b"x-mesh-receipt-id", PyBytes_FromStringAndSize(rid, size)),
        (b"x-mesh-upstream-cost-usd", usd_of(upstream_nano)),
        (b"x-mesh-margin-usd", usd_of(margin_nano)),
        (b"x-mesh-total-usd", usd_of(total_nano)),
    ]
