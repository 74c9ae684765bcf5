# cython: language_level=3
"""What a call costs in nano-USD (compiled twin of ``pricing_py.py``; see it for the rules).

The arithmetic runs on C integers with overflow checks. Anything the C path does not
cover (an argument that is not an ``int``, a negative one, or a product beyond int64) goes
to the Python twin, which is exact for any integers: both give the same answer for every
input.

``Tariff`` is what both functions read of an endpoint: its prices and output cap as C
integers (with whether each fits that path) and the names a receipt copies. An endpoint
builds its own (``meshfast.providers.base.Endpoint.tariff``, rebuilt when one of its
fields is set), so a call reads one attribute per endpoint instead of eight.
"""

from cpython.long cimport PyLong_AsLongLongAndOverflow

from .pricing_py import call_cost as _call_cost_py
from .pricing_py import hold_worst as _hold_worst_py

__all__ = ("Tariff", "call_cost", "hold_worst")

cdef extern from *:
    """
    /* ceil(a * b / d) for a, b >= 0 and d > 0; nonzero when a * b overflows */
    static inline int mf_ceil_mul_div(long long a, long long b, long long d, long long *out) {
        long long p;
        if (__builtin_mul_overflow(a, b, &p)) return 1;
        *out = p / d + (p % d != 0);
        return 0;
    }
    static inline int mf_add(long long a, long long b, long long *out) {
        return __builtin_add_overflow(a, b, out);
    }
    static inline int mf_mul(long long a, long long b, long long *out) {
        return __builtin_mul_overflow(a, b, out);
    }
    """
    int mf_ceil_mul_div(long long a, long long b, long long d, long long *out) nogil
    int mf_add(long long a, long long b, long long *out) nogil
    int mf_mul(long long a, long long b, long long *out) nogil

cdef long long MTOK = 1000000
cdef long long PPM = 1000000


cdef bint get_ll(object v, long long* out) except -1:
    return _get(v, out)


cdef inline bint _get(object v, long long* out) except -1:
    """``v`` as a non-negative C integer; False when it is not an int, negative or too big."""
    cdef int overflow = 0
    if type(v) is not int:
        return False
    out[0] = PyLong_AsLongLongAndOverflow(v, &overflow)
    return overflow == 0 and out[0] >= 0


cdef class Tariff:
    """What ``hold_worst`` and ``priced_receipt`` read of an endpoint: its input, cached
    input and output prices (nano-USD per Mtok), its model's ``max_output_tokens``, the
    provider's name, the upstream model and the privacy class. The values are kept as
    given; those the C path cannot hold (not an int, negative, beyond int64) are flagged,
    and a call that needs one goes the way it went without a tariff (to the Python twin)."""

    def __init__(self, input_price, cached_price, output_price, max_output, provider, upstream, privacy):
        self.input_price = input_price
        self.cached_price = cached_price
        self.output_price = output_price
        self.max_output = max_output
        self.provider = provider
        self.upstream = upstream
        self.privacy = privacy
        self.prices_ok = _get(input_price, &self.ip) and _get(output_price, &self.op)
        self.cached_ok = _get(cached_price, &self.kp)
        self.cap_ok = _get(max_output, &self.cap)

    def __repr__(self):
        return (
            f"Tariff({self.input_price!r}, {self.cached_price!r}, {self.output_price!r}, {self.max_output!r}, "
            f"{self.provider!r}, {self.upstream!r}, {self.privacy!r})"
        )


def call_cost(prompt, completion, cached, input_price, cached_price, output_price, margin_ppm, fee_nano):
    """``(upstream, margin)`` in nano-USD (see ``pricing_py.call_cost``)."""
    return call_cost_c(prompt, completion, cached, input_price, cached_price, output_price, margin_ppm, fee_nano)


cdef object call_cost_c(object prompt, object completion, object cached, object input_price,
                        object cached_price, object output_price, object margin_ppm, object fee_nano):
    cdef long long p, c, k, ip, kp, op, ppm, fee, upstream, margin
    if not (
        _get(prompt, &p) and _get(completion, &c) and _get(cached, &k) and _get(input_price, &ip)
        and _get(cached_price, &kp) and _get(output_price, &op) and _get(margin_ppm, &ppm)
        and _get(fee_nano, &fee) and k <= p
    ):
        return _call_cost_py(prompt, completion, cached, input_price, cached_price, output_price, margin_ppm, fee_nano)
    if call_cost_ll(p, c, k, ip, kp, op, ppm, fee, &upstream, &margin):
        return _call_cost_py(prompt, completion, cached, input_price, cached_price, output_price, margin_ppm, fee_nano)
    return upstream, margin


cdef int call_cost_ll(long long p, long long c, long long k, long long ip, long long kp, long long op,
                      long long ppm, long long fee, long long* upstream, long long* margin) noexcept:
    """``call_cost`` on non-negative C integers with ``k <= p``; nonzero on an overflow."""
    cdef long long a, b, d
    return (
        mf_ceil_mul_div(p - k, ip, MTOK, &a) or mf_ceil_mul_div(k, kp, MTOK, &b) or mf_ceil_mul_div(c, op, MTOK, &d)
        or mf_add(a, b, upstream) or mf_add(upstream[0], d, upstream)
        or mf_ceil_mul_div(upstream[0], ppm, PPM, margin) or mf_add(margin[0], fee, margin)
    )


def hold_worst(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano):
    """``(nano-USD, tokens)`` a hold reserves (see ``pricing_py.hold_worst``)."""
    return hold_worst_c(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)


cdef object hold_worst_c(object candidates, object prompt_tokens, object asked, object n, object max_output,
                         object margin_ppm, object fee_nano):
    cdef long long prompt, a, nn, fixed_out = 0, ppm, fee, ip, op, cap = 0, out, x, y, cost
    cdef long long upstream = 0, out_max = 0, margin, amount, tokens
    cdef bint fixed = max_output is not None
    cdef Tariff t
    if not (
        _get(prompt_tokens, &prompt) and _get(asked, &a) and _get(n, &nn) and _get(margin_ppm, &ppm)
        and _get(fee_nano, &fee) and (not fixed or _get(max_output, &fixed_out))
    ):
        return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
    for ep in candidates:
        tariff = getattr(ep, "tariff", None)
        if type(tariff) is Tariff:  # an Endpoint: its tariff's C fields
            t = <Tariff>tariff
            if not (t.prices_ok and (fixed or t.cap_ok)):
                return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
            ip, op, cap = t.ip, t.op, t.cap
        else:  # anything else with the endpoint's attributes
            if not (_get(ep.input_nano_per_mtok, &ip) and _get(ep.output_nano_per_mtok, &op)):
                return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
            if not fixed and not _get(ep.model.max_output_tokens, &cap):
                return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
        if fixed:
            out = fixed_out
        else:
            if mf_mul(a if 0 < a < cap else cap, nn, &out):
                return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
        if mf_ceil_mul_div(prompt, ip, MTOK, &x) or mf_ceil_mul_div(out, op, MTOK, &y) or mf_add(x, y, &cost):
            return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
        if cost > upstream:
            upstream = cost
        if out > out_max:
            out_max = out
    if (
        mf_ceil_mul_div(upstream, ppm, PPM, &margin) or mf_add(margin, fee, &margin)
        or mf_add(upstream, margin, &amount) or mf_add(prompt, out_max, &tokens)
    ):
        return _hold_worst_py(candidates, prompt_tokens, asked, n, max_output, margin_ppm, fee_nano)
    return amount, tokens
