"""Exceptions raised by the upstream client, shared by the compiled module and its twin."""


class UpstreamError(Exception):
    """Base class: the upstream could not give a complete, well-formed answer."""


class UpstreamConnectError(UpstreamError):
    """The connection (TCP or TLS) to the upstream could not be made."""


class UpstreamTimeout(UpstreamError):
    """A deadline passed; ``phase`` is ``pool``, ``connect``, ``first_byte`` or ``read``."""

    def __init__(self, phase: str, message: str = "") -> None:
        super().__init__(message or f"upstream timed out ({phase})")
        self.phase = phase


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with bytes that are not valid HTTP/1.1."""


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before the response was complete."""
