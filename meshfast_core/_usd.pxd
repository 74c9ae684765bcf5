# Declarations other compiled modules cimport (``_records`` writes a call's receipt
# headers with it without a Python-level call).

# nano-USD as usd_py.usd_bytes writes it (the twin's answer beyond int64 or for a non-int)
cdef bytes usd_of(object nano)
