"""The embedded store's SQLite writer, run as its own process.

The server's embedded store sends batches of changes here over a pipe (a loop callback
every commit window); this process applies each batch in one transaction and answers
one byte once it is committed. Running the SQLite work in its own process keeps it off
the server's GIL: in a thread, every statement step released and re-took the GIL, and
the event loop waited for it.

Wire format on stdin: frames of a 4-byte big-endian length and a list of changes in
``marshal`` format, each either ``("settle", row, account_id, total_nano)`` (``row``:
``Receipt.row()``) or ``(sql, params)``. The server builds a frame with
``meshfast_core.records.Frame``: the list's header (``[`` and a little-endian count) and the
changes, encoded as they were made (the compiled one writes a settle in C, with
back-references to the strings it has written in the frame, and anything else by
``marshal.dumps(change, 2)``, which writes none; the Python twin marshals the list at
once); this process reads any marshal list. marshal, not JSON: reading a frame back costs a
quarter of what orjson.loads does, and marshal.loads builds plain data only, running
nothing (the pipe is private to the server and this, its child). Answer on stdout per
frame: ``k`` committed, ``f`` failed (the error is on stderr). At end of input it exits:
a server killed with SIGKILL still gets everything it had sent committed.

Two twins apply the frames: the compiled ``meshfast_core._sqlite_writer.Writer`` (its own
connection through SQLite's C API; it reads the marshal bytes itself and binds the values
without copies) and ``Writer`` below (``apply``/``commit`` over the sqlite3 module).
``open_writer`` picks the compiled one unless ``MESHFAST_NO_EXTENSIONS`` is set or it was
not built (it needs SQLite's header); a frame the compiled reader does not take (see its
module) goes to the Python twin, on a second connection opened when first needed.
"""

from __future__ import annotations

import marshal
import sqlite3
import struct
import sys
from itertools import chain
from types import ModuleType
from typing import Protocol

from meshfast.store.base import RECEIPT_FIELDS
from meshfast_core._ext import compiled

ROWS_PER_INSERT = 64
DEBIT_SQL = "UPDATE accounts SET balance_nano = balance_nano - ? WHERE id = ?"
SPEND_SQL = (
    "INSERT INTO spend (owner, day, total_nano) VALUES (?, ?, ?) "
    "ON CONFLICT (owner, day) DO UPDATE SET total_nano = total_nano + excluded.total_nano"
)
# positions in a receipt row (RECEIPT_FIELDS order)
_CREATED, _ACCOUNT, _PROJECT, _KEY = 1, 2, 3, 4
_TOTAL = RECEIPT_FIELDS.index("total_nano")


def receipt_insert(rows: int) -> str:
    one = "(" + ",".join("?" * len(RECEIPT_FIELDS)) + ")"
    return f"INSERT INTO receipts ({', '.join(RECEIPT_FIELDS)}) VALUES " + ",".join([one] * rows)


RECEIPT_INSERT_FULL = receipt_insert(ROWS_PER_INSERT)


def apply(conn: sqlite3.Connection, work: list) -> None:
    """One transaction for ``work``: receipts in multi-row INSERTs, debits summed per account,
    other statements in order."""
    receipts: list[list] = []
    debits: dict[str, int] = {}

    def put_receipts() -> None:
        for i in range(0, len(receipts), ROWS_PER_INSERT):
            chunk = receipts[i : i + ROWS_PER_INSERT]
            sql = RECEIPT_INSERT_FULL if len(chunk) == ROWS_PER_INSERT else receipt_insert(len(chunk))
            conn.execute(sql, list(chain.from_iterable(chunk)))
        # spend per (account, project, key, UTC day number), then per owner and day
        calls: dict[tuple[str, str, str, int], int] = {}
        for row in receipts:
            at = (row[_ACCOUNT], row[_PROJECT], row[_KEY], int(row[_CREATED] // 86400))
            calls[at] = calls.get(at, 0) + row[_TOTAL]
        spend: dict[tuple[str, int], int] = {}
        for (account, project, key, day), total in calls.items():
            for owner in ((account, day), (project, day), (key, day)):
                spend[owner] = spend.get(owner, 0) + total
        if debits:
            conn.executemany(DEBIT_SQL, [(v, k) for k, v in debits.items()])
        if spend:
            conn.executemany(SPEND_SQL, [(owner, day, total) for (owner, day), total in spend.items()])
        receipts.clear()
        debits.clear()

    conn.execute("BEGIN")
    try:
        for item in work:
            if item[0] == "settle":
                receipts.append(item[1])
                debits[item[2]] = debits.get(item[2], 0) + item[3]
            else:
                put_receipts()  # keep the order with other statements
                conn.execute(item[0], item[1])
        put_receipts()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def commit(conn: sqlite3.Connection, work: list) -> None:
    try:
        apply(conn, work)
    except sqlite3.IntegrityError:
        # one bad change must not take the batch with it: apply them one by one
        for item in work:
            try:
                apply(conn, [item])
            except sqlite3.IntegrityError as exc:
                print(f"meshfast store writer: change refused ({exc}): {str(item[0])[:200]}", file=sys.stderr)


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class FrameWriter(Protocol):
    def commit_frame(self, payload: bytes) -> None: ...
    def close(self) -> None: ...


class Writer:
    """The pure-Python twin: ``commit`` of each frame, decoded by marshal.loads."""

    def __init__(self, path: str, synchronous: str) -> None:
        self.conn = connect(path, synchronous)

    def commit_frame(self, payload: bytes) -> None:
        """Apply one frame (raises what ``commit`` raises when it cannot commit)."""
        commit(self.conn, marshal.loads(payload))

    def close(self) -> None:
        self.conn.close()


class CompiledWriter:
    """The compiled writer, with the Python twin for the frames it does not read."""

    def __init__(self, core: ModuleType, path: str, synchronous: str) -> None:
        self.core = core.Writer(path, synchronous)
        self.path, self.synchronous = path, synchronous
        self.twin: Writer | None = None

    def commit_frame(self, payload: bytes) -> None:
        if not self.core.commit_frame(payload):
            if self.twin is None:
                self.twin = Writer(self.path, self.synchronous)
            self.twin.commit_frame(payload)

    def close(self) -> None:
        self.core.close()
        if self.twin is not None:
            self.twin.close()


WRITER_C: ModuleType | None = compiled("_sqlite_writer")


def open_writer(path: str, synchronous: str, *, python: bool = False) -> FrameWriter:
    """The compiled writer when it is available (and ``python`` is false), else the twin."""
    if WRITER_C is None or python:
        return Writer(path, synchronous)
    return CompiledWriter(WRITER_C, path, synchronous)


def main(argv: list[str]) -> int:
    path, synchronous = argv[0], argv[1]
    writer = open_writer(path, synchronous)
    read = sys.stdin.buffer.read
    out = sys.stdout.buffer
    while True:
        head = read(4)
        if len(head) < 4:
            break
        (size,) = struct.unpack(">I", head)
        payload = read(size)
        if len(payload) < size:
            break
        try:
            writer.commit_frame(payload)
            out.write(b"k")
        except Exception as exc:  # disk full, I/O error: the server stops taking calls
            print(f"meshfast store writer: commit failed: {exc!r}", file=sys.stderr)
            out.write(b"f")
        out.flush()
    writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
