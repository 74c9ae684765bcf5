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
from libc.string cimport memchr, memcmp, memcpy, memmove, memset

from meshfast_core._usd cimport usd_of


cdef extern from "string.h" nogil:
    void* memmem(const void* haystack, size_t haystacklen, const void* needle, size_t needlelen)

from orjson import loads as _orjson_loads

from .sse_py import usage_reparsed as _usage_reparsed

__all__ = ("SSEScanner", "body_usage", "usage_counts", "usage_with_costs")

cdef object _loads = _orjson_loads


cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char* s, Py_ssize_t size, const char* errors)


# Byte-scanning kernels: SSE2 (baseline on x86-64) with a portable scalar fallback.
cdef extern from *:
    """
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
    #include <emmintrin.h>
    #define MF_SSE2 1
    static CYTHON_INLINE unsigned mf_popcount16(unsigned x) {
        x = x - ((x >> 1) & 0x5555u);
        x = (x & 0x3333u) + ((x >> 2) & 0x3333u);
        x = (x + (x >> 4)) & 0x0F0Fu;
        return (x + (x >> 8)) & 0x1Fu;
    }
    #endif

    /* Whether x, y are the first two letters of a key of interest: content,
       finish_reason, usage or error. */
    #define MF_KEY2(x, y) (((x) == 'c' && (y) == 'o') || ((x) == 'f' && (y) == 'i') || \\
                           ((x) == 'u' && (y) == 's') || ((x) == 'e' && (y) == 'r'))

    /* Index of the next '"' in d[pos:n] followed by the first two letters of a key
       of interest, or -1: no other quote can start one of those keys. */
    static CYTHON_INLINE Py_ssize_t mf_key_candidate(
            const unsigned char* d, Py_ssize_t pos, Py_ssize_t n) {
    #ifdef MF_SSE2
        const __m128i q = _mm_set1_epi8('"');
        const __m128i c = _mm_set1_epi8('c');
        const __m128i e = _mm_set1_epi8('e');
        const __m128i f = _mm_set1_epi8('f');
        const __m128i u = _mm_set1_epi8('u');
        while (pos + 18 <= n) {
            __m128i a = _mm_loadu_si128((const __m128i*)(d + pos));
            __m128i b = _mm_loadu_si128((const __m128i*)(d + pos + 1));
            __m128i k = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(b, c), _mm_cmpeq_epi8(b, e)),
                _mm_or_si128(_mm_cmpeq_epi8(b, f), _mm_cmpeq_epi8(b, u)));
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(a, q), k));
            while (m) {
                Py_ssize_t i = pos + __builtin_ctz(m);
                if (MF_KEY2(d[i + 1], d[i + 2]))
                    return i;
                m &= m - 1;
            }
            pos += 16;
        }
    #endif
        for (; pos + 2 < n; pos++) {
            if (d[pos] == '"' && MF_KEY2(d[pos + 1], d[pos + 2]))
                return pos;
        }
        return -1;
    }

    /* Index of the first '"' or backslash in d[i:n] (n if none); adds to *cnt the bytes
       before it that are not UTF-8 continuation bytes (0x80-0xBF). */
    static CYTHON_INLINE Py_ssize_t mf_plain_span(
            const unsigned char* d, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* cnt) {
        Py_ssize_t k = *cnt;
    #ifdef MF_SSE2
        const __m128i q = _mm_set1_epi8('"');
        const __m128i bs = _mm_set1_epi8(0x5C);
        const __m128i hi = _mm_set1_epi8((char)0xC0);
        const __m128i ct = _mm_set1_epi8((char)0x80);
        while (i + 16 <= n) {
            __m128i a = _mm_loadu_si128((const __m128i*)(d + i));
            unsigned sp = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(a, q), _mm_cmpeq_epi8(a, bs)));
            unsigned cont = (unsigned)_mm_movemask_epi8(
                _mm_cmpeq_epi8(_mm_and_si128(a, hi), ct));
            if (sp) {
                k += mf_popcount16(((sp & (0u - sp)) - 1u) & ~cont);
                *cnt = k;
                return i + __builtin_ctz(sp);
            }
            k += 16 - mf_popcount16(cont);
            i += 16;
        }
    #endif
        for (; i < n; i++) {
            unsigned char x = d[i];
            if (x == '"' || x == 0x5C)
                break;
            k += (x & 0xC0) != 0x80;
        }
        *cnt = k;
        return i;
    }

    /* Index of the last '"usage"' in d[:n], or -1. */
    static CYTHON_INLINE Py_ssize_t mf_rfind_usage(const unsigned char* d, Py_ssize_t n) {
        Py_ssize_t at = n - 7;  /* the last possible start */
    #ifdef MF_SSE2
        const __m128i q = _mm_set1_epi8('"');
        const __m128i u = _mm_set1_epi8('u');
        while (at >= 15) {
            /* the starts at-15 .. at: a quote followed by a 'u' */
            const unsigned char* b = d + at - 15;
            unsigned m = (unsigned)_mm_movemask_epi8(_mm_and_si128(
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)b), q),
                _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i*)(b + 1)), u)));
            while (m) {
                unsigned j = 31u - (unsigned)__builtin_clz(m);
                if (memcmp(b + j + 2, "sage\\"", 5) == 0)
                    return at - 15 + (Py_ssize_t)j;
                m &= ~(1u << j);
            }
            at -= 16;
        }
    #endif
        for (; at >= 0; at--) {
            if (d[at] == '"' && memcmp(d + at + 1, "usage\\"", 6) == 0)
                return at;
        }
        return -1;
    }

    /* Index of the first byte of d[i:n] that is not in [A-Za-z0-9_], or n. */
    static CYTHON_INLINE Py_ssize_t mf_word_end(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) {
    #ifdef MF_SSE2
        /* signed compares after a shift: '0'..'9' -> -128..-119; 'a'..'z' and 'A'..'Z'
           (bit 5 set) -> -128..-103; nothing else lands in those ranges */
        while (i + 16 <= n) {
            __m128i a = _mm_loadu_si128((const __m128i*)(d + i));
            __m128i digit = _mm_cmplt_epi8(_mm_add_epi8(a, _mm_set1_epi8(0x50)), _mm_set1_epi8(-118));
            __m128i letter = _mm_cmplt_epi8(
                _mm_add_epi8(_mm_or_si128(a, _mm_set1_epi8(0x20)), _mm_set1_epi8(0x1F)), _mm_set1_epi8(-102));
            __m128i under = _mm_cmpeq_epi8(a, _mm_set1_epi8('_'));
            unsigned m = ~(unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(digit, letter), under)) & 0xFFFFu;
            if (m)
                return i + __builtin_ctz(m);
            i += 16;
        }
    #endif
        for (; i < n; i++) {
            unsigned char c = d[i];
            if (!((c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_'))
                break;
        }
        return i;
    }
    """
    Py_ssize_t mf_key_candidate(const unsigned char* d, Py_ssize_t pos, Py_ssize_t n) noexcept nogil
    Py_ssize_t mf_plain_span(
        const unsigned char* d, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* cnt
    ) noexcept nogil
    Py_ssize_t mf_rfind_usage(const unsigned char* d, Py_ssize_t n) noexcept nogil
    Py_ssize_t mf_word_end(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) noexcept nogil

cdef enum:
    LF = 0x0A
    CR = 0x0D
    QUOTE = 0x22
    BACKSLASH = 0x5C
    COLON = 0x3A
    BRACE = 0x7B
    CLOSE_BRACE = 0x7D
    BRACKET = 0x5B
    CLOSE_BRACKET = 0x5D
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


cdef inline Py_ssize_t _string_end(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* count
) noexcept nogil:
    # s[i:] is a JSON string body after its opening quote. Return the index past the
    # closing quote (or -1 if unterminated) and set count to its code points:
    # a surrogate-pair escape, \uXXXX or any other \X is one; raw UTF-8 counts its
    # non-continuation bytes.
    cdef Py_ssize_t cnt = 0
    cdef int hi, lo
    while True:
        i = mf_plain_span(s, i, n, &cnt)
        if i >= n:
            return -1
        if s[i] == QUOTE:
            count[0] = cnt
            return i + 1
        # a backslash
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


cdef inline bint _is_plain_ascii(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # Whether s[:n] is printable ASCII without a backslash: a JSON string body that
    # decodes to itself.
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = s[i]
        if c < 0x20 or c > 0x7E or c == BACKSLASH:
            return False
    return True


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
    # Raw JSON (quotes included) of the current finish_reason, when it is short: the
    # same bytes again reuse the str. _fr_len 0 means none.
    cdef Py_ssize_t _fr_len
    cdef unsigned char _fr_raw[32]

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
        cdef Py_ssize_t n, end, pos, nl, evend, ev = 0, run_s = 0, run_e = 0
        cdef int fwd
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
                # A blank line ends the event [ev, nl + 1).
                evend = nl + 1
                fwd = self._event(base, ev, evend)
            elif pos == ev:
                # The first line of an event: if a blank line follows, the event is
                # this one line, scanned here without looking for its lines again.
                evend = nl + 1
                if evend < end and base[evend] == LF:
                    evend += 1
                elif evend + 1 < end and base[evend] == CR and base[evend + 1] == LF:
                    evend += 2
                else:
                    pos = nl + 1
                    continue
                if nl > pos and base[nl - 1] == CR:
                    nl -= 1
                fwd = self._single(base, pos, nl)
            else:
                pos = nl + 1
                continue
            if fwd:
                if run_e != ev:
                    if run_e > run_s:
                        _buf_append(&self._out, base + run_s, run_e - run_s)
                    run_s = ev
                run_e = evend
            ev = pos = evend

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

    cdef inline int _single(
        self, const unsigned char* base, Py_ssize_t pos, Py_ssize_t le
    ) except -1:
        # base[pos:le] is the one line (line end stripped) of an event. Return 1 to forward.
        if le - pos >= 5 and memcmp(base + pos, b"data:", 5) == 0:
            pos += 5
            if pos < le and base[pos] == 0x20:
                pos += 1
            self.event_count += 1
            return self._data(base + pos, le - pos)
        return 1

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

    cdef int _finish_reason(self, const unsigned char* s, Py_ssize_t n) except -1:
        # s[:n] is a JSON string, quotes included: the value of a finish_reason.
        cdef object value
        if n == self._fr_len and memcmp(s, self._fr_raw, <size_t>n) == 0:
            return 0  # the current finish_reason again
        if _is_plain_ascii(s + 1, n - 2):
            value = PyUnicode_DecodeASCII(<const char*>s + 1, n - 2, NULL)
        else:
            try:
                value = _loads(PyBytes_FromStringAndSize(<const char*>s, n))
            except ValueError:
                return 0
            if type(value) is not str:
                return 0
        self.finish_reason = value
        if n <= <Py_ssize_t>sizeof(self._fr_raw):
            memcpy(self._fr_raw, s, <size_t>n)
            self._fr_len = n
        else:
            self._fr_len = 0
        return 0

    cdef int _data(self, const unsigned char* d, Py_ssize_t n) except -1:
        # d[:n] is the data of one event. Return 1 to forward, 0 to hold back.
        cdef Py_ssize_t pos = 0, q, k, v = 0, e, count = 0
        cdef int key
        cdef unsigned char c
        cdef bint parse = False
        cdef object obj, value, choices
        cdef bytes payload

        if n == 6 and memcmp(d, b"[DONE]", 6) == 0:
            self.done = True
            return 0
        while True:
            # Only a quote followed by the first letter of a key can start one.
            q = mf_key_candidate(d, pos, n)
            if q < 0:
                break
            k = q + 1
            c = d[k]
            key = K_NONE
            if c == 0x63:  # c
                if _is_key(d, k, n, b"content", 7):
                    key = K_CONTENT
                    v = k + 8
            elif c == 0x66:  # f
                if _is_key(d, k, n, b"finish_reason", 13):
                    key = K_FINISH_REASON
                    v = k + 14
            elif c == 0x75:  # u
                if _is_key(d, k, n, b"usage", 5):
                    key = K_USAGE
                    v = k + 6
            elif _is_key(d, k, n, b"error", 5):  # e
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
                # A non-string value (null) is skipped.
                if v >= n or d[v] != QUOTE:
                    continue
                e = _string_end(d, v + 1, n, &count)
                if e < 0:
                    break
                if key == K_CONTENT:
                    self.content_length += count
                else:
                    self._finish_reason(d + v, e - v)
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


# -- usage of a whole JSON answer ------------------------------------------------------

cdef inline Py_ssize_t _value_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    # s[i] opens an object or array: the index past its closing bracket, or -1 (strings
    # are skipped whole, so a bracket inside one does not count).
    cdef Py_ssize_t depth = 0
    cdef Py_ssize_t cnt
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == QUOTE:
            i = _string_end(s, i + 1, n, &cnt)
            if i < 0:
                return -1
            continue
        if c == BRACE or c == BRACKET:
            depth += 1
        elif c == CLOSE_BRACE or c == CLOSE_BRACKET:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


cdef inline object _count(object v):
    return v if type(v) is int and v > 0 else 0


def usage_counts(object usage):
    """``(prompt, completion, cached)`` tokens of an OpenAI ``usage`` object, or ``None``
    when it reports no integer ``prompt_tokens``. Missing, non-integer or negative counts
    are 0; cached tokens are at most the prompt."""
    if type(usage) is not dict:
        return None
    prompt = (<dict>usage).get("prompt_tokens")
    if type(prompt) is not int:
        return None
    prompt = _count(prompt)
    details = (<dict>usage).get("prompt_tokens_details")
    cached = _count((<dict>details).get("cached_tokens")) if type(details) is dict else 0
    return (prompt, _count((<dict>usage).get("completion_tokens")), min(cached, prompt))


# A fast reading of the usual usage object, without building it: an object whose members
# are unsigned integers (at most 18 digits), nulls or (at the top only) objects of the
# same but flat kind, with plain ASCII keys ([A-Za-z0-9_], no escapes). Such text is JSON,
# and this reads from it what parsing it would give (duplicate keys: the last one wins).
# Anything else returns -1 and the object is parsed with orjson.
cdef enum:
    V_ABSENT = 0
    V_INT = 1
    V_NULL = 2
    V_OBJECT = 3
    ROLE_USAGE = 0
    ROLE_PROMPT_DETAILS = 1
    ROLE_OTHER = 2


cdef struct _Usage:
    int prompt_kind
    long long prompt
    int completion_kind
    long long completion
    int details_kind
    int cached_kind  # in the last prompt_tokens_details object
    long long cached


cdef inline Py_ssize_t _skip_ws(const unsigned char* d, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(d[i]):
        i += 1
    return i


cdef inline Py_ssize_t _ws(const unsigned char* d, Py_ssize_t i) noexcept nogil:
    # past the whitespace at d[i]; no bound check: the text ends with a byte that is not
    # whitespace (see _fast_usage)
    while d[i] <= 0x20 and _is_ws(d[i]):
        i += 1
    return i


cdef Py_ssize_t _fast_usage(const unsigned char* d, Py_ssize_t i, Py_ssize_t n, int role, _Usage* u) noexcept nogil:
    # d[i] is '{': the index past its '}', or -1 (not the fast kind). d[n] must be
    # readable and none of whitespace, a digit, a letter or JSON punctuation (a bytes
    # object's trailing NUL): every scan below stops at it, so i never passes n.
    cdef Py_ssize_t k0, klen, j
    cdef unsigned long long v = 0
    cdef int kind
    cdef unsigned char c
    i = _ws(d, i + 1)
    if d[i] == CLOSE_BRACE:
        return i + 1
    while True:
        if d[i] != QUOTE:
            return -1
        k0 = i + 1
        i = mf_word_end(d, k0, n)
        if d[i] != QUOTE:
            return -1
        klen = i - k0
        i = _ws(d, i + 1)
        if d[i] != COLON:
            return -1
        i = _ws(d, i + 1)
        c = d[i]
        if <unsigned char>(c - 0x30) < 10:
            j = i
            v = c - 0x30
            i += 1
            while <unsigned char>(d[i] - 0x30) < 10:
                v = v * 10 + (d[i] - 0x30)  # wraps past 20 digits: rejected below
                i += 1
            if i - j > 18 or (c == 0x30 and i - j > 1):
                return -1  # too long for certain, or a leading zero
            c = d[i]
            if c == 0x2E or c == 0x65 or c == 0x45:
                return -1  # not an integer: a fraction or an exponent
            kind = V_INT
        elif c == BRACE:
            if role != ROLE_USAGE:
                return -1
            if klen == 21 and memcmp(d + k0, b"prompt_tokens_details", 21) == 0:
                u.cached_kind = V_ABSENT  # this object replaces any earlier one
                i = _fast_usage(d, i, n, ROLE_PROMPT_DETAILS, u)
            else:
                i = _fast_usage(d, i, n, ROLE_OTHER, u)
            if i < 0:
                return -1
            kind = V_OBJECT
        elif c == 0x6E:  # null
            if i + 4 > n or memcmp(d + i, b"null", 4) != 0:
                return -1
            i += 4
            kind = V_NULL
        else:
            return -1  # a sign, a string, true/false, an array or not JSON
        if role == ROLE_USAGE:
            if klen == 13:
                if memcmp(d + k0, b"prompt_tokens", 13) == 0:
                    u.prompt_kind = kind
                    u.prompt = <long long>v
            elif klen == 17:
                if memcmp(d + k0, b"completion_tokens", 17) == 0:
                    u.completion_kind = kind
                    u.completion = <long long>v
            elif klen == 21:
                if memcmp(d + k0, b"prompt_tokens_details", 21) == 0:
                    u.details_kind = kind
        elif role == ROLE_PROMPT_DETAILS:
            if klen == 13 and memcmp(d + k0, b"cached_tokens", 13) == 0:
                u.cached_kind = kind
                u.cached = <long long>v
        i = _ws(d, i)
        if d[i] == CLOSE_BRACE:
            return i + 1
        if d[i] != 0x2C:  # ','
            return -1
        i = _ws(d, i + 1)


def body_usage(bytes body not None):
    """:func:`usage_counts` of the last top-level-looking ``"usage": {...}`` member of a JSON
    answer, found without parsing the (maybe large) rest of it; ``None`` without one."""
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i, end
    cdef long long cached
    cdef _Usage u
    # the last '"usage"': a raw quote never occurs inside a JSON string, so it is a key
    # (or a string value, which the colon check below rejects)
    cdef Py_ssize_t at = mf_rfind_usage(d, n)
    if at < 0:
        return None
    i = _ws(d, at + 7)  # d[n] is the bytes object's NUL
    if d[i] != COLON:
        return None
    i = _ws(d, i + 1)
    if d[i] != BRACE:
        return None
    u.prompt_kind = u.completion_kind = u.details_kind = u.cached_kind = V_ABSENT
    u.prompt = u.completion = u.cached = 0
    if _fast_usage(d, i, n, ROLE_USAGE, &u) >= 0:  # a whole object of the fast kind
        if u.prompt_kind != V_INT:
            return None
        # usage_counts' rules; these integers are never negative
        cached = u.cached if u.details_kind == V_OBJECT and u.cached_kind == V_INT else 0
        return (u.prompt, u.completion if u.completion_kind == V_INT else 0, cached if cached < u.prompt else u.prompt)
    end = _value_end(d, i, n)
    if end < 0:
        return None
    try:
        usage = _loads(PyBytes_FromStringAndSize(<const char*>d + i, end - i))
    except ValueError:
        return None
    return usage_counts(usage)


# -- the usage chunk with the call's costs (see sse_py.usage_with_costs) ----------------

cdef bint _usage_span(const unsigned char* d, Py_ssize_t n, Py_ssize_t* ustart, Py_ssize_t* uend) noexcept nogil:
    # the members of the top-level object, one by one (nested values skipped whole)
    cdef Py_ssize_t i = _skip_ws(d, 0, n), ks, e, cnt
    cdef bint found = 0, is_usage
    cdef unsigned char c
    if i >= n or d[i] != BRACE:
        return 0
    i += 1
    while True:
        i = _skip_ws(d, i, n)
        if i < n and d[i] == CLOSE_BRACE:
            return found
        if i >= n or d[i] != QUOTE:
            return 0
        ks = i
        i = _string_end(d, i + 1, n, &cnt)
        if i < 0:
            return 0
        is_usage = i - ks == 7 and memcmp(d + ks + 1, b"usage", 5) == 0
        i = _skip_ws(d, i, n)
        if i >= n or d[i] != COLON:
            return 0
        i = _skip_ws(d, i + 1, n)
        if i >= n:
            return 0
        c = d[i]
        if c == BRACE or c == BRACKET:
            e = _value_end(d, i, n)
            if e < 0:
                return 0
            if is_usage and c == BRACE:
                ustart[0] = i
                uend[0] = e - 1
                found = 1
            i = e
        elif c == QUOTE:
            i = _string_end(d, i + 1, n, &cnt)
            if i < 0:
                return 0
        else:
            while i < n and d[i] != 0x2C and d[i] != CLOSE_BRACE and not _is_ws(d[i]):
                i += 1
        i = _skip_ws(d, i, n)
        if i >= n:
            return 0
        if d[i] == 0x2C:
            i += 1
        elif d[i] != CLOSE_BRACE:
            return 0


def usage_span(bytes chunk not None):
    """Where the top-level ``usage`` object is (see ``sse_py.usage_span``)."""
    cdef Py_ssize_t start = 0, end = 0
    if _usage_span(<const unsigned char*>PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), &start, &end):
        return (start, end)
    return None


def usage_with_costs(bytes chunk not None, str receipt_id, upstream_nano, margin_nano, total_nano):
    """The usage-only chunk with ``usage.cost`` and ``usage.mesh`` (see ``sse_py``)."""
    cdef const unsigned char* d = <const unsigned char*>PyBytes_AS_STRING(chunk)
    cdef Py_ssize_t start = 0, end = 0, i
    cdef bint empty = 1
    if _usage_span(d, PyBytes_GET_SIZE(chunk), &start, &end):
        # searched in place: ``bytes in bytes`` first tries the needle as an int, and the
        # TypeError it raises and clears costs about 2,300 instructions a search
        if (
            memmem(d + start + 1, end - start - 1, b'"cost"', 6) == NULL
            and memmem(d + start + 1, end - start - 1, b'"mesh"', 6) == NULL
        ):
            for i in range(start + 1, end):
                if not _is_ws(d[i]):
                    empty = 0
                    break
            total = usd_of(total_nano)
            add = b"".join([
                b"" if empty else b",", b'"cost":"', total, b'","mesh":{"receipt_id":"', receipt_id.encode("ascii"),
                b'","upstream_cost_usd":"', usd_of(upstream_nano), b'","margin_usd":"', usd_of(margin_nano),
                b'","total_usd":"', total, b'"}',
            ])
            return chunk[:end] + add + chunk[end:]
    return _usage_reparsed(chunk, receipt_id, upstream_nano, margin_nano, total_nano)
