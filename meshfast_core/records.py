"""The hot path's records, an ``Account``, a call's ``Hold`` and its ``Receipt``, and the
balance moves on them (``take_hold``, ``release_hold``, ``settle_hold``), and the store
writer's ``Frame`` that ``settle_hold`` writes its change to: the compiled ``_records`` unless
``MESHFAST_NO_EXTENSIONS`` is set.

``records_py`` holds the pure-Python twins (dataclasses with the same fields, methods and
``RECEIPT_FIELDS`` order), ``RECORDS_C`` the compiled module (``None`` when it is not
available), ``COMPILED`` whether it is used. ``new_id`` makes the records' ids (each twin
keeps its own sequence, drawn afresh in a forked child); ``priced_receipt`` prices a call
that ends now into its receipt. ``Gate`` and ``KeyEntry`` admit a call on the embedded store
in two calls (``Gate.enter``: key check, account, privacy class; ``Gate.hold``: the hold
amount, ``hold_amount``, and the hold); ``asked_privacy`` is the class a call asks for.
``Settler`` settles a call on an immediate store and makes its answer's headers, one call
each.
"""

from types import ModuleType

from . import records_py
from ._ext import compiled
from .records_py import RECEIPT_FIELDS, day_of, month_of, spend_buckets

__all__ = (
    "COMPILED", "RECEIPT_FIELDS", "RECORDS_C", "Account", "Frame", "Gate", "Hold", "KeyEntry", "Receipt", "Settler",
    "asked_privacy", "day_of", "hold_amount", "month_of", "new_id", "priced_receipt", "release_hold", "settle_hold",
    "spend_buckets", "take_hold",
)  # fmt: skip

RECORDS_C: ModuleType | None = compiled("_records")
COMPILED = RECORDS_C is not None
Account = records_py.Account if RECORDS_C is None else RECORDS_C.Account
Frame = records_py.Frame if RECORDS_C is None else RECORDS_C.Frame
Hold = records_py.Hold if RECORDS_C is None else RECORDS_C.Hold
Receipt = records_py.Receipt if RECORDS_C is None else RECORDS_C.Receipt
new_id = records_py.new_id if RECORDS_C is None else RECORDS_C.new_id
priced_receipt = records_py.priced_receipt if RECORDS_C is None else RECORDS_C.priced_receipt
take_hold = records_py.take_hold if RECORDS_C is None else RECORDS_C.take_hold
release_hold = records_py.release_hold if RECORDS_C is None else RECORDS_C.release_hold
settle_hold = records_py.settle_hold if RECORDS_C is None else RECORDS_C.settle_hold
# a call's admission on the embedded store: the key check and the hold, one call each
Gate = records_py.Gate if RECORDS_C is None else RECORDS_C.Gate
KeyEntry = records_py.KeyEntry if RECORDS_C is None else RECORDS_C.KeyEntry
hold_amount = records_py.hold_amount if RECORDS_C is None else RECORDS_C.hold_amount
asked_privacy = records_py.asked_privacy if RECORDS_C is None else RECORDS_C.asked_privacy
Settler = records_py.Settler if RECORDS_C is None else RECORDS_C.Settler
