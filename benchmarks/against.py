"""meshfast against itself at another git revision, end to end: what a change is worth.

    python -m benchmarks.against REV                   # W1 and W2, 6 rounds of 4 s each
    python -m benchmarks.against HEAD~3 --only W1 --rounds 8

The comparison against the data plane (benchmarks/load.py) swings with the host by more
than most changes move it, because the two servers do different work. Here both sides do
the same work: this checkout (uncommitted changes included) and REV, checked out into a
temporary git worktree and built there. Each side gets its own fresh embedded store,
provisioned by its own CLI (an account with a large balance, a key without limits), and
serves the bench config against one nginx upstream under wrk, as in load.py; the rounds
interleave (the order alternates) and the table gives the medians and the median of the
per-round ratios, with each server's CPU per request (its SQLite writer included).

REV must read today's bench config (benchmarks/load.py) and have the operator CLI
(``meshfast accounts create``, ``topup``, ``keys create``). The worktree is removed at
the end. nginx and wrk are installed with apt-get when missing and running as root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from benchmarks import load
from benchmarks.load import BenchError, Stack, log

WORKLOADS = {"W1": "mesh_chat", "W2": "mesh_stream"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.against", description=__doc__.split("\n\n")[0])
    p.add_argument("rev", help="the git revision to compare this checkout against (a commit, tag or branch)")
    p.add_argument("--only", default="W1,W2", help="workloads, comma-separated: W1 (chat), W2 (stream); default both")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds per workload (default 6)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measured run, after 1 s of warm-up (default 4)")
    p.add_argument("--connections", type=int, default=32, help="client connections (default 32)")
    args = p.parse_args(argv)
    args.only = [w for w in args.only.split(",") if w]
    if not args.only or any(w not in WORKLOADS for w in args.only):
        p.error(f"--only takes a comma-separated subset of {','.join(WORKLOADS)}")
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1:
        p.error("--rounds and --connections must be at least 1 and --duration above 0")
    return args


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=str(load.ROOT), capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def checkout(rev: str, where: Path) -> str:
    """REV in a detached worktree at ``where``, its extensions built; returns the commit."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    log(f"checking out {rev} ({commit[:10]}) into a temporary worktree and building its extensions...")
    _git("worktree", "add", "--detach", str(where), commit)
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=str(where), capture_output=True, text=True
    )
    if built.returncode != 0:
        raise BenchError(f"building {rev}'s extensions failed:\n{built.stderr[-2000:]}")
    return commit


def _side_env(tree: Path, store: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHFAST_")}
    env.update(PYTHONPATH=str(tree), MESHFAST_STORE_PATH=str(store))
    return env


def provision(tree: Path, store: Path) -> str:
    """An account with a balance no run can exhaust and a key without limits, made by the
    tree's own CLI on a fresh store; returns the key."""
    env = _side_env(tree, store)
    out = ""
    for argv in (
        ["accounts", "create", "bench"],
        ["topup", "bench", "--usd", "1000000"],
        ["keys", "create", "--account", "bench", "--project", "bench"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "meshfast", *argv], cwd=str(tree), env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise BenchError(f"`meshfast {' '.join(argv)}` in {tree} failed:\n{done.stderr[-2000:]}")
        out = done.stdout
    return out.strip().splitlines()[-1]  # keys create prints the key as the last line


def start_side(stack: Stack, tree: Path, name: str, upstream_port: int) -> tuple[load.Proc, int, str]:
    store = stack.tmp / f"store-{name}" / "meshfast.db"
    key = provision(tree, store)
    conf = stack.tmp / f"{name}.toml"
    conf.write_text(load.meshfast_config(upstream_port))
    port = load.free_port()
    log(f"starting {name}: meshfast from {tree}, 1 worker on {load.HOST}:{port}")
    argv = [
        sys.executable, "-m", "meshfast", "serve", "--config", str(conf), "--host", load.HOST,
        "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    proc = stack.spawn(name, argv, env=_side_env(tree, store), cwd=tree)
    try:
        load.wait_http_ok(port, "/health", 60, proc.popen, name)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- {name} log ---\n{proc.tail()}") from None
    return proc, port, key


def _run(args: argparse.Namespace, stack: Stack) -> int:
    tree = stack.tmp / "rev"
    commit = checkout(args.rev, tree)
    try:
        _upstream, up_port = load.start_upstream(stack, "nginx")
        bodies = load.request_bodies()
        rev_name = f"rev {commit[:10]}"
        old_proc, old_port, old_key = start_side(stack, tree, "rev", up_port)
        new_proc, new_port, new_key = start_side(stack, load.ROOT, "this", up_port)
        old_loader = load.Loader("wrk", 1, stack.tmp, old_key)
        new_loader = load.Loader("wrk", 1, stack.tmp, new_key)
        results = {}
        for wl in args.only:
            body = bodies[WORKLOADS[wl]]
            log(f"running {wl}: {rev_name} vs this checkout, {args.rounds} interleaved rounds of 1s warm-up + {args.duration:g}s...")
            pairs = load.ab_rounds(
                wl, "against",
                (rev_name, old_loader, body, old_port, old_proc), ("this", new_loader, body, new_port, new_proc),
                args.rounds, args.duration, args.connections,
            )  # fmt: skip
            results[wl] = load.ab_summary(pairs)
    finally:
        stack.stop_all()
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=str(load.ROOT), capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=str(load.ROOT), capture_output=True)
    print(f"\nthis checkout against {args.rev} ({commit[:10]}), end to end: {args.rounds} interleaved rounds of {args.duration:g}s, medians")
    print(f"{'':4s} {'rev req/s':>10s} {'this req/s':>11s} {'this/rev':>9s} {'rev cpu/req':>12s} {'this cpu/req':>13s} {'cpu ratio':>10s}")
    for wl, sm in results.items():
        a_cpu = f"{sm['a_cpu']:.0f} µs" if sm["a_cpu"] else "-"
        b_cpu = f"{sm['b_cpu']:.0f} µs" if sm["b_cpu"] else "-"
        print(
            f"{wl:4s} {sm['a_rps']:10,.0f} {sm['b_rps']:11,.0f} {sm['rps_ratio']:8.3f}x {a_cpu:>12s} {b_cpu:>13s} {sm['cpu_ratio']:9.3f}x"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return load.run_bench(lambda stack: _run(args, stack))


if __name__ == "__main__":
    sys.exit(main())
