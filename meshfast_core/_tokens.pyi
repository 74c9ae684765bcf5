"""Type stub of the compiled prompt-token estimator (twin: ``tokens_py.py``)."""

from typing import Any

__all__ = (
    "DEFAULT_IMAGE_HEIGHT",
    "DEFAULT_IMAGE_WIDTH",
    "count_chat",
    "count_text",
    "image_tokens",
    "needs_mask",
    "scan_chat",
)

DEFAULT_IMAGE_WIDTH: int
DEFAULT_IMAGE_HEIGHT: int

def count_text(text: str) -> int: ...
def count_chat(messages: Any, tools: Any = None) -> int: ...
def image_tokens(width: int, height: int, detail: str = "auto") -> int: ...
def needs_mask(req: dict[str, Any]) -> int: ...
def scan_chat(req: dict[str, Any]) -> tuple[int, int]: ...
