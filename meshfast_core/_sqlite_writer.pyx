# cython: language_level=3
# distutils: libraries = sqlite3
"""The embedded store's SQLite writer, compiled: its own connection through SQLite's C API
(twin: ``apply``/``commit`` in ``meshfast/store/sqlite_writer.py``; see it for the contract).

A frame is read straight from its ``marshal`` bytes, without building Python objects:
every value becomes a tagged C value, strings pointing into the frame (bound with
``SQLITE_STATIC``: the frame outlives its transaction). Prepared statements are kept
across frames; debits and the spend summary are summed in C hash tables, in the order
the twin's dicts keep. A frame with anything this reader does not take (a marshal type
other than None, bool, int, float, str, bytes, tuple and list; an int beyond int64 or
not in marshal's normal form; a string that is not valid UTF-8 or has a surrogate; an
ASCII-typed string with a byte beyond ASCII, which marshal reads as Latin-1; a frame that
is cut short; a change of another shape) is refused before anything is written:
``commit_frame`` returns ``False`` and the caller hands it to the twin, whose
``marshal.loads`` then reads it or fails as it does for any frame.
"""

import os
import sqlite3
import sys

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.math cimport copysign, floor, fmod, isfinite
from libc.string cimport memchr, memcmp, memcpy, memset

from .records_py import RECEIPT_FIELDS

__all__ = ("DEBIT_SQL", "ROWS_PER_INSERT", "SPEND_SQL", "Writer", "receipt_insert")

cdef extern from "sqlite3.h":
    ctypedef struct sqlite3_db "sqlite3":
        pass
    ctypedef struct sqlite3_stmt:
        pass
    ctypedef void (*sqlite3_destructor_type)(void*)
    sqlite3_destructor_type SQLITE_STATIC
    enum:
        SQLITE_OK
        SQLITE_ROW
        SQLITE_DONE
        SQLITE_CONSTRAINT
        SQLITE_MISMATCH
        SQLITE_TOOBIG
        SQLITE_CORRUPT
        SQLITE_NOTADB
        SQLITE_OPEN_READWRITE
        SQLITE_OPEN_CREATE
        SQLITE_OPEN_NOMUTEX
        SQLITE_PREPARE_PERSISTENT
    int sqlite3_open_v2(const char* filename, sqlite3_db** db, int flags, const char* vfs)
    int sqlite3_close_v2(sqlite3_db* db)
    int sqlite3_busy_timeout(sqlite3_db* db, int ms)
    int sqlite3_exec(sqlite3_db* db, const char* sql, void* callback, void* arg, char** errmsg)
    const char* sqlite3_errmsg(sqlite3_db* db)
    int sqlite3_get_autocommit(sqlite3_db* db)
    int sqlite3_prepare_v3(sqlite3_db* db, const char* sql, int n, unsigned int flags, sqlite3_stmt** st, const char** tail)
    int sqlite3_finalize(sqlite3_stmt* st)
    int sqlite3_reset(sqlite3_stmt* st)
    int sqlite3_step(sqlite3_stmt* st)
    int sqlite3_bind_parameter_count(sqlite3_stmt* st)
    int sqlite3_bind_null(sqlite3_stmt* st, int i)
    int sqlite3_bind_int64(sqlite3_stmt* st, int i, long long v)
    int sqlite3_bind_double(sqlite3_stmt* st, int i, double v)
    int sqlite3_bind_text(sqlite3_stmt* st, int i, const char* p, int n, sqlite3_destructor_type d)
    int sqlite3_bind_blob(sqlite3_stmt* st, int i, const void* p, int n, sqlite3_destructor_type d)

cdef extern from *:
    """
    #include <stdint.h>
    typedef __int128 __pyx_i128;
    static inline int __pyx_i128_fits(__pyx_i128 v) { return v >= INT64_MIN && v <= INT64_MAX; }
    """
    # a sum of int64 values, exact as the twin's Python ints are (checked when bound)
    ctypedef long long i128 "__pyx_i128"
    bint i128_fits "__pyx_i128_fits"(i128 v) noexcept

cdef extern from "Python.h":
    double PyFloat_Unpack8(const char* p, int le) except? -1.0

ROWS_PER_INSERT = 64
DEBIT_SQL = "UPDATE accounts SET balance_nano = balance_nano - ? WHERE id = ?"
SPEND_SQL = (
    "INSERT INTO spend (owner, day, total_nano) VALUES (?, ?, ?) "
    "ON CONFLICT (owner, day) DO UPDATE SET total_nano = total_nano + excluded.total_nano"
)


def receipt_insert(int rows) -> str:
    one = "(" + ",".join("?" * len(RECEIPT_FIELDS)) + ")"
    return f"INSERT INTO receipts ({', '.join(RECEIPT_FIELDS)}) VALUES " + ",".join([one] * rows)


DEF NFIELDS = 24
DEF MAX_ROWS = 64
DEF MAX_CACHED = 64  # (sql, params) statements kept; the cache is emptied when full
_READS = ("created", "account_id", "project_id", "key_id", "total_nano")
if len(RECEIPT_FIELDS) != NFIELDS or not set(_READS) <= set(RECEIPT_FIELDS):
    # a stale build: ImportError (not AssertionError or ValueError), so the selector serves the twin
    raise ImportError(
        f"meshfast_core._sqlite_writer was built for {NFIELDS} receipt fields with {', '.join(_READS)}, "
        f"not these {len(RECEIPT_FIELDS)}: rebuild it"
    )
cdef Py_ssize_t _CREATED = RECEIPT_FIELDS.index("created")
cdef Py_ssize_t _ACCOUNT = RECEIPT_FIELDS.index("account_id")
cdef Py_ssize_t _PROJECT = RECEIPT_FIELDS.index("project_id")
cdef Py_ssize_t _KEY = RECEIPT_FIELDS.index("key_id")
cdef Py_ssize_t _TOTAL = RECEIPT_FIELDS.index("total_nano")

# a decoded value; text and blobs point into the frame
cdef enum:
    V_NULL
    V_INT
    V_FLOAT
    V_TEXT
    V_BLOB

ctypedef struct Val:
    int kind
    long long i
    double d
    const char* p
    Py_ssize_t n

# marshal's back-references (FLAG_REF objects, numbered as read): a value, a run of
# values (a tuple or list of them), or a container this reader cannot refer back to
cdef enum:
    R_VAL
    R_SEQ
    R_OTHER

ctypedef struct Ref:
    int kind
    Py_ssize_t start
    Py_ssize_t count

# a change: settle (head: the row's first value, arg: account id's value, total: the
# debit's value) or (sql, params) (head: the SQL's value, arg/count: the params)
ctypedef struct Change:
    bint settle
    Py_ssize_t head
    Py_ssize_t arg
    Py_ssize_t count

# a sum per (string, day) in first-seen order; slots: open addressing, entry index + 1
ctypedef struct Sum:
    const char* p
    Py_ssize_t n
    long long day
    i128 total
    unsigned long long hash

ctypedef struct Sums:
    Sum* entries
    Py_ssize_t used
    Py_ssize_t cap
    Py_ssize_t* slots
    Py_ssize_t mask  # the slots in use this frame: mask + 1, a power of 2 up to slotcap
    Py_ssize_t slotcap


class _Unsupported(Exception):
    """The frame has something this reader does not take: the twin applies it."""


cdef int _grow(void** buf, Py_ssize_t* cap, Py_ssize_t need, size_t item) except -1:
    cdef Py_ssize_t n = cap[0] * 2 if cap[0] else 256
    while n < need:
        n *= 2
    cdef void* p = PyMem_Realloc(buf[0], n * item)
    if p == NULL:
        raise MemoryError()
    buf[0] = p
    cap[0] = n
    return 0


cdef inline unsigned long long _hash(const char* p, Py_ssize_t n, long long day) noexcept:
    cdef unsigned long long h = 14695981039346656037ULL ^ <unsigned long long>day
    cdef Py_ssize_t k
    for k in range(n):
        h = (h ^ <unsigned char>p[k]) * 1099511628211ULL
    return h


cdef int _sums_reset(Sums* s, Py_ssize_t most) except -1:
    # a table sized for this frame (at most half full), cleared as far as it is used
    cdef Py_ssize_t size = 16
    cdef void* p
    while size < 2 * most:
        size *= 2
    if size > s.slotcap:
        p = PyMem_Realloc(s.slots, size * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError()
        s.slots = <Py_ssize_t*>p
        s.slotcap = size
    s.mask = size - 1
    if most > s.cap:
        _grow(<void**>&s.entries, &s.cap, most, sizeof(Sum))
    memset(s.slots, 0, size * sizeof(Py_ssize_t))
    s.used = 0
    return 0


cdef inline void _sums_add(Sums* s, const char* p, Py_ssize_t n, long long day, long long amount) noexcept:
    cdef unsigned long long h = _hash(p, n, day)
    cdef Py_ssize_t at = <Py_ssize_t>(h & <unsigned long long>s.mask), e
    cdef Sum* x
    while True:
        e = s.slots[at]
        if e == 0:
            x = &s.entries[s.used]
            s.used += 1
            s.slots[at] = s.used
            x.p, x.n, x.day, x.total, x.hash = p, n, day, amount, h
            return
        x = &s.entries[e - 1]
        if x.hash == h and x.day == day and x.n == n and (x.p == p or memcmp(x.p, p, n) == 0):
            x.total += amount  # no overflow: a frame holds far fewer than 2**64 amounts
            return
        at = (at + 1) & s.mask


cdef inline long long _day(const Val* v) noexcept:
    # Python's int(created // 86400), for an int or a finite float (checked when read)
    cdef long long q
    cdef double mod, div, fl
    if v.kind == V_INT:
        q = v.i // 86400  # cdivision: C truncates
        if v.i % 86400 != 0 and v.i < 0:
            q -= 1
        return q
    mod = fmod(v.d, 86400.0)
    div = (v.d - mod) / 86400.0
    if mod != 0.0 and mod < 0.0:
        div -= 1.0
    if div != 0.0:
        fl = floor(div)
        if div - fl > 0.5:
            fl += 1.0
    else:
        fl = copysign(0.0, v.d)
    return <long long>fl


cdef inline bint _utf8_ok(const unsigned char* p, Py_ssize_t n) noexcept:
    # strict UTF-8 without surrogates. marshal reads a str as UTF-8 with surrogates passed
    # through and fails on anything else invalid; the twin (sqlite3 binding) refuses a
    # surrogate: such a frame goes to the twin, which fails it
    cdef Py_ssize_t k = 0
    cdef unsigned char c, c1
    while k < n:
        c = p[k]
        if c < 0x80:
            k += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if k + 1 >= n or p[k + 1] & 0xC0 != 0x80:
                return False
            k += 2
            continue
        if k + 2 >= n:
            return False
        c1 = p[k + 1]
        if c1 & 0xC0 != 0x80 or p[k + 2] & 0xC0 != 0x80:
            return False
        if c < 0xF0:
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0):  # overlong; surrogate
                return False
            k += 3
            continue
        if k + 3 >= n or p[k + 3] & 0xC0 != 0x80:
            return False
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90):  # overlong; beyond U+10FFFF
            return False
        k += 4
    return True


cdef inline bint _ascii_ok(const unsigned char* p, Py_ssize_t n) noexcept:
    # 8 bytes at a time, the last 8 overlapping; a shorter string byte by byte
    cdef unsigned long long w, acc = 0
    cdef Py_ssize_t k = 0
    if n < 8:
        for k in range(n):
            acc |= p[k]
        return acc < 0x80
    while k + 8 < n:
        memcpy(&w, p + k, 8)
        acc |= w
        k += 8
    memcpy(&w, p + n - 8, 8)
    return (acc | w) & 0x8080808080808080ULL == 0


cdef bint _only_space(const char* p) noexcept:
    # what sqlite3 accepts after a statement: whitespace and comments
    while p[0] != 0:
        if p[0] in b" \t\n\r\f":
            p += 1
        elif p[0] == b"-" and p[1] == b"-":
            while p[0] != 0 and p[0] != b"\n":
                p += 1
        elif p[0] == b"/" and p[1] == b"*":
            p += 2
            while p[0] != 0 and not (p[0] == b"*" and p[1] == b"/"):
                p += 1
            if p[0] == 0:
                return True
            p += 2
        else:
            return False
    return True


cdef inline int _bind(sqlite3_stmt* st, int at, const Val* v) noexcept:
    if v.kind == V_TEXT:
        return sqlite3_bind_text(st, at, v.p, <int>v.n, SQLITE_STATIC)
    if v.kind == V_INT:
        return sqlite3_bind_int64(st, at, v.i)
    if v.kind == V_FLOAT:
        return sqlite3_bind_double(st, at, v.d)
    if v.kind == V_NULL:
        return sqlite3_bind_null(st, at)
    return sqlite3_bind_blob(st, at, v.p, <int>v.n, SQLITE_STATIC)


@cython.final
cdef class Writer:
    """A connection to the store file, applying frames (``marshal`` bytes of a list of
    changes) one transaction each, as the twin's ``commit`` does."""

    cdef sqlite3_db* db
    cdef sqlite3_stmt* begin
    cdef sqlite3_stmt* commit
    cdef sqlite3_stmt* rollback
    cdef sqlite3_stmt* debit
    cdef sqlite3_stmt* spend
    cdef sqlite3_stmt* inserts[MAX_ROWS]  # by rows - 1, prepared when first needed
    cdef sqlite3_stmt* cached[MAX_CACHED]
    cdef dict cache  # SQL bytes -> index in cached
    cdef readonly int rows_per_insert
    # the frame being read
    cdef const unsigned char* p
    cdef const unsigned char* end
    cdef Val* vals
    cdef Py_ssize_t nvals, capvals
    cdef Ref* refs
    cdef Py_ssize_t nrefs, caprefs
    cdef Change* changes
    cdef Py_ssize_t nchanges, capchanges
    cdef Sums debits, spends

    def __cinit__(self, str path, str synchronous, int rows_per_insert=ROWS_PER_INSERT):
        if not 1 <= rows_per_insert <= MAX_ROWS:
            raise ValueError(f"rows_per_insert must be 1 to {MAX_ROWS}")
        self.rows_per_insert = rows_per_insert
        self.cache = {}
        cdef bytes bpath = os.fsencode(path)
        cdef int rc = sqlite3_open_v2(bpath, &self.db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL)
        if rc != SQLITE_OK:
            self._fail(rc)
        sqlite3_busy_timeout(self.db, 5000)  # the sqlite3 module's default
        self._exec(b"PRAGMA journal_mode=WAL")
        self._exec(f"PRAGMA synchronous={synchronous}".encode())
        self.begin = self._prepare(b"BEGIN")
        self.commit = self._prepare(b"COMMIT")
        self.rollback = self._prepare(b"ROLLBACK")

    def __dealloc__(self):
        self._finalize()
        PyMem_Free(self.vals)
        PyMem_Free(self.refs)
        PyMem_Free(self.changes)
        PyMem_Free(self.debits.entries)
        PyMem_Free(self.debits.slots)
        PyMem_Free(self.spends.entries)
        PyMem_Free(self.spends.slots)

    cdef void _finalize(self) noexcept:
        cdef int k
        if self.db == NULL:
            return
        for k in range(MAX_ROWS):
            sqlite3_finalize(self.inserts[k])
            self.inserts[k] = NULL
        self._drop_cache()
        sqlite3_finalize(self.begin)
        sqlite3_finalize(self.commit)
        sqlite3_finalize(self.rollback)
        sqlite3_finalize(self.debit)
        sqlite3_finalize(self.spend)
        sqlite3_close_v2(self.db)
        self.db = NULL

    cdef void _drop_cache(self) noexcept:
        cdef Py_ssize_t k
        if self.cache is not None:
            for k in range(len(self.cache)):
                sqlite3_finalize(self.cached[k])
                self.cached[k] = NULL
            self.cache.clear()

    def close(self) -> None:
        """Finalize the statements and close the connection."""
        self._finalize()

    # -- SQLite -------------------------------------------------------------------------
    cdef int _fail(self, int rc) except -1:
        msg = (sqlite3_errmsg(self.db) if self.db != NULL else b"out of memory").decode("utf-8", "replace")
        primary = rc & 0xFF
        if primary == SQLITE_CONSTRAINT or primary == SQLITE_MISMATCH:
            raise sqlite3.IntegrityError(msg)
        if primary == SQLITE_TOOBIG:
            raise sqlite3.DataError(msg)
        if primary == SQLITE_CORRUPT or primary == SQLITE_NOTADB:
            raise sqlite3.DatabaseError(msg)
        raise sqlite3.OperationalError(msg)

    cdef int _exec(self, bytes sql) except -1:
        cdef int rc = sqlite3_exec(self.db, sql, NULL, NULL, NULL)
        if rc != SQLITE_OK:
            self._fail(rc)
        return 0

    cdef sqlite3_stmt* _prepare(self, bytes sql) except NULL:
        cdef sqlite3_stmt* st = NULL
        self._prepare_into(sql, &st)
        if st == NULL:
            raise sqlite3.ProgrammingError("an empty statement")
        return st

    cdef int _prepare_into(self, bytes sql, sqlite3_stmt** out) except -1:
        # out: NULL for a statement of only whitespace and comments (sqlite3 runs nothing)
        cdef sqlite3_stmt* st = NULL
        cdef const char* tail = NULL
        cdef int rc = sqlite3_prepare_v3(self.db, sql, len(sql) + 1, SQLITE_PREPARE_PERSISTENT, &st, &tail)
        if rc != SQLITE_OK:
            self._fail(rc)
        if not _only_space(tail):
            sqlite3_finalize(st)
            raise sqlite3.ProgrammingError("You can only execute one statement at a time.")
        out[0] = st
        return 0

    cdef int _run(self, sqlite3_stmt* st) except -1:
        cdef int rc = sqlite3_step(st)
        while rc == SQLITE_ROW:
            rc = sqlite3_step(st)
        if rc != SQLITE_DONE:
            try:
                self._fail(rc)
            finally:
                sqlite3_reset(st)
        sqlite3_reset(st)
        return 0

    # -- reading a frame ------------------------------------------------------------------
    cdef inline int _need(self, Py_ssize_t n) except -1:
        if self.end - self.p < n:
            raise _Unsupported("truncated")
        return 0

    cdef inline long _long(self) noexcept:
        cdef const unsigned char* q = self.p
        self.p += 4
        return <int>(<unsigned int>q[0] | <unsigned int>q[1] << 8 | <unsigned int>q[2] << 16 | <unsigned int>q[3] << 24)

    cdef inline Val* _new_val(self) except NULL:
        if self.nvals == self.capvals:
            _grow(<void**>&self.vals, &self.capvals, self.nvals + 1, sizeof(Val))
        self.nvals += 1
        return &self.vals[self.nvals - 1]

    cdef inline Py_ssize_t _new_ref(self, int kind, Py_ssize_t start, Py_ssize_t count) except -1:
        if self.nrefs == self.caprefs:
            _grow(<void**>&self.refs, &self.caprefs, self.nrefs + 1, sizeof(Ref))
        self.refs[self.nrefs].kind = kind
        self.refs[self.nrefs].start = start
        self.refs[self.nrefs].count = count
        self.nrefs += 1
        return self.nrefs - 1

    cdef Ref* _back(self) except NULL:
        self._need(4)
        cdef long k = self._long()
        if k < 0 or k >= self.nrefs:
            raise _Unsupported("bad reference")
        return &self.refs[k]

    cdef int _value(self) except -1:
        # one scalar, appended to vals
        self._need(1)
        cdef unsigned char code = self.p[0] & 0x7F
        cdef bint flag = self.p[0] & 0x80
        cdef Val* v
        cdef Ref* r
        cdef Py_ssize_t n, size, k
        cdef long ndigits
        cdef unsigned long long acc
        cdef unsigned int digit
        self.p += 1
        if code == b"r":
            r = self._back()
            if r.kind != R_VAL:
                raise _Unsupported("reference to a container")
            v = self._new_val()
            v[0] = self.vals[r.start]
            return 0
        v = self._new_val()
        if code == b"N":
            v.kind = V_NULL
        elif code == b"T" or code == b"F":
            v.kind = V_INT
            v.i = 1 if code == b"T" else 0
        elif code == b"i":
            self._need(4)
            v.kind = V_INT
            v.i = self._long()
        elif code == b"g":
            self._need(8)
            v.kind = V_FLOAT
            v.d = PyFloat_Unpack8(<const char*>self.p, 1)
            self.p += 8
        elif code == b"l":
            self._need(4)
            ndigits = self._long()
            size = ndigits if ndigits >= 0 else -ndigits
            self._need(2 * size)
            acc = 0
            for k in range(size - 1, -1, -1):
                digit = self.p[2 * k] | self.p[2 * k + 1] << 8
                if acc >> 49 or digit >> 15:
                    raise _Unsupported("int beyond int64")
                acc = acc << 15 | digit
            if size and self.p[2 * size - 2] == 0 and self.p[2 * size - 1] == 0:
                raise _Unsupported("unnormalized long")  # marshal.loads refuses it
            self.p += 2 * size
            if acc > (9223372036854775808ULL if ndigits < 0 else 9223372036854775807ULL):
                raise _Unsupported("int beyond int64")
            v.kind = V_INT
            v.i = <long long>(0ULL - acc) if ndigits < 0 else <long long>acc
        elif code == b"z" or code == b"Z" or code == b"a" or code == b"A" or code == b"u" or code == b"t" or code == b"s":
            if code == b"z" or code == b"Z":
                self._need(1)
                n = self.p[0]
                self.p += 1
            else:
                self._need(4)
                n = self._long()
                if n < 0 or n > 0x7FFFFFFF:
                    raise _Unsupported("string size")
            self._need(n)
            if code == b"u" or code == b"t":
                if not _utf8_ok(self.p, n):
                    raise _Unsupported("a string that is not UTF-8, or has a surrogate")
            elif code != b"s" and not _ascii_ok(self.p, n):
                raise _Unsupported("an ASCII string beyond ASCII")  # marshal reads it as Latin-1
            v.kind = V_BLOB if code == b"s" else V_TEXT
            v.p = <const char*>self.p
            v.n = n
            self.p += n
        else:
            raise _Unsupported(f"marshal type {chr(code)!r}")
        if flag and code != b"N" and code != b"T" and code != b"F":  # marshal numbers no singleton
            self._new_ref(R_VAL, self.nvals - 1, 1)
        return 0

    cdef int _values(self, Py_ssize_t* start, Py_ssize_t* count) except -1:
        # a tuple or list of scalars, appended to vals as one run
        self._need(1)
        cdef unsigned char code = self.p[0] & 0x7F
        cdef bint flag = self.p[0] & 0x80
        cdef Py_ssize_t n, k, ref = -1
        cdef Ref* r
        self.p += 1
        if code == b"r":
            r = self._back()
            if r.kind != R_SEQ:
                raise _Unsupported("reference to something else")
            start[0], count[0] = r.start, r.count
            return 0
        if code == b")":
            self._need(1)
            n = self.p[0]
            self.p += 1
        elif code == b"(" or code == b"[":
            self._need(4)
            n = self._long()
            if n < 0:
                raise _Unsupported("bad size")
        else:
            raise _Unsupported("not a tuple or list")
        if flag:
            ref = self._new_ref(R_OTHER, 0, 0)  # numbered before its items, as marshal does
        start[0] = self.nvals
        for k in range(n):
            self._value()
        count[0] = self.nvals - start[0]
        if ref >= 0:
            self.refs[ref].kind = R_SEQ
            self.refs[ref].start = start[0]
            self.refs[ref].count = n
        return 0

    cdef int _read(self, bytes payload) except -1:
        self.p = <const unsigned char*>PyBytes_AS_STRING(payload)
        self.end = self.p + PyBytes_GET_SIZE(payload)
        self.nvals = self.nrefs = self.nchanges = 0
        cdef unsigned char code
        cdef Py_ssize_t n, size, k, head
        cdef Change* ch
        cdef Val* v
        self._need(5)
        code = self.p[0]
        if code & 0x7F != b"[":
            raise _Unsupported("not a list")
        self.p += 1
        n = self._long()
        if code & 0x80:
            self._new_ref(R_OTHER, 0, 0)
        if n < 0 or n > (self.end - self.p) // 2:  # a change takes 2 bytes at least
            raise _Unsupported("bad size")
        if n > self.capchanges:
            _grow(<void**>&self.changes, &self.capchanges, n, sizeof(Change))
        for k in range(n):
            self._need(1)
            code = self.p[0]
            self.p += 1
            if code & 0x7F == b")":
                self._need(1)
                size = self.p[0]
                self.p += 1
            elif code & 0x7F == b"(":
                self._need(4)
                size = self._long()
            else:
                raise _Unsupported("a change that is not a tuple")
            if code & 0x80:
                self._new_ref(R_OTHER, 0, 0)
            if size < 1:
                raise _Unsupported("an empty change")
            ch = &self.changes[k]
            head = self.nvals
            self._value()
            v = &self.vals[head]
            if v.kind != V_TEXT:
                raise _Unsupported("a change without a str first")
            if v.n == 6 and memcmp(v.p, b"settle", 6) == 0:
                if size != 4:
                    raise _Unsupported("a settle of another shape")
                ch.settle = True
                self._values(&ch.head, &ch.count)
                if ch.count != NFIELDS:
                    raise _Unsupported("a receipt row of another length")
                self._check_row(&self.vals[ch.head])
                ch.arg = self.nvals
                self._value()
                if self.vals[ch.arg].kind != V_TEXT:
                    raise _Unsupported("an account id that is not a str")
                ch.count = self.nvals
                self._value()
                if self.vals[ch.count].kind != V_INT:
                    raise _Unsupported("a total that is not an int")
            else:
                if size != 2:
                    raise _Unsupported("a statement of another shape")
                ch.settle = False
                ch.head = head
                self._values(&ch.arg, &ch.count)
        if self.p != self.end:
            raise _Unsupported("trailing bytes")
        self.nchanges = n
        return 0

    cdef int _check_row(self, const Val* row) except -1:
        # what the spend summary reads; other values are bound as they are
        cdef const Val* created = &row[_CREATED]
        if not (created.kind == V_INT or (created.kind == V_FLOAT and isfinite(created.d) and -1e15 < created.d < 1e15)):
            raise _Unsupported("created")
        if row[_ACCOUNT].kind != V_TEXT or row[_PROJECT].kind != V_TEXT or row[_KEY].kind != V_TEXT:
            raise _Unsupported("owner ids")
        if row[_TOTAL].kind != V_INT:
            raise _Unsupported("total")
        return 0

    # -- applying it ----------------------------------------------------------------------
    cdef sqlite3_stmt* _insert(self, Py_ssize_t rows) except NULL:
        if self.inserts[rows - 1] == NULL:
            self.inserts[rows - 1] = self._prepare(receipt_insert(rows).encode())
        return self.inserts[rows - 1]

    cdef int _statement(self, const Val* sql, sqlite3_stmt** out) except -1:
        key = PyBytes_FromStringAndSize(sql.p, sql.n)
        k = self.cache.get(key)
        if k is not None:
            out[0] = self.cached[<Py_ssize_t>k]
            return 0
        if len(self.cache) == MAX_CACHED:
            self._drop_cache()
        if memchr(sql.p, 0, sql.n) != NULL:
            raise sqlite3.ProgrammingError("the query string must not contain null characters")
        self._prepare_into(key, out)
        k = len(self.cache)
        self.cached[<Py_ssize_t>k] = out[0]
        self.cache[key] = k
        return 0

    cdef int _settles(self, Py_ssize_t lo, Py_ssize_t hi) except -1:
        # changes lo..hi are settles: their rows, then the debits, then the spend summary
        cdef Py_ssize_t i = lo, r, j, rows
        cdef sqlite3_stmt* st
        cdef const Val* row
        cdef const Change* ch
        cdef long long day, total
        cdef int rc
        cdef Sum* e
        while i < hi:
            rows = min(self.rows_per_insert, hi - i)
            st = self._insert(rows)
            for r in range(rows):
                row = &self.vals[self.changes[i + r].head]
                for j in range(NFIELDS):
                    rc = _bind(st, <int>(r * NFIELDS + j + 1), &row[j])
                    if rc != SQLITE_OK:
                        self._fail(rc)
            self._run(st)
            i += rows
        # prepared when first needed, as the tables may come later; each on its own, as
        # one may prepare and the other fail (no table yet) and be tried again next frame
        if self.debit == NULL:
            self.debit = self._prepare(DEBIT_SQL.encode())
        if self.spend == NULL:
            self.spend = self._prepare(SPEND_SQL.encode())
        _sums_reset(&self.debits, hi - lo)
        _sums_reset(&self.spends, 3 * (hi - lo))
        for i in range(lo, hi):
            ch = &self.changes[i]
            row = &self.vals[ch.head]
            _sums_add(&self.debits, self.vals[ch.arg].p, self.vals[ch.arg].n, 0, self.vals[ch.count].i)
            day = _day(&row[_CREATED])
            total = row[_TOTAL].i
            _sums_add(&self.spends, row[_ACCOUNT].p, row[_ACCOUNT].n, day, total)
            _sums_add(&self.spends, row[_PROJECT].p, row[_PROJECT].n, day, total)
            _sums_add(&self.spends, row[_KEY].p, row[_KEY].n, day, total)
        st = self.debit
        for r in range(self.debits.used):
            e = &self.debits.entries[r]
            if not i128_fits(e.total):
                raise OverflowError("Python int too large to convert to SQLite INTEGER")
            rc = sqlite3_bind_int64(st, 1, <long long>e.total)
            if rc == SQLITE_OK:
                rc = sqlite3_bind_text(st, 2, e.p, <int>e.n, SQLITE_STATIC)
            if rc != SQLITE_OK:
                self._fail(rc)
            self._run(st)
        st = self.spend
        for r in range(self.spends.used):
            e = &self.spends.entries[r]
            if not i128_fits(e.total):
                raise OverflowError("Python int too large to convert to SQLite INTEGER")
            rc = sqlite3_bind_text(st, 1, e.p, <int>e.n, SQLITE_STATIC)
            if rc == SQLITE_OK:
                rc = sqlite3_bind_int64(st, 2, e.day)
            if rc == SQLITE_OK:
                rc = sqlite3_bind_int64(st, 3, <long long>e.total)
            if rc != SQLITE_OK:
                self._fail(rc)
            self._run(st)
        return 0

    cdef int _sql(self, const Change* ch) except -1:
        cdef sqlite3_stmt* st = NULL
        self._statement(&self.vals[ch.head], &st)
        cdef int wanted = sqlite3_bind_parameter_count(st) if st != NULL else 0
        cdef Py_ssize_t j
        if wanted != ch.count:
            raise sqlite3.ProgrammingError(
                f"Incorrect number of bindings supplied. The current statement uses {wanted}, and there are {ch.count} supplied."
            )
        if st == NULL:
            return 0
        cdef int rc
        for j in range(ch.count):
            rc = _bind(st, <int>(j + 1), &self.vals[ch.arg + j])
            if rc != SQLITE_OK:
                self._fail(rc)
        self._run(st)
        return 0

    cdef int _apply(self, Py_ssize_t lo, Py_ssize_t hi) except -1:
        # one transaction for changes lo..hi (the twin's ``apply``)
        cdef Py_ssize_t i, run = lo
        self._run(self.begin)
        try:
            for i in range(lo, hi):
                if not self.changes[i].settle:
                    if run < i:
                        self._settles(run, i)  # keep the order with other statements
                    self._sql(&self.changes[i])
                    run = i + 1
            if run < hi:
                self._settles(run, hi)
            self._run(self.commit)
        except BaseException:
            if not sqlite3_get_autocommit(self.db):
                sqlite3_step(self.rollback)
                sqlite3_reset(self.rollback)
            raise
        return 0

    def commit_frame(self, bytes payload) -> bool:
        """Apply one frame in one transaction; on a constraint failure, change by change
        (a refused change is reported on stderr, the others commit). Raises
        ``sqlite3.Error`` (or OverflowError) when it cannot commit. ``False``: the frame
        was not read (nothing was written; see the module's docstring)."""
        cdef const Val* head
        cdef Py_ssize_t i
        if self.db == NULL:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        try:
            self._read(payload)
        except _Unsupported:
            return False
        try:
            self._apply(0, self.nchanges)
        except sqlite3.IntegrityError:
            for i in range(self.nchanges):
                try:
                    self._apply(i, i + 1)
                except sqlite3.IntegrityError as exc:
                    if self.changes[i].settle:
                        what = "settle"
                    else:
                        head = &self.vals[self.changes[i].head]
                        what = head.p[: head.n].decode("utf-8", "replace")
                    print(f"meshfast store writer: change refused ({exc}): {what[:200]}", file=sys.stderr)
        return True


