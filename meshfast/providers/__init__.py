"""Providers: one module per wire format, each behind the :class:`Provider` interface."""

from meshfast.providers.base import Endpoint, Provider, Reply

__all__ = ["Endpoint", "Provider", "Reply"]
