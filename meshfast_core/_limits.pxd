# Declarations other compiled modules cimport: the limit classes' C fields (``_records``'s
# ``settle_hold`` counts a settlement in a ``Limiter``'s running totals directly).

cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.exc cimport PyErr_Occurred
from cpython.object cimport PyObject

cdef extern from *:
    """
    typedef __int128 mf_i128;
    """
    ctypedef long long i128 "mf_i128"


@cython.final
cdef class Window:
    cdef long long _limit
    cdef double _period
    cdef long long _p  # period in ns == the emission interval in 1/limit ns
    cdef i128 _tat  # theoretical arrival time in 1/limit ns; >= 0
    cdef i128 _edge  # (_p + 1) * _limit: grant iff the new tat < now + _edge

    cdef bint _take(self, long long now_ns, long long c) noexcept
    cdef void _give(self, long long now_ns, long long u) noexcept
    cdef void _more(self, long long now_ns, long long u) noexcept
    cdef long long _remaining(self, long long now_ns) noexcept
    cdef double _reset(self, long long now_ns) noexcept
    cdef double _retry(self, long long now_ns, long long c) noexcept


@cython.final
cdef class Concurrency:
    cdef long long _limit
    cdef long long _active


cdef class Limiter:
    cdef public Window rpm
    cdef public Window tpm
    cdef public Concurrency concurrency
    cdef public object daily_nano
    cdef public object monthly_nano
    cdef public object held_nano
    cdef public object rpm_header
    cdef public object tpm_header
    # settled spend: the buckets before the current ones, "YYYY-MM" / "YYYY-MM-DD" ->
    # nano-USD (the ``spend`` property folds the running totals in and returns it)
    cdef dict _spend
    # the running totals of the current month and day (``None``: none pending), added by
    # ``_records.settle_hold`` in C while they fit in int64; the number of a bucket is
    # ``_spend``'s plus the running total whose bucket it is
    cdef str _cur_month
    cdef str _cur_day
    cdef long long _month_total
    cdef long long _day_total


cdef inline int spend_add(dict spend, str bucket, total) except -1:
    # spend[bucket] += total (a missing bucket counts 0), with one lookup
    cdef PyObject* v = PyDict_GetItemWithError(spend, bucket)
    if v is NULL:
        if PyErr_Occurred():
            return -1
        return PyDict_SetItem(spend, bucket, total)
    return PyDict_SetItem(spend, bucket, <object>v + total)
