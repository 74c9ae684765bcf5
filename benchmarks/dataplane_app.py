"""meshfast with its money stages as pass-through steps: the "data plane" reference.

    MESHFAST_CONFIG=meshfast.toml python -m granian --interface asgi --loop uvloop \\
        --no-ws --workers 1 --port 9200 --factory benchmarks.dataplane_app:create_app

The money core's budget is measured against what the data plane reached before auth,
holds, settlement and receipts existed. That server no longer exists, so this builds it
from today's code: meshfast's own App (body reading, JSON decoding and validation,
routing, the compiled upstream client, failover, health records, the SSE relay with its
scanner and usage handling) with a Pipeline whose money stages do nothing:

* no authentication (the Authorization header is not read) and no limits;
* routing as the data plane had it: the model is planned with the needs of a plain chat
  (no privacy class, tools or image parts read from the request, no prompt estimate);
* no hold, no settlement, no receipt, no receipt headers, no store call at all;
* a stream still asks for usage and drops the usage-only chunk the client did not ask for.

It exists for benchmarks only (benchmarks/load.py ``dataplane`` column, benchmarks/pipeline.py
``dataplane`` variant): it serves every call for free.
"""

from __future__ import annotations

import time
from typing import Any

from meshfast import config
from meshfast.pipeline import DONE, SSE_HEADERS, Call, Pipeline, Send
from meshfast.providers.base import Reply
from meshfast.providers.openai import map_upstream_error
from meshfast.server import App
from meshfast_core.exceptions import UpstreamError
from meshfast_core.sse import SSEScanner


class DataPlanePipeline(Pipeline):
    """Pipeline with authenticate, limits, hold and settle as pass-through steps."""

    async def begin(self, kind: str, model: str, stream: bool, scope: dict[str, Any], max_output: int | None, req: dict[str, Any]) -> Call:
        call = Call(kind, model, stream)
        call.mode, call.candidates = self.router.plan_chat(model, 8 if stream else 0, 0, 0, "standard")
        call.endpoint = call.candidates[0]
        return call

    async def relay_body(self, call: Call, reply: Reply, send: Send) -> None:
        # Pipeline.relay_body without the usage, settlement and receipt lines (a shared
        # helper would cost meshfast's hot path one more await per call)
        try:
            data = await reply.read()
        except UpstreamError as exc:
            raise map_upstream_error(exc, call.endpoint.provider.name) from None
        finally:
            reply.close()
        call.first_byte = time.monotonic()
        self.router.record(call.endpoint, True, call.first_byte - call.attempt_t0, call.head_at - call.attempt_t0)
        headers = self.route_headers(call)
        headers.append((b"content-type", reply.header(b"content-type") or b"application/json"))
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def call_stream(self, call: Call, req: dict[str, Any], scope: dict[str, Any], send: Send) -> None:
        reply = await self.open_reply(call, req, scope)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [*self.route_headers(call), *SSE_HEADERS]})
            scanner = SSEScanner()
            while chunk := await reply.next_chunk():
                if not call.first_byte:
                    call.first_byte = time.monotonic()
                out = scanner.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            scanner.finish()
        except UpstreamError as exc:
            raise map_upstream_error(exc, call.endpoint.provider.name) from None
        finally:
            reply.close()
        ttft = call.first_byte - call.attempt_t0 if call.first_byte else None
        self.router.record(call.endpoint, True, time.monotonic() - call.attempt_t0, ttft, None, None)
        tail = DONE
        if call.include_usage and scanner.usage_chunk is not None:
            tail = b"data: " + scanner.usage_chunk + b"\n\n" + DONE
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def release(self, call: Call) -> None:
        pass


def build(cfg: config.Config) -> App:
    """meshfast's App with the pass-through pipeline in place of its own."""
    app = App(cfg)
    app.pipeline = DataPlanePipeline(app.router, app.store, cfg.billing)
    app.post_routes["/v1/chat/completions"] = app.pipeline.chat
    return app


def create_app() -> App:
    """granian's factory, as meshfast.server.create_app: MESHFAST_CONFIG and MESHFAST_*."""
    return build(config.load())
