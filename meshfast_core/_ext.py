"""Whether the compiled twins may be used (``MESHFAST_NO_EXTENSIONS=1`` forbids them), and
the one place the selectors load them from."""

import importlib
import os
from types import ModuleType

NO_EXTENSIONS = os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0")


def compiled(name: str) -> ModuleType | None:
    """The compiled module ``meshfast_core.<name>``; ``None`` when ``MESHFAST_NO_EXTENSIONS``
    is set or it was not built (its selector then serves the pure-Python twin)."""
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except ImportError:  # pragma: no cover - extension not built
        return None
