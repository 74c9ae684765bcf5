"""Instructions per call of each money stage, counted by callgrind: where the cost of
"money on" (benchmarks/instructions.py: pinned - dataplane) goes.

    python -m benchmarks.stages                       # every stage, 4000 calls each
    python -m benchmarks.stages --stages enter,hold --calls 2000

Each stage of the W1 pipeline that the data plane does not run is called alone, in a
loop, on meshfast's own objects (App, Pipeline, the embedded store with the bench key),
in a child process under callgrind: once with the warm-up only and once with ``--calls``
more calls; the difference divided by ``--calls``, less the same figure for an empty
stage (the loop and a call), is the count per call. A coroutine stage is awaited in a
loop inside one coroutine, as the pipeline awaits it (nothing here suspends, so no event
loop runs and none is counted). The stages overlap where
one contains another (``begin`` contains ``enter``, ``prompt_estimate``, a plan and
``hold``, which contains ``hold_amount``; ``hold_settle``, ``settle_body`` and
``settle_stream`` contain the hold that ``hold_release`` also places; ``settle_body``
contains ``receipt``, ``receipt_id``, ``receipt_headers`` and ``hold_settle``'s
settlement), as the table notes. ``begin``, ``enter``, ``hold``, ``settle_body``,
``stream_head`` and ``settle_stream`` are what the pipeline calls on the embedded store;
``key_check`` and ``hold_release`` are the slow path's (a key the gate does not know yet,
a key or project with limits), and ``hold_settle``, ``receipt``, ``receipt_id`` and
``receipt_headers`` measure the settlement's parts as the Python path calls them.

No server, upstream or loader runs: the inputs are the bench request, the static
upstream's W1 answer and a receipt built once. valgrind is installed with apt-get when
missing and running as root.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import load
from benchmarks.instructions import callgrind_count, valgrind_path
from benchmarks.load import Stack, log

# name -> what it measures
STAGES = {
    "begin": "Pipeline.begin, all of the admission (the stages below to hold), then release_hold",
    "enter": "the request's headers, then Gate.enter: key check, account, privacy class",
    "prompt_estimate": "the compiled prompt-token estimate and the request's needs (scan_chat)",
    "plan": "router.plan_chat, as the data plane calls it",
    "hold": "Gate.hold: the hold amount and the plain hold, then release_hold",
    "hold_amount": "  of which the hold amount alone (Billing.hold_amount)",
    "key_check": "the slow path's key check: headers, digest, record (store.key_now)",
    "hold_release": "store.hold_now then store.release (the slow path's hold)",
    "hold_settle": "store.hold_now then store.settle_now (balance, spend, the writer's row)",
    "settle_body": "store.hold_now then Settler.settle_body: W1's whole settlement and headers",
    "receipt": "  of which priced_receipt: costs, margin, the Receipt record",
    "receipt_id": "  of which new_id('rcpt_')",
    "receipt_headers": "  of which the four receipt headers (usd.cost_headers)",
    "body_usage": "the answer's token counts (meshfast_core.sse.body_usage)",
    "stream_head": "Settler.stream_head: a stream's receipt id and headers",
    "settle_stream": "store.hold_now then Settler.settle_stream: a stream's settlement and its usage line (asked for)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stages", description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--calls", type=int, default=4000, help="counted calls per stage (default 4000)")
    p.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time (default 2)")
    args = p.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or not args.stages:
        p.error(f"unknown stage(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STAGES)}")
    if args.calls < 100 or args.jobs < 1:
        p.error("--calls must be >= 100 and --jobs >= 1")
    return args


# --------------------------------------------------------------------------- child


def _drive(coro: Any) -> Any:
    """The result of a coroutine that never suspends (the embedded store's never do)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the stage suspended")


def _stages(store_dir: Path) -> dict[str, tuple[Any, bool]]:
    """Each stage as a no-argument callable, on objects prepared once, and whether it
    returns a coroutine (to be awaited)."""
    from benchmarks.static_upstream import w1_body, w2_body
    from meshfast import config
    from meshfast.pipeline import SSE_HEADERS, Call, decode_json, digest_of
    from meshfast.server import App
    from meshfast.store.base import new_id
    from meshfast_core.keys import call_headers
    from meshfast_core.records import priced_receipt, release_hold
    from meshfast_core.sse import SSEScanner, body_usage
    from meshfast_core.tokens import scan_chat
    from meshfast_core.usd import cost_headers

    os.environ["MESHFAST_STORE_PATH"] = str(store_dir / "meshfast.db")
    app = App(config.load(str(store_dir / "meshfast.toml")))
    p, store = app.pipeline, app.pipeline.store
    plain = (store_dir / "keys").read_text().split()[0]
    scope = {
        "headers": [
            (b"host", b"127.0.0.1"), (b"user-agent", b"wrk"), (b"authorization", f"Bearer {plain}".encode()),
            (b"content-type", b"application/json"), (b"content-length", b"300"),
        ]
    }  # fmt: skip
    req = decode_json(load.request_bodies()["mesh_chat"])
    answer = w1_body()
    key = store.key_now(digest_of(call_headers(scope["headers"])[0]))  # the gate knows the key from here on
    account, project = store.context_now(key)
    gate = store.gate
    asked, entry = gate.enter(*call_headers(scope["headers"]), req)[3:]
    call = Call("chat", req["model"], False)
    call.key, call.account = key, account
    call.prompt_estimate, call.needs = scan_chat(req)
    p.route(call, req, project, "", 0)
    amount, tokens = p.billing.hold_amount(account, call.candidates, call.prompt_estimate, req, None)
    margin, fee = p.billing.margin_ppm, p.billing.fee_nano
    counts = body_usage(answer)

    def receipt() -> Any:  # as Pipeline.close makes it
        return priced_receipt(
            "rcpt_bench", account, key, call.endpoint, "chat", call.requested_model, counts, call.prompt_estimate,
            0, 1.0, 2.0, False, "ok", "model", call.endpoint.key, p.billing.margin_ppm, p.billing.fee_nano,
        )  # fmt: skip

    r = receipt()
    frame = store._writer.frame

    async def hold_release() -> None:
        await store.release(store.hold_now(key, amount, tokens))

    async def begin() -> None:
        c = await p.begin("chat", call.requested_model, False, scope, None, req)
        release_hold(account, c.hold, None)

    def hold() -> None:
        release_hold(account, gate.hold(call, entry, call.candidates, call.prompt_estimate, asked, req, None, margin, fee), None)

    def hold_settle() -> None:
        store.settle_now(store.hold_now(key, amount, tokens), r)
        if frame.count > 1000:  # no event loop: nothing sends them, so drop them
            frame.clear()

    settler = p.settler
    call.tried = [call.endpoint.key]
    call.rate_headers = []  # the bench key has no limits: no rate headers
    call.started, call.first_byte = 1.0, 2.0

    def settle_body() -> None:
        call.hold = store.hold_now(key, amount, tokens)
        settler.settle_body(call, counts, 0, b"application/json", len(answer))
        if frame.count > 1000:
            frame.clear()

    scanner = SSEScanner()  # the W2 answer, scanned once: settle_stream only reads it
    scanner.feed(w2_body())
    scanner.finish()
    streamed = Call("chat", req["model"], True)
    for name in ("key", "account", "prompt_estimate", "needs", "mode", "candidates", "endpoint", "privacy", "tried", "rate_headers", "started", "first_byte"):
        setattr(streamed, name, getattr(call, name))
    streamed.include_usage = True

    def settle_stream() -> None:
        streamed.hold = store.hold_now(key, amount, tokens)
        settler.settle_stream(streamed, scanner, "ok")
        if frame.count > 1000:
            frame.clear()

    return {
        "noop": (lambda: None, False),
        "begin": (begin, True),
        "enter": (lambda: gate.enter(*call_headers(scope["headers"]), req), False),
        "prompt_estimate": (lambda: scan_chat(req), False),
        "plan": (lambda: p.router.plan_chat(call.requested_model, 0, 0, 0, "standard"), False),
        "hold": (hold, False),
        "hold_amount": (lambda: p.billing.hold_amount(account, call.candidates, call.prompt_estimate, req, None), False),
        "key_check": (lambda: store.key_now(digest_of(call_headers(scope["headers"])[0])), False),
        "hold_release": (hold_release, True),
        "hold_settle": (hold_settle, False),
        "receipt": (receipt, False),
        "receipt_id": (lambda: new_id("rcpt_"), False),
        "body_usage": (lambda: body_usage(answer), False),
        "receipt_headers": (lambda: cost_headers(r.id, r.upstream_cost_nano, r.margin_nano, r.total_nano), False),
        "settle_body": (settle_body, False),
        "stream_head": (lambda: settler.stream_head(streamed, SSE_HEADERS), False),
        "settle_stream": (settle_stream, False),
    }


async def _await_each(fn: Any, calls: int) -> None:
    for _ in range(calls):
        await fn()


def _call_each(fn: Any, calls: int) -> None:
    for _ in range(calls):
        fn()


def _child(stage: str, calls: int, store_dir: Path) -> None:
    fn, is_async = _stages(store_dir)[stage]
    for n in (500, calls):  # a warm-up (specialisation, caches), then the counted calls
        if is_async:
            _drive(_await_each(fn, n))
        else:
            _call_each(fn, n)


# --------------------------------------------------------------------------- parent


def _run(args: argparse.Namespace, stack: Stack) -> int:
    valgrind = valgrind_path()
    store = stack.tmp / "store"
    keys = load.provision_bench_key(store / "meshfast.db")
    (store / "keys").write_text(" ".join(keys))
    (store / "meshfast.toml").write_text(load.meshfast_config(load.free_port()))  # no upstream is called
    stages = ["noop", *args.stages]
    runs = [(s, n) for s in stages for n in (0, args.calls)]
    log(f"{len(runs)} runs under callgrind ({args.jobs} at a time; each about 15 s)...")
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {run: pool.submit(callgrind_count, valgrind, stack, store, "benchmarks.stages", run[0], run[1]) for run in runs}
        counts = {run: fut.result() for run, fut in futures.items()}
    per_call = {s: (counts[(s, args.calls)] - counts[(s, 0)]) / args.calls for s in stages}
    base = per_call.pop("noop")
    print(f"\nmoney stages of a W1 call, in process: instructions per call (callgrind), {args.calls} calls each")
    print(f"(less {base:,.0f} for the loop and a call)")
    print(f"{'stage':16s} {'per call':>9s}   what")
    for s, n in per_call.items():
        print(f"{s:16s} {n - base:9,.0f}   {STAGES[s]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        stage, calls, store = argv[1:4]
        _child(stage, int(calls), Path(store))
        return 0
    args = parse_args(argv)
    return load.run_bench(lambda stack: _run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
