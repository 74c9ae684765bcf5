# cython: language_level=3
"""The money hot path's records, an account, a call's hold and its receipt, as C objects,
and the balance moves on them (compiled twin of ``records_py.py``, which says why; fields
and behaviour are the same)."""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_Clear, PyErr_ExceptionMatches
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_CheckExact
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_GET_LENGTH
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.string cimport memcpy, memmove, memset

import marshal
import os
from types import MemberDescriptorType as _MemberDescriptor

from meshfast_core._limits cimport Limiter, spend_add
from meshfast_core._pricing cimport Tariff, call_cost_c, call_cost_ll, get_ll, hold_worst_c
from meshfast_core._usd cimport usd_of

from .keys import bearer_digest
from .limits import finish
from .sse import usage_counts as _usage_counts
from .sse import usage_with_costs as _usage_with_costs
from .records_py import (
    ID_COUNTER_START, RECEIPT_FIELDS, account_public, day_of, id_seed, month_of, receipt_as_dict,
    receipt_public, spend_buckets,
)
from .records_py import hold_amount as _hold_amount_py
from .records_py import take_hold as _take_hold_py

__all__ = (
    "ID_COUNTER_START", "RECEIPT_FIELDS", "Account", "Frame", "Gate", "Hold", "KeyEntry", "Receipt", "Settler",
    "asked_privacy", "day_of", "hold_amount", "month_of", "new_id", "priced_receipt", "release_hold", "reseed_ids",
    "settle_hold", "spend_buckets", "take_hold",
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

cdef extern from *:
    bint __builtin_saddll_overflow(long long a, long long b, long long* res) nogil

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    const char* _utf8_or_null "PyUnicode_AsUTF8AndSize"(object o, Py_ssize_t* size)
    int PyFloat_Pack8(double x, char* p, int le) except -1


# -- ids (see records_py) ---------------------------------------------------------------
cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    void* PyUnicode_DATA(object o)
    bint PyUnicode_IS_COMPACT_ASCII(object o)

cdef char _process[16]
# the next counter value's decimal digits, counted up in place (new_id never divides)
cdef char _digits[40]
cdef Py_ssize_t _ndigits = 0


def reseed_ids(str process_hex, unsigned long long start):
    """Start a new id sequence: ``process_hex`` (16 hex digits) and the first counter value."""
    global _ndigits
    cdef char tmp[24]
    cdef Py_ssize_t n = 0, i
    if len(process_hex) != 16 or not process_hex.isascii():
        raise ValueError("the process part of an id is 16 hex digits")
    memcpy(_process, PyUnicode_AsUTF8AndSize(process_hex, NULL), 16)
    while True:
        tmp[n] = <char>(48 + start % 10)
        n += 1
        start //= 10
        if start == 0:
            break
    for i in range(n):
        _digits[i] = tmp[n - 1 - i]
    _ndigits = n


def _new_process_ids():
    reseed_ids(*id_seed())


def new_id(str prefix):
    """A unique id: ``prefix``, this process's part and the next counter value."""
    global _ndigits
    cdef Py_ssize_t plen = PyUnicode_GET_LENGTH(prefix), n = _ndigits, i
    cdef char* d
    if plen <= 48 and PyUnicode_IS_COMPACT_ASCII(prefix):
        s = PyUnicode_New(plen + 16 + n, 127)  # an ASCII str, filled in place
        d = <char*>PyUnicode_DATA(s)
        memcpy(d, PyUnicode_DATA(prefix), plen)
        memcpy(d + plen, _process, 16)
        memcpy(d + plen + 16, _digits, n)
    else:  # never on the hot path
        s = prefix + (<char*>_process)[:16].decode() + _digits[:n].decode()
    i = n - 1
    while i >= 0 and _digits[i] == 57:  # '9': 0 and carry
        _digits[i] = 48
        i -= 1
    if i >= 0:
        _digits[i] += 1
    elif n < 39:  # all nines: one digit more
        memmove(_digits + 1, _digits, n)
        _digits[0] = 49
        _ndigits = n + 1
    else:
        raise OverflowError("id counter exhausted")
    return s


_new_process_ids()
os.register_at_fork(after_in_child=_new_process_ids)


@cython.auto_pickle(False)
@cython.final
cdef class Account:
    cdef public object id, name, balance_nano, held_nano, margin_ppm, fee_nano, created
    # spend by month: ``_spend`` holds the months before the current one, ``_month_total``
    # the running total of ``_cur_month`` (``None``: none pending), which settle_hold adds
    # to in C while it fits in int64; the ``spend`` property folds it in
    cdef dict _spend
    cdef str _cur_month
    cdef long long _month_total

    def __init__(self, id, name, balance_nano=0, held_nano=0, margin_ppm=None, fee_nano=None, created=0.0, spend=None):
        self.id = id
        self.name = name
        self.balance_nano = balance_nano
        self.held_nano = held_nano
        self.margin_ppm = margin_ppm
        self.fee_nano = fee_nano
        self.created = created
        self.spend = {} if spend is None else spend

    @property
    def spend(self):
        """Settled spend by month (``"YYYY-MM"`` -> nano-USD): the dict itself, with the
        running total folded in first (so it may be changed)."""
        if self._cur_month is not None:
            spend_add(self._spend, self._cur_month, self._month_total)
            self._cur_month = None
            self._month_total = 0
        return self._spend

    @spend.setter
    def spend(self, dict spend not None):
        self._spend = spend
        self._cur_month = None
        self._month_total = 0

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
    receipt_id, Account account not None, key, endpoint, kind, requested_model, counts, estimated_prompt,
    estimated_completion, double started, double first_byte, bint stream, status, route_mode,
    attempts, margin_ppm, fee_nano,
):
    """The receipt of a call that ends now (see ``records_py.priced_receipt``)."""
    return _priced(
        receipt_id, account, key, endpoint, kind, requested_model, counts, estimated_prompt, estimated_completion,
        started, first_byte, stream, status, route_mode, attempts, margin_ppm, fee_nano,
    )


cdef Receipt _priced(
    receipt_id, Account account, key, endpoint, kind, requested_model, counts, estimated_prompt,
    estimated_completion, double started, double first_byte, bint stream, status, route_mode,
    attempts, margin_ppm, fee_nano,
):
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
    cdef Tariff t = None
    cdef long long p, c, k, ppm, fee, up, mg, total
    tariff = getattr(endpoint, "tariff", None)
    if type(tariff) is Tariff:  # an Endpoint: prices and names from its tariff's fields
        t = <Tariff>tariff
        if (
            t.prices_ok and t.cached_ok and get_ll(prompt, &p) and get_ll(completion, &c) and get_ll(cached, &k)
            and get_ll(margin_ppm, &ppm) and get_ll(fee_nano, &fee) and k <= p
            and not call_cost_ll(p, c, k, t.ip, t.kp, t.op, ppm, fee, &up, &mg)
            and not __builtin_saddll_overflow(up, mg, &total)
        ):
            r.upstream_cost_nano = up
            r.margin_nano = mg
            r.total_nano = total
        else:  # what the C path does not cover: call_cost's (the twin's) answer
            upstream, margin = call_cost_c(
                prompt, completion, cached, t.input_price, t.cached_price, t.output_price, margin_ppm, fee_nano,
            )
            r.upstream_cost_nano = upstream
            r.margin_nano = margin
            r.total_nano = upstream + margin
    else:  # anything else with the endpoint's attributes
        upstream, margin = call_cost_c(
            prompt, completion, cached, endpoint.input_nano_per_mtok, endpoint.cached_input_nano_per_mtok,
            endpoint.output_nano_per_mtok, margin_ppm, fee_nano,
        )
        r.upstream_cost_nano = upstream
        r.margin_nano = margin
        r.total_nano = upstream + margin
    r.id = receipt_id
    r.created = _clock(CLOCK_REALTIME)
    r.account_id = account.id
    r.project_id = key.project_id
    r.key_id = key.id
    r.kind = kind
    r.model = requested_model
    r.route_mode = route_mode
    if t is not None:
        r.provider = t.provider
        r.upstream_model = t.upstream
        r.privacy = t.privacy
    else:
        r.provider = endpoint.provider.name
        r.upstream_model = endpoint.model.upstream
        r.privacy = endpoint.privacy
    r.prompt_tokens = prompt
    r.completion_tokens = completion
    r.cached_tokens = cached
    r.latency_ms = (now - started) * 1000
    r.ttft_ms = (first_byte - started) * 1000 if first_byte else None
    r.stream = stream
    r.status = status
    r.capped = False
    r.attempts = attempts
    return r


def take_hold(Account account not None, key_id, amount_nano, admission):
    """Reserve ``amount_nano`` of the account's available balance (see ``records_py.take_hold``)."""
    return _take(account, key_id, amount_nano, admission)


cdef Hold _take(Account account, key_id, amount_nano, admission):
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


# -- a call's admission on the embedded store (see records_py.Gate) ----------------------
cdef object _bearer_digest = bearer_digest


cdef inline object _amount(Account account, candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano):
    # the account's own margin and fee, else the configured ones
    return hold_worst_c(
        candidates, prompt_tokens, asked, n, max_output, margin_ppm if account.margin_ppm is None else account.margin_ppm,
        fee_nano if account.fee_nano is None else account.fee_nano,
    )


def hold_amount(account, candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano):
    """``(nano-USD, tokens)`` a call's hold reserves (see ``records_py.hold_amount``)."""
    if type(account) is Account:
        return _amount(<Account>account, candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
    return _hold_amount_py(account, candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)


cdef object _asked(dict req, raw):
    if raw is None and "mesh" not in req:
        return ""
    privacy = (raw or b"").decode("latin-1")
    mesh = req.pop("mesh", None)
    if not privacy and isinstance(mesh, dict):
        privacy = mesh.get("privacy") or ""
    return privacy


def asked_privacy(dict req not None, raw):
    """The privacy class a call asks for (see ``records_py.asked_privacy``)."""
    return _asked(req, raw)


@cython.auto_pickle(False)
@cython.final
cdef class KeyEntry:
    """What the embedded store's ``Gate`` knows of one live key (see ``records_py.KeyEntry``)."""

    cdef readonly object key, key_id, account, privacy
    cdef readonly tuple states
    cdef readonly dict served
    cdef readonly bint plain

    def __init__(self, key, account, key_state, project_state, plain, privacy, dict served not None):
        self.key = key
        self.key_id = key.id
        self.account = account
        self.states = (key_state, project_state)
        self.plain = bool(plain)
        self.privacy = privacy
        self.served = served

    def __repr__(self):
        return f"KeyEntry({self.key_id!r}, privacy={self.privacy!r})"


@cython.auto_pickle(False)
@cython.final
cdef class Gate:
    """A call's admission on the embedded store in two C calls around the router (see
    ``records_py.Gate``)."""

    cdef readonly dict entries
    cdef public object failed
    cdef object _hold, _rate_headers, _refuse, _unavailable

    def __init__(self, dict entries not None, hold, rate_headers, refuse, unavailable):
        self.entries = entries
        self.failed = None
        self._hold = hold
        self._rate_headers = rate_headers
        self._refuse = refuse
        self._unavailable = unavailable

    def enter(self, auth, privacy, dict req not None):
        """``(key, account, privacy served, max output asked, entry)``, or ``None`` (see
        ``records_py.Gate.enter``)."""
        if type(auth) is not bytes:
            return None
        digest = _bearer_digest(auth)
        if digest is None:
            return None
        found = self.entries.get(digest)
        if found is None:
            return None
        cdef KeyEntry entry = <KeyEntry?>found
        if privacy is None and "mesh" not in req:
            served = entry.privacy  # the common case: nothing asked
        else:
            asked = _asked(req, privacy)
            if not asked:
                served = entry.privacy
            elif type(asked) is str:
                served = entry.served.get(asked, asked)
            else:
                served = asked
        return entry.key, entry.account, served, req.get("max_completion_tokens") or req.get("max_tokens") or 0, entry

    def hold(self, call, KeyEntry entry not None, candidates, prompt_tokens, asked, dict req not None, max_output,
             margin_ppm, fee_nano):
        """The call's hold (see ``records_py.Gate.hold``)."""
        account = entry.account
        n = req.get("n") or 1
        if type(account) is Account:
            amount, tokens = _amount(<Account>account, candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
        else:
            amount, tokens = _hold_amount_py(account, candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
        if not entry.plain:
            hold = self._hold(entry.key, amount, tokens)
            call.rate_headers = self._rate_headers(hold)
            return hold
        if self.failed is not None:
            raise self._unavailable()
        if type(account) is Account:
            hold = _take(<Account>account, entry.key_id, amount, entry.states)
        else:
            hold = _take_hold_py(account, entry.key_id, amount, entry.states)
        if hold is None:
            raise self._refuse(amount, account.balance_nano, account.held_nano)
        return hold


# the UTC day of the last settlement, [start, end) in epoch seconds, and its (month, day)
cdef double _day_start = 0.0, _day_end = -1.0
cdef str _month = "", _day = ""


# Spend is counted in running totals, C fields of the records (the current month's of an
# Account, the current month's and day's of a Limiter), and in the record's spend dict for
# anything else: readers add the two (the records' ``spend`` property folds them first).
cdef inline bint _run(long long* running, long long t) noexcept:
    # t added to a running total; False (nothing added) if the sum leaves int64
    cdef long long s
    if __builtin_saddll_overflow(running[0], t, &s):
        return False
    running[0] = s
    return True


cdef str _start(dict spend, str cur, long long* running, str bucket, total, long long t, bint c_total):
    # the slow path: a running total of another bucket (a new month or day), or one that
    # would leave int64, or a total not in C. Returns the bucket now running (or None).
    if cur is not None:
        if c_total and cur == bucket and _run(running, t):
            return bucket  # the same bucket, as another str object
        spend_add(spend, cur, running[0])
        running[0] = 0
    if c_total:
        running[0] = t
        return bucket
    spend_add(spend, bucket, total)
    return None


cdef inline int _count(state, total, long long t, bint c_total) except -1:
    # a settlement in a key's or project's month and day
    cdef Limiter st
    if isinstance(state, Limiter):
        st = <Limiter>state
        if not (c_total and st._cur_month is _month and _run(&st._month_total, t)):
            st._cur_month = _start(st._spend, st._cur_month, &st._month_total, _month, total, t, c_total)
        if not (c_total and st._cur_day is _day and _run(&st._day_total, t)):
            st._cur_day = _start(st._spend, st._cur_day, &st._day_total, _day, total, t, c_total)
        return 0
    spend = state.spend  # any other record with a spend dict
    spend_add(<dict?>spend, _month, total)
    spend_add(<dict?>spend, _day, total)
    return 0


cdef inline int _release(Account account, Hold hold, used_tokens) except -1:
    if not hold.closed:
        hold.closed = True
        account.held_nano = account.held_nano - hold.amount_nano
        if type(hold.admission) is not tuple:
            finish(hold.admission, _clock(CLOCK_MONOTONIC), hold.amount_nano, used_tokens)
    return 0


def release_hold(Account account not None, Hold hold not None, used_tokens):
    """Close a hold, once (see ``records_py.release_hold``)."""
    _release(account, hold, used_tokens)


def settle_hold(Account account not None, Hold hold not None, Receipt receipt not None, Frame frame not None):
    """Settle a call in memory and append the store writer's change to ``frame`` (see
    ``records_py.settle_hold``)."""
    _settle_hold(account, hold, receipt, frame)


cdef int _settle_hold(Account account, Hold hold, Receipt receipt, Frame frame) except -1:
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
    # the total in C when it is an int that fits in int64 (else added as a Python object)
    cdef int overflow = 1
    cdef long long t = 0
    if PyLong_CheckExact(total):
        t = PyLong_AsLongLongAndOverflow(total, &overflow)
    cdef bint c_total = not overflow
    if not (c_total and account._cur_month is _month and _run(&account._month_total, t)):
        account._cur_month = _start(account._spend, account._cur_month, &account._month_total, _month, total, t, c_total)
    _count(key_state, total, t, c_total)
    _count(project_state, total, t, c_total)
    frame._settle(receipt, account.id, total)
    return 0


# -- the store writer's frame ------------------------------------------------------------
DEF HEAD = 9  # the frame's length (4 bytes, big-endian), then marshal's list: "[", count (4, little-endian)
DEF KEEP = 1 << 20  # a buffer grown beyond this by a backlog is given back after it is sent

# a settle change is a tuple of 4 ("settle", row, account id, total), its row a tuple of 24
cdef str _SETTLE = "settle"
if len(RECEIPT_FIELDS) != 24:
    raise ImportError("meshfast_core._records was built for 24 receipt fields: rebuild it")


@cython.auto_pickle(False)
@cython.final
cdef class Frame:
    """The store writer's changes not yet sent, each already in ``marshal`` format (see
    ``records_py.Frame``): ``settle_hold`` writes a settle change here field by field in C,
    without building its row or change tuple, and writes a shared string once per frame
    (flagged), then a back-reference to it; ``put`` appends any other change by
    ``marshal.dumps(change, 2)``, which has no back-references (version 3 and up number
    the objects of each dump, which would clash with the frame's). ``take()`` is the frame
    of all of them, ready for the writer's pipe."""

    cdef char* buf
    cdef Py_ssize_t size, cap
    cdef readonly Py_ssize_t count
    # the strings this frame's settles share (an account's, key's, model's...): the first
    # time one is written it is flagged (marshal's FLAG_REF), then referred back to by its
    # number ("r"), as marshal.dumps does; open addressing by identity, held until taken
    cdef PyObject** rkeys
    cdef Py_ssize_t* rvals
    cdef Py_ssize_t rmask
    cdef list held

    def __cinit__(self):
        self.size = HEAD
        self.held = []

    def __dealloc__(self):
        PyMem_Free(self.buf)
        PyMem_Free(self.rkeys)
        PyMem_Free(self.rvals)

    def __len__(self):
        return self.count

    cdef inline char* _room(self, Py_ssize_t n) except NULL:
        # n bytes at the end of the frame, which the caller fills
        cdef Py_ssize_t need = self.size + n, cap
        cdef void* p
        if need > self.cap:
            cap = self.cap * 2 if self.cap else 4096
            while cap < need:
                cap *= 2
            p = PyMem_Realloc(self.buf, cap)
            if p == NULL:
                raise MemoryError()
            self.buf, self.cap = <char*>p, cap
        cdef char* at = self.buf + self.size
        self.size = need
        return at

    cdef inline int _bytes(self, const char* p, Py_ssize_t n) except -1:
        memcpy(self._room(n), p, n)
        return 0

    cdef int _marshal(self, value) except -1:
        # anything the fast paths below do not write, as marshal writes it (version 2: no
        # back-references, so it can stand next to the others)
        cdef bytes b = marshal.dumps(value, 2)
        return self._bytes(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef inline int _int32(self, char* at, long v) noexcept:
        cdef unsigned long u = <unsigned long>v
        at[0] = <char>(u & 0xFF)
        at[1] = <char>((u >> 8) & 0xFF)
        at[2] = <char>((u >> 16) & 0xFF)
        at[3] = <char>((u >> 24) & 0xFF)
        return 0

    cdef int _int(self, v) except -1:
        # an exact int: "i" when it fits in 32 bits, else "l" (15-bit digits), as marshal does
        cdef int overflow = 0
        cdef long long x = PyLong_AsLongLongAndOverflow(v, &overflow)
        cdef unsigned long long a
        cdef int ndigits = 0, k
        cdef unsigned int digit
        cdef char* at
        if overflow:
            return self._marshal(v)
        if -2147483648 <= x <= 2147483647:
            at = self._room(5)
            at[0] = b"i"
            self._int32(at + 1, <long>x)
            return 0
        a = (0ULL - <unsigned long long>x) if x < 0 else <unsigned long long>x
        while ndigits < 5 and (a >> (15 * ndigits)):
            ndigits += 1
        at = self._room(5 + 2 * ndigits)
        at[0] = b"l"
        self._int32(at + 1, -ndigits if x < 0 else ndigits)
        for k in range(ndigits):
            digit = <unsigned int>((a >> (15 * k)) & 0x7FFF)
            at[5 + 2 * k] = <char>(digit & 0xFF)
            at[6 + 2 * k] = <char>(digit >> 8)
        return 0

    cdef int _str(self, s, char flag, char short=122) except -1:
        # an exact str: "z" (short ASCII; ``short``: "Z" for one marshal.loads interns), "a"
        # (ASCII) or "u" (UTF-8), as marshal reads them, with ``flag`` (0 or FLAG_REF) on its
        # type; 1 if so written, 0 if by marshal (unflagged)
        cdef Py_ssize_t n
        cdef const char* p = _utf8_or_null(s, &n)
        cdef char* at
        if p == NULL:
            if not PyErr_ExceptionMatches(UnicodeEncodeError):
                return -1
            PyErr_Clear()
            self._marshal(s)  # a lone surrogate: marshal passes it through
            return 0
        if n > 0x7FFFFFFF:
            raise ValueError("a str too long for a frame")
        if n != PyUnicode_GET_LENGTH(s):
            at = self._room(5 + n)
            at[0] = <char>(117 | flag)  # "u"
        elif n < 256:
            at = self._room(2 + n)
            at[0] = <char>(short | flag)
            at[1] = <char>n
            memcpy(at + 2, p, n)
            return 1
        else:
            at = self._room(5 + n)
            at[0] = <char>(97 | flag)  # "a"
        self._int32(at + 1, <long>n)
        memcpy(at + 5, p, n)
        return 1

    cdef int _rehash(self, Py_ssize_t slots) except -1:
        # a table of ``slots`` (a power of 2) for the strings held
        cdef void* k = PyMem_Realloc(self.rkeys, slots * sizeof(PyObject*))
        if k == NULL:
            raise MemoryError()
        self.rkeys = <PyObject**>k
        k = PyMem_Realloc(self.rvals, slots * sizeof(Py_ssize_t))
        if k == NULL:
            raise MemoryError()
        self.rvals = <Py_ssize_t*>k
        memset(self.rkeys, 0, slots * sizeof(PyObject*))
        self.rmask = slots - 1
        cdef Py_ssize_t n, at
        for n in range(len(self.held)):
            at = self._slot(<PyObject*>self.held[n])
            self.rkeys[at] = <PyObject*>self.held[n]
            self.rvals[at] = n
        return 0

    cdef inline Py_ssize_t _slot(self, PyObject* o) noexcept:
        # o's slot: where it is, else the empty one it goes in
        cdef size_t h = (<size_t>o >> 4) * <size_t>0x9E3779B97F4A7C15ULL
        cdef Py_ssize_t at = <Py_ssize_t>((h >> 32) & <size_t>self.rmask)
        while self.rkeys[at] != NULL and self.rkeys[at] != o:
            at = (at + 1) & self.rmask
        return at

    cdef int _shared(self, s, char short=122) except -1:
        # a str that other changes of the frame may carry too: a reference to it once written
        cdef Py_ssize_t at, n
        cdef char* w
        if type(s) is not str:
            return self._value(s)
        if 2 * (len(self.held) + 1) > self.rmask:
            self._rehash(64 if self.rkeys == NULL else 2 * (self.rmask + 1))
        at = self._slot(<PyObject*>s)
        if self.rkeys[at] != NULL:
            w = self._room(5)
            w[0] = b"r"
            self._int32(w + 1, <long>self.rvals[at])
            return 0
        if self._str(s, <char>0x80, short):
            n = len(self.held)
            self.held.append(s)
            self.rkeys[at] = <PyObject*>s
            self.rvals[at] = n
        return 0

    cdef int _float(self, double d) except -1:
        cdef char* at = self._room(9)
        at[0] = b"g"
        PyFloat_Pack8(d, at + 1, 1)
        return 0

    cdef inline int _value(self, v) except -1:
        t = type(v)
        if t is str:
            self._str(v, 0)
            return 0
        if t is int:
            return self._int(v)
        if t is float:
            return self._float(<double>v)
        if v is None:
            self._room(1)[0] = b"N"
            return 0
        return self._marshal(v)  # True, False and anything else

    cdef inline int _flag(self, bint v) except -1:
        cdef char* at = self._room(5)
        at[0] = b"i"
        self._int32(at + 1, 1 if v else 0)
        return 0

    cdef int _settle(self, Receipt r, account_id, total) except -1:
        # ("settle", r.row(), account_id, total), without building either tuple; all or nothing
        cdef Py_ssize_t start = self.size, refs = len(self.held)
        try:
            self._bytes(b")\x04", 2)
            self._shared(_SETTLE, 90)  # "Z": interned, so the twin writer's == "settle" is one identity check
            self._bytes(b")\x18", 2)
            self._value(r.id)
            self._value(r.created)
            self._shared(r.account_id)
            self._shared(r.project_id)
            self._shared(r.key_id)
            self._shared(r.kind)
            self._shared(r.model)
            self._shared(r.route_mode)
            self._shared(r.provider)
            self._shared(r.upstream_model)
            self._shared(r.privacy)
            self._value(r.prompt_tokens)
            self._value(r.completion_tokens)
            self._value(r.cached_tokens)
            self._shared(r.tokens_source)
            self._value(r.upstream_cost_nano)
            self._value(r.margin_nano)
            self._value(r.total_nano)
            self._value(r.latency_ms)
            self._value(r.ttft_ms)
            self._flag(r.stream)
            self._shared(r.status)
            self._flag(r.capped)
            self._shared(r.attempts)
            self._shared(account_id)
            self._value(total)
        except BaseException:
            self.size = start
            if len(self.held) > refs:  # the strings this change flagged are not in the frame
                del self.held[refs:]
                self._rehash(self.rmask + 1)
            raise
        self.count += 1
        return 0

    def settle(self, Receipt receipt not None, account_id, total):
        """Append ``("settle", receipt.row(), account_id, total)`` (what ``settle_hold`` does)."""
        self._settle(receipt, account_id, total)

    def put(self, change):
        """Append one change (a ``(sql, params)`` statement, or any change) in order."""
        self._marshal(change)
        self.count += 1

    def take(self):
        """The frame of every change so far, as the writer's pipe takes it (the length,
        then marshal's list of the changes), and an empty frame from here on."""
        if self.buf == NULL:
            self._room(0)
        cdef Py_ssize_t n = self.size - 4
        if n > 0xFFFFFFFF:
            raise ValueError("a frame beyond 4 GiB")
        self.buf[0] = <char>((n >> 24) & 0xFF)
        self.buf[1] = <char>((n >> 16) & 0xFF)
        self.buf[2] = <char>((n >> 8) & 0xFF)
        self.buf[3] = <char>(n & 0xFF)
        self.buf[4] = b"["
        self._int32(self.buf + 5, <long>self.count)
        out = PyBytes_FromStringAndSize(self.buf, self.size)
        self.clear()
        return out

    def clear(self):
        """Drop every change not yet taken."""
        self.size = HEAD
        self.count = 0
        if self.held:
            self.held = []
            memset(self.rkeys, 0, (self.rmask + 1) * sizeof(PyObject*))
        if self.cap > KEEP:
            PyMem_Free(self.buf)
            self.buf, self.cap = NULL, 0


# -- a call's settlement in one call (see records_py.Settler) ----------------------------
cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset
        int type
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member
    object PyUnicode_AsUTF8String(object s)

cdef extern from "structmember.h":
    int T_OBJECT_EX
    int READONLY

# the fields of the pipeline's Call a Settler reads, by their index below
cdef tuple _CALL_FIELDS = (
    "hold", "receipt_id", "account", "key", "endpoint", "kind", "requested_model", "prompt_estimate",
    "started", "first_byte", "stream", "mode", "tried", "privacy", "rate_headers", "include_usage",
)
cdef enum:
    C_HOLD, C_RECEIPT_ID, C_ACCOUNT, C_KEY, C_ENDPOINT, C_KIND, C_MODEL, C_PROMPT, C_STARTED, C_FIRST_BYTE
    C_STREAM, C_MODE, C_TRIED, C_PRIVACY, C_RATE, C_INCLUDE_USAGE, C_FIELDS

cdef bytes _RID = b"x-mesh-receipt-id"


cdef inline bytes _encode(s):
    # s.encode(), as the twin calls it
    if type(s) is str:
        return PyUnicode_AsUTF8String(s)
    return s.encode()


cdef bytes _decimal(Py_ssize_t n):
    # str(n).encode() (PyBytes_FromFormat took about 1,000 instructions)
    cdef char buf[24]
    cdef char* p = buf + 24
    cdef size_t u = <size_t>n
    if n < 0:
        return str(n).encode()
    while True:
        p -= 1
        p[0] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    return PyBytes_FromStringAndSize(p, buf + 24 - p)


@cython.auto_pickle(False)
@cython.final
cdef class Settler:
    """A call's settlement on a store whose hot path never suspends, one call each, and
    the headers of its answer (see ``records_py.Settler``). Reads the call's fields from
    their slots (``call_type``'s ``__slots__``, at the offsets its member descriptors give)
    when the call is exactly of that type, else by name."""

    cdef readonly object call_type, wake, margin_ppm, fee_nano
    cdef readonly dict accounts
    cdef readonly Frame frame
    cdef long long per_token
    cdef bint slots
    cdef Py_ssize_t offsets[C_FIELDS]

    def __init__(self, type call_type not None, dict accounts, Frame frame, wake, margin_ppm, fee_nano, long long chars_per_token):
        if chars_per_token < 1:
            raise ValueError("chars_per_token must be positive")
        self.call_type, self.accounts, self.frame, self.wake = call_type, accounts, frame, wake
        self.margin_ppm, self.fee_nano, self.per_token = margin_ppm, fee_nano, chars_per_token
        # slot reads only for a plain slotted class: every field a writable object slot
        self.slots = call_type.__getattribute__ is object.__getattribute__ and call_type.__setattr__ is object.__setattr__
        cdef PyMemberDef* m
        for i, name in enumerate(_CALL_FIELDS):
            d = None
            for klass in call_type.__mro__:
                if name in klass.__dict__:
                    d = klass.__dict__[name]
                    break
            if type(d) is not _MemberDescriptor:
                self.slots = False
                break
            m = (<PyMemberDescrObject*><PyObject*>d).d_member
            if m.type != T_OBJECT_EX or m.flags & READONLY:
                self.slots = False
                break
            self.offsets[i] = m.offset

    cdef inline object _get(self, call, int f, bint slots):
        cdef PyObject* v
        if slots:
            v = (<PyObject**>((<char*><PyObject*>call) + self.offsets[f]))[0]
            if v != NULL:
                return <object>v
        return getattr(call, _CALL_FIELDS[f])  # the AttributeError of an unset slot, too

    cdef inline int _set(self, call, int f, value, bint slots) except -1:
        cdef PyObject** at
        cdef PyObject* old
        if slots:
            at = <PyObject**>((<char*><PyObject*>call) + self.offsets[f])
            old = at[0]
            Py_INCREF(value)
            at[0] = <PyObject*>value
            Py_XDECREF(old)
            return 0
        setattr(call, _CALL_FIELDS[f], value)
        return 0

    cdef list _route(self, call, bint slots):
        # Pipeline.route_headers: the endpoint's, the route mode, the enforced privacy
        cdef list out = list(self._get(call, C_ENDPOINT, slots).headers)
        out.append((b"x-mesh-route-mode", _encode(self._get(call, C_MODE, slots))))
        out.append((b"x-mesh-privacy", _encode(self._get(call, C_PRIVACY, slots))))
        return out

    cdef Receipt _settle(self, call, bint slots, counts, completion, status):
        hold = self._get(call, C_HOLD, slots)
        if hold is None:
            raise AssertionError("the call holds nothing to settle")
        if self.frame is None:
            raise RuntimeError("this Settler settles no call (its store is not immediate)")
        rid = self._get(call, C_RECEIPT_ID, slots)
        if not rid:
            rid = new_id("rcpt_")
        account = self._get(call, C_ACCOUNT, slots)
        if account is None:
            raise TypeError("Argument 'account' must not be None")
        cdef Receipt r = _priced(
            rid, <Account?>account, self._get(call, C_KEY, slots), self._get(call, C_ENDPOINT, slots),
            self._get(call, C_KIND, slots), self._get(call, C_MODEL, slots), counts,
            self._get(call, C_PROMPT, slots), completion, self._get(call, C_STARTED, slots),
            self._get(call, C_FIRST_BYTE, slots), self._get(call, C_STREAM, slots), status,
            self._get(call, C_MODE, slots), ",".join(self._get(call, C_TRIED, slots)), self.margin_ppm, self.fee_nano,
        )
        self._set(call, C_HOLD, None, slots)  # settled now, whatever follows
        _settle_hold(<Account?>self.accounts[(<Hold?>hold).account_id], <Hold>hold, r, self.frame)
        if self.frame.count == 1 and self.wake is not None:
            self.wake()  # the first change of a frame: the writer times its sending
        return r

    def settle(self, call, counts, completion_estimate, status):
        """Price the call, settle it on the store and return its receipt."""
        return self._settle(call, type(call) is self.call_type and self.slots, counts, completion_estimate, status)

    def body_headers(self, call, receipt, content_type, Py_ssize_t length):
        """The headers of a JSON answer of ``length`` bytes settled by ``receipt``."""
        cdef bint slots = type(call) is self.call_type and self.slots
        return self._body(
            call, slots, receipt.id, receipt.upstream_cost_nano, receipt.margin_nano, receipt.total_nano,
            content_type, length,
        )

    cdef list _body(self, call, bint slots, rid, upstream, margin, total, content_type, Py_ssize_t length):
        # Pipeline.route_headers, usd.cost_headers, the rate headers, the body's type and length
        cdef list out = self._route(call, slots)
        out.append((_RID, _encode(rid)))
        out.append((b"x-mesh-upstream-cost-usd", usd_of(upstream)))
        out.append((b"x-mesh-margin-usd", usd_of(margin)))
        out.append((b"x-mesh-total-usd", usd_of(total)))
        out.extend(self._get(call, C_RATE, slots))
        out.append((b"content-type", content_type or b"application/json"))
        out.append((b"content-length", _decimal(length)))
        return out

    def settle_body(self, call, counts, completion_estimate, content_type, Py_ssize_t length):
        """A JSON answer's settlement (status ``ok``): its headers (``body_headers``)."""
        cdef bint slots = type(call) is self.call_type and self.slots
        cdef Receipt r = self._settle(call, slots, counts, completion_estimate, "ok")
        return self._body(call, slots, r.id, r.upstream_cost_nano, r.margin_nano, r.total_nano, content_type, length)

    def stream_head(self, call, tail):
        """A stream's headers: route, its new receipt id (set on the call), the rate
        headers, then ``tail``."""
        cdef bint slots = type(call) is self.call_type and self.slots
        rid = new_id("rcpt_")
        self._set(call, C_RECEIPT_ID, rid, slots)
        cdef list out = self._route(call, slots)
        out.append((_RID, _encode(rid)))
        out.extend(self._get(call, C_RATE, slots))
        out.extend(tail)
        return out

    def settle_stream(self, call, scanner, status):
        """A stream's end: settle it from what ``scanner`` saw, or release its hold when the
        upstream failed with no usage and nothing delivered; the usage line to send before
        ``[DONE]`` (``b""`` if none). Nothing when the call holds nothing."""
        cdef bint slots = type(call) is self.call_type and self.slots
        cdef long long n
        cdef int overflow = 0
        hold = self._get(call, C_HOLD, slots)
        if hold is None:
            return b""
        counts = _usage_counts(scanner.usage)
        delivered = scanner.content_length
        if status == "error" and counts is None and not delivered:
            if self.frame is None:
                raise RuntimeError("this Settler settles no call (its store is not immediate)")
            _release(<Account?>self.accounts[(<Hold?>hold).account_id], <Hold>hold, None)
            self._set(call, C_HOLD, None, slots)
            return b""
        if type(delivered) is int:
            n = PyLong_AsLongLongAndOverflow(delivered, &overflow)
        if type(delivered) is int and not overflow and n >= 0:
            completion = n // self.per_token + (1 if n % self.per_token else 0)
        else:
            completion = -(-delivered // self.per_token)
        cdef Receipt r = self._settle(call, slots, counts, completion, status)
        if status == "ok" and self._get(call, C_INCLUDE_USAGE, slots):
            chunk = scanner.usage_chunk
            if chunk is not None:
                return b"data: " + _usage_with_costs(chunk, r.id, r.upstream_cost_nano, r.margin_nano, r.total_nano) + b"\n\n"
        return b""
