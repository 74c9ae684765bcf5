# Declarations other compiled modules cimport (``_records`` prices a receipt with it
# without a Python-level call).

cdef object call_cost_c(object prompt, object completion, object cached, object input_price,
                        object cached_price, object output_price, object margin_ppm, object fee_nano)
