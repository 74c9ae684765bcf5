"""Incremental scanner of an OpenAI ``text/event-stream`` (pure-Python twin of ``_sse.pyx``).

The relay forwards upstream events byte-for-byte and learns accounting facts on the
way through, without parsing every event as JSON. Two kinds of event are held back
(not returned by :meth:`SSEScanner.feed`) so the relay can emit them itself at the
end: the ``data: [DONE]`` sentinel and usage-only chunks.

Wire format: lines end with LF or CRLF (a lone CR is not a line end); an event ends
at the first blank line; ``data:`` lines (one optional leading space stripped) are
joined with LF; lines starting with ``:`` are comments; other fields are ignored.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .usd import usd_bytes

__all__ = ("SSEScanner", "body_usage", "usage_counts", "usage_with_costs")

_JSON_WS = rb"[ \t\n\r]*"
# A key the scanner cares about, its colon, and the whitespace up to the value.
# A raw '"' never occurs inside a JSON string, so such a match is a key.
_KEY = re.compile(rb'"(content|finish_reason|usage|error)"' + _JSON_WS + b":" + _JSON_WS)
# The rest of a JSON string after its opening quote, through the closing quote.
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
# Escapes that decode to one code point: a surrogate pair, \uXXXX, or any other \X.
_ESCAPE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|\\.",
    re.S,
)
# Where a bracket nesting can change: a whole JSON string (skipped), or a bracket.
_NESTING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)
_USAGE_VALUE = re.compile(_JSON_WS + b":" + _JSON_WS + b"{")
_QUOTE = 0x22
_BRACE = 0x7B
_CR = 0x0D


def _code_points(raw: bytes) -> int:
    """Number of code points in the raw (still escaped) body of a JSON string."""
    escapes = 0
    if b"\\" in raw:
        raw, escapes = _ESCAPE.subn(b"", raw)
    try:
        return escapes + len(raw.decode("utf-8"))
    except UnicodeDecodeError:
        # Not UTF-8: count every byte that is not a continuation byte.
        return escapes + sum(1 for b in raw if b & 0xC0 != 0x80)


class SSEScanner:
    """Split an SSE byte stream into events, forward them and record accounting facts.

    Feed upstream bytes with :meth:`feed`; it returns the raw bytes of every event
    the call completed, except ``[DONE]`` and usage-only events, which are held back.
    Call :meth:`finish` at upstream EOF to take the incomplete tail.
    """

    __slots__ = (
        "_buf",
        "_line",
        "_done",
        "_usage",
        "_usage_chunk",
        "_finish_reason",
        "_content_length",
        "_event_count",
        "_error",
    )

    def __init__(self) -> None:
        self._buf = bytearray()  # incomplete event; always starts at an event start
        self._line = 0  # start of the first line of _buf not yet seen complete
        self._done = False
        self._usage: Any = None
        self._usage_chunk: bytes | None = None
        self._finish_reason: str | None = None
        self._content_length = 0
        self._event_count = 0
        self._error: Any = None

    @property
    def done(self) -> bool:
        """Whether a ``data: [DONE]`` event was seen."""
        return self._done

    @property
    def usage(self) -> Any:
        """The non-null top-level ``usage`` of the last event that had one."""
        return self._usage

    @property
    def usage_chunk(self) -> bytes | None:
        """The data payload (JSON bytes) of the last usage-only event."""
        return self._usage_chunk

    @property
    def finish_reason(self) -> str | None:
        """The last non-null ``finish_reason`` string seen."""
        return self._finish_reason

    @property
    def content_length(self) -> int:
        """Code points in all ``"content"`` string values of all data events."""
        return self._content_length

    @property
    def event_count(self) -> int:
        """Number of events with at least one data line."""
        return self._event_count

    @property
    def error(self) -> Any:
        """The top-level ``error`` of the last event whose JSON object had one."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes held back as an incomplete event."""
        return len(self._buf)

    def feed(self, data: bytes) -> bytes:
        """Take upstream bytes; return the raw bytes of the events they complete."""
        if type(data) is not bytes:
            data = bytes(memoryview(data))
        if not data:
            return b""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        ev = 0
        pos = self._line
        find = buf.find
        while (nl := find(b"\n", pos)) >= 0:
            if nl == pos or (nl == pos + 1 and buf[pos] == _CR):
                event = bytes(buf[ev : nl + 1])
                if self._event(event):
                    out.append(event)
                ev = nl + 1
            pos = nl + 1
        if ev:
            del buf[:ev]
        self._line = pos - ev
        return b"".join(out)

    def finish(self) -> bytes:
        """Return and drop the incomplete tail (at upstream EOF); it is not scanned."""
        tail = bytes(self._buf)
        self._buf.clear()
        self._line = 0
        return tail

    def _event(self, event: bytes) -> bool:
        """Record the facts of one complete event; return whether to forward it."""
        data: list[bytes] = []
        for line in event.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                break
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
        if not data:
            return True
        self._event_count += 1
        return self._data(data[0] if len(data) == 1 else b"\n".join(data))

    def _data(self, data: bytes) -> bool:
        if data == b"[DONE]":
            self._done = True
            return False
        parse = False
        pos = 0
        end = len(data)
        search = _KEY.search
        while (m := search(data, pos)) is not None:
            key = m.group(1)
            pos = m.end()
            if key == b"content" or key == b"finish_reason":
                if pos >= end or data[pos] != _QUOTE:
                    continue
                s = _STRING_REST.match(data, pos + 1)
                if s is None:
                    break  # unterminated string: nothing more to find
                if key == b"content":
                    self._content_length += _code_points(data[pos + 1 : s.end() - 1])
                else:
                    try:
                        reason = orjson.loads(data[pos : s.end()])
                    except ValueError:
                        reason = None
                    if type(reason) is str:
                        self._finish_reason = reason
                pos = s.end()
            elif key == b"usage":
                if pos < end and data[pos] == _BRACE:
                    parse = True
            else:
                parse = True
        if not parse:
            return True
        try:
            obj = orjson.loads(data)
        except ValueError:
            return True
        if type(obj) is not dict:
            return True
        if "error" in obj:
            self._error = obj["error"]
        usage = obj.get("usage")
        if usage is not None:
            self._usage = usage
            choices = obj.get("choices", [])
            if type(choices) is list and not choices:
                self._usage_chunk = data
                return False
        return True


def _count(v: Any) -> int:
    return v if type(v) is int and v > 0 else 0


def usage_counts(usage: Any) -> tuple[int, int, int] | None:
    """``(prompt, completion, cached)`` tokens of an OpenAI ``usage`` object, or ``None``
    when it reports no integer ``prompt_tokens``. Missing, non-integer or negative counts
    are 0; cached tokens are at most the prompt."""
    if type(usage) is not dict:
        return None
    prompt = usage.get("prompt_tokens")
    if type(prompt) is not int:
        return None
    prompt = _count(prompt)
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if type(details) is dict else 0
    return (prompt, _count(usage.get("completion_tokens")), min(cached, prompt))


def body_usage(body: bytes) -> tuple[int, int, int] | None:
    """:func:`usage_counts` of the last top-level-looking ``"usage": {...}`` member of a JSON
    answer, found without parsing the (maybe large) rest of it; ``None`` without one."""
    at = body.rfind(b'"usage"')  # a raw quote never occurs inside a JSON string
    if at < 0:
        return None
    m = _USAGE_VALUE.match(body, at + 7)
    if m is None:
        return None
    start = m.end() - 1
    depth = 0
    for tok in _NESTING.finditer(body, start):
        c = body[tok.start()]
        if c == _QUOTE:
            continue
        depth += 1 if c in b"[{" else -1
        if depth == 0:
            try:
                return usage_counts(orjson.loads(body[start : tok.end()]))
            except ValueError:
                return None
    return None


# -- the usage chunk with the call's costs ----------------------------------------------


def usage_span(chunk: bytes) -> tuple[int, int] | None:
    """Where the top-level ``usage`` object of a JSON object is: the indices of its ``{``
    and its ``}`` (the last such member when there are several), else ``None``."""
    depth, pending, start, span = 0, False, -1, None
    for tok in _NESTING.finditer(chunk):
        c = chunk[tok.start()]
        if c == _QUOTE:
            if depth == 1 and tok.group() == b'"usage"' and _USAGE_VALUE.match(chunk, tok.end()):
                pending = True  # a key: the next token is its object's brace
            continue
        if c == _BRACE or c == 0x5B:
            depth += 1
            if pending:
                start, pending = tok.start(), False
        else:
            depth -= 1
            if depth == 1 and start >= 0:
                span, start = (start, tok.start()), -1
    return span


def usage_reparsed(chunk: bytes, receipt_id: str, upstream_nano: int, margin_nano: int, total_nano: int) -> bytes:
    """:func:`usage_with_costs` by parsing and serialising the chunk again (any shape)."""
    obj = orjson.loads(chunk)
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    total = usd_bytes(total_nano).decode()
    usage["cost"] = total
    usage["mesh"] = {
        "receipt_id": receipt_id,
        "upstream_cost_usd": usd_bytes(upstream_nano).decode(),
        "margin_usd": usd_bytes(margin_nano).decode(),
        "total_usd": total,
    }
    obj["usage"] = usage
    return orjson.dumps(obj)


def usage_with_costs(chunk: bytes, receipt_id: str, upstream_nano: int, margin_nano: int, total_nano: int) -> bytes:
    """The upstream's usage-only chunk with ``usage.cost`` (the total, USD) and
    ``usage.mesh`` (receipt id, upstream cost, margin and total) added as its last members.
    Spliced into the chunk's bytes, which stay as the upstream sent them; a chunk whose
    usage already has a ``cost`` or ``mesh`` member, or has no usage object, is parsed and
    serialised again (:func:`usage_reparsed`). ``receipt_id`` is one of meshfast's ids
    (nothing in it needs escaping)."""
    span = usage_span(chunk)
    if span is not None:
        start, end = span
        inner = chunk[start + 1 : end]
        if b'"cost"' not in inner and b'"mesh"' not in inner:
            total = usd_bytes(total_nano)
            add = b'"cost":"%s","mesh":{"receipt_id":"%s","upstream_cost_usd":"%s","margin_usd":"%s","total_usd":"%s"}' % (
                total, receipt_id.encode(), usd_bytes(upstream_nano), usd_bytes(margin_nano), total,
            )  # fmt: skip
            return chunk[:end] + (b"," + add if inner.strip() else add) + chunk[end:]
    return usage_reparsed(chunk, receipt_id, upstream_nano, margin_nano, total_nano)
