"""Micro-benchmarks of ``Router.plan`` (no timing asserts).

The router is built as in production from a config with three OpenAI-compatible
providers (``local``, ``together``, ``openai``) and the shipped catalogue, for a small
streaming-free chat request: a model id, then each mode. ``auto-observed`` and
``fast-observed`` run after every endpoint has a TTFT EWMA (the steady state).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfast import config
from meshfast.router import Router, build_router, needs_of_chat

CONFIG = """\
[sim]
enabled = false
[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[providers]]
name = "together"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
"""
REQUEST = {
    "model": "x",
    "messages": [{"role": "user", "content": "Say something about connection pools."}],
    "max_tokens": 200,
}


def _router(tmp_path: Path) -> Router:
    path = tmp_path / "plan.toml"
    path.write_text(CONFIG)
    return build_router(config.load(str(path)))


@pytest.mark.parametrize("model", ["gpt-4o-mini", "cheapest", "fast", "best", "auto"])
def test_plan(benchmark, tmp_path, model):
    router = _router(tmp_path)
    needs = needs_of_chat(REQUEST, 20, 200, "standard")
    mode, candidates = benchmark(router.plan, model, needs)
    assert candidates and mode in (model, "model")


@pytest.mark.parametrize("model", ["fast", "auto"])
def test_plan_observed(benchmark, tmp_path, model):
    router = _router(tmp_path)
    for i, ep in enumerate(router.endpoints):  # every endpoint observed, distinct TTFTs
        router.record(ep, True, 1.0, 0.05 + (i * 37 % 101) / 100)
    needs = needs_of_chat(REQUEST, 20, 200, "standard")
    mode, candidates = benchmark(router.plan, model, needs)
    assert candidates and mode == model


@pytest.mark.parametrize("model", ["gpt-4o-mini", "openai/gpt-4o-mini"])
def test_plan_chat(benchmark, tmp_path, model):
    """The pipeline's entry for a chat naming a model or provider/model (no Needs record)."""
    router = _router(tmp_path)
    mode, candidates = benchmark(router.plan_chat, model, 0, 20, 200, "standard")
    assert candidates and mode in ("model", "pinned")
