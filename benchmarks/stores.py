"""Store benchmark: W1 and W2 through meshfast on the embedded store and on Redis (one and
two workers), in one run, interleaved.

    python -m benchmarks.stores                 # what `make bench-stores` runs
    python -m benchmarks.stores --rounds 5 --duration 4 --only W1

It starts the static upstream (nginx or benchmarks/static_upstream.py), a private
redis-server on a free port (nothing kept on disk unless --redis-aof), and three meshfast
servers: embedded store with 1 worker, Redis with 1 worker, Redis with 2 workers. Each
round measures every target once per workload (the order rotates between rounds to
cancel drift); the report gives medians, the ratio to the embedded store, the servers'
CPU time per request, and Redis calls per request (FCALLs counted by INFO commandstats around
each measured run: the hot path's only commands once a key is cached). Each request waits for
two round trips, its admit and its settle; the admits and settles of one account queued in
one loop iteration share one call, so under load there are fewer calls than requests.
Goals (issue: scale out): one Redis worker keeps >= 80% of the embedded throughput, <= 2
round trips per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time

from benchmarks.load import (
    HOST,
    WORKLOADS,
    BenchError,
    CpuMeter,
    Loader,
    Proc,
    Stack,
    apt_install,
    find_binary,
    fmt_cpu,
    fmt_lat,
    free_port,
    log,
    provision_bench_key,
    request_bodies,
    run_bench,
    start_meshfast,
    start_upstream,
)

GOAL_REDIS_RATIO = 0.80
GOAL_ROUND_TRIPS = 2.0
PREFIX = "bench"


def start_redis(stack: Stack, aof: bool, nice: int = 0) -> tuple[Proc, int]:
    binary = find_binary("redis-server")
    if binary is None and apt_install("redis-server"):
        binary = find_binary("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed and could not be installed (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--dir", str(stack.tmp)]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    proc = stack.spawn("redis", argv, signal.SIGTERM)
    import redis

    for _ in range(100):
        try:
            if redis.Redis(host=HOST, port=port, socket_connect_timeout=0.2).ping():
                log(f"started redis-server on {HOST}:{port} ({'AOF everysec' if aof else 'no persistence'})")
                return proc, port
        except redis.RedisError:
            if proc.popen.poll() is not None:
                raise BenchError(f"redis-server exited:\n{proc.tail()}") from None
            time.sleep(0.05)
    raise BenchError(f"redis-server did not answer:\n{proc.tail()}")


def provision_redis_key(url: str) -> str:
    from meshfast.money import usd_to_nano
    from meshfast.store.redis_store import RedisStore

    async def create() -> str:
        store = RedisStore(url, prefix=PREFIX)
        try:
            await store.check()
            account = await store.create_account("bench")
            await store.topup(account.id, usd_to_nano("1000000"), "manual", "bench-balance")
            project = await store.create_project(account.id, "bench")
            _key, secret = await store.create_key(project, name="bench")
            return secret
        finally:
            await store.close()

    return asyncio.run(create())


def redis_commands(port: int) -> dict[str, int]:
    import redis

    r = redis.Redis(host=HOST, port=port)
    stats = r.info("commandstats")
    out = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    out["fcall_usec"] = int(stats.get("cmdstat_fcall", {}).get("usec", 0))
    out["reads"] = int(r.info("stats").get("total_reads_processed", 0))  # socket reads: how well calls are batched
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.stores", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="measured seconds per run (default 4)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each run (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the report gives medians (default 3)")
    ap.add_argument("--connections", type=int, default=32, help="connections (default 32)")
    ap.add_argument("--only", default="W1,W2", help="W1, W2 or both (default W1,W2)")
    ap.add_argument("--redis-aof", action="store_true", help="run redis-server with AOF, fsync every second")
    ap.add_argument(
        "--redis-nice",
        type=int,
        default=0,
        help="run redis-server at this nice value (e.g. -10: its round trips wait less behind the loader, "
        "as when Redis has cores of its own; needs root for negative values)",
    )
    ap.add_argument("--upstream", choices=("auto", "nginx", "builtin"), default="auto")
    ap.add_argument("--loader", choices=("auto", "wrk", "builtin"), default="auto")
    args = ap.parse_args(argv)
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    if not args.only or any(w not in ("W1", "W2") for w in args.only):
        ap.error("--only takes W1, W2 or W1,W2")
    if args.rounds < 1 or args.duration <= 0:
        ap.error("--rounds >= 1 and --duration > 0 are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda stack: _main(args, stack))


def _main(args: argparse.Namespace, stack: Stack) -> int:
    upstream_name, up_port = start_upstream(stack, args.upstream)
    redis_proc, redis_port = start_redis(stack, args.redis_aof, args.redis_nice)
    url = f"redis://{HOST}:{redis_port}/0"
    store_path = stack.tmp / "store" / "meshfast.db"
    embedded_key, _ = provision_bench_key(store_path)
    redis_key = provision_redis_key(url)
    redis_env = {"MESHFAST_REDIS_URL": url, "MESHFAST_REDIS_PREFIX": PREFIX}
    targets = {
        "embedded 1w": (*start_meshfast(stack, up_port, 1, [], name="embedded", env={"MESHFAST_STORE_PATH": str(store_path)}), embedded_key),
        "redis 1w": (*start_meshfast(stack, up_port, 1, [], name="redis-1w", env=redis_env), redis_key),
        "redis 2w": (*start_meshfast(stack, up_port, 2, [], name="redis-2w", env=redis_env), redis_key),
    }
    loaders = {}
    for name, (_proc, _port, key) in targets.items():
        tmp = stack.tmp / name.replace(" ", "-")
        tmp.mkdir()
        loaders[name] = Loader(args.loader, 1, tmp, key)
    log(f"upstream: {upstream_name}   loader: {next(iter(loaders.values())).name}")
    bodies = request_bodies()
    body_of = {"W1": bodies["mesh_chat"], "W2": bodies["mesh_stream"]}
    names = list(targets)
    runs: dict[str, dict[str, list[tuple[float, float, float | None, float | None, float | None]]]] = {}
    for wl in args.only:
        runs[wl] = {n: [] for n in names}
        for rnd in range(args.rounds):
            shift = rnd % len(names)
            for name in names[shift:] + names[:shift]:
                proc, port, _key = targets[name]
                meter, rmeter = CpuMeter(proc.popen.pid), CpuMeter(redis_proc.popen.pid)
                before: dict[str, int] = {}

                def on_measure(meter: CpuMeter = meter, rmeter: CpuMeter = rmeter, before: dict[str, int] = before, name: str = name) -> None:
                    if name.startswith("redis"):
                        before.update(redis_commands(redis_port))
                        rmeter.start()
                    meter.start()

                run = loaders[name].run(port, "/v1/chat/completions", body_of[wl], args.connections, args.duration, args.warmup, on_measure)
                cpu = meter.seconds() * 1e6 / run.requests if run.requests else None
                cmds = rcpu = in_functions = per_read = None
                if before and run.requests:
                    rcpu = rmeter.seconds() * 1e6 / run.requests
                    # FCALLs only: the commands a function runs inside count in commandstats too
                    after = redis_commands(redis_port)
                    cmds = (after.get("fcall", 0) - before.get("fcall", 0)) / run.requests
                    in_functions = (after["fcall_usec"] - before.get("fcall_usec", 0)) / run.requests
                    reads = after["reads"] - before.get("reads", 0)
                    per_read = cmds * run.requests / reads if reads else None
                runs[wl][name].append((run.rps, run.p50_us, cpu, cmds, rcpu))
                note = f", {run.errors} errors, {run.non2xx} non-2xx" if run.errors or run.non2xx else ""
                log(
                    f"  {wl} round {rnd + 1}/{args.rounds} {name}: {run.rps:,.0f}/s  p50 {fmt_lat(run.p50_us)}  "
                    f"cpu {fmt_cpu(cpu)}/req" + (f"  redis {cmds:.2f} calls/req, redis-server cpu {fmt_cpu(rcpu)}/req ({fmt_cpu(in_functions)} in functions), {per_read or 0:.1f} calls per read" if cmds is not None else "") + note
                )
                if run.non2xx or run.errors:
                    raise BenchError(f"{name} answered errors during {wl}; see {proc.log_path}")

    print()
    print(f"meshfast stores benchmark: {args.rounds} interleaved rounds of {args.duration:g}s, {args.connections} connections, medians")
    print(f"  upstream: {upstream_name}   loader: {next(iter(loaders.values())).name}   CPUs: {os.cpu_count()}")
    print("  cpu/req: meshfast's CPU time per request (all workers); redis cpu/req: redis-server's, on the same cores")
    print(f"  redis-server: private, {'AOF everysec' if args.redis_aof else 'no persistence'}, nice {args.redis_nice}; calls/req = FCALLs per request (the hot path's only Redis commands once a key is cached;\n"
          "  each request waits for two round trips, its admit and its settle, which share batched calls)")
    print()
    header = f"{'workload':<10}{'store':<14}{'req/s':>10}{'vs embedded':>13}{'p50':>10}{'cpu/req':>11}{'calls/req':>13}{'redis cpu/req':>15}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for wl, per in runs.items():
        med = {n: statistics.median(r[0] for r in rs) for n, rs in per.items()}
        for n, rs in per.items():
            p50 = statistics.median(r[1] for r in rs)
            cpus = [r[2] for r in rs if r[2] is not None]
            cmds = [r[3] for r in rs if r[3] is not None]
            rcpus = [r[4] for r in rs if r[4] is not None]
            print(
                f"{wl:<10}{n:<14}{med[n]:>10,.0f}{med[n] / med['embedded 1w']:>12.2f}x{fmt_lat(p50):>10}"
                f"{fmt_cpu(statistics.median(cpus) if cpus else None):>11}"
                f"{(f'{statistics.median(cmds):.2f}' if cmds else '-'):>13}"
                f"{fmt_cpu(statistics.median(rcpus) if rcpus else None):>15}"
            )
        ratio = med["redis 1w"] / med["embedded 1w"]
        trips = statistics.median(r[3] for r in per["redis 1w"] if r[3] is not None)
        scaling = med["redis 2w"] / med["redis 1w"]
        verdicts.append(
            f"{wl} ({WORKLOADS[wl]}): redis 1w / embedded {ratio:.2f}x (goal >= {GOAL_REDIS_RATIO:.2f}: "
            f"{'PASS' if ratio >= GOAL_REDIS_RATIO else 'MISS'}), {trips:.2f} Redis calls/request, 2 round trips "
            f"(goal <= {GOAL_ROUND_TRIPS:g}: {'PASS' if trips <= GOAL_ROUND_TRIPS + 0.05 else 'MISS'}), "
            f"2 workers / 1 worker {scaling:.2f}x"
        )
    print()
    for v in verdicts:
        print(v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
