"""The ASGI application: a route table, body reading, error rendering. No framework.

granian runs it (``meshfast serve``); each worker builds one :class:`App` from the
configuration named by the environment (the CLI validates it first).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import orjson

from meshfast import __version__, config, errors
from meshfast.admin import AdminAPI
from meshfast.asgi import header, send_error, send_json
from meshfast.pipeline import Pipeline
from meshfast.router import build_router
from meshfast.store import open_store

log = logging.getLogger("meshfast")

GC_EVERY = 1.0  # seconds between collections of the young generations
GC_FULL_EVERY = 30  # ... and of all generations, every this many ticks
Scope = dict[str, Any]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class App:
    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self.router = build_router(cfg)
        self.providers = self.router.providers
        self.store = open_store(cfg.store)
        self.pipeline = Pipeline(self.router, self.store, cfg.billing)
        self.admin = AdminAPI(self.store, cfg) if cfg.admin_token else None
        self.max_body = cfg.max_body_bytes
        self.draining = False
        self.inflight = 0
        self.idle = asyncio.Event()
        self.post_routes = {
            "/v1/chat/completions": self.pipeline.chat,
            "/v1/embeddings": self.pipeline.embeddings,
        }

    # -- ASGI entry -----------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.lifespan(receive, send)
            return
        self.inflight += 1
        try:
            handler = self.post_routes.get(scope["path"])
            if handler is not None and scope["method"] == "POST" and not self.draining:
                await handler(scope, await self.read_body(scope, receive), send, receive)
            else:
                await self.dispatch(scope, handler is not None, receive, send)
        except errors.MeshError as exc:
            await send_error(send, exc)
        except ClientGone:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await send_error(send, errors.InternalError("The gateway failed to handle the request."))
        finally:
            self.inflight -= 1
            if self.draining and not self.inflight:
                self.idle.set()

    async def dispatch(self, scope: Scope, is_post_route: bool, receive: Any, send: Any) -> None:
        """Everything but the POST hot path: GET endpoints and the errors for wrong routes."""
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith("/admin/"):
            if self.admin is None:
                raise errors.RouteNotFound(f"Unknown path {path}. (The admin API is off: set MESHFAST_ADMIN_TOKEN to enable it.)")
            await self.admin.handle(scope, await self.read_body(scope, receive), send)
            return
        if is_post_route:
            if method != "POST":
                raise errors.MethodNotAllowed(f"{method} is not allowed on {path}; use POST.")
            raise errors.ServerDraining("The server is shutting down; retry on another instance.")
        if method != "GET":
            if path in ("/v1/models", "/health", "/v1/balance", "/v1/providers/health") or path.startswith(
                ("/v1/models/", "/v1/receipts/")
            ):
                raise errors.MethodNotAllowed(f"{method} is not allowed on {path}; use GET.")
            raise errors.RouteNotFound(f"Unknown path {path}.")
        if path == "/v1/models":
            await send_json(send, 200, self.router.models_body)
        elif path.startswith("/v1/models/"):
            await send_json(send, 200, self.router.model_body(path[len("/v1/models/") :]))
        elif path == "/v1/providers/health":
            await send_json(send, 200, self.router.health_body())
        elif path.startswith("/v1/receipts/"):
            await send_json(send, 200, await self.pipeline.receipt(scope, path[len("/v1/receipts/") :]))
        elif path == "/v1/balance":
            await send_json(send, 200, await self.pipeline.balance(scope))
        elif path == "/health":
            status = 503 if self.draining else 200
            body = {"status": "draining" if self.draining else "ok", "version": __version__, "inflight": self.inflight}
            await send_json(send, status, orjson.dumps(body))
        else:
            raise errors.RouteNotFound(f"Unknown path {path}.")

    async def read_body(self, scope: Scope, receive: Any) -> bytes:
        limit = self.max_body
        declared = header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise errors.InvalidRequest("Content-Length is not a number.") from None
            if size > limit:
                raise errors.BodyTooLarge(f"The request body is {size} bytes; the limit is {limit} bytes.")
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        body = msg.get("body", b"")
        if not msg.get("more_body"):
            if len(body) > limit:
                raise errors.BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            return body
        parts = [body]
        size = len(body)
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise ClientGone
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise errors.BodyTooLarge(f"The request body exceeds the limit of {limit} bytes.")
            parts.append(chunk)
            if not msg.get("more_body"):
                return b"".join(parts)

    # -- lifespan -------------------------------------------------------------
    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # pragma: no cover - reported to granian
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.store.attach()
        for p in self.providers:
            await p.start()
        gc.collect()
        gc.freeze()  # long-lived startup objects leave the collector's generations
        # Requests leave reference cycles behind (granian's per-request futures among them);
        # with automatic collection the cycle collector ran every few requests and cost a
        # third of the worker's time under load. Collect on a timer instead: young
        # generations every second, everything every 30 s (memory stays bounded).
        gc.disable()
        self._gc_timer = asyncio.get_running_loop().call_later(GC_EVERY, self._collect, 1)

    def _collect(self, tick: int) -> None:
        gc.collect(2 if tick % GC_FULL_EVERY == 0 else 1)
        self._gc_timer = asyncio.get_running_loop().call_later(GC_EVERY, self._collect, tick + 1)

    async def shutdown(self) -> None:
        """Drain: refuse new calls, let in-flight ones finish (bounded by the grace period)."""
        self.draining = True
        if getattr(self, "_gc_timer", None) is not None:
            self._gc_timer.cancel()
            gc.enable()
        if self.inflight:
            try:
                await asyncio.wait_for(self.idle.wait(), self.cfg.grace_seconds)
            except TimeoutError:
                log.warning("grace period over with %d calls in flight", self.inflight)
        for p in self.providers:
            await p.close()
        await self.store.close()


def create_app() -> App:
    """granian's factory: the configuration comes from MESHFAST_CONFIG and MESHFAST_* variables."""
    cfg = config.load()
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return App(cfg)
