"""Whether the compiled twins may be used (``MESHFAST_NO_EXTENSIONS=1`` forbids them)."""

import os

NO_EXTENSIONS = os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0")
