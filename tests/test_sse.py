"""Tests of the incremental SSE scanner, over the compiled module and its Python twin."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast_core import sse
from meshfast_core.sse import SSEScannerC, SSEScannerPy

IMPLS = [
    pytest.param(SSEScannerPy, id="py"),
    pytest.param(
        SSEScannerC,
        id="c",
        marks=pytest.mark.skipif(
            SSEScannerC is None, reason="meshfast_core._sse is not compiled (or disabled)"
        ),
    ),
]
ATTRS = (
    "done",
    "usage",
    "usage_chunk",
    "finish_reason",
    "content_length",
    "event_count",
    "error",
    "buffered",
)


@pytest.fixture(params=IMPLS)
def scanner_cls(request: pytest.FixtureRequest) -> type:
    return request.param


def test_sse_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert sse.COMPILED, "meshfast_core._sse did not load: build it with setup.py build_ext"
    assert sse.SSEScanner is SSEScannerC
    assert SSEScannerC.__module__ == "meshfast_core._sse"


def state(scanner: Any) -> dict[str, Any]:
    return {name: getattr(scanner, name) for name in ATTRS}


def run(cls: type, chunks: list[bytes]) -> tuple[bytes, dict[str, Any], bytes]:
    """Feed chunks; return (forwarded bytes, state before finish(), finish() tail)."""
    scanner = cls()
    out = b"".join(scanner.feed(chunk) for chunk in chunks)
    before = state(scanner)
    return out, before, scanner.finish()


def chunk(content: Any = None, finish_reason: str | None = None, **extra: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    obj = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        **extra,
    }
    return orjson.dumps(obj)


def ev(*lines: bytes, eol: bytes = b"\n") -> bytes:
    return b"".join(line + eol for line in lines) + eol


USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
USAGE_ONLY = orjson.dumps({"id": "chatcmpl-1", "choices": [], "usage": USAGE})


def stream(eol: bytes = b"\n") -> tuple[bytes, bytes]:
    """A typical stream and the bytes the scanner forwards from it."""
    forwarded = (
        ev(b": OPENROUTER PROCESSING", eol=eol)
        + ev(b"data: " + chunk("Hel"), eol=eol)
        + ev(b"data: " + chunk("lo \u00e9\U0001f600"), eol=eol)
        + ev(b"data: " + chunk(finish_reason="stop", usage=None), eol=eol)
    )
    held = ev(b"data: " + USAGE_ONLY, eol=eol) + ev(b"data: [DONE]", eol=eol)
    return forwarded + held, forwarded


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_stream(scanner_cls: type, eol: bytes) -> None:
    data, forwarded = stream(eol)
    out, st_, tail = run(scanner_cls, [data])
    assert out == forwarded
    assert tail == b""
    assert st_ == {
        "done": True,
        "usage": USAGE,
        "usage_chunk": USAGE_ONLY,
        "finish_reason": "stop",
        "content_length": 3 + 5,
        "event_count": 5,
        "error": None,
        "buffered": 0,
    }


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_split_at_every_byte(scanner_cls: type, eol: bytes) -> None:
    data, _ = stream(eol)
    expected = run(scanner_cls, [data])
    for i in range(len(data) + 1):
        assert run(scanner_cls, [data[:i], data[i:]]) == expected, i
    assert run(scanner_cls, [data[i : i + 1] for i in range(len(data))]) == expected


def test_returns_only_completed_events(scanner_cls: type) -> None:
    s = scanner_cls()
    first = ev(b"data: " + chunk("a"))
    assert s.feed(first + b"data: {") == first
    assert s.buffered == len(b"data: {")
    assert s.feed(b'"x": 1}\n') == b""
    assert s.buffered == len(b'data: {"x": 1}\n')
    assert s.feed(b"\n") == b'data: {"x": 1}\n\n'
    assert s.buffered == 0
    assert s.event_count == 2


def test_output_is_input_when_all_forwarded(scanner_cls: type) -> None:
    data = ev(b"data: " + chunk("a")) * 3
    assert scanner_cls().feed(data) == data


def test_accepts_bytes_like(scanner_cls: type) -> None:
    data = ev(b"data: " + chunk("abc"))
    s = scanner_cls()
    assert s.feed(bytearray(data[:5])) == b""
    assert s.feed(memoryview(data[5:])) == data
    assert s.content_length == 3
    with pytest.raises(TypeError):
        s.feed("data: x\n\n")


def test_empty_feed(scanner_cls: type) -> None:
    s = scanner_cls()
    assert s.feed(b"") == b""
    assert s.feed(b"data: x\n") == b""
    assert s.feed(b"") == b""
    assert s.buffered == 8


def test_comments_and_keepalive(scanner_cls: type) -> None:
    data = b": keep-alive\n\n:\r\n\r\n: a\n: b\n\n"
    out, st_, _ = run(scanner_cls, [data])
    assert out == data
    assert st_["event_count"] == 0


def test_blank_lines_between_events(scanner_cls: type) -> None:
    # A blank line at an event start ends an empty event, forwarded as is.
    data = b"\n\r\n" + ev(b"data: x") + b"\n" + ev(b"data: y")
    out, st_, _ = run(scanner_cls, [data])
    assert out == data
    assert st_["event_count"] == 2


def test_lone_cr_is_not_a_line_end(scanner_cls: type) -> None:
    s = scanner_cls()
    assert s.feed(b"data: [DONE]\r\r\n") == b""
    assert s.feed(b"\r\r\n") == b""  # the line "\r" is not blank
    assert s.buffered == len(b"data: [DONE]\r\r\n\r\r\n")
    assert s.feed(b"\n") == b"data: [DONE]\r\r\n\r\r\n\n"
    assert s.done is False  # data is "[DONE]\r"


def test_other_fields_ignored(scanner_cls: type) -> None:
    data = ev(b"event: message", b"id: 7", b"retry: 100", b"data", b"data: " + chunk("xy"))
    out, st_, _ = run(scanner_cls, [data])
    assert out == data
    assert st_["content_length"] == 2
    assert st_["event_count"] == 1
    # "data" without a colon is a field with an empty value: not a data line.
    out, st_, _ = run(scanner_cls, [ev(b"data", b"event: x")])
    assert st_["event_count"] == 0


def test_data_space_optional(scanner_cls: type) -> None:
    for line in (b"data:[DONE]", b"data: [DONE]"):
        s = scanner_cls()
        assert s.feed(ev(line)) == b""
        assert s.done is True
    s = scanner_cls()
    data = ev(b"data:  [DONE]")
    assert s.feed(data) == data
    assert s.done is False
    assert s.event_count == 1


def test_multiline_data(scanner_cls: type) -> None:
    body = json.dumps(
        {"choices": [{"delta": {"content": "ab\ncd"}, "finish_reason": "length"}]}, indent=2
    ).encode()
    data = ev(*(b"data: " + line for line in body.split(b"\n")), eol=b"\r\n")
    out, st_, _ = run(scanner_cls, [data])
    assert out == data
    assert st_["content_length"] == 5
    assert st_["finish_reason"] == "length"
    assert st_["event_count"] == 1


def test_multiline_usage_only_held_back(scanner_cls: type) -> None:
    body = json.dumps({"choices": [], "usage": USAGE}, indent=1).encode()
    s = scanner_cls()
    assert s.feed(ev(*(b"data: " + line for line in body.split(b"\n")))) == b""
    assert s.usage == USAGE
    assert s.usage_chunk == body


def test_multiline_done_is_not_done(scanner_cls: type) -> None:
    data = ev(b"data: [DONE]", b"data: ")
    s = scanner_cls()
    assert s.feed(data) == data
    assert s.done is False


def test_done_held_back_and_later_events_processed(scanner_cls: type) -> None:
    s = scanner_cls()
    after = ev(b"data: " + chunk("abc", "stop"))
    assert s.feed(ev(b"data: [DONE]") + after) == after
    assert s.done is True
    assert s.content_length == 3
    assert s.finish_reason == "stop"
    assert s.event_count == 2
    assert s.feed(ev(b"data: " + USAGE_ONLY)) == b""
    assert s.usage == USAGE


@pytest.mark.parametrize(
    "obj",
    [
        {"choices": [], "usage": USAGE},
        {"id": "x", "usage": USAGE},
        {"usage": USAGE, "choices": []},
    ],
)
def test_usage_only_held_back(scanner_cls: type, obj: dict[str, Any]) -> None:
    payload = orjson.dumps(obj)
    before = ev(b"data: " + chunk("a"))
    after = ev(b": tail")
    s = scanner_cls()
    assert s.feed(before + ev(b"data: " + payload) + after) == before + after
    assert s.usage == USAGE
    assert s.usage_chunk == payload
    assert s.event_count == 2


def test_usage_whitespace(scanner_cls: type) -> None:
    payload = b'{ "choices" : [ ] ,\t"usage"\t:\t {"total_tokens": 1} }'
    s = scanner_cls()
    assert s.feed(ev(b"data: " + payload)) == b""
    assert s.usage == {"total_tokens": 1}
    assert s.usage_chunk == payload


def test_usage_with_choices_forwarded(scanner_cls: type) -> None:
    data = ev(b"data: " + chunk("hi", "stop", usage=USAGE))
    s = scanner_cls()
    assert s.feed(data) == data
    assert s.usage == USAGE
    assert s.usage_chunk is None
    assert s.content_length == 2


@pytest.mark.parametrize(
    "payload",
    [
        b'{"choices":[],"usage":null}',
        b'{"choices":null,"usage":{"total_tokens":1}}',  # choices present, not a list
        b'{"choices":[],"usage":{"total_tokens":1}',  # invalid JSON
        b'[{"usage":{"total_tokens":1}}]',  # not an object
        b'{"choices":[],"x":{"usage":{"total_tokens":1}}}',  # not top-level
    ],
)
def test_not_usage_only(scanner_cls: type, payload: bytes) -> None:
    data = ev(b"data: " + payload)
    s = scanner_cls()
    assert s.feed(data) == data
    assert s.usage_chunk is None
    if b"null" not in payload:
        assert s.usage is None


def test_last_usage_wins(scanner_cls: type) -> None:
    s = scanner_cls()
    s.feed(ev(b"data: " + chunk("a", usage={"total_tokens": 1})))
    s.feed(ev(b"data: " + chunk("b", usage=None)))
    assert s.usage == {"total_tokens": 1}
    s.feed(ev(b'data: {"usage":{"total_tokens":2}}'))
    assert s.usage == {"total_tokens": 2}
    assert s.usage_chunk == b'{"usage":{"total_tokens":2}}'


def test_finish_reason(scanner_cls: type) -> None:
    s = scanner_cls()
    s.feed(ev(b"data: " + chunk("a")))
    assert s.finish_reason is None
    s.feed(ev(b'data: {"choices":[{"finish_reason" :\t"tool_calls"}]}'))
    assert s.finish_reason == "tool_calls"
    s.feed(ev(b"data: " + chunk("b", None)))
    assert s.finish_reason == "tool_calls"
    s.feed(ev(b'data: {"choices":[{"finish_reason":"stop"},{"finish_reason":"len\\u0067th"}]}'))
    assert s.finish_reason == "length"
    s.feed(ev(b'data: {"choices":[{"finish_reason":"\\ud800"}]}'))  # not decodable: ignored
    assert s.finish_reason == "length"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'"plain"', 5),
        (b'""', 0),
        (b'"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t"', 12),
        (b'"\\u00e9\\u4e2d"', 2),
        (b'"\\ud83d\\ude00"', 1),  # surrogate pair: one code point
        (b'"\\uD83D\\uDE00x"', 2),
        (b'"\\ud83d"', 1),  # lone surrogates
        (b'"\\ude00\\ud83d"', 2),
        ('"é中😀"'.encode(), 3),  # raw UTF-8
        (b'"\\\\"', 1),
        (b'"\\\\u0041"', 6),  # escaped backslash, then text
        (b"null", 0),
        (b'[{"token":"a","logprob":-1}]', 0),
        (b'"ab', 0),  # unterminated
    ],
)
def test_content_length(scanner_cls: type, content: bytes, expected: int) -> None:
    s = scanner_cls()
    s.feed(ev(b'data: {"choices":[{"delta":{"content" : ' + content + b"}}]}"))
    assert s.content_length == expected


def test_content_length_sums_and_skips_similar_keys(scanner_cls: type) -> None:
    s = scanner_cls()
    s.feed(ev(b"data: " + chunk("abc")))
    s.feed(ev(b'data: {"choices":[{"delta":{"reasoning_content":"zzz","content":"de"}}]}'))
    s.feed(ev(b'data: {"choices":[{"delta":{"content":"f\\"content\\": \\"ggg"}}]}'))
    s.feed(ev(b': {"content":"comment"}'))
    s.feed(ev(b'event: {"content":"field"}', b'data: {"choices":[{"logprobs":{"content":null}}]}'))
    assert s.content_length == 3 + 2 + 16


def test_content_length_matches_json(scanner_cls: type) -> None:
    texts = ["", "ascii", "é\u4e2d\U0001f600\u2028", '"\\/\b\f\n\r\t\x00\x1f']
    s = scanner_cls()
    for text in texts:
        for ensure_ascii in (True, False):
            body = json.dumps(
                {"choices": [{"delta": {"content": text}}]}, ensure_ascii=ensure_ascii
            )
            s.feed(ev(b"data: " + body.encode()))
    assert s.content_length == 2 * sum(len(t) for t in texts)


def test_error_event(scanner_cls: type) -> None:
    err = {"message": "Rate limit", "type": "rate_limit_error", "code": 429}
    data = ev(b"event: error", b"data: " + orjson.dumps({"error": err}))
    s = scanner_cls()
    assert s.feed(data) == data
    assert s.error == err
    assert s.event_count == 1
    s.feed(ev(b'data: {"error" : "boom"}'))
    assert s.error == "boom"
    s.feed(ev(b'data: {"choices":[{"delta":{"content":"\\"error\\": x"}}]}'))
    assert s.error == "boom"


def test_finish_returns_tail_unprocessed(scanner_cls: type) -> None:
    s = scanner_cls()
    tail = b"data: [DONE]\n"
    assert s.feed(ev(b"data: " + chunk("ab")) + tail) == ev(b"data: " + chunk("ab"))
    assert s.buffered == len(tail)
    assert s.finish() == tail
    assert s.done is False
    assert s.buffered == 0
    assert s.finish() == b""
    assert s.event_count == 1
    data = ev(b"data: " + chunk("c"))
    assert s.feed(data) == data  # usable after finish()
    assert s.content_length == 3


def test_attributes_read_only(scanner_cls: type) -> None:
    s = scanner_cls()
    for name in ATTRS:
        with pytest.raises(AttributeError):
            setattr(s, name, None)
    assert state(s) == {
        "done": False,
        "usage": None,
        "usage_chunk": None,
        "finish_reason": None,
        "content_length": 0,
        "event_count": 0,
        "error": None,
        "buffered": 0,
    }


def test_large_event_fed_bytewise(scanner_cls: type) -> None:
    text = "x" * 20000
    data = ev(b"data: " + chunk(text))
    s = scanner_cls()
    out = b"".join(s.feed(data[i : i + 1]) for i in range(len(data)))
    assert out == data
    assert s.content_length == 20000


# -- differential: compiled vs twin vs one piece, against the generator's own model --


@dataclass
class Model:
    raw: bytes = b""
    forwarded: bytes = b""
    content_length: int = 0
    event_count: int = 0
    done: bool = False
    usage: Any = None
    usage_chunk: bytes | None = None
    finish_reason: str | None = None
    error: Any = None
    tail: bytes = b""
    expect: dict[str, Any] = field(default_factory=dict)


texts = st.text(max_size=12)
eols = st.sampled_from([b"\n", b"\r\n"])


def dumps(obj: Any, ascii_: bool, indent: bool) -> bytes:
    if indent:
        return json.dumps(obj, ensure_ascii=ascii_, indent=1).encode()
    return json.dumps(obj, ensure_ascii=ascii_, separators=(",", ":")).encode()


@st.composite
def events(draw: st.DrawFn, model: Model) -> None:
    kind = draw(
        st.sampled_from(
            ["content", "content", "content", "usage", "usage+", "error", "comment", "done"]
        )
    )
    eol = draw(eols)
    ascii_ = draw(st.booleans())
    indent = draw(st.booleans())
    prefix = draw(st.sampled_from([b"data: ", b"data:"]))
    extra = draw(st.sampled_from([[], [b"event: message"], [b": c", b"id: 1"]]))
    forward = True
    payload: bytes | None
    if kind == "comment":
        payload = None
        extra = [b": keep-alive"]
    elif kind == "done":
        payload = b"[DONE]"
        model.done = True
        forward = False
    elif kind == "error":
        err = {"message": draw(texts), "code": draw(st.integers(0, 599))}
        payload = dumps({"error": err}, ascii_, indent)
        model.error = err
    else:
        text = draw(texts)
        reason = draw(st.sampled_from([None, None, "stop", "length", "tool_calls"]))
        obj: dict[str, Any] = {
            "id": "chatcmpl-" + draw(texts),
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": reason}],
        }
        if kind == "content":
            obj["usage"] = None
        else:
            usage = {"total_tokens": draw(st.integers(0, 10**6))}
            obj["usage"] = usage
            model.usage = usage
            if kind == "usage":
                obj["choices"] = draw(st.sampled_from([[], None]))
                if obj["choices"] is None:
                    del obj["choices"]
                text, reason = "", None
                forward = False
        model.content_length += len(text)
        if reason is not None:
            model.finish_reason = reason
        payload = dumps(obj, ascii_, indent)
        if not forward:
            # What the scanner sees: one leading space of each value is stripped.
            model.usage_chunk = b"\n".join(
                line[1:] if prefix == b"data:" and line[:1] == b" " else line
                for line in payload.split(b"\n")
            )
    lines = list(extra)
    if payload is not None:
        lines += [prefix + line for line in payload.split(b"\n")]
        model.event_count += 1
    raw = b"".join(line + eol for line in lines) + eol
    model.raw += raw
    if forward:
        model.forwarded += raw


@st.composite
def streams(draw: st.DrawFn) -> tuple[Model, list[bytes]]:
    model = Model()
    for _ in range(draw(st.integers(0, 8))):
        draw(events(model))
    model.tail = draw(
        st.sampled_from([b"", b"data: {", b'data: {"x"\n', b": ping\r\n", b"data: [DONE]\n"])
    )
    data = model.raw + model.tail
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return model, chunks


@settings(max_examples=200, deadline=None)
@given(streams())
def test_differential(case: tuple[Model, list[bytes]]) -> None:
    model, chunks = case
    expected = {
        "done": model.done,
        "usage": model.usage,
        "usage_chunk": model.usage_chunk,
        "finish_reason": model.finish_reason,
        "content_length": model.content_length,
        "event_count": model.event_count,
        "error": model.error,
        "buffered": len(model.tail),
    }
    impls = [SSEScannerPy] if SSEScannerC is None else [SSEScannerPy, SSEScannerC]
    for cls in impls:
        assert run(cls, chunks) == (model.forwarded, expected, model.tail), cls
        assert run(cls, [b"".join(chunks)]) == (model.forwarded, expected, model.tail), cls


# Tokens that stress the byte scanner: keys, escapes, surrogates, line ends, raw UTF-8.
TOKENS = [
    b'"content"',
    b'"finish_reason"',
    b'"usage"',
    b'"error"',
    b'"choices"',
    b"[]",
    b"[DONE]",
    b":",
    b" ",
    b"\t",
    b'"',
    b"\\",
    b"\\u",
    b"d83d",
    b"de00",
    b"00e9",
    b"{",
    b"}",
    b"null",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"data:",
    b"data: ",
    b": c",
    b"x",
    "\u00e9\U0001f600".encode(),
    b"\x80",
    b"\xc3",
    b'{"total_tokens":1}',
    b'"stop"',
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.lists(st.integers(0, 400), max_size=8))
def test_differential_fuzz(tokens: list[bytes], cuts: list[int]) -> None:
    if SSEScannerC is None:
        pytest.skip("meshfast_core._sse is not compiled (or disabled)")
    data = b"".join(tokens)
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    expected = run(SSEScannerPy, [data])
    assert run(SSEScannerC, [data]) == expected
    assert run(SSEScannerPy, chunks) == expected
    assert run(SSEScannerC, chunks) == expected


# -- usage of a whole JSON answer (body_usage / usage_counts) ---------------------------

from meshfast_core import sse_py  # noqa: E402
from meshfast_core._ext import compiled  # noqa: E402

sse_c = compiled("_sse")

USAGE_IMPLS = [
    pytest.param(sse_py, id="py"),
    pytest.param(
        sse_c,
        id="c",
        marks=pytest.mark.skipif(sse_c is None, reason="meshfast_core._sse is not compiled (or disabled)"),
    ),
]


@pytest.fixture(params=USAGE_IMPLS)
def usage_mod(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id":"x","usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}', (12, 30, 0)),
        # not the last member, nested objects and brackets inside strings after it
        (
            b'{"usage" :\n {"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 5},'
            b' "completion_tokens_details": {"x": [1, {"y": "}]"}]}, "completion_tokens": 3},'
            b' "choices": [{"message": {"content": "a } b ] c"}}]}',
            (7, 3, 5),
        ),
        # the key quoted inside a string value is not a key
        (b'{"choices":[{"message":{"content":"\\"usage\\": {"}}],"usage":{"prompt_tokens":1}}', (1, 0, 0)),
        # cached tokens at most the prompt; negative or non-integer counts are 0
        (b'{"usage":{"prompt_tokens":4,"completion_tokens":-9,"prompt_tokens_details":{"cached_tokens":99}}}', (4, 0, 4)),
        (b'{"usage":{"prompt_tokens":4,"completion_tokens":"9","prompt_tokens_details":[]}}', (4, 0, 0)),
        # no usable usage
        (b'{"usage":{"prompt_tokens":true,"completion_tokens":1}}', None),
        (b'{"usage":{"prompt_tokens":1.5}}', None),
        (b'{"usage":{"completion_tokens":3}}', None),
        (b'{"usage":null}', None),
        (b'{"role":"usage","x":{"prompt_tokens":1}}', None),
        (b'{"usage":{"prompt_tokens":1', None),
        (b'{"usage":{"prompt_tokens":1,}}', None),
        (b'"usage"', None),
        (b"", None),
        (b"not json at all", None),
    ],
)
def test_body_usage(usage_mod: Any, body: bytes, expected: tuple[int, int, int] | None) -> None:
    assert usage_mod.body_usage(body) == expected


_JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_COUNT = st.none() | st.booleans() | st.integers(-5, 10**9) | st.text(max_size=3) | st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    before=st.dictionaries(st.sampled_from(["id", "object", "choices", "model"]), _JSON, max_size=3),
    after=st.dictionaries(st.sampled_from(["system_fingerprint", "extra"]), _JSON, max_size=2),
    prompt=_COUNT,
    completion=_COUNT,
    cached=_COUNT,
    details=st.booleans(),
    noise=st.dictionaries(st.sampled_from(["total_tokens", "completion_tokens_details", "z"]), _JSON, max_size=2),
    indent=st.booleans(),
)
def test_body_usage_matches_a_full_parse(before, after, prompt, completion, cached, details, noise, indent) -> None:
    """Both twins read what parsing the whole answer and taking its ``usage`` would give."""
    usage: dict[str, Any] = dict(noise)
    usage.update({"prompt_tokens": prompt, "completion_tokens": completion})
    if details:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    obj = {**before, "usage": usage, **after}
    body = json.dumps(obj, indent=2 if indent else None).encode()
    expected = sse_py.usage_counts(json.loads(body)["usage"])
    assert sse_py.body_usage(body) == expected
    if sse_c is not None:
        assert sse_c.body_usage(body) == expected
        assert sse_c.usage_counts(usage) == expected
    if type(prompt) is int:
        assert expected is not None and expected[0] == max(prompt, 0)


_WS = st.sampled_from(["", " ", "\n  ", "\t", "\r\n"])
_FAST_KEYS = st.sampled_from(
    ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "cached_tokens", "x", "Prompt_tokens"]
)
_FAST_INT = st.one_of(
    st.integers(0, 10**6).map(str),
    st.sampled_from(["0", "00", "01", "-1", "-0", "1.0", "1e3", "1E3", "9" * 18, "9" * 19, "1" + "0" * 18, "18446744073709551616"]),
)


@st.composite
def _usage_text(draw: Any, depth: int = 0) -> str:
    """Usage-like objects mostly of the compiled reader's fast kind (integers, nulls,
    flat objects at the top, plain keys), with a few things outside it and duplicates."""
    members = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(_FAST_KEYS | st.sampled_from(['we\\u0069rd', "é"]) if depth else _FAST_KEYS)
        kind = draw(st.sampled_from(["int", "int", "int", "null", "obj", "other"]))
        if kind == "int":
            value = draw(_FAST_INT)
        elif kind == "null":
            value = "null"
        elif kind == "obj" and depth < 2:
            value = draw(_usage_text(depth + 1))
        else:
            value = draw(st.sampled_from(['"7"', "true", "[1]", "{}", "2.5"]))
        members.append(f'{draw(_WS)}"{key}"{draw(_WS)}:{draw(_WS)}{value}{draw(_WS)}')
    return "{" + ",".join(members) + draw(_WS) + "}"


@settings(max_examples=500, deadline=None)
@given(usage=_usage_text(), before=st.sampled_from(['{"id":"x",', '{"choices":[{"text":"}"}],', "{"]))
def test_body_usage_fast_reading_matches_the_parse(usage: str, before: str) -> None:
    """The compiled reader's fast path (no orjson for the usual usage object) gives what the
    twin's full parse gives, and falls back for everything else."""
    body = f'{before}"usage":{usage}}}'.encode()
    try:
        expected = sse_py.usage_counts(orjson.loads(usage))
    except orjson.JSONDecodeError:
        expected = None
    assert sse_py.body_usage(body) == expected
    if sse_c is not None:
        assert sse_c.body_usage(body) == expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ('{"prompt_tokens":24,"completion_tokens":118,"total_tokens":142,"prompt_tokens_details":{"cached_tokens":0},'
         '"completion_tokens_details":{"reasoning_tokens":0}}', (24, 118, 0)),
        ('{"prompt_tokens":5,"prompt_tokens":7}', (7, 0, 0)),  # the last duplicate wins
        ('{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":null}', (9, 0, 0)),
        ('{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":{"x":1}}', (9, 0, 0)),
        ('{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4,"cached_tokens":12}}', (9, 0, 9)),
        ('{"prompt_tokens":null,"completion_tokens":3}', None),
        ('{"prompt_tokens":' + "9" * 18 + "}", (10**18 - 1, 0, 0)),
        ('{"prompt_tokens":' + "9" * 19 + "}", (10**19 - 1, 0, 0)),  # past the fast reader: orjson's
        ('{"prompt_tokens":01}', None),  # not JSON
        ('{"prompt_tokens":3,"completion_tokens":-2}', (3, 0, 0)),
        ('{"prompt_tokens":3e0}', None),
        ('{"prompt\\u005ftokens":3}', (3, 0, 0)),  # an escaped key, decoded by the parse
        ('{ "prompt_tokens" : 3 , "completion_tokens" : 4 }', (3, 4, 0)),
        ('{"prompt_tokens":3,}', None),
        ('{"prompt_tokens":3 "completion_tokens":4}', None),
    ],
)
def test_body_usage_usual_and_edge_shapes(usage_mod: Any, usage: str, expected: tuple[int, int, int] | None) -> None:
    assert usage_mod.body_usage(b'{"id":"c","usage":' + usage.encode() + b"}") == expected


_DETAIL_KEYS = st.sampled_from(["cached_tokens", "audio_tokens", "reasoning_tokens", "accepted_prediction_tokens", "x_1"])
_ANY_COUNT = st.one_of(
    st.integers(0, 10**6),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), 10**18 - 1, 10**18]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
    st.booleans(),
    st.text(max_size=4),
)


@st.composite
def _usage_objects(draw: Any) -> dict[str, Any]:
    """Usage objects of the usual shape, members in any order, some missing or odd."""
    usage: dict[str, Any] = {}
    keys = ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details"]
    for key in draw(st.permutations(keys)):
        if draw(st.integers(0, 5)) == 0:
            continue  # missing
        if key.endswith("_details"):
            if draw(st.booleans()):
                usage[key] = {k: draw(_ANY_COUNT) for k in draw(st.lists(_DETAIL_KEYS, max_size=3))}
            else:
                usage[key] = draw(st.none() | st.integers(0, 9) | st.lists(st.integers(0, 9), max_size=2))
        else:
            usage[key] = draw(_ANY_COUNT)
    return usage


def _dump(obj: Any, ws: str) -> str:
    """JSON text with ``ws`` after every separator (json.dumps keeps big ints exact)."""
    return json.dumps(obj, separators=("," + ws, ":" + ws), ensure_ascii=False)


@settings(max_examples=400, deadline=None)
@given(
    usage=_usage_objects(),
    ws=st.sampled_from(["", " ", "\n  ", "\t", "\r\n    "]),
    lead=st.sampled_from(["", "x" * 40, 'a \\"usage\\": {\\"prompt_tokens\\": 9}', '"usage":{"prompt_tokens":5}', "}]"]),
    tail=st.sampled_from(["", ',"system_fingerprint":"fp_usage"', ',"x":"\\"usage\\":{}"', ',"service_tier":null']),
)
def test_body_usage_usual_objects_match_the_twin(usage: dict[str, Any], ws: str, lead: str, tail: str) -> None:
    """Both twins give usage_counts of the parsed usage, whatever the whitespace, member
    order, missing, huge, negative, float or odd counts, and "usage" inside strings."""
    text = '{"id":"chatcmpl-1","choices":[{"message":{"content":' + json.dumps(lead) + "}}]," + '"usage":' + _dump(usage, ws)
    body = (text + tail + "}").encode()
    try:  # orjson refuses integers beyond 64 bits: no usage then
        expected = sse_py.usage_counts(orjson.loads(body)["usage"])
    except orjson.JSONDecodeError:
        expected = None
    assert sse_py.body_usage(body) == expected
    if sse_c is not None:
        assert sse_c.body_usage(body) == expected
        for cut in range(len(body) - len(tail) - 40, len(body)):  # truncated answers
            assert sse_c.body_usage(body[:cut]) == sse_py.body_usage(body[:cut])


@pytest.mark.parametrize(
    "body",
    [
        b'{"usage":{"prompt_tokens":1}}'[:cut] for cut in range(30)
    ] + [
        b'{"x":"usage","y":1}',
        b'{"x":"\\"usage\\": {\\"prompt_tokens\\": 3}"}',
        b'{"usage":{"prompt_tokens":3},"choices":[{"message":{"content":"\\"usage\\": {\\"prompt_tokens\\": 4}"}}]}',
        b'{"usage":{"prompt_tokens":3}} "usage" : {"prompt_tokens":5}',
        b'{"usage" : \t\r\n{ \n"prompt_tokens"\n:\n2\n,\n"prompt_tokens_details"\n:\n{\n"cached_tokens" : 1\n}\n}\n}',
        b'{"usage":{"prompt_tokens":7,"completion_tokens":-0,"prompt_tokens_details":{"cached_tokens":-3}}}',
        b'{"usage":{"prompt_tokens":-7}}',
        b'{"usage":{"prompt_tokens":9223372036854775807,"completion_tokens":9223372036854775808}}',
        b'{"usage":{"prompt_tokens":123456789012345678,"prompt_tokens_details":{"cached_tokens":123456789012345679}}}',
        b'{"usage":{"prompt_tokens":1234567890123456789}}',
        b'{"usage":{"prompt_tokens":' + b"1" * 40 + b"}}",
        b'{"usage":{"prompt_tokens":2.0}}',
        b'{"usage":{"prompt_tokens":2,"completion_tokens":2.5e1}}',
        b'{"usage":{"prompt_tokens":0,"completion_tokens":00}}',
        b'{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":{"x":1}}}}',
        b'{"usage":{"prompt_tokens":5,"completion_tokens_details":{"reasoning_tokens":{"x":1}},"completion_tokens":2}}',
        b'{"usage":{"prompt_tokens_details":{"cached_tokens":1},"prompt_tokens":5}}',
        b'{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens_details":{}}}',
        b'{"usage":{"prompt_tokens":5,"caf\xc3\xa9":1,"completion_tokens":2}}',
        b'{"usage":{"prompt_tokens":5,"prompt_tokens_details_x":{"cached_tokens":3}}}',
        b'{"usage":{"prompt_tokens_":5,"prompt_token":6}}',
        b'{"usage":{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":1,"prompt_tokens":5}}',
        b'{"usage":{"prompt_tokens":5}\x00}',
        b'{"usage":{"prompt_tokens":5\x00}}',
        b'{"usage":{"prompt_tokens":nul}}',
        b'{"usage":{"prompt_tokens":n',
        b'"usage"' * 5,
        b'x"usage"',
    ],
)
def test_body_usage_edges_match_the_twin(body: bytes) -> None:
    expected = sse_py.body_usage(body)
    if sse_c is not None:
        assert sse_c.body_usage(body) == expected


# -- the usage chunk with the call's costs ------------------------------------------------

USAGE_TWINS = [
    pytest.param(sse_py, id="py"),
    pytest.param(sse._c, id="c", marks=pytest.mark.skipif(sse._c is None, reason="meshfast_core._sse is not compiled (or disabled)")),
]
COSTS = ("rcpt_abc1000000000001", 76_500, 11_475, 87_975)
MESH = {"receipt_id": "rcpt_abc1000000000001", "upstream_cost_usd": "0.0000765", "margin_usd": "0.000011475", "total_usd": "0.000087975"}


@pytest.mark.parametrize("mod", USAGE_TWINS)
def test_usage_with_costs_splices_the_usage_object(mod) -> None:
    chunk = b'{"id":"c1","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":120}}'
    out = mod.usage_with_costs(chunk, *COSTS)
    assert out == chunk[:-2] + b',"cost":"0.000087975","mesh":' + orjson.dumps(MESH) + b"}}"  # the rest as sent
    spaced = b'{ "usage" : { } , "choices": [] }'
    assert orjson.loads(mod.usage_with_costs(spaced, *COSTS))["usage"] == {"cost": "0.000087975", "mesh": MESH}
    nested = b'{"meta":{"usage":{"a":1}},"s":"usage","usage":{"prompt_tokens":1}}'  # only the top level's
    assert orjson.loads(mod.usage_with_costs(nested, *COSTS)) == {
        "meta": {"usage": {"a": 1}}, "s": "usage", "usage": {"prompt_tokens": 1, "cost": "0.000087975", "mesh": MESH},
    }
    # a usage that already has cost or mesh, or none at all: parsed and written again
    assert orjson.loads(mod.usage_with_costs(b'{"usage":{"cost":0.5}}', *COSTS))["usage"] == {"cost": "0.000087975", "mesh": MESH}
    assert orjson.loads(mod.usage_with_costs(b'{"choices":[]}', *COSTS)) == {"choices": [], "usage": {"cost": "0.000087975", "mesh": MESH}}


JSON_LEAVES = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
JSON_TREES = st.recursive(
    JSON_LEAVES,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["usage", "cost", "mesh", "a", "}", '"{']), kids, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["id", "choices", "model", "x"]), JSON_TREES, max_size=3),
    st.none() | st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "details", "cost"]), JSON_TREES, max_size=3),
    st.booleans(),
)
def test_usage_with_costs_twins_agree(top: dict, usage: dict | None, indent: bool) -> None:
    """Spliced or reparsed, the chunk reads as the parsed chunk with the costs set; the
    compiled splice gives the twin's bytes."""
    obj = dict(top)
    if usage is not None:
        obj["usage"] = usage
    chunk = orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else 0)
    out = sse_py.usage_with_costs(chunk, *COSTS)
    assert orjson.loads(out) == orjson.loads(sse_py.usage_reparsed(chunk, *COSTS))
    if sse._c is not None:
        assert sse._c.usage_with_costs(chunk, *COSTS) == out
        assert sse._c.usage_span(chunk) == sse_py.usage_span(chunk)


@pytest.mark.parametrize("mod", USAGE_TWINS)
def test_none_for_a_body_or_chunk_is_an_error_not_a_read_of_none(mod) -> None:
    """``bytes`` typed arguments let ``None`` through, and the compiled readers then read
    None's object as bytes data (past its end, up to a "size" that is not one; body_usage
    relies on the trailing NUL of a real bytes object): refused, as by the twin."""
    for call in (
        lambda: mod.body_usage(None),
        lambda: mod.usage_span(None),
        lambda: mod.usage_with_costs(None, *COSTS),
    ):
        with pytest.raises((TypeError, AttributeError)):
            call()
