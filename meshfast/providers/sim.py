"""The simulator: a built-in OpenAI-compatible provider that answers in-process.

Deterministic (the same request gives the same answer), with real usage
numbers, tool calls when tools are given, JSON when ``response_format`` asks,
embeddings, and configurable pacing and failures. It is the embedded default,
so a new server answers at once, and a load-testing target.

Per-request controls (headers; config ``[sim]`` gives the defaults):

* ``x-mesh-sim-ttft-ms``: delay before the first byte, in milliseconds
* ``x-mesh-sim-tps``: tokens per second for streams (0: all at once)
* ``x-mesh-sim-tokens``: completion length in tokens (default 32, capped by max_tokens)
* ``x-mesh-sim-fail``: ``status:CODE`` (an upstream error answer), ``unreachable``,
  ``timeout`` or ``midstream`` (the stream breaks after half its tokens)

``[sim] fail_models = {"model-id" = "status:503"}`` injects the same per model.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from typing import Any

import orjson

from meshfast import errors
from meshfast.config import ModelConfig, SimConfig
from meshfast.providers.base import Endpoint, Provider
from meshfast_core.exceptions import UpstreamClosed

SIM_MODELS = (
    ModelConfig("sim-1", "sim-1", "0.50", "1.50", None, "chat", 128_000, 16_384),
    ModelConfig("sim-1-mini", "sim-1-mini", "0.10", "0.40", None, "chat", 128_000, 16_384),
    ModelConfig("sim-embed-1", "sim-embed-1", "0.02", "0", None, "embedding", 8_192, 1),
)
DEFAULT_TOKENS = 32
EMBED_DIMS = 256

WORDS = (
    "the quick mesh routes every token along the fastest path while the ledger keeps "
    "each receipt exact and the router weighs price speed and quality before it picks "
    "an endpoint that can serve the request within its privacy class"
).split()


def _rng(seed: bytes):
    """A tiny deterministic byte stream (SHA-256 in counter mode)."""
    counter = 0
    while True:
        block = hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
        yield from block


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough prompt size for the simulator's usage numbers (about 4 bytes a token)."""
    total = 3
    for m in body.get("messages") or ():
        if isinstance(m, dict):
            total += 4 + len(_text_of(m.get("content")).encode()) // 4
            if m.get("tool_calls"):
                total += len(orjson.dumps(m["tool_calls"])) // 4
    if body.get("tools"):
        total += len(orjson.dumps(body["tools"])) // 4
    return total


def _value_for(schema: Any, rand, depth: int = 0) -> Any:
    """A deterministic value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if "enum" in schema and schema["enum"]:
        return schema["enum"][next(rand) % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _value_for(v, rand, depth + 1) for k, v in props.items()}
    if typ == "array":
        n = max(1, int(schema.get("minItems", 1)))
        return [_value_for(schema.get("items", {}), rand, depth + 1) for _ in range(n)]
    if typ == "integer":
        lo = int(schema.get("minimum", 0))
        return lo + next(rand) % 100
    if typ == "number":
        lo = float(schema.get("minimum", 0))
        return lo + (next(rand) % 1000) / 10
    if typ == "boolean":
        return bool(next(rand) & 1)
    if typ == "null":
        return None
    return " ".join(WORDS[next(rand) % len(WORDS)] for _ in range(2))


class SimReply:
    """A Reply built in memory, paced by the simulator's clock."""

    __slots__ = ("status", "_ctype", "_pieces", "_delays", "_fail_at", "_closed")

    def __init__(
        self,
        status: int,
        ctype: bytes,
        pieces: list[bytes],
        delays: list[float] | None = None,
        fail_at: int = -1,
    ) -> None:
        self.status = status
        self._ctype = ctype
        self._pieces = pieces
        self._delays = delays
        self._fail_at = fail_at
        self._closed = False

    def header(self, name: bytes) -> bytes | None:
        return self._ctype if name == b"content-type" else None

    async def read(self) -> bytes:
        out = []
        while piece := await self.next_chunk():
            out.append(piece)
        return b"".join(out)

    async def next_chunk(self) -> bytes:
        if self._closed or not self._pieces:
            return b""
        if self._fail_at == 0:
            self._closed = True
            raise UpstreamClosed("simulated mid-stream failure")
        self._fail_at -= 1
        if self._delays:
            delay = self._delays.pop(0)
            if delay > 0:
                await asyncio.sleep(delay)
        return self._pieces.pop(0)

    def close(self) -> None:
        self._closed = True


class SimProvider(Provider):
    kind = "sim"

    def __init__(self, cfg: SimConfig) -> None:
        super().__init__("sim", "standard")
        self.cfg = cfg
        self.models = SIM_MODELS

    def _controls(
        self, endpoint: Endpoint, header_list: list[tuple[bytes, bytes]]
    ) -> tuple[float, float, int, str]:
        headers = dict(header_list)
        try:
            ttft = float(headers.get(b"x-mesh-sim-ttft-ms", self.cfg.ttft_ms)) / 1000
            tps = float(headers.get(b"x-mesh-sim-tps", self.cfg.tokens_per_second))
            ntok = int(headers.get(b"x-mesh-sim-tokens", DEFAULT_TOKENS))
        except ValueError:
            raise errors.InvalidRequest("x-mesh-sim-* headers must be numbers") from None
        fail = headers.get(b"x-mesh-sim-fail", b"").decode("latin-1") or self.cfg.fail_models.get(
            endpoint.id, ""
        )
        return max(ttft, 0.0), max(tps, 0.0), max(ntok, 1), fail

    @staticmethod
    def _raise_injected(fail: str, provider: str) -> None:
        if fail.startswith("status:"):
            try:
                status = int(fail[7:])
            except ValueError:
                raise errors.InvalidRequest(f"bad x-mesh-sim-fail value {fail!r}") from None
            body = orjson.dumps(
                {
                    "error": {
                        "message": f"simulated upstream error {status}",
                        "type": "sim_error",
                        "param": None,
                        "code": "simulated",
                    }
                }
            )
            raise errors.UpstreamHTTPError(status, body, b"application/json")
        if fail == "unreachable":
            raise errors.UpstreamUnreachable(f"provider {provider!r} is unreachable (simulated)")
        if fail == "timeout":
            raise errors.UpstreamTimedOut(
                f"provider {provider!r} timed out (first_byte, simulated)"
            )

    async def chat(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        stream: bool,
        headers: list[tuple[bytes, bytes]],
    ) -> SimReply:
        if endpoint.model.kind != "chat":
            raise errors.UnsupportedOperation(
                f"model {endpoint.id!r} is an embedding model; use /v1/embeddings", param="model"
            )
        ttft, tps, ntok, fail = self._controls(endpoint, headers)
        self._raise_injected(fail, self.name)
        max_out = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(max_out, int) and max_out > 0:
            ntok = min(ntok, max_out)
        seed = orjson.dumps(
            [endpoint.id, body.get("messages"), body.get("seed"), body.get("tools")],
            option=orjson.OPT_SORT_KEYS,
        )
        n = body.get("n") or 1
        choices = [self._choice(body, seed + bytes([i]), ntok) for i in range(n)]
        prompt_tokens = estimate_prompt_tokens(body)
        completion_tokens = sum(c["tokens"] for c in choices)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        cid = "chatcmpl-sim" + hashlib.sha256(seed).hexdigest()[:24]
        created = int(time.time())
        if ttft:
            await asyncio.sleep(ttft)
        if not stream:
            out = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": endpoint.upstream,
                "choices": [
                    {
                        "index": i,
                        "message": c["message"],
                        "logprobs": None,
                        "finish_reason": c["finish_reason"],
                    }
                    for i, c in enumerate(choices)
                ],
                "usage": usage,
                "system_fingerprint": "meshfast-sim",
            }
            return SimReply(200, b"application/json", [orjson.dumps(out)])
        return self._stream(
            cid, created, endpoint.upstream, choices, usage, tps, fail == "midstream"
        )

    def _choice(self, body: dict[str, Any], seed: bytes, ntok: int) -> dict[str, Any]:
        rand = _rng(seed)
        tools = body.get("tools")
        tool_choice = body.get("tool_choice", "auto")
        if tools and tool_choice != "none":
            tool = tools[0]
            if isinstance(tool_choice, dict):
                wanted = (tool_choice.get("function") or {}).get("name")
                tool = next(
                    (t for t in tools if (t.get("function") or {}).get("name") == wanted), tool
                )
            fn = tool.get("function") or {}
            args = orjson.dumps(
                _value_for(fn.get("parameters") or {"type": "object"}, rand)
            ).decode()
            call = {
                "id": "call_" + hashlib.sha256(seed).hexdigest()[:24],
                "type": "function",
                "function": {"name": fn.get("name", "tool"), "arguments": args},
            }
            return {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [call],
                    "refusal": None,
                },
                "finish_reason": "tool_calls",
                "tokens": max(1, len(args) // 4),
                "pieces": [args],
            }
        fmt = body.get("response_format") or {}
        words = [WORDS[next(rand) % len(WORDS)] for _ in range(ntok)]
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {"type": "object"}
            text = orjson.dumps(_value_for(schema, rand)).decode()
            return {
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "stop",
                "tokens": max(1, len(text) // 4),
                "pieces": [text],
            }
        if fmt.get("type") == "json_object":
            text = orjson.dumps({"answer": " ".join(words)}).decode()
            return {
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "stop",
                "tokens": ntok,
                "pieces": [text],
            }
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        max_out = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "length" if isinstance(max_out, int) and ntok >= max_out else "stop"
        return {
            "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
            "finish_reason": finish,
            "tokens": ntok,
            "pieces": pieces,
        }

    def _stream(
        self,
        cid: str,
        created: int,
        model: str,
        choices: list[dict[str, Any]],
        usage: dict[str, int],
        tps: float,
        midstream: bool,
    ) -> SimReply:
        head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "meshfast-sim",
        }

        def event(chs: list[dict[str, Any]], usage_obj: Any = None) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": chs, "usage": usage_obj}) + b"\n\n"

        events: list[bytes] = []
        for i in range(len(choices)):
            events.append(
                event(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            )
        longest = max(len(c["pieces"]) for c in choices)
        for step in range(longest):
            for i, c in enumerate(choices):
                if step >= len(c["pieces"]):
                    continue
                piece = c["pieces"][step]
                if c["finish_reason"] == "tool_calls":
                    call = c["message"]["tool_calls"][0]
                    delta = {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": piece},
                            }
                        ]
                    }
                else:
                    delta = {"content": piece}
                events.append(
                    event([{"index": i, "delta": delta, "logprobs": None, "finish_reason": None}])
                )
        for i, c in enumerate(choices):
            events.append(
                event(
                    [
                        {
                            "index": i,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": c["finish_reason"],
                        }
                    ]
                )
            )
        events.append(event([], usage))
        events.append(b"data: [DONE]\n\n")
        fail_at = len(events) // 2 if midstream else -1
        if tps <= 0:
            if midstream:
                return SimReply(
                    200, b"text/event-stream", [b"".join(events[:fail_at]), b"unreached"], None, 1
                )
            return SimReply(200, b"text/event-stream", [b"".join(events)])
        delay = 1.0 / tps
        return SimReply(
            200, b"text/event-stream", events, [0.0] + [delay] * (len(events) - 1), fail_at
        )

    async def embeddings(
        self, endpoint: Endpoint, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
    ) -> SimReply:
        if endpoint.model.kind != "embedding":
            raise errors.UnsupportedOperation(
                f"model {endpoint.id!r} is a chat model; use /v1/chat/completions", param="model"
            )
        ttft, _tps, _ntok, fail = self._controls(endpoint, headers)
        self._raise_injected(fail, self.name)
        inputs = body["input"]
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], int)
        ):
            inputs = [inputs]
        dims = body.get("dimensions") or EMBED_DIMS
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, item in enumerate(inputs):
            raw = item.encode() if isinstance(item, str) else orjson.dumps(item)
            tokens += len(item) if isinstance(item, list) else max(1, len(raw) // 4)
            rand = _rng(hashlib.sha256(endpoint.id.encode() + raw).digest())
            vec = [(next(rand) - 127.5) for _ in range(dims)]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vec = [v / norm for v in vec]
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if ttft:
            await asyncio.sleep(ttft)
        out = {
            "object": "list",
            "data": data,
            "model": endpoint.upstream,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return SimReply(200, b"application/json", [orjson.dumps(out)])
