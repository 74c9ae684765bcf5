"""In-process cost account of meshfast's pipeline: CPU time per call, no HTTP server in front.

    python -m benchmarks.pipeline                      # W1, every variant, 20 rounds
    python -m benchmarks.pipeline --workload W2 --rounds 30 --variants pinned,limited

The end-to-end benchmark (benchmarks/load.py) runs meshfast under granian with the loader
and the upstream on the same two cores: its runs swing by ±15 % on a shared host, more
than the few percent the limits or the router add. This one calls meshfast's ASGI app
directly in one process, with a fake ASGI receive/send and 32 concurrent tasks, against
the same static upstream (benchmarks/static_upstream.py, in its own process), and reads
this process's CPU time (``time.process_time``) around each run. Variants run in
interleaved rounds (the order rotates every round) and the table shows medians, and
per-round ratios against the first variant:

* ``floor``: benchmarks/passthrough_app.py (read the body, POST it with the same compiled
  upstream client, send the answer): what the client and the event loop cost;
* ``dataplane``: meshfast with its money stages as pass-through steps
  (benchmarks/dataplane_app.py: no auth, limits, hold, settlement or receipt), the
  reference the money core is held to;
* ``pinned``: meshfast, the bench key (no limits), model ``bench-chat`` / ``bench-stream``:
  auth, route, hold, call, relay, settle, receipt;
* ``limited``: the same with the bench key that has every limit set (rpm, tpm,
  concurrency, daily and monthly USD): what the limit checks and headers add;
* ``cheapest``: ``"model": "cheapest"`` over the routing comparison's 81 catalogue
  endpoints (benchmarks/load.py), and ``routed-pin``: the provider/model it picks, pinned;
* ``redis``: ``pinned`` on the Redis store (a private redis-server started for the run, as
  in benchmarks/stores.py): what the Redis store costs this process; redis-server's own CPU
  is printed beside it (benchmarks/stores.py measures both under load).

What it leaves out: granian (HTTP parsing, the ASGI bridge, response headers on the
wire), which load.py's "floor" column measures, and the SQLite writer process (its CPU is
not this process's). The embedded store is fresh in a temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import dataplane_app, load, passthrough_app, stores
from benchmarks.static_upstream import W1_PATH, W2_PATH

VARIANTS = ("floor", "dataplane", "pinned", "limited", "cheapest", "routed-pin", "redis")
CONCURRENCY = 32


def variant_parser(prog: str, doc: str, variants: tuple[str, ...]) -> argparse.ArgumentParser:
    """A parser with ``--workload`` and ``--variants`` (a comma-separated subset of
    ``variants``); :func:`parse_variants` checks the latter after parsing."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--workload", choices=("W1", "W2"), default="W1", help="W1 chat (default) or W2 stream")
    p.add_argument("--variants", default=",".join(variants), help=f"comma-separated subset of {','.join(variants)}")
    return p


def parse_variants(p: argparse.ArgumentParser, args: argparse.Namespace, variants: tuple[str, ...]) -> None:
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in variants]
    if unknown or not args.variants:
        p.error(f"unknown variant(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(variants)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = variant_parser("python -m benchmarks.pipeline", __doc__, VARIANTS)
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    p.add_argument("--calls", type=int, default=1600, help="calls per variant per round (default 1600)")
    args = p.parse_args(argv)
    parse_variants(p, args, VARIANTS)
    if args.rounds < 1 or args.calls < CONCURRENCY:
        p.error(f"--rounds must be >= 1 and --calls >= {CONCURRENCY}")
    return args


class Variant:
    """One way of calling: an ASGI app, a path, a body and a key, run by 32 tasks."""

    def __init__(self, name: str, app: Any, path: str, body: bytes, key: str) -> None:
        self.name = name
        self.app = app
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [
                (b"host", b"bench"),
                (b"authorization", b"Bearer " + key.encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        self.message = {"type": "http.request", "body": body, "more_body": False}
        self.statuses: dict[int, int] = {}
        self.headers: list[tuple[bytes, bytes]] = []

    def _receiver(self) -> Any:
        """ASGI receive for one call: the request, then nothing more while the call runs
        (a client that stays). Answering the request again would make the disconnect
        watcher of a stream that outlives ``WATCH_AFTER`` spin on receive()."""
        pending = [self.message]

        async def receive() -> dict:
            if pending:
                return pending.pop()
            return await asyncio.get_running_loop().create_future()  # never set: no disconnect

        return receive

    async def _send(self, msg: dict) -> None:
        if msg["type"] == "http.response.start":
            self.statuses[msg["status"]] = self.statuses.get(msg["status"], 0) + 1
            self.headers = msg["headers"]

    async def _task(self, n: int) -> None:
        app, scope, send = self.app, self.scope, self._send
        for _ in range(n):
            await app(dict(scope), self._receiver(), send)

    async def run(self, calls: int) -> float:
        """CPU µs per call over ``calls`` calls (32 at a time)."""
        per_task = calls // CONCURRENCY
        gc.collect()
        start = time.process_time()
        await asyncio.gather(*(self._task(per_task) for _ in range(CONCURRENCY)))
        return (time.process_time() - start) * 1e6 / (per_task * CONCURRENCY)

    def header(self, name: bytes) -> str:
        return next((v.decode() for k, v in self.headers if k == name), "")


async def measure(
    args: argparse.Namespace, upstream_port: int, store_path: str, plain: str, limited: str, redis: tuple[str, str, Any] | None
) -> int:
    from meshfast import config
    from meshfast.server import App

    conf = Path(store_path).parent.parent / "meshfast.toml"
    conf.write_text(load.meshfast_config(upstream_port))
    os.environ["MESHFAST_STORE_PATH"] = store_path
    os.environ[passthrough_app.UPSTREAM_ENV] = f"http://{load.HOST}:{upstream_port}"
    app = App(config.load(str(conf)))
    await app.startup()
    os.environ["MESHFAST_STORE_PATH"] = str(Path(store_path).parent / "dataplane.db")  # its own, never used
    try:
        plane = dataplane_app.build(config.load(str(conf)))
    finally:
        os.environ["MESHFAST_STORE_PATH"] = store_path
    await plane.startup()
    redis_app = None
    if redis is not None:
        os.environ["MESHFAST_REDIS_URL"], os.environ["MESHFAST_REDIS_PREFIX"] = redis[0], stores.PREFIX
        try:
            redis_app = App(config.load(str(conf)))
        finally:
            del os.environ["MESHFAST_REDIS_URL"], os.environ["MESHFAST_REDIS_PREFIX"]
        await redis_app.startup()
    stream = args.workload == "W2"
    bodies = load.request_bodies()
    mesh_body = bodies["mesh_stream" if stream else "mesh_chat"]
    cheapest_body = bodies["cheapest_stream" if stream else "cheapest_chat"]
    chat = "/v1/chat/completions"
    variants: dict[str, Variant] = {}
    try:
        probe = Variant("cheapest", app, chat, cheapest_body, plain)
        await probe.run(CONCURRENCY)
        picked = f"{probe.header(b'x-mesh-provider')}/{probe.header(b'x-mesh-model')}"
        make = {
            "floor": lambda: Variant(
                "floor",
                passthrough_app.app,
                W2_PATH if stream else W1_PATH,
                bodies["direct_stream" if stream else "direct_chat"],
                plain,
            ),
            "dataplane": lambda: Variant("dataplane", plane, chat, mesh_body, plain),
            "pinned": lambda: Variant("pinned", app, chat, mesh_body, plain),
            "limited": lambda: Variant("limited", app, chat, mesh_body, limited),
            "cheapest": lambda: Variant("cheapest", app, chat, cheapest_body, plain),
            "routed-pin": lambda: Variant("routed-pin", app, chat, load.pinned_body(cheapest_body, picked), plain),
            "redis": lambda: Variant("redis", redis_app, chat, mesh_body, redis[1]),  # type: ignore[index]
        }
        variants = {name: make[name]() for name in args.variants}
        for v in variants.values():  # warm up, and check that every call succeeds
            await v.run(20 * CONCURRENCY)
            if set(v.statuses) != {200}:
                print(f"[pipeline] {v.name}: expected only 200s, got {v.statuses}", file=sys.stderr)
                return 1
        print(
            f"[pipeline] {args.workload}: {len(variants)} variant(s), {args.rounds} rounds of {args.calls} calls each"
            + (f"; cheapest picks {picked}" if {"cheapest", "routed-pin"} & set(variants) else ""),
            file=sys.stderr,
        )
        results: dict[str, list[float]] = {name: [] for name in variants}
        server_cpu: list[float] = []  # redis-server's CPU µs per call, during the redis runs
        order = list(variants.values())
        for rnd in range(args.rounds):
            turn = order[rnd % len(order) :] + order[: rnd % len(order)]
            for v in turn:
                if v.name == "redis":
                    meter = load.CpuMeter(redis[2])  # type: ignore[index]
                    meter.start()
                    results[v.name].append(await v.run(args.calls))
                    server_cpu.append(meter.seconds() * 1e6 / (args.calls // CONCURRENCY * CONCURRENCY))
                else:
                    results[v.name].append(await v.run(args.calls))
        report(args, results)
        if server_cpu:
            print(f"redis-server CPU per call during the redis runs: {statistics.median(server_cpu):.1f} µs (median)")
    finally:
        if redis_app is not None:
            await redis_app.shutdown()
        await plane.shutdown()
        await app.shutdown()
        if passthrough_app._pool is not None:
            await passthrough_app._pool.close()
    return 0


def report(args: argparse.Namespace, results: dict[str, list[float]]) -> None:
    names = list(results)
    base = names[0]
    print(f"\nmeshfast pipeline, in process: CPU µs per call, {args.workload}, {args.rounds} interleaved rounds")
    print(f"{'variant':12s} {'median':>8s} {'min':>8s} {'max':>8s}   per-round ratio to {base} (median)")
    for name in names:
        xs = results[name]
        ratio = statistics.median(x / b for x, b in zip(xs, results[base], strict=True))
        print(f"{name:12s} {statistics.median(xs):8.1f} {min(xs):8.1f} {max(xs):8.1f}   {ratio:.3f}x")
    if "cheapest" in results and "routed-pin" in results:
        r = statistics.median(c / p for c, p in zip(results["cheapest"], results["routed-pin"], strict=True))
        print(f"cheapest / routed-pin (the same endpoint, pinned): {r:.3f}x")
    if "dataplane" in results and "pinned" in results:
        r = statistics.median(p / d for p, d in zip(results["pinned"], results["dataplane"], strict=True))
        print(f"pinned / dataplane (money on vs its stages as pass-through): {r:.3f}x")
    if "limited" in results and "pinned" in results:
        r = statistics.median(c / p for c, p in zip(results["limited"], results["pinned"], strict=True))
        print(f"limited / pinned (every limit set vs none): {r:.3f}x")


def _run(args: argparse.Namespace, stack: load.Stack) -> int:
    port = load.free_port()
    proc = stack.spawn(
        "upstream",
        [sys.executable, "-m", "benchmarks.static_upstream", "--host", load.HOST, "--port", str(port)],
    )
    load.wait_http_ok(port, "/health", 15, proc.popen, "static upstream")
    store_path = stack.tmp / "store" / "meshfast.db"
    plain, limited = load.provision_bench_key(store_path)  # before the loop: it runs its own
    redis = None
    if "redis" in args.variants:
        proc, redis_port = stores.start_redis(stack, aof=False)
        url = f"redis://{load.HOST}:{redis_port}/0"
        redis = (url, stores.provision_redis_key(url), proc.popen.pid)
    import uvloop

    return uvloop.run(measure(args, port, str(store_path), plain, limited, redis))


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C, SIGTERM or a failure: one line, and the upstream is stopped (load.run_bench)."""
    args = parse_args(argv)
    return load.run_bench(lambda stack: _run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
