"""Instructions per call of meshfast's pipeline, counted by callgrind: a figure that does
not move with the host's load.

    python -m benchmarks.instructions                          # W1: floor, dataplane, pinned, limited
    python -m benchmarks.instructions --variants dataplane,pinned --workload W2

Timings on this shared 2-core host swing by ±15 % run to run (benchmarks/pipeline.py,
benchmarks/load.py), more than most single changes to the pipeline move them. Instruction
counts do not: callgrind (valgrind) counts every instruction the process executes, the
same for the same code and inputs whatever else the machine is doing. So this is the
figure to compare before and after a change to the hot path; the timed benchmarks then say
what it is worth in requests per second.

Each variant runs in a child process under callgrind, in process like
benchmarks/pipeline.py (meshfast's ASGI app called by 32 tasks, the static upstream in its
own process, not counted): once with only the warm-up and once with ``--calls`` more calls;
the difference divided by ``--calls`` is the count per call, start-up and warm-up excluded.
The children run with a fixed hash seed and without the server's timed garbage
collection, whose count would follow the (slowed) wall clock; the SQLite writer process is
not counted (``benchmarks.load`` and ``benchmarks.stores`` measure it with the server).

Variants: ``floor`` (benchmarks/passthrough_app.py: the upstream client and the event loop),
``dataplane`` (meshfast with its money stages as pass-through, benchmarks/dataplane_app.py),
``pinned`` (meshfast, the bench key without limits), ``limited`` (the bench key with every
limit set). valgrind is installed with apt-get when missing and running as root.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import load
from benchmarks.load import BenchError, Stack, log
from benchmarks.pipeline import parse_variants, variant_parser

VARIANTS = ("floor", "dataplane", "pinned", "limited")
_COLLECTED = re.compile(rb"Collected : (\d+)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = variant_parser("python -m benchmarks.instructions", __doc__, VARIANTS)
    p.add_argument("--calls", type=int, default=3200, help="counted calls per variant (default 3200)")
    p.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time (default 2; counts do not depend on it)")
    args = p.parse_args(argv)
    parse_variants(p, args, VARIANTS)
    if args.calls < 32 or args.jobs < 1:
        p.error("--calls must be >= 32 and --jobs >= 1")
    return args


# --------------------------------------------------------------------------- child


async def _child(variant: str, calls: int, port: int, store: Path, workload: str) -> None:
    from benchmarks import dataplane_app, passthrough_app
    from benchmarks.pipeline import Variant
    from benchmarks.static_upstream import W1_PATH, W2_PATH
    from meshfast import config
    from meshfast.server import App

    conf = store / "meshfast.toml"
    conf.write_text(load.meshfast_config(port))
    os.environ[passthrough_app.UPSTREAM_ENV] = f"http://{load.HOST}:{port}"
    os.environ["MESHFAST_STORE_PATH"] = str(store / "meshfast.db")
    stream = workload == "W2"
    bodies = load.request_bodies()
    plain, limited = (store / "keys").read_text().split()
    app = None
    if variant == "floor":
        v = Variant(variant, passthrough_app.app, W2_PATH if stream else W1_PATH,
                    bodies["direct_stream" if stream else "direct_chat"], plain)  # fmt: skip
    else:
        cfg = config.load(str(conf))
        app = dataplane_app.build(cfg) if variant == "dataplane" else App(cfg)
        await app.startup()
        app._gc_timer.cancel()  # collections would follow valgrind's slowed clock
        v = Variant(variant, app, "/v1/chat/completions", bodies["mesh_stream" if stream else "mesh_chat"],
                    limited if variant == "limited" else plain)  # fmt: skip
    await v.run(20 * 32)  # warm-up: caches, pools, the router's tables
    if calls:
        await v.run(calls)
    if set(v.statuses) != {200}:
        raise SystemExit(f"{variant}: expected only 200s, got {v.statuses}")
    if app is not None:
        await app.shutdown()
    if passthrough_app._pool is not None:
        await passthrough_app._pool.close()


# --------------------------------------------------------------------------- parent


def valgrind_path() -> str:
    path = load.find_binary("valgrind")
    if path is None and load.apt_install("valgrind"):
        path = load.find_binary("valgrind")
    if path is None:
        raise BenchError("valgrind is not installed and could not be installed (apt-get install valgrind)")
    return path


def callgrind_count(valgrind: str, stack: Stack, store: Path, module: str, what: str, calls: int, *args: str) -> int:
    """Instructions executed by one child run, ``python -m module --child what calls
    STORE *args``, under callgrind (its own copy of the store: the store is locked)."""
    own = stack.tmp / f"store-{what}-{calls}"
    shutil.copytree(store, own)
    argv = [
        valgrind, "--tool=callgrind", f"--callgrind-out-file={own / 'callgrind.out'}",
        sys.executable, "-m", module, "--child", what, str(calls), str(own), *args,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    done = subprocess.run(argv, cwd=str(load.ROOT), env=env, capture_output=True)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        tail = (done.stdout + done.stderr).decode(errors="replace").splitlines()[-15:]
        raise BenchError(f"{what} ({calls} calls) under callgrind failed (exit {done.returncode}):\n" + "\n".join(tail))
    return int(found.group(1))


def _run(args: argparse.Namespace, stack: Stack) -> int:
    valgrind = valgrind_path()
    port = load.free_port()
    proc = stack.spawn(
        "upstream",
        [sys.executable, "-m", "benchmarks.static_upstream", "--host", load.HOST, "--port", str(port)],
    )
    load.wait_http_ok(port, "/health", 15, proc.popen, "static upstream")
    store = stack.tmp / "store"
    keys = load.provision_bench_key(store / "meshfast.db")
    (store / "keys").write_text(" ".join(keys))
    runs = [(v, n) for v in args.variants for n in (0, args.calls)]
    log(
        f"{args.workload}: {len(runs)} runs under callgrind ({args.jobs} at a time; each a minute or two)..."
    )
    counts: dict[tuple[str, int], int] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            run: pool.submit(callgrind_count, valgrind, stack, store, "benchmarks.instructions", run[0], run[1], str(port), args.workload) for run in runs
        }
        for run, fut in futures.items():
            counts[run] = fut.result()
            log(f"  {run[0]} with {run[1]} counted calls: {counts[run]:,} instructions")
    per_call = {v: (counts[(v, args.calls)] - counts[(v, 0)]) / args.calls for v in args.variants}
    base = "dataplane" if "dataplane" in per_call else args.variants[0]
    print(f"\nmeshfast pipeline, in process: instructions per call (callgrind), {args.workload}, {args.calls} calls")
    print(f"{'variant':10s} {'per call':>10s}   ratio to {base}")
    for v, n in per_call.items():
        print(f"{v:10s} {n:10,.0f}   {n / per_call[base]:.3f}x")
    if "dataplane" in per_call and "pinned" in per_call:
        money = per_call["pinned"] - per_call["dataplane"]
        print(f"money on (pinned - dataplane): {money:,.0f} instructions per call")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        import uvloop

        variant, calls, store, port, workload = argv[1:6]
        uvloop.run(_child(variant, int(calls), int(port), Path(store), workload))
        return 0
    args = parse_args(argv)
    return load.run_bench(lambda stack: _run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
