"""Prompt-token estimator: the compiled ``_tokens`` unless ``MESHFAST_NO_EXTENSIONS`` is set.

``count_text`` estimates the ``cl100k_base`` token count of a string and ``count_chat``
the prompt tokens of a chat-completions request (``messages`` and ``tools``); see
``tokens_py`` for the method. ``count_text_py``/``count_chat_py`` are the pure-Python
twin, ``count_text_c``/``count_chat_c`` the compiled functions (``None`` when they are not
available), ``COMPILED`` whether ``count_text``/``count_chat`` are the compiled ones.
``needs_mask`` (what a chat request needs from an endpoint, as the router's bits) and
``scan_chat`` (its prompt tokens and that mask in one call) follow the same choice.
"""

from collections.abc import Callable

from ._ext import compiled
from .tokens_py import (
    DEFAULT_IMAGE_HEIGHT,
    DEFAULT_IMAGE_WIDTH,
    NEEDS_JSON_SCHEMA,
    NEEDS_STREAMING,
    NEEDS_TOOLS,
    NEEDS_VISION,
    image_tokens,
)
from .tokens_py import count_chat as count_chat_py
from .tokens_py import count_text as count_text_py
from .tokens_py import needs_mask as needs_mask_py
from .tokens_py import scan_chat as scan_chat_py

__all__ = (
    "COMPILED",
    "DEFAULT_IMAGE_HEIGHT",
    "DEFAULT_IMAGE_WIDTH",
    "NEEDS_JSON_SCHEMA",
    "NEEDS_STREAMING",
    "NEEDS_TOOLS",
    "NEEDS_VISION",
    "count_chat",
    "count_chat_c",
    "count_chat_py",
    "count_text",
    "count_text_c",
    "count_text_py",
    "image_tokens",
    "needs_mask",
    "needs_mask_py",
    "scan_chat",
    "scan_chat_py",
)

_c = compiled("_tokens")
COMPILED = _c is not None
count_text_c: Callable[[str], int] | None = None if _c is None else _c.count_text
count_chat_c: Callable[..., int] | None = None if _c is None else _c.count_chat
count_text: Callable[[str], int] = count_text_c or count_text_py
count_chat: Callable[..., int] = count_chat_c or count_chat_py
needs_mask: Callable[[dict], int] = needs_mask_py if _c is None else _c.needs_mask
scan_chat: Callable[[dict], tuple[int, int]] = scan_chat_py if _c is None else _c.scan_chat
