"""What a call costs: the compiled ``_pricing`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``call_cost`` and ``hold_worst`` are the selected functions; ``pricing_py`` holds the
pure-Python twins (and ``token_cost`` / ``margin_of``, the rules they apply), ``PRICING_C``
the compiled module (``None`` when it is not available), ``COMPILED`` whether it is used.
"""

from types import ModuleType

from . import pricing_py
from ._ext import NO_EXTENSIONS

__all__ = ("COMPILED", "PRICING_C", "call_cost", "hold_worst")

call_cost = pricing_py.call_cost
hold_worst = pricing_py.hold_worst
PRICING_C: ModuleType | None = None
COMPILED = False

if not NO_EXTENSIONS:
    try:
        from . import _pricing as PRICING_C  # noqa: N812 - a module, named like the others
    except ImportError:  # pragma: no cover - extension not built
        pass
    else:
        call_cost = PRICING_C.call_cost
        hold_worst = PRICING_C.hold_worst
        COMPILED = True
