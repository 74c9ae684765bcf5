# Declarations other compiled modules cimport (``_records`` prices a receipt and a hold
# with them without a Python-level call).

cdef class Tariff:
    # what hold_worst and priced_receipt read of an endpoint (see _pricing.pyx)
    cdef readonly object input_price, cached_price, output_price, max_output
    cdef readonly object provider, upstream, privacy
    cdef long long ip, kp, op, cap
    cdef bint prices_ok, cached_ok, cap_ok

cdef object hold_worst_c(object candidates, object prompt_tokens, object asked, object n, object max_output,
                         object margin_ppm, object fee_nano)
cdef object call_cost_c(object prompt, object completion, object cached, object input_price,
                        object cached_price, object output_price, object margin_ppm, object fee_nano)

# the C path of call_cost: nonzero when it does not cover the arguments (see _pricing.pyx)
cdef int call_cost_ll(long long p, long long c, long long k, long long ip, long long kp, long long op,
                      long long ppm, long long fee, long long* upstream, long long* margin) noexcept
cdef bint get_ll(object v, long long* out) except -1
