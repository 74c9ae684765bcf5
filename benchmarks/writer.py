"""Instructions per receipt of the embedded store's SQLite writer process, by callgrind.

    python -m benchmarks.writer                  # 40 frames of 100 receipts
    python -m benchmarks.writer --frames 80 --per-frame 50
    python -m benchmarks.writer --cpu 5          # CPU time instead: 5 rounds of each writer

The writer (meshfast/store/sqlite_writer.py) runs beside the server on the same cores, so
its CPU per receipt counts against the money core as much as the worker's own. This runs
its code alone, in a child process under callgrind: frames of W1 receipts (a receipt from
``priced_receipt``, each with its own id) are made as the server makes them (``settle_hold``
into a ``records.Frame``), then decoded and committed one transaction per frame, as the writer
does, into a fresh store in WAL mode with ``synchronous=FULL``. Each writer (the compiled
``meshfast_core._sqlite_writer`` when it is built, and the Python twin) runs twice, once
committing no frame and once all of them (both make the same frames first); the
difference divided by the receipts is the figure printed. The kernel's share (write and
fsync) is not counted: callgrind counts user-space instructions only.

With ``--cpu ROUNDS`` it times instead of counting: each round runs each writer in a
fresh child (interleaved) committing all the frames, and prints its user and system CPU
time per receipt (``resource.getrusage`` around the commits alone, the kernel's writes and
fsync calls included); the medians close. valgrind is installed with apt-get when
missing and running as root (not needed for ``--cpu``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import load
from benchmarks.instructions import callgrind_count, valgrind_path
from benchmarks.load import Stack, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.writer", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=40, help="frames committed in the counted run (default 40)")
    p.add_argument("--per-frame", type=int, default=100, help="receipts per frame (default 100: about 20 ms of W1 at 5,000 req/s)")
    p.add_argument("--cpu", type=int, default=0, metavar="ROUNDS", help="time ROUNDS runs of each writer instead of counting")
    args = p.parse_args(argv)
    if args.frames < 1 or args.per_frame < 1:
        p.error("--frames and --per-frame must be at least 1")
    return args


def _child(kind: str, commit_frames: int, store_dir: Path, frames: int, per_frame: int) -> tuple[float, float]:
    """Commit ``commit_frames`` of the frames with writer ``kind``: user and system CPU
    seconds of the commits alone."""
    import sqlite3

    from meshfast.billing import Billing
    from meshfast.config import BillingConfig
    from meshfast.providers.base import Endpoint
    from meshfast.store import sqlite_writer
    from meshfast.store.base import Account, KeyRecord, new_id
    from meshfast.store.embedded import SCHEMA
    from meshfast_core.records import Frame, priced_receipt, settle_hold, take_hold

    class _Provider:
        name = "local"

    class _Model:
        upstream = "bench-model"
        max_output_tokens = None

    # the bench endpoint's prices (benchmarks/load.py): USD 0.15 in, 0.60 out per million
    endpoint = Endpoint(_Provider(), _Model(), 150_000_000, 600_000_000, 75_000_000)  # type: ignore[arg-type]
    account = Account(new_id("acct_"), "bench", 10**15)
    key = KeyRecord(new_id("key_"), new_id("proj_"), account.id, "h", "mesh_live_abcd")
    billing = Billing(BillingConfig())

    class _State:  # what settle_hold counts spend in
        def __init__(self) -> None:
            self.spend: dict[str, int] = {}

    states = (_State(), _State())
    made = []
    frame = Frame()
    for _ in range(frames):  # the same in both runs: only the commits below differ
        for _ in range(per_frame):
            r = priced_receipt(
                receipt_id=new_id("rcpt_"), account=account, key=key, endpoint=endpoint, kind="chat",
                requested_model="bench-chat", counts=(30, 120, 0), estimated_prompt=30, estimated_completion=0,
                started=1.0, first_byte=1.0005, stream=False, status="ok", route_mode="model", attempts="local/bench-model",
                margin_ppm=billing.margin_ppm, fee_nano=billing.fee_nano,
            )  # fmt: skip
            settle_hold(account, take_hold(account, key.id, 0, states), r, frame)
        made.append(frame.take()[4:])  # the payload, without its length
    path = str(store_dir / "writer.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO accounts VALUES (?,?,?,?,?,?)", (account.id, "bench", 10**15, None, None, 0.0))
    conn.close()
    if kind == "c":
        assert sqlite_writer.WRITER_C is not None, "meshfast_core._sqlite_writer is not built"
        core = sqlite_writer.WRITER_C.Writer(path, "FULL")
        before = resource.getrusage(resource.RUSAGE_SELF)
        for payload in made[:commit_frames]:
            assert core.commit_frame(payload), "the compiled writer did not read a frame"
    else:
        core = sqlite_writer.Writer(path, "FULL")
        before = resource.getrusage(resource.RUSAGE_SELF)
        for payload in made[:commit_frames]:
            core.commit_frame(payload)
    after = resource.getrusage(resource.RUSAGE_SELF)
    core.close()
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def _cpu(args: argparse.Namespace, stack: Stack) -> int:
    from meshfast.store import sqlite_writer

    kinds = {"c": "compiled (meshfast_core._sqlite_writer)", "py": "Python twin (sqlite3 module)"}
    if sqlite_writer.WRITER_C is None:
        del kinds["c"]
    receipts = args.frames * args.per_frame
    times: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for n in range(args.cpu):
        for kind in kinds:
            store = stack.tmp / f"cpu-{kind}-{n}"
            store.mkdir()
            argv = ["--child-cpu", kind, str(args.frames), str(store), str(args.frames), str(args.per_frame)]
            out = subprocess.run([sys.executable, "-m", "benchmarks.writer", *argv], capture_output=True, text=True, check=True)
            user, system = map(float, out.stdout.split())
            times[kind].append((user * 1e6 / receipts, system * 1e6 / receipts))
            log(f"round {n + 1} {kind}: user {times[kind][-1][0]:.2f} + system {times[kind][-1][1]:.2f} µs per receipt")
    print(f"\nSQLite writer, in process: CPU µs per receipt (median of {args.cpu}), {receipts:,} receipts in {args.frames} commits")
    for kind, label in kinds.items():
        user, system = (statistics.median(t[i] for t in times[kind]) for i in (0, 1))
        print(f"  {label:42s} user {user:5.2f}  system {system:5.2f}  total {user + system:5.2f}")
    return 0


def _run(args: argparse.Namespace, stack: Stack) -> int:
    from meshfast.store import sqlite_writer

    valgrind = valgrind_path()
    store = stack.tmp / "writer"
    store.mkdir()
    extra = (str(args.frames), str(args.per_frame))
    kinds = {"c": "compiled (meshfast_core._sqlite_writer)", "py": "Python twin (sqlite3 module)"}
    if sqlite_writer.WRITER_C is None:
        log("meshfast_core._sqlite_writer is not built (or MESHFAST_NO_EXTENSIONS is set): the Python twin only")
        del kinds["c"]
    runs = [(kind, n) for kind in kinds for n in (0, args.frames)]
    log(f"{len(runs)} runs under callgrind, 2 at a time ({args.frames} frames of {args.per_frame} receipts)...")
    with ThreadPoolExecutor(2) as pool:
        futures = {run: pool.submit(callgrind_count, valgrind, stack, store, "benchmarks.writer", *run, *extra) for run in runs}
        counts = {run: fut.result() for run, fut in futures.items()}
    receipts = args.frames * args.per_frame
    print(f"\nSQLite writer, in process: instructions per receipt (callgrind), {receipts:,} receipts in {args.frames} commits")
    print("decode the frame, INSERT the receipt, debit and spend, commit:")
    for kind, label in kinds.items():
        print(f"  {label:42s} {(counts[(kind, args.frames)] - counts[(kind, 0)]) / receipts:>8,.0f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--child"], ["--child-cpu"]):
        _, kind, commit_frames, store, frames, per_frame = argv
        user, system = _child(kind, int(commit_frames), Path(store), int(frames), int(per_frame))
        if argv[0] == "--child-cpu":
            print(user, system)
        return 0
    args = parse_args(argv)
    return load.run_bench(lambda stack: (_cpu if args.cpu else _run)(args, stack))


if __name__ == "__main__":
    sys.exit(main())
