# cython: language_level=3
"""Incremental scanner of an OpenAI ``text/event-stream`` (compiled twin of ``sse_py.py``).

See ``sse_py.py`` for the wire format and the contract; both behave identically.
"""

cimport cython
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcmp, memcpy, memmove

from orjson import loads as _orjson_loads

__all__ = ("SSEScanner",)

cdef object _loads = _orjson_loads

cdef enum:
    LF = 0x0A
    CR = 0x0D
    QUOTE = 0x22
    BACKSLASH = 0x5C
    COLON = 0x3A
    BRACE = 0x7B
    U = 0x75

    K_NONE = 0
    K_CONTENT = 1
    K_FINISH_REASON = 2
    K_USAGE = 3
    K_ERROR = 4


# Growable byte buffer owned by a scanner.
cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef int _buf_append(Buf* b, const void* src, Py_ssize_t n) except -1:
    cdef Py_ssize_t need = b.size + n
    cdef Py_ssize_t cap
    cdef char* p
    if need > b.cap:
        cap = b.cap * 2 if b.cap else 1024
        if cap < need:
            cap = need
        p = <char*>PyMem_Realloc(b.data, <size_t>cap)
        if p == NULL:
            raise MemoryError()
        b.data = p
        b.cap = cap
    memcpy(b.data + b.size, src, <size_t>n)
    b.size = need
    return 0


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 0x20 or c == 0x09 or c == LF or c == CR


cdef inline int _hex4(const unsigned char* s) noexcept nogil:
    # Value of 4 hex digits at s, or -1.
    cdef int v = 0
    cdef int i
    cdef unsigned char c
    for i in range(4):
        c = s[i]
        if 0x30 <= c <= 0x39:
            v = (v << 4) | (c - 0x30)
        elif 0x61 <= c <= 0x66:
            v = (v << 4) | (c - 0x57)
        elif 0x41 <= c <= 0x46:
            v = (v << 4) | (c - 0x37)
        else:
            return -1
    return v


cdef Py_ssize_t _string_end(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* count
) noexcept nogil:
    # s[i:] is a JSON string body after its opening quote. Return the index past the
    # closing quote (or -1 if unterminated) and set count to its code points:
    # a surrogate-pair escape, \uXXXX or any other \X is one; raw UTF-8 counts its
    # non-continuation bytes.
    cdef Py_ssize_t cnt = 0
    cdef int hi, lo
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == QUOTE:
            count[0] = cnt
            return i + 1
        if c == BACKSLASH:
            if i + 1 >= n:
                return -1
            cnt += 1
            if s[i + 1] == U and i + 6 <= n:
                hi = _hex4(s + i + 2)
                if hi >= 0:
                    if (0xD800 <= hi <= 0xDBFF and i + 12 <= n and s[i + 6] == BACKSLASH
                            and s[i + 7] == U):
                        lo = _hex4(s + i + 8)
                        if 0xDC00 <= lo <= 0xDFFF:
                            i += 12
                            continue
                    i += 6
                    continue
            i += 2
        else:
            if (c & 0xC0) != 0x80:
                cnt += 1
            i += 1
    return -1


cdef inline bint _is_key(
    const unsigned char* d, Py_ssize_t k, Py_ssize_t n, const char* name, Py_ssize_t size
) noexcept nogil:
    return k + size < n and memcmp(d + k, name, <size_t>size) == 0 and d[k + size] == QUOTE


@cython.final
@cython.auto_pickle(False)
cdef class SSEScanner:
    """Split an SSE byte stream into events, forward them and record accounting facts.

    Feed upstream bytes with :meth:`feed`; it returns the raw bytes of every event
    the call completed, except ``[DONE]`` and usage-only events, which are held back.
    Call :meth:`finish` at upstream EOF to take the incomplete tail.
    """

    cdef readonly bint done
    cdef readonly object usage
    cdef readonly bytes usage_chunk
    cdef readonly str finish_reason
    cdef readonly Py_ssize_t content_length
    cdef readonly Py_ssize_t event_count
    cdef readonly object error

    # _tail: incomplete event, always starting at an event start.
    # _line: offset in _tail of the first line not yet seen complete.
    # _out: forwarded bytes of one feed() when held-back events split them.
    # _join: data of a multi-line event, joined with LF.
    cdef Buf _tail
    cdef Buf _out
    cdef Buf _join
    cdef Py_ssize_t _line

    def __init__(self) -> None:
        pass

    def __dealloc__(self):
        PyMem_Free(self._tail.data)
        PyMem_Free(self._out.data)
        PyMem_Free(self._join.data)

    @property
    def buffered(self) -> int:
        """Bytes held back as an incomplete event."""
        return self._tail.size

    def feed(self, data) -> bytes:
        """Take upstream bytes; return the raw bytes of the events they complete."""
        cdef const unsigned char* base
        cdef const unsigned char* hit
        cdef Py_ssize_t n, end, pos, nl, ev = 0, run_s = 0, run_e = 0
        cdef object src = None
        cdef object result

        if not PyBytes_CheckExact(data):
            data = bytes(memoryview(data))
        n = PyBytes_GET_SIZE(data)
        if n == 0:
            return b""
        if self._tail.size == 0:
            # Nothing pending: scan the caller's bytes in place.
            src = data
            base = <const unsigned char*>PyBytes_AS_STRING(data)
            end = n
            pos = 0
        else:
            _buf_append(&self._tail, PyBytes_AS_STRING(data), n)
            base = <const unsigned char*>self._tail.data
            end = self._tail.size
            pos = self._line

        # Forwarded events accumulate as one run [run_s, run_e) of base; a held-back
        # event ends the run, which is then copied to _out.
        self._out.size = 0
        while True:
            hit = <const unsigned char*>memchr(base + pos, LF, <size_t>(end - pos))
            if hit == NULL:
                break
            nl = hit - base
            if nl == pos or (nl == pos + 1 and base[pos] == CR):
                if self._event(base, ev, nl + 1):
                    if run_e != ev:
                        if run_e > run_s:
                            _buf_append(&self._out, base + run_s, run_e - run_s)
                        run_s = ev
                    run_e = nl + 1
                ev = nl + 1
            pos = nl + 1

        if self._out.size:
            if run_e > run_s:
                _buf_append(&self._out, base + run_s, run_e - run_s)
            result = PyBytes_FromStringAndSize(self._out.data, self._out.size)
        elif run_e == run_s:
            result = b""
        elif src is not None and run_s == 0 and run_e == n:
            result = src
        else:
            result = PyBytes_FromStringAndSize(<const char*>base + run_s, run_e - run_s)

        if src is not None:
            if ev < end:
                _buf_append(&self._tail, base + ev, end - ev)
        elif ev:
            memmove(self._tail.data, self._tail.data + ev, <size_t>(end - ev))
            self._tail.size = end - ev
        self._line = pos - ev
        return result

    def finish(self) -> bytes:
        """Return and drop the incomplete tail (at upstream EOF); it is not scanned."""
        cdef bytes tail = b""
        if self._tail.size:
            tail = PyBytes_FromStringAndSize(self._tail.data, self._tail.size)
        self._tail.size = 0
        self._line = 0
        return tail

    cdef int _event(self, const unsigned char* base, Py_ssize_t start, Py_ssize_t end) except -1:
        # base[start:end] is one event ending with its blank line. Return 1 to forward.
        cdef Py_ssize_t pos = start, nl, le, v, d0 = 0, d1 = 0, ndata = 0
        while True:
            nl = <const unsigned char*>memchr(base + pos, LF, <size_t>(end - pos)) - base
            le = nl
            if le > pos and base[le - 1] == CR:
                le -= 1
            if le == pos:
                break
            if le - pos >= 5 and memcmp(base + pos, b"data:", 5) == 0:
                v = pos + 5
                if v < le and base[v] == 0x20:
                    v += 1
                if ndata == 0:
                    d0 = v
                    d1 = le
                else:
                    if ndata == 1:
                        self._join.size = 0
                        _buf_append(&self._join, base + d0, d1 - d0)
                    _buf_append(&self._join, b"\n", 1)
                    _buf_append(&self._join, base + v, le - v)
                ndata += 1
            pos = nl + 1
        if ndata == 0:
            return 1
        self.event_count += 1
        if ndata == 1:
            return self._data(base + d0, d1 - d0)
        return self._data(<const unsigned char*>self._join.data, self._join.size)

    cdef int _data(self, const unsigned char* d, Py_ssize_t n) except -1:
        # d[:n] is the data of one event. Return 1 to forward, 0 to hold back.
        cdef Py_ssize_t pos = 0, q, k, v = 0, e, count = 0
        cdef const unsigned char* hit
        cdef int key
        cdef bint parse = False
        cdef object obj, value, choices
        cdef bytes payload

        if n == 6 and memcmp(d, b"[DONE]", 6) == 0:
            self.done = True
            return 0
        while pos < n:
            hit = <const unsigned char*>memchr(d + pos, QUOTE, <size_t>(n - pos))
            if hit == NULL:
                break
            q = hit - d
            k = q + 1
            key = K_NONE
            if k < n:
                if d[k] == 0x63:  # c
                    if _is_key(d, k, n, b"content", 7):
                        key = K_CONTENT
                        v = k + 8
                elif d[k] == 0x66:  # f
                    if _is_key(d, k, n, b"finish_reason", 13):
                        key = K_FINISH_REASON
                        v = k + 14
                elif d[k] == 0x75:  # u
                    if _is_key(d, k, n, b"usage", 5):
                        key = K_USAGE
                        v = k + 6
                elif d[k] == 0x65:  # e
                    if _is_key(d, k, n, b"error", 5):
                        key = K_ERROR
                        v = k + 6
            if key == K_NONE:
                pos = k
                continue
            while v < n and _is_ws(d[v]):
                v += 1
            if v >= n or d[v] != COLON:
                pos = k
                continue
            v += 1
            while v < n and _is_ws(d[v]):
                v += 1
            pos = v
            if key == K_CONTENT or key == K_FINISH_REASON:
                if v >= n or d[v] != QUOTE:
                    continue
                e = _string_end(d, v + 1, n, &count)
                if e < 0:
                    break
                if key == K_CONTENT:
                    self.content_length += count
                else:
                    try:
                        value = _loads(PyBytes_FromStringAndSize(<const char*>d + v, e - v))
                    except ValueError:
                        value = None
                    if type(value) is str:
                        self.finish_reason = value
                pos = e
            elif key == K_USAGE:
                if v < n and d[v] == BRACE:
                    parse = True
            else:
                parse = True

        if not parse:
            return 1
        payload = PyBytes_FromStringAndSize(<const char*>d, n)
        try:
            obj = _loads(payload)
        except ValueError:
            return 1
        if type(obj) is not dict:
            return 1
        if "error" in obj:
            self.error = obj["error"]
        value = obj.get("usage")
        if value is not None:
            self.usage = value
            choices = obj.get("choices", [])
            if type(choices) is list and not choices:
                self.usage_chunk = payload
                return 0
        return 1
