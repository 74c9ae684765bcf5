# cython: language_level=3
"""The money hot path's records, an account, a call's hold and its receipt, as C objects,
and the balance moves on them (compiled twin of ``records_py.py``, which says why; fields
and behaviour are the same)."""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.exc cimport PyErr_Occurred
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memcpy

import os

from meshfast_core._pricing cimport call_cost_c

from .limits import finish
from .records_py import (
    ID_COUNTER_START, RECEIPT_FIELDS, account_public, day_of, id_seed, month_of, receipt_as_dict,
    receipt_public, spend_buckets,
)

__all__ = (
    "ID_COUNTER_START", "RECEIPT_FIELDS", "Account", "Hold", "Receipt", "day_of", "month_of", "new_id",
    "priced_receipt", "release_hold", "reseed_ids", "settle_hold", "spend_buckets", "take_hold",
)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock, timespec* ts)
    int CLOCK_REALTIME
    int CLOCK_MONOTONIC


cdef inline double _clock(int clock) noexcept:
    # what time.time() (CLOCK_REALTIME) and time.monotonic() (CLOCK_MONOTONIC) read on Linux
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL


# -- ids (see records_py) ---------------------------------------------------------------
cdef char _process[16]
cdef unsigned long long _next = 0


def reseed_ids(str process_hex, unsigned long long start):
    """Start a new id sequence: ``process_hex`` (16 hex digits) and the first counter value."""
    global _next
    if len(process_hex) != 16 or not process_hex.isascii():
        raise ValueError("the process part of an id is 16 hex digits")
    memcpy(_process, PyUnicode_AsUTF8AndSize(process_hex, NULL), 16)
    _next = start


def _new_process_ids():
    reseed_ids(*id_seed())


def new_id(str prefix):
    """A unique id: ``prefix``, this process's part and the next counter value."""
    global _next
    cdef Py_ssize_t plen, n = 0, i
    cdef const char* p = PyUnicode_AsUTF8AndSize(prefix, &plen)
    cdef char digits[24]
    cdef char buf[96]
    cdef unsigned long long v = _next
    _next += 1
    if plen > 48:  # never on the hot path
        return f"{prefix}{(<char*>_process)[:16].decode()}{v}"
    while True:
        digits[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    memcpy(buf, p, plen)
    memcpy(buf + plen, _process, 16)
    for i in range(n):
        buf[plen + 16 + i] = digits[n - 1 - i]
    return PyUnicode_DecodeUTF8(buf, plen + 16 + n, NULL)


_new_process_ids()
os.register_at_fork(after_in_child=_new_process_ids)


@cython.auto_pickle(False)
@cython.final
cdef class Account:
    cdef public object id, name, balance_nano, held_nano, margin_ppm, fee_nano, created
    cdef public dict spend

    def __init__(self, id, name, balance_nano=0, held_nano=0, margin_ppm=None, fee_nano=None, created=0.0, spend=None):
        self.id = id
        self.name = name
        self.balance_nano = balance_nano
        self.held_nano = held_nano
        self.margin_ppm = margin_ppm
        self.fee_nano = fee_nano
        self.created = created
        self.spend = {} if spend is None else spend

    def public(self):
        return account_public(self)

    cdef tuple _fields(self):
        return (self.id, self.name, self.balance_nano, self.held_nano, self.margin_ppm, self.fee_nano, self.created, self.spend)

    def __repr__(self):
        return (
            f"Account(id={self.id!r}, name={self.name!r}, balance_nano={self.balance_nano!r}, "
            f"held_nano={self.held_nano!r}, margin_ppm={self.margin_ppm!r}, fee_nano={self.fee_nano!r}, "
            f"created={self.created!r}, spend={self.spend!r})"
        )

    def __eq__(self, other):
        if type(other) is not Account:
            return NotImplemented
        return self._fields() == (<Account>other)._fields()

    __hash__ = None


@cython.auto_pickle(False)
@cython.final
cdef class Hold:
    cdef public object id, account_id, key_id, amount_nano, admission
    cdef public bint closed

    def __init__(self, id, account_id, key_id, amount_nano, admission=None, bint closed=False):
        self.id = id
        self.account_id = account_id
        self.key_id = key_id
        self.amount_nano = amount_nano
        self.admission = admission
        self.closed = closed

    def __repr__(self):
        return (
            f"Hold(id={self.id!r}, account_id={self.account_id!r}, key_id={self.key_id!r}, "
            f"amount_nano={self.amount_nano!r}, admission={self.admission!r}, closed={self.closed!r})"
        )

    def __eq__(self, other):
        if type(other) is not Hold:
            return NotImplemented
        cdef Hold o = <Hold>other
        return (self.id, self.account_id, self.key_id, self.amount_nano, self.admission, self.closed) == (
            o.id, o.account_id, o.key_id, o.amount_nano, o.admission, o.closed
        )

    __hash__ = None


@cython.auto_pickle(False)
@cython.final
cdef class Receipt:
    cdef public object id, created, account_id, project_id, key_id, kind, model, route_mode
    cdef public object provider, upstream_model, privacy, prompt_tokens, completion_tokens
    cdef public object cached_tokens, tokens_source, upstream_cost_nano, margin_nano, total_nano
    cdef public object latency_ms, ttft_ms, status, attempts
    cdef public bint stream, capped

    def __init__(
        self, id, created, account_id, project_id, key_id, kind, model, route_mode, provider,
        upstream_model, privacy, prompt_tokens, completion_tokens, cached_tokens, tokens_source,
        upstream_cost_nano, margin_nano, total_nano, latency_ms, ttft_ms, bint stream, status,
        bint capped=False, attempts="",
    ):
        self.id = id
        self.created = created
        self.account_id = account_id
        self.project_id = project_id
        self.key_id = key_id
        self.kind = kind
        self.model = model
        self.route_mode = route_mode
        self.provider = provider
        self.upstream_model = upstream_model
        self.privacy = privacy
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.cached_tokens = cached_tokens
        self.tokens_source = tokens_source
        self.upstream_cost_nano = upstream_cost_nano
        self.margin_nano = margin_nano
        self.total_nano = total_nano
        self.latency_ms = latency_ms
        self.ttft_ms = ttft_ms
        self.stream = stream
        self.status = status
        self.capped = capped
        self.attempts = attempts

    cpdef tuple row(self):
        """The fields in order, ``stream`` and ``capped`` as 0 / 1 (see ``records_py``)."""
        return (
            self.id, self.created, self.account_id, self.project_id, self.key_id, self.kind, self.model,
            self.route_mode, self.provider, self.upstream_model, self.privacy, self.prompt_tokens,
            self.completion_tokens, self.cached_tokens, self.tokens_source, self.upstream_cost_nano,
            self.margin_nano, self.total_nano, self.latency_ms, self.ttft_ms, 1 if self.stream else 0,
            self.status, 1 if self.capped else 0, self.attempts,
        )

    def as_dict(self):
        return receipt_as_dict(self)

    def public(self):
        return receipt_public(self)

    def __repr__(self):
        return "Receipt(" + ", ".join([f"{k}={v!r}" for k, v in receipt_as_dict(self).items()]) + ")"

    def __eq__(self, other):
        if type(other) is not Receipt:
            return NotImplemented
        return self.row() == (<Receipt>other).row()

    __hash__ = None


def priced_receipt(
    receipt_id, Account account, key, endpoint, kind, requested_model, counts, estimated_prompt,
    estimated_completion, double started, double first_byte, bint stream, status, route_mode,
    attempts, margin_ppm, fee_nano,
):
    """The receipt of a call that ends now (see ``records_py.priced_receipt``)."""
    cdef Receipt r = Receipt.__new__(Receipt)
    cdef double now = _clock(CLOCK_MONOTONIC)
    if counts is not None:
        prompt, completion, cached = counts
        r.tokens_source = "upstream"
    else:
        prompt, completion, cached = estimated_prompt, estimated_completion, 0
        r.tokens_source = "estimated"
    own = account.margin_ppm
    if own is not None:
        margin_ppm = own
    own = account.fee_nano
    if own is not None:
        fee_nano = own
    upstream, margin = call_cost_c(
        prompt, completion, cached, endpoint.input_nano_per_mtok, endpoint.cached_input_nano_per_mtok,
        endpoint.output_nano_per_mtok, margin_ppm, fee_nano,
    )
    r.id = receipt_id
    r.created = _clock(CLOCK_REALTIME)
    r.account_id = account.id
    r.project_id = key.project_id
    r.key_id = key.id
    r.kind = kind
    r.model = requested_model
    r.route_mode = route_mode
    r.provider = endpoint.provider.name
    r.upstream_model = endpoint.model.upstream
    r.privacy = endpoint.privacy
    r.prompt_tokens = prompt
    r.completion_tokens = completion
    r.cached_tokens = cached
    r.upstream_cost_nano = upstream
    r.margin_nano = margin
    r.total_nano = upstream + margin
    r.latency_ms = (now - started) * 1000
    r.ttft_ms = (first_byte - started) * 1000 if first_byte else None
    r.stream = stream
    r.status = status
    r.capped = False
    r.attempts = attempts
    return r


def take_hold(Account account, key_id, amount_nano, admission):
    """Reserve ``amount_nano`` of the account's available balance (see ``records_py.take_hold``)."""
    if amount_nano > account.balance_nano - account.held_nano:
        return None
    account.held_nano = account.held_nano + amount_nano
    cdef Hold h = Hold.__new__(Hold)
    h.id = ""
    h.account_id = account.id
    h.key_id = key_id
    h.amount_nano = amount_nano
    h.admission = admission
    h.closed = False
    return h


# the UTC day of the last settlement, [start, end) in epoch seconds, and its (month, day)
cdef double _day_start = 0.0, _day_end = -1.0
cdef str _month = "", _day = ""


cdef inline int _add(dict spend, str bucket, total) except -1:
    cdef PyObject* v = PyDict_GetItemWithError(spend, bucket)
    if v is NULL:
        if PyErr_Occurred():
            return -1
        return PyDict_SetItem(spend, bucket, total)
    return PyDict_SetItem(spend, bucket, <object>v + total)


cdef inline int _release(Account account, Hold hold, used_tokens) except -1:
    if not hold.closed:
        hold.closed = True
        account.held_nano = account.held_nano - hold.amount_nano
        if type(hold.admission) is not tuple:
            finish(hold.admission, _clock(CLOCK_MONOTONIC), hold.amount_nano, used_tokens)
    return 0


def release_hold(Account account, Hold hold, used_tokens):
    """Close a hold, once (see ``records_py.release_hold``)."""
    _release(account, hold, used_tokens)


def settle_hold(Account account, Hold hold, Receipt receipt):
    """Settle a call in memory; the store writer's change (see ``records_py.settle_hold``)."""
    global _day_start, _day_end, _month, _day
    _release(account, hold, receipt.prompt_tokens + receipt.completion_tokens)
    available = account.balance_nano - account.held_nano
    if receipt.total_nano > available:
        receipt.total_nano = max(available, 0)
        receipt.margin_nano = receipt.total_nano - receipt.upstream_cost_nano
        receipt.capped = True
    total = receipt.total_nano
    account.balance_nano = account.balance_nano - total
    cdef double created = receipt.created
    if not (_day_start <= created < _day_end):
        _month, _day = spend_buckets(created)
        _day_start = created // 86400 * 86400
        _day_end = _day_start + 86400
    adm = hold.admission
    key_state, project_state = adm if type(adm) is tuple else adm.states
    _add(account.spend, _month, total)
    for spend in (key_state.spend, project_state.spend):
        _add(<dict?>spend, _month, total)
        _add(<dict?>spend, _day, total)
    return ("settle", receipt.row(), account.id, total)
