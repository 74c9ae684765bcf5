"""The embedded store: state in this process's memory, made durable in SQLite (WAL).

Every change is applied to memory first, synchronously (the store's coroutines never
suspend, so each hot-path operation is atomic on the event loop), then queued, already
encoded, in a ``records.Frame`` (a settlement's marshal bytes written by the compiled
``settle_hold``, no tuples built); every 20 ms the frame goes to a writer process that
commits it in one transaction (group commit; the wire format is in
meshfast/store/sqlite_writer.py). A ``kill -9`` loses at most the changes not yet sent; SIGTERM flushes the queue
before exit.

One process only: the file is locked while a server holds it, and ``--workers`` above
1 is refused. The CLI talks to a running server through the admin API instead.
"""

from __future__ import annotations

import asyncio
import calendar
import fcntl
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from meshfast import errors
from meshfast.limits import LimitState, admit, insufficient_balance, privacy_table, rate_headers
from meshfast.money import nano_to_usd, usd_bytes
from meshfast.store.base import (
    RECEIPT_FIELDS,
    Account,
    Hold,
    KeyRecord,
    Limits,
    Project,
    Receipt,
    Store,
    Topup,
    check_name,
    check_topup,
    day_of,
    limits_from,
    limits_json,
    month_of,
    new_id,
    new_key,
    spend_buckets,
    usable_key,
)
from meshfast_core.records import (
    Frame,
    Gate,
    KeyEntry,
    Settler,
    release_hold,
    settle_hold,
    take_hold,
)

log = logging.getLogger("meshfast.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, balance_nano INTEGER NOT NULL,
    margin_ppm INTEGER, fee_nano INTEGER, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, account_id TEXT NOT NULL REFERENCES accounts(id), name TEXT NOT NULL,
    created REAL NOT NULL, limits TEXT NOT NULL DEFAULT '[null,null,null,null,null]',
    UNIQUE (account_id, name));
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, project_id TEXT NOT NULL, account_id TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL, name TEXT NOT NULL, created REAL NOT NULL, revoked_at REAL, expires_at REAL,
    limits TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topups (
    id TEXT PRIMARY KEY, account_id TEXT NOT NULL, amount_nano INTEGER NOT NULL, chain TEXT NOT NULL,
    tx_id TEXT NOT NULL, created REAL NOT NULL, UNIQUE (chain, tx_id));
CREATE TABLE IF NOT EXISTS receipts (
    id TEXT PRIMARY KEY, created REAL NOT NULL, account_id TEXT NOT NULL, project_id TEXT NOT NULL,
    key_id TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL, route_mode TEXT NOT NULL,
    provider TEXT NOT NULL, upstream_model TEXT NOT NULL, privacy TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
    tokens_source TEXT NOT NULL, upstream_cost_nano INTEGER NOT NULL, margin_nano INTEGER NOT NULL,
    total_nano INTEGER NOT NULL, latency_ms REAL NOT NULL, ttft_ms REAL, stream INTEGER NOT NULL,
    status TEXT NOT NULL, capped INTEGER NOT NULL, attempts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
    owner TEXT NOT NULL, day INTEGER NOT NULL, total_nano INTEGER NOT NULL, PRIMARY KEY (owner, day));
CREATE INDEX IF NOT EXISTS receipts_account ON receipts (account_id, created);
DROP INDEX IF EXISTS receipts_key;
"""

RECEIPT_SELECT = f"SELECT {', '.join(RECEIPT_FIELDS)} FROM receipts"
# seconds changes gather before a batch goes to the writer process: what a kill -9 of the
# worker can lose (the money issue allows 20 ms); longer windows put more receipts in a commit
COMMIT_INTERVAL = 0.02


def receipt_from_row(row: tuple) -> Receipt:
    r = Receipt(*row)
    r.stream = bool(r.stream)
    r.capped = bool(r.capped)
    return r


def _unavailable() -> errors.StoreUnavailable:
    return errors.StoreUnavailable("The gateway cannot save receipts right now; no call is taken until it can.")


class StoreLocked(Exception):
    """Another process (a running server) holds the embedded store."""


class _Writer:
    """Feeds the SQLite writer process (meshfast/store/sqlite_writer.py) from the event loop.

    Changes gather in ``frame`` (``records.Frame``), each encoded as it comes: a settlement
    by ``settle_hold`` itself (the compiled one writes its marshal bytes in C, building no
    row or change tuple), a control-plane statement by ``put``. Every ``COMMIT_INTERVAL`` a
    loop callback sends them as one frame over a non-blocking pipe, and each one-byte
    answer marks a frame committed (group commit). No thread: a thread here would contend for the GIL with the event
    loop on every handoff. Before a loop is attached (the CLI, tests, start-up), frames
    are written and answered synchronously.
    """

    def __init__(self, path: str, synchronous: str, gate: Gate, lock_fds: tuple[int, ...] = ()) -> None:
        self.gate = gate  # its ``failed`` follows this one's: the gate takes no call once set
        # the writer shares the store's lock (the flock's open file): a server killed with -9
        # leaves its writer committing the frames already sent, and the store stays locked
        # until that is done, so no new server loads balances those commits then change
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshfast.store.sqlite_writer", path, synchronous],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=lock_fds,
        )
        self.frame = Frame()  # changes not yet sent, already encoded
        self.inflight: deque[list[Any]] = deque()  # per frame sent: callbacks for its commit
        self.failed = None
        self.commits = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._transport: Any = None
        self._reader_transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def failed(self) -> BaseException | None:
        """Why the writer cannot commit (``None``: it can); once set, no call is taken."""
        return self.gate.failed

    @failed.setter
    def failed(self, exc: BaseException | None) -> None:
        self.gate.failed = exc

    def put(self, change: tuple) -> None:
        self.frame.put(change)
        self.wake()

    def wake(self) -> None:
        """A change went into the frame: time its sending unless a window is timed already
        (``put`` and the ``Settler``'s settlements call this)."""
        if self._timer is None and self.loop is not None:
            self.schedule()

    def schedule(self) -> None:
        """Send the frame at the end of this commit window (called when none is timed)."""
        self._timer = self.loop.call_later(COMMIT_INTERVAL, self._send)  # type: ignore[union-attr]

    def _frame(self) -> bytes:
        # marshal, not JSON: the writer reads a frame back in a quarter of the time
        # orjson.loads takes, and marshal.loads builds plain data only (it runs nothing)
        self.inflight.append([])
        return self.frame.take()

    def acked(self, answer: int) -> None:
        waiters = self.inflight.popleft() if self.inflight else []
        if answer == 107:  # "k"
            self.commits += 1
        elif self.failed is None:
            self.failed = RuntimeError("the store writer process could not commit")
            log.error("store writer failed; the server refuses new calls until it is fixed")
        for w in waiters:
            w()

    # -- before a loop is attached ---------------------------------------------------
    def flush_sync(self) -> None:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None and self.loop is None
        try:
            if self.frame.count:
                stdin.write(self._frame())
                stdin.flush()
            while self.inflight:
                answer = stdout.read(1)
                if not answer:
                    raise OSError("the store writer process exited")
                self.acked(answer[0])
        except OSError as exc:
            self.failed = exc
            raise errors.StoreUnavailable(f"The store could not be written: {exc}") from None

    def close_sync(self) -> None:
        if self.loop is not None:
            raise RuntimeError("the store is attached to an event loop: use `await store.close()`")
        self.flush_sync()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()

    # -- on the event loop ---------------------------------------------------------------
    async def attach(self) -> None:
        if self.loop is not None:
            return
        self.flush_sync()  # what was queued before the loop
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_write_pipe(asyncio.Protocol, self.proc.stdin)
        self._reader_transport, _ = await loop.connect_read_pipe(lambda: _Answers(self), self.proc.stdout)
        self.loop = loop
        if self.frame.count:
            self._timer = loop.call_later(COMMIT_INTERVAL, self._send)

    def _send(self) -> None:
        self._timer = None
        if self.frame.count and self.failed is None:
            self._transport.write(self._frame())

    async def flush(self) -> None:
        await self.attach()
        if self._timer is not None:
            self._timer.cancel()
        self._send()
        if self.inflight:
            fut = asyncio.get_running_loop().create_future()
            self.inflight[-1].append(lambda: fut.done() or fut.set_result(None))
            await fut

    async def close(self) -> None:
        await self.flush()
        self._closing = True
        self._transport.close()
        await asyncio.to_thread(self.proc.wait)
        self._reader_transport.close()

    def lost(self) -> None:
        if not self._closing and self.failed is None:
            self.failed = RuntimeError("the store writer process exited")
            log.error("store writer process exited; the server refuses new calls")
        while self.inflight:
            for w in self.inflight.popleft():
                w()


class _Answers(asyncio.Protocol):
    """The writer process's one-byte answers, one per frame."""

    def __init__(self, writer: _Writer) -> None:
        self.writer = writer

    def data_received(self, data: bytes) -> None:
        for answer in data:
            self.writer.acked(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.writer.lost()


class EmbeddedStore(Store):
    def __init__(self, path: str, *, lock: bool = True, synchronous: str = "FULL", window_seconds: float = 60.0) -> None:
        self.path = os.path.abspath(path)
        self.window_seconds = window_seconds
        self._states: dict[str, LimitState] = {}  # key id / project id -> live limit state
        self._revoke_listeners: list[Any] = []
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lockfh = None
        if lock:
            self._lockfh = open(self.path + ".lock", "a+")
            try:
                fcntl.flock(self._lockfh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lockfh.close()
                raise StoreLocked(self.path) from None
            self._lockfh.seek(0)
            self._lockfh.truncate()
            self._lockfh.write(str(os.getpid()))
            self._lockfh.flush()
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        self._accounts: dict[str, Account] = {}
        self._account_names: dict[str, Account] = {}
        self._projects: dict[str, Project] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._key_hashes: dict[str, KeyRecord] = {}
        self._topups: dict[tuple[str, str], Topup] = {}
        self._load(conn)
        conn.close()
        self._reader_local = threading.local()
        # key digest -> KeyEntry of a live key without an expiry, filled by key_now and
        # emptied by every control-plane change (revocation included): what the pipeline's
        # gate admits a call by (records.Gate)
        self._entries: dict[str, KeyEntry] = {}
        self.gate = Gate(self._entries, self.hold_now, self.rate_headers, insufficient_balance, _unavailable)
        lock_fds = () if self._lockfh is None else (self._lockfh.fileno(),)
        self._writer = _Writer(self.path, synchronous, self.gate, lock_fds)

    # -- loading ----------------------------------------------------------------
    def _load(self, conn: sqlite3.Connection) -> None:
        for row in conn.execute("SELECT id, name, balance_nano, margin_ppm, fee_nano, created FROM accounts"):
            a = Account(row[0], row[1], row[2], 0, row[3], row[4], row[5])
            self._accounts[a.id] = a
            self._account_names[a.name] = a
        for row in conn.execute("SELECT id, account_id, name, created, limits FROM projects"):
            self._projects[row[0]] = Project(*row[:4], limits=limits_from(row[4]))
        for row in conn.execute("SELECT id, project_id, account_id, hash, prefix, name, created, revoked_at, expires_at, limits FROM keys"):
            k = KeyRecord(*row[:9], limits=limits_from(row[9]))
            self._keys[k.id] = k
            self._key_hashes[k.hash] = k
        for p in self._projects.values():
            self._states[p.id] = LimitState(p.label, p.limits, self.window_seconds)
        for k in self._keys.values():
            self._states[k.id] = LimitState(k.label, k.limits, self.window_seconds)
        for row in conn.execute("SELECT id, account_id, amount_nano, chain, tx_id, created FROM topups"):
            t = Topup(*row)
            self._topups[(t.chain, t.tx_id)] = t
        now = time.time()
        month, day = month_of(now), day_of(now)
        start_of_month = calendar.timegm(time.strptime(month + "-01", "%Y-%m-%d"))
        # this month's spend per account, project and key, and today's per project and key
        # (what settle_hold keeps; the writer keeps a per-day summary, so start-up does not
        # scan the receipts)
        for owner_id, day_index, total in conn.execute(
            "SELECT owner, day, total_nano FROM spend WHERE day >= ?", (int(start_of_month // 86400),)
        ):
            owner = self._accounts.get(owner_id)
            buckets = (month,)
            if owner is None:
                owner = self._states.get(owner_id)
                buckets = (month, day)
                if owner is None:
                    continue
            for bucket in spend_buckets(day_index * 86400 + 1):
                if bucket in buckets:
                    owner.spend[bucket] = owner.spend.get(bucket, 0) + total

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._reader_local.conn = conn
        return conn

    def _write(self, sql: str, params: tuple) -> None:
        self._writer.put((sql, params))

    # -- hot path -----------------------------------------------------------------
    # Each coroutine of the interface is its plain ``*_now`` method: nothing here awaits,
    # so the pipeline calls those directly (``immediate``) and saves a coroutine per call.
    immediate = True

    def key_now(self, digest: str) -> KeyRecord:
        key = self._key_hashes.get(digest)
        if key is not None and key.revoked_at is None and key.expires_at is None:
            # the common case, checked inline: the table's hit already compared the
            # digest (usable_key's compare_digest would compare two equal digests)
            if digest not in self._entries:
                self._enter(digest, key)
            return key
        return usable_key(key, digest)

    def _enter(self, digest: str, key: KeyRecord) -> None:
        # the gate's entry for a live key without an expiry; none when its account, project
        # or states are missing or its privacy classes do not resolve (the slow path then
        # answers as it always did)
        account, project = self._accounts.get(key.account_id), self._projects.get(key.project_id)
        key_state, project_state = self._states.get(key.id), self._states.get(key.project_id)
        if account is None or project is None or key_state is None or project_state is None:
            return
        try:
            default, served = privacy_table(key.limits, project.limits)
            entry = KeyEntry(key, account, key_state, project_state, key_state.plain and project_state.plain, default, served)
        except (TypeError, ValueError):
            return
        self._entries[digest] = entry

    def _changed(self) -> None:
        # a control-plane change: every gate entry may be stale (a revocation must take
        # effect on the next call), so all are dropped and rebuilt on their next use
        self._entries.clear()

    def context_now(self, key: KeyRecord) -> tuple[Account, Project]:
        return self._accounts[key.account_id], self._projects[key.project_id]

    async def authenticate_digest(self, digest: str) -> KeyRecord:
        return self.key_now(digest)

    async def context(self, key: KeyRecord) -> tuple[Account, Project]:
        return self.context_now(key)

    async def place_hold(self, key: KeyRecord, amount_nano: int, tokens: int = 0) -> Hold:
        return self.hold_now(key, amount_nano, tokens)

    async def release(self, hold: Hold) -> None:
        release_hold(self._accounts[hold.account_id], hold, None)

    async def settle(self, hold: Hold, receipt: Receipt) -> None:
        self.settle_now(hold, receipt)

    def hold_now(self, key: KeyRecord, amount_nano: int, tokens: int = 0) -> Hold:
        if self.gate.failed is not None:
            raise _unavailable()
        account = self._accounts[key.account_id]
        key_state, project_state = self._states[key.id], self._states[key.project_id]
        if key_state.plain and project_state.plain:
            # plain path: no limit to check, take or give back; the hold keeps the states
            # (its settlement still counts their spend, for limits set later)
            hold = take_hold(account, key.id, amount_nano, (key_state, project_state))
        elif amount_nano > account.balance_nano - account.held_nano:
            hold = None  # refused before any limit is taken
        else:
            month, day = spend_buckets(time.time())
            admission = admit((key_state, project_state), time.monotonic(), tokens, amount_nano, month, day)
            hold = take_hold(account, key.id, amount_nano, admission)
        if hold is None:
            raise insufficient_balance(amount_nano, account.balance_nano, account.held_nano)
        # an embedded hold never leaves this process: it is known by its object, not an id
        return hold

    def rate_headers(self, hold: Hold) -> list[tuple[bytes, bytes]]:
        if type(hold.admission) is tuple:
            return []  # plain: no windows, no monthly ceiling
        key_state, project_state = hold.admission.states
        now = time.monotonic()
        out = rate_headers(key_state if (key_state.rpm or key_state.tpm) else project_state, now)
        budget = key_state if key_state.monthly_nano is not None else project_state
        if budget.monthly_nano is not None:
            left = budget.monthly_left(spend_buckets(time.time())[0])
            out.append((b"x-mesh-monthly-remaining-usd", usd_bytes(left)))
        return out

    def settle_now(self, hold: Hold, receipt: Receipt) -> None:
        # balance, hold and spend in memory and the change into the writer's frame, by one
        # compiled call (the pipeline settles through the store's Settler instead)
        w = self._writer
        settle_hold(self._accounts[hold.account_id], hold, receipt, w.frame)
        w.wake()

    def settler(self, call_type: type, margin_ppm: int, fee_nano: int, chars_per_token: int) -> Any:
        w = self._writer
        return Settler(call_type, self._accounts, w.frame, w.wake, margin_ppm, fee_nano, chars_per_token)

    # -- control plane ------------------------------------------------------------
    async def create_account(self, name: str, margin_ppm: int | None = None, fee_nano: int | None = None) -> Account:
        check_name(name, "acct_", "An account")
        if name in self._account_names:
            raise errors.Conflict(f"An account named {name!r} already exists.", param="name")
        a = Account(new_id("acct_"), name, 0, 0, margin_ppm, fee_nano, time.time())
        self._changed()
        self._accounts[a.id] = a
        self._account_names[name] = a
        self._write("INSERT INTO accounts VALUES (?,?,?,?,?,?)", (a.id, a.name, 0, margin_ppm, fee_nano, a.created))
        return a

    async def account(self, ref: str) -> Account:
        return self._account(ref)

    def _account(self, ref: str) -> Account:
        a = self._accounts.get(ref) or self._account_names.get(ref)
        if a is None:
            raise errors.NotFound(f"No account {ref!r}.", code="account_not_found")
        return a

    async def accounts(self) -> list[Account]:
        return list(self._accounts.values())

    async def create_project(self, account_ref: str, name: str) -> Project:
        a = self._account(account_ref)
        check_name(name, "proj_", "A project")
        if any(p.account_id == a.id and p.name == name for p in self._projects.values()):
            raise errors.Conflict(f"Account {a.name!r} already has a project named {name!r}.", param="name")
        p = Project(new_id("proj_"), a.id, name, time.time())
        self._changed()
        self._projects[p.id] = p
        self._write(
            "INSERT INTO projects (id, account_id, name, created, limits) VALUES (?,?,?,?,?)",
            (p.id, p.account_id, p.name, p.created, limits_json(p.limits)),
        )
        self._states[p.id] = LimitState(p.label, p.limits, self.window_seconds)
        return p

    async def update_project(self, project_id: str, limits: Limits) -> Project:
        p = self._project(project_id)
        self._changed()
        p.limits = limits
        self._states[p.id].update(limits, self.window_seconds)
        self._write("UPDATE projects SET limits = ? WHERE id = ?", (limits_json(limits), p.id))
        return p

    async def project(self, ref: str, account_ref: str | None = None) -> Project:
        return self._project(ref, account_ref)

    def _project(self, ref: str, account_ref: str | None = None) -> Project:
        p = self._projects.get(ref)
        if p is None and account_ref is not None:
            a = self._account(account_ref)
            p = next((x for x in self._projects.values() if x.account_id == a.id and x.name == ref), None)
        if p is None:
            raise errors.NotFound(f"No project {ref!r}.", code="project_not_found")
        return p

    async def projects(self, account_ref: str | None = None) -> list[Project]:
        if account_ref is None:
            return list(self._projects.values())
        a = self._account(account_ref)
        return [p for p in self._projects.values() if p.account_id == a.id]

    async def create_key(self, project: Project, name: str = "", limits: Limits | None = None, expires_at: float | None = None) -> tuple[KeyRecord, str]:
        k, secret = new_key(project, name, limits, expires_at)
        self._changed()
        self._keys[k.id] = k
        self._key_hashes[k.hash] = k
        self._states[k.id] = LimitState(k.label, k.limits, self.window_seconds)
        self._write(
            "INSERT INTO keys VALUES (?,?,?,?,?,?,?,?,?,?)",
            (k.id, k.project_id, k.account_id, k.hash, k.prefix, k.name, k.created, None, expires_at, limits_json(k.limits)),
        )
        return k, secret

    async def key(self, key_id: str) -> KeyRecord:
        return self._key(key_id)

    def _key(self, key_id: str) -> KeyRecord:
        k = self._keys.get(key_id)
        if k is None:
            raise errors.NotFound(f"No key {key_id!r}.", code="key_not_found")
        return k

    async def keys(self, account_ref: str | None = None, project_ref: str | None = None) -> list[KeyRecord]:
        out = list(self._keys.values())
        if account_ref is not None:
            a = self._account(account_ref)
            out = [k for k in out if k.account_id == a.id]
        if project_ref is not None:
            p = self._project(project_ref, account_ref)
            out = [k for k in out if k.project_id == p.id]
        return out

    async def revoke_key(self, key_id: str) -> KeyRecord:
        k = self._key(key_id)
        self._changed()
        if k.revoked_at is None:
            k.revoked_at = time.time()
            self._write("UPDATE keys SET revoked_at = ? WHERE id = ?", (k.revoked_at, k.id))
        for listener in self._revoke_listeners:
            listener(k.id)
        return k

    def add_revoke_listener(self, listener: Any, active_keys: Any = None) -> None:
        self._revoke_listeners.append(listener)

    async def update_key(self, key_id: str, limits: Limits | None = None, expires_at: float | None = None) -> KeyRecord:
        k = self._key(key_id)
        self._changed()
        if limits is not None:
            k.limits = limits
            self._states[k.id].update(limits, self.window_seconds)
        if expires_at is not None:
            k.expires_at = expires_at
        self._write("UPDATE keys SET limits = ?, expires_at = ? WHERE id = ?", (limits_json(k.limits), k.expires_at, k.id))
        return k

    async def topup(self, account_ref: str, amount_nano: int, chain: str, tx_id: str) -> tuple[Topup, bool]:
        check_topup(amount_nano, chain, tx_id)
        a = self._account(account_ref)
        existing = self._topups.get((chain, tx_id))
        if existing is not None:
            if existing.account_id != a.id or existing.amount_nano != amount_nano:
                raise errors.Conflict(
                    f"Transaction {chain}:{tx_id} was already credited with different details.", param="tx_id"
                )
            return existing, False
        t = Topup(new_id("top_"), a.id, amount_nano, chain, tx_id, time.time())
        self._changed()
        self._topups[(chain, tx_id)] = t
        a.balance_nano += amount_nano
        self._write("INSERT INTO topups VALUES (?,?,?,?,?,?)", (t.id, t.account_id, t.amount_nano, t.chain, t.tx_id, t.created))
        self._write("UPDATE accounts SET balance_nano = balance_nano + ? WHERE id = ?", (amount_nano, a.id))
        return t, True

    # -- reads off the loop -------------------------------------------------------
    async def receipt(self, receipt_id: str, account_id: str | None = None) -> Receipt | None:
        await self.flush()  # a receipt settled a moment ago may still be queued

        def read() -> Receipt | None:
            row = self._reader().execute(RECEIPT_SELECT + " WHERE id = ?", (receipt_id,)).fetchone()
            r = receipt_from_row(row) if row else None
            return r if r is not None and account_id in (None, r.account_id) else None

        return await asyncio.to_thread(read)

    async def receipts(self, account_id: str | None = None, key_id: str | None = None, limit: int = 100) -> list[Receipt]:
        await self.flush()
        where, params = [], []
        if account_id:
            where.append("account_id = ?")
            params.append(account_id)
        if key_id:
            where.append("key_id = ?")
            params.append(key_id)
            key = self._keys.get(key_id)
            if key is not None and not account_id:  # through the account's index
                where.append("account_id = ?")
                params.append(key.account_id)
        sql = RECEIPT_SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC LIMIT ?"
        params.append(limit)

        def read() -> list[Receipt]:
            return [receipt_from_row(r) for r in self._reader().execute(sql, params)]

        return await asyncio.to_thread(read)

    async def usage(self, group_by: str, account_id: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        columns = {
            "account": "account_id",
            "project": "project_id",
            "key": "key_id",
            "model": "model",
            "day": "strftime('%Y-%m-%d', created, 'unixepoch')",
        }
        if group_by not in columns:
            raise errors.InvalidRequest(f"group_by must be one of {', '.join(columns)}.", param="group_by")
        await self.flush()
        where, params = [], []
        if account_id:
            where.append("account_id = ?")
            params.append(account_id)
        if since:
            where.append("created >= ?")
            params.append(since)
        col = columns[group_by]
        sql = (
            f"SELECT {col}, count(*), sum(prompt_tokens), sum(completion_tokens), sum(upstream_cost_nano), "
            f"sum(margin_nano), sum(total_nano) FROM receipts"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" GROUP BY {col} ORDER BY {col}"
        )

        def read() -> list[dict[str, Any]]:
            return [
                {
                    group_by: row[0],
                    "calls": row[1],
                    "prompt_tokens": row[2],
                    "completion_tokens": row[3],
                    "upstream_cost_usd": nano_to_usd(row[4]),
                    "margin_usd": nano_to_usd(row[5]),
                    "total_usd": nano_to_usd(row[6]),
                }
                for row in self._reader().execute(sql, params)
            ]

        return await asyncio.to_thread(read)

    async def verify_ledger(self) -> list[str]:
        """Per account: top-ups minus receipt totals equals the balance (in memory and on
        disk), no balance below zero, and every receipt's total is upstream cost plus margin."""
        await self.flush()

        def read() -> list[str]:
            conn = self._reader()
            problems = []
            topups = dict(conn.execute("SELECT account_id, sum(amount_nano) FROM topups GROUP BY account_id").fetchall())
            spent = dict(conn.execute("SELECT account_id, sum(total_nano) FROM receipts GROUP BY account_id").fetchall())
            for account_id, name, balance in conn.execute("SELECT id, name, balance_nano FROM accounts"):
                expected = topups.get(account_id, 0) - spent.get(account_id, 0)
                if expected != balance:
                    problems.append(
                        f"account {name} ({account_id}): top-ups minus receipts is {nano_to_usd(expected)} "
                        f"but the balance is {nano_to_usd(balance)}"
                    )
                if balance < 0:
                    problems.append(f"account {name} ({account_id}): balance is below zero ({nano_to_usd(balance)})")
                mem = self._accounts.get(account_id)
                if mem is not None and mem.balance_nano != balance:
                    problems.append(
                        f"account {name} ({account_id}): balance in memory {nano_to_usd(mem.balance_nano)} "
                        f"differs from the saved {nano_to_usd(balance)}"
                    )
            for rid, account_id, up, margin, total in conn.execute(
                "SELECT id, account_id, upstream_cost_nano, margin_nano, total_nano FROM receipts WHERE total_nano != upstream_cost_nano + margin_nano"
            ):
                problems.append(f"account {account_id}: receipt {rid} total {total} != upstream {up} + margin {margin}")
            return problems

        return await asyncio.to_thread(read)

    # -- lifecycle ------------------------------------------------------------------
    async def attach(self) -> None:
        """Move the writer onto the running event loop (the server calls this at start-up)."""
        await self._writer.attach()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self._writer.flush()

    def flush_sync(self) -> None:
        self._writer.flush_sync()

    @property
    def commits(self) -> int:
        return self._writer.commits

    async def close(self) -> None:
        await self._writer.close()
        conn = getattr(self._reader_local, "conn", None)
        if conn is not None:
            conn.close()
        if self._lockfh is not None:
            self._lockfh.close()
            self._lockfh = None

    def close_sync(self) -> None:
        self._writer.close_sync()
        if self._lockfh is not None:
            self._lockfh.close()
            self._lockfh = None
