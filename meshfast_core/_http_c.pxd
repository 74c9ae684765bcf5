# Types for _http_c.py (a symlink to http_py.py), compiled by Cython in pure-Python mode.
# Keep in step with the classes in http_py.py: every attribute they set is declared here.
# Locals of def/async def methods cannot be typed from here, so code touching another
# object's C attributes lives in cdef methods (typed arguments or @cython.locals).

cimport cython

cdef Py_ssize_t HIGH_WATER
cdef int _IN_USE, _IDLE, _DROPPED
cdef object _OWN_HEADERS, _BODY_METHODS


cdef class Pool
cdef class _Connection


cdef class Response:
    cdef public int status
    cdef public list headers
    cdef readonly Py_ssize_t buffered
    cdef _Connection _conn
    cdef object _loop
    cdef double _read_timeout
    cdef list _chunks
    cdef bint _done
    cdef object _exc
    cdef object _waiter
    cdef bint _stale

    cdef _drained(self)
    cdef _wake(self)
    cdef _finish(self)
    cdef _fail(self, exc)


cdef class _Connection:
    cdef Pool pool
    cdef object transport
    cdef object parser
    cdef Response resp
    cdef list headers
    cdef int state
    cdef double idle_since
    cdef Py_ssize_t requests
    cdef bint got_bytes, paused, lost, head_only, interim, framed
    cdef object lost_waiter

    cdef _fail(self, exc)


cdef class Pool:
    cdef readonly str url, host
    cdef readonly int port
    cdef bytes _host_header
    cdef object _ssl
    cdef readonly Py_ssize_t max_size
    cdef readonly double idle_timeout, connect_timeout, first_byte_timeout, read_timeout
    cdef readonly Py_ssize_t size, in_use, created, reused
    cdef readonly bint closed
    cdef list _idle
    cdef object _waiters
    cdef object _sweeper
    cdef object _loop

    @cython.locals(conn=_Connection)
    cdef _Connection _checkout(self, loop)
    @cython.locals(conn=_Connection)
    cdef list _close_idle(self)
    @cython.locals(resp=Response)
    cdef Response _send(self, _Connection conn, bytes data, bint head_only)
    @cython.locals(conn=_Connection)
    cdef _expire(self)
    cdef _release(self, _Connection conn, bint keep)
    cdef _drop(self, _Connection conn, bint abort=*)
    cdef _wake_slot(self)
