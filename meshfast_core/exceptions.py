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


class LimitExceeded(Exception):
    """A call does not fit one limit of one owner (``meshfast_core.limits.admit``).

    ``limit``: ``concurrency``, ``rpm``, ``tpm``, ``daily`` or ``monthly``; ``index``: the
    position of the refusing owner in the states passed to ``admit``; ``used``: nano-USD
    spent or held in the period (the USD ceilings; else 0); ``retry_after``: seconds.
    """

    def __init__(self, limit: str, index: int, used: int, retry_after: float) -> None:
        super().__init__(f"{limit} limit exceeded")
        self.limit = limit
        self.index = index
        self.used = used
        self.retry_after = retry_after
