"""Micro-benchmarks of the SSE scanner: compiled vs pure-Python twin (no timing asserts)."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from meshfast_core.sse import SSEScannerC, SSEScannerPy

IMPLS = [
    pytest.param(SSEScannerPy, id="py"),
    pytest.param(
        SSEScannerC,
        id="c",
        marks=pytest.mark.skipif(SSEScannerC is None, reason="meshfast_core._sse is not compiled"),
    ),
]
WORDS = ["Hello", " there", "!", " The", " answer", " is", " 42", ".", " Caf\u00e9", " \U0001f600"]


def _event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _stream(events: int = 100) -> bytes:
    """A realistic chat-completions stream: content chunks, a usage-only chunk, [DONE]."""
    base = {
        "id": "chatcmpl-AbCdEfGhIjKlMnOpQrStUvWxYz012",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": "gpt-4o-mini",
    }
    out = []
    for i in range(events):
        last = i == events - 1
        delta = {} if last else {"content": WORDS[i % len(WORDS)]}
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": "stop" if last else None,
        }
        out.append(_event({**base, "choices": [choice], "usage": None}))
    usage = {"prompt_tokens": 25, "completion_tokens": 99, "total_tokens": 124}
    out.append(_event({**base, "choices": [], "usage": usage}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


STREAM = _stream()
CHUNKS_512 = [STREAM[i : i + 512] for i in range(0, len(STREAM), 512)]


def _scan(cls: type, chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        scanner = cls()
        for chunk in chunks:
            scanner.feed(chunk)
        scanner.finish()
        return scanner

    return run


def _check(scanner: object) -> None:
    assert scanner.done and scanner.usage is not None  # type: ignore[attr-defined]
    assert scanner.event_count == 102  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", IMPLS)
def test_sse_one_chunk(benchmark, cls: type) -> None:
    benchmark.group = f"sse: 100-event stream ({len(STREAM)} B) in one chunk"
    _check(benchmark(_scan(cls, [STREAM])))


@pytest.mark.parametrize("cls", IMPLS)
def test_sse_512_byte_chunks(benchmark, cls: type) -> None:
    benchmark.group = f"sse: 100-event stream ({len(STREAM)} B) in 512-byte chunks"
    _check(benchmark(_scan(cls, CHUNKS_512)))
