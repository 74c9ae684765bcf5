"""meshfast: a self-hostable, OpenAI-compatible LLM router with a compiled hot path."""

__version__ = "0.1.0"
