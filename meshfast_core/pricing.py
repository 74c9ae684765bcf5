"""What a call costs: the compiled ``_pricing`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``call_cost`` and ``hold_worst`` are the selected functions and ``Tariff`` the selected
record of what they read of an endpoint (``Endpoint.tariff``); ``pricing_py`` holds the
pure-Python twins (and ``token_cost`` / ``margin_of``, the rules they apply), ``PRICING_C``
the compiled module (``None`` when it is not available), ``COMPILED`` whether it is used.
"""

from types import ModuleType

from . import pricing_py
from ._ext import compiled

__all__ = ("COMPILED", "PRICING_C", "Tariff", "call_cost", "hold_worst")

PRICING_C: ModuleType | None = compiled("_pricing")
COMPILED = PRICING_C is not None
call_cost = pricing_py.call_cost if PRICING_C is None else PRICING_C.call_cost
hold_worst = pricing_py.hold_worst if PRICING_C is None else PRICING_C.hold_worst
Tariff = pricing_py.Tariff if PRICING_C is None else PRICING_C.Tariff
