"""The embedded store's SQLite writer (meshfast/store/sqlite_writer.py): the compiled core
(meshfast_core._sqlite_writer) against its Python twin, on real store files."""

from __future__ import annotations

import asyncio
import marshal
import os
import sqlite3
import struct
import subprocess
import sys
import sysconfig
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshfast.store import sqlite_writer
from meshfast.store.embedded import SCHEMA, EmbeddedStore
from meshfast_core import _ext, records, records_py
from meshfast_core.records import RECEIPT_FIELDS

C = sqlite_writer.WRITER_C
NOT_COMPILED = pytest.mark.skipif(C is None, reason="meshfast_core._sqlite_writer is not compiled (or disabled)")
NO_EXTENSIONS = os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0")
ACCOUNT_SQL = "INSERT INTO accounts VALUES (?,?,?,?,?,?)"
DAY = 86400


class _Core:
    """The compiled writer alone: every frame must be read by it, none handed to the twin."""

    def __init__(self, path: str, synchronous: str) -> None:
        assert C is not None
        self.core = C.Writer(path, synchronous)

    def commit_frame(self, payload: bytes) -> None:
        assert self.core.commit_frame(payload), "the compiled writer refused a frame"

    def close(self) -> None:
        self.core.close()


TWINS = [
    pytest.param(sqlite_writer.Writer, id="py"),
    pytest.param(_Core, id="c", marks=NOT_COMPILED),
]


def test_sqlite_writer_compiled_loaded() -> None:
    if NO_EXTENSIONS:
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    include = [sysconfig.get_paths()["include"], "/usr/include", "/usr/local/include"]
    if not any(os.path.exists(os.path.join(d, "sqlite3.h")) for d in include):
        pytest.skip("SQLite's header is not installed, so meshfast_core._sqlite_writer is not built")
    assert C is not None, "meshfast_core._sqlite_writer did not load: build it with setup.py build_ext"
    writer = sqlite_writer.open_writer(":memory:", "OFF")
    assert isinstance(writer, sqlite_writer.CompiledWriter)
    writer.close()


@NOT_COMPILED
def test_compiled_statements_are_the_twins() -> None:
    assert C is not None
    assert (C.DEBIT_SQL, C.SPEND_SQL, C.ROWS_PER_INSERT) == (sqlite_writer.DEBIT_SQL, sqlite_writer.SPEND_SQL, sqlite_writer.ROWS_PER_INSERT)
    assert all(C.receipt_insert(n) == sqlite_writer.receipt_insert(n) for n in (1, 2, 63, 64))


def _store(path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA)
    conn.close()
    return str(path)


def dump(path: str) -> dict[str, list]:
    """Every table's rows in rowid order, each value with its SQLite type."""
    conn = sqlite3.connect(path)
    out = {}
    for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        typed = ", ".join(f"{c}, typeof({c})" for c in cols)
        out[table] = conn.execute(f"SELECT rowid, {typed} FROM {table} ORDER BY rowid").fetchall()
    conn.close()
    return out


def row(n: int, *, account: str = "acct_1", project: str = "proj_1", key: str = "key_1", created: float | int = 1764180000.25,
        total: int = 87_975, **changes) -> tuple:  # fmt: skip
    values = dict(zip(RECEIPT_FIELDS, (
        f"rcpt_{n:013d}", created, account, project, key, "chat", "auto", "cheapest", "sim", "sim-1",
        "protected", 30, 120, 10, "upstream", 76_500, total - 76_500, total, 0.61, 0.5, 1, "ok", 0, "sim/sim-1",
    ), strict=True))  # fmt: skip
    values.update(changes)
    return tuple(values[f] for f in RECEIPT_FIELDS)


def settle(r: tuple, account: str | None = None) -> tuple:
    return ("settle", r, account or r[2], r[RECEIPT_FIELDS.index("total_nano")])


def accounts(*ids: str) -> list[tuple]:
    return [(ACCOUNT_SQL, (a, f"name {a}", 10**15, None, 5, 1.5)) for a in ids]


def mixed_frames() -> list[list]:
    """Settles across accounts, projects, keys and days, more than one INSERT's rows in a
    frame, statements between them, and values of every type a frame carries."""
    frames = [accounts("acct_1", "acct_2", "acct_ü")]
    big = []
    for n in range(150):
        big.append(settle(row(n, account=("acct_1", "acct_2")[n % 2], project=f"proj_{n % 3}", key=f"key_{n % 5}",
                              created=1764180000.25 + (n % 4) * 40_000, total=87_975 + n)))  # fmt: skip
        if n == 70:
            big.append(("UPDATE accounts SET balance_nano = balance_nano + ? WHERE id = ?", (5_000_000_000_000, "acct_1")))
    frames.append(big)
    frames.append([
        settle(row(1000, ttft_ms=None, stream=True, capped=False, model="modèle ✓", attempts="")),
        ("INSERT INTO topups VALUES (?,?,?,?,?,?)", ("top_1", "acct_ü", 2**40, "manual", "tx ✓", 1764180000.5)),
        settle(row(1001, account="acct_ü", created=1764180000, total=2**33, prompt_tokens=-2**31 - 1)),
        settle(row(1002, account="acct_ü", created=-86_399.5, latency_ms=-0.0, completion_tokens=2**62)),
        settle(row(1003, created=-86_400 * 3 - 1, total=0), account="acct_2"),
        ("UPDATE accounts SET name = ?, fee_nano = ?, margin_ppm = ? WHERE id = ?", ("", True, False, "acct_2")),
        ("UPDATE accounts SET margin_ppm = ? WHERE id = ?", (b"\x00raw", "acct_1")),
        ("DELETE FROM topups WHERE id = 'nothing'", ()),
        ("  -- nothing to run\n", ()),
        ("UPDATE accounts SET fee_nano = 7; -- one statement", ()),
    ])  # fmt: skip
    frames.append([settle(row(n, created=1764180000.25 + DAY)) for n in range(2000, 2064)])  # exactly one INSERT
    return frames


def _commit_both(writer, ref, frames) -> None:
    """Every frame committed by both writers, in order; both closed."""
    for frame in frames:
        payload = marshal.dumps(frame)
        writer.commit_frame(payload)
        ref.commit_frame(payload)
    writer.close()
    ref.close()


@pytest.mark.parametrize("twin", TWINS)
def test_writes_what_the_twin_writes(tmp_path, twin) -> None:
    expected, got = _store(tmp_path / "py.db"), _store(tmp_path / "twin.db")
    _commit_both(twin(got, "FULL"), sqlite_writer.Writer(expected, "FULL"), mixed_frames())
    tables = dump(got)
    assert tables == dump(expected)
    assert len(tables["receipts"]) == 150 + 4 + 64
    assert {r[2 * RECEIPT_FIELDS.index("ttft_ms") + 2] for r in tables["receipts"]} == {"real", "null"}
    assert {r[3] for r in tables["spend"]} == {-4, -1, 20418, 20419, 20420}  # UTC days, before 1970 too


def server_frame(mod, changes: list) -> bytes:
    """``changes`` as the embedded store frames them (``records.Frame``: settles written by
    the compiled twin field by field), without the length."""
    frame = mod.Frame()
    for change in changes:
        if change[0] == "settle":
            frame.settle(mod.Receipt(*change[1]), change[2], change[3])
        else:
            frame.put(change)
    data = frame.take()
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    return data[4:]


RECORDS = [
    pytest.param(records_py, id="py"),
    pytest.param(records.RECORDS_C, id="c", marks=pytest.mark.skipif(not records.COMPILED, reason="meshfast_core._records is not compiled")),
]


@pytest.mark.parametrize("mod", RECORDS)
@pytest.mark.parametrize("twin", TWINS)
def test_frames_the_server_makes_write_what_marshal_dumps_writes(tmp_path, twin, mod) -> None:
    """Frames from either records twin's ``Frame`` (concatenated changes, no back-references)
    are read by each writer (the compiled one refuses none) into the same rows as the
    ``marshal.dumps`` frame of the same changes."""
    expected, got = _store(tmp_path / "ref.db"), _store(tmp_path / "got.db")
    writer, ref = twin(got, "OFF"), sqlite_writer.Writer(expected, "OFF")
    for changes in mixed_frames():
        payload = server_frame(mod, changes)
        assert marshal.loads(payload) == changes
        writer.commit_frame(payload)
        ref.commit_frame(marshal.dumps(changes))
    writer.close()
    ref.close()
    assert dump(got) == dump(expected)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_VALUE = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), _TEXT, st.binary(max_size=8), st.booleans())


@st.composite
def _frames(draw) -> list[list]:
    frames = []
    n = 0
    for _ in range(draw(st.integers(1, 3))):
        frame: list = []
        for _ in range(draw(st.integers(0, 70))):
            n += 1
            if draw(st.integers(0, 9)) == 0:
                frame.append(("UPDATE accounts SET name = ?, fee_nano = ? WHERE id = ?", (draw(_TEXT), draw(_VALUE), "acct_1")))
            else:
                changes = {f: draw(_VALUE) for f in ("model", "ttft_ms", "prompt_tokens", "attempts") if draw(st.booleans())}
                r = row(n, key=draw(st.sampled_from(["key_1", "key_2", "käy"])), created=draw(st.floats(0, 4e9) | st.integers(-(10**12), 10**12)),
                        total=draw(st.integers(-(2**40), 2**40)), **changes)  # fmt: skip
                frame.append(settle(r))
        frames.append(frame)
    return frames


@NOT_COMPILED
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=_frames())
def test_twins_agree_on_any_frames(tmp_path_factory, frames) -> None:
    d = tmp_path_factory.mktemp("w")
    expected, got, framed = _store(d / "py.db"), _store(d / "c.db"), _store(d / "framed.db")
    _commit_both(_Core(got, "OFF"), sqlite_writer.Writer(expected, "OFF"), [accounts("acct_1"), *frames])
    assert dump(got) == dump(expected)
    if records.COMPILED:  # the same changes as the server's compiled Frame writes them
        writer = _Core(framed, "OFF")
        for changes in [accounts("acct_1"), *frames]:
            writer.commit_frame(server_frame(records.RECORDS_C, changes))
        writer.close()
        assert dump(framed) == dump(expected)


@NOT_COMPILED
@pytest.mark.parametrize(
    "frame",
    [
        [("UPDATE accounts SET name = ? WHERE id = ?", ["listed", "acct_1"])],  # a list of params: read
        [["UPDATE accounts SET name = ? WHERE id = ?", ("a change as a list", "acct_1")]],
        [("UPDATE accounts SET balance_nano = ? WHERE id = ?", (2**63 - 1, "acct_1"))],
        [settle(row(7, created=None))],  # NOT NULL: refused change by change
        [settle(row(8, model=2**64))],  # beyond int64: the twin fails the frame
        [settle(row(9, model="\ud800"))],  # a lone surrogate: the twin fails the frame
        [settle(row(10, model=3j))],
    ],
)
def test_frames_the_compiled_reader_refuses_go_to_the_twin(tmp_path, frame, capsys) -> None:
    assert C is not None
    expected, got = _store(tmp_path / "py.db"), _store(tmp_path / "c.db")
    w, ref = sqlite_writer.open_writer(got, "OFF"), sqlite_writer.Writer(expected, "OFF")
    outcomes = []
    for writer in (ref, w):
        writer.commit_frame(marshal.dumps(accounts("acct_1")))
        try:
            writer.commit_frame(marshal.dumps(frame))
            outcomes.append("k")
        except Exception as exc:  # noqa: BLE001 - what main answers "f" to
            outcomes.append(type(exc).__name__)
        writer.close()
    assert outcomes[0] == outcomes[1]
    assert dump(got) == dump(expected)
    err = capsys.readouterr().err.splitlines()
    assert err[: len(err) // 2] == err[len(err) // 2 :]


@pytest.mark.parametrize("twin", TWINS)
def test_a_refused_change_does_not_take_the_frame_with_it(tmp_path, twin, capsys) -> None:
    path = _store(tmp_path / "w.db")
    w = twin(path, "FULL")
    w.commit_frame(marshal.dumps([*accounts("acct_1"), settle(row(1))]))
    capsys.readouterr()
    w.commit_frame(
        marshal.dumps([
            settle(row(2)),
            settle(row(1, total=5)),  # the same id again: refused, its debit and spend too
            *accounts("acct_1"),  # refused: the account exists
            ("UPDATE accounts SET name = ? WHERE id = ?", ("renamed", "acct_1")),
            settle(row(3)),
        ])
    )  # fmt: skip
    w.close()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "meshfast store writer: change refused (UNIQUE constraint failed: receipts.id): settle",
        f"meshfast store writer: change refused (UNIQUE constraint failed: accounts.name): {ACCOUNT_SQL}",
    ]
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT id FROM receipts ORDER BY rowid")] == [row(n)[0] for n in (1, 2, 3)]
    assert conn.execute("SELECT name, balance_nano FROM accounts").fetchall() == [("renamed", 10**15 - 3 * 87_975)]
    assert conn.execute("SELECT DISTINCT total_nano FROM spend").fetchall() == [(3 * 87_975,)]
    conn.close()


@pytest.mark.parametrize("twin", TWINS)
def test_a_failed_frame_writes_nothing(tmp_path, twin) -> None:
    path = _store(tmp_path / "w.db")
    w = twin(path, "FULL")
    w.commit_frame(marshal.dumps(accounts("acct_1")))
    # no table; 2 parameters, 1 given; two statements; nothing to run, 1 given
    for bad in ("INSERT INTO nowhere VALUES (?)", "UPDATE accounts SET name = ? WHERE id = ?", "SELECT ?; SELECT 2", "-- ?"):
        with pytest.raises((sqlite3.OperationalError, sqlite3.ProgrammingError)):
            w.commit_frame(marshal.dumps([settle(row(1)), (bad, ("x",)), settle(row(2))]))
    w.commit_frame(marshal.dumps([settle(row(3))]))
    w.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id FROM receipts").fetchall() == [(row(3)[0],)]
    assert conn.execute("SELECT balance_nano FROM accounts").fetchall() == [(10**15 - 87_975,)]
    conn.close()


def _frame(changes: list) -> bytes:
    payload = marshal.dumps(changes)
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("compiled", [pytest.param(False, id="py"), pytest.param(True, id="c", marks=NOT_COMPILED)])
def test_writer_process_answers_k_or_f(tmp_path, compiled) -> None:
    path = _store(tmp_path / "w.db")
    env = dict(os.environ)
    env.pop("MESHFAST_NO_EXTENSIONS", None)
    if not compiled:
        env["MESHFAST_NO_EXTENSIONS"] = "1"
    frames = [
        accounts("acct_1"),
        [settle(row(1)), ("INSERT INTO nowhere VALUES (?)", (1,))],  # fails: nothing of it is written
        [settle(row(2)), settle(row(2))],  # refused change by change: the first commits
        [["UPDATE accounts SET name = ? WHERE id = ?", ["a list", "acct_1"]]],  # the compiled reader hands it to the twin
        [settle(row(3))],
    ]
    done = subprocess.run(
        [sys.executable, "-m", "meshfast.store.sqlite_writer", path, "NORMAL"],
        input=b"".join(_frame(f) for f in frames), capture_output=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout == b"kfkkk"
    assert b"commit failed: OperationalError('no such table: nowhere')" in done.stderr
    assert b"change refused (UNIQUE constraint failed: receipts.id): settle" in done.stderr
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT id FROM receipts ORDER BY rowid").fetchall() == [(row(2)[0],), (row(3)[0],)]
    assert conn.execute("SELECT name, balance_nano FROM accounts").fetchall() == [("a list", 10**15 - 2 * 87_975)]
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


@pytest.mark.parametrize("compiled", [pytest.param(False, id="py"), pytest.param(True, id="c", marks=NOT_COMPILED)])
def test_embedded_store_through_each_writer(tmp_path, monkeypatch, compiled) -> None:
    """The store's own changes, through the writer process it starts, read back on reopening."""
    from meshfast.store.base import Receipt, new_id

    monkeypatch.delenv("MESHFAST_NO_EXTENSIONS", raising=False)
    if not compiled:
        monkeypatch.setenv("MESHFAST_NO_EXTENSIONS", "1")
    path = str(tmp_path / "e.db")
    store = EmbeddedStore(path)

    async def calls():
        account = await store.create_account("acme")
        await store.topup(account.id, 10**12, "manual", "t1")
        project = await store.create_project(account.id, "p")
        key, _ = await store.create_key(project)
        await store.attach()
        for n in range(130):
            hold = await store.place_hold(key, 2_000_000, 10)
            total = 1_000_000 + n
            await store.settle(
                hold,
                Receipt(new_id("rcpt_"), time.time(), account.id, project.id, key.id, "chat", "m", "model", "p", "u",
                        "standard", 5, 5, 0, "upstream", total, 0, total, 1.0, None, n % 2 == 0, "ok"),
            )  # fmt: skip
        await store.close()
        return account

    account = asyncio.run(calls())
    again = EmbeddedStore(path)

    async def check():
        try:
            assert (await again.account(account.id)).balance_nano == 10**12 - sum(1_000_000 + n for n in range(130))
            got = await again.receipts(account.id, limit=200)
            assert len(got) == 130 and {r.stream for r in got} == {True, False}
            return await again.verify_ledger()
        finally:
            await again.close()

    assert asyncio.run(check()) == []
    assert _ext.NO_EXTENSIONS == NO_EXTENSIONS  # this process's selection is untouched


def _outcomes(tmp_path, frames: list[bytes]) -> tuple[list[str], list[str]]:
    """Each payload through the twin and through the compiled writer (with the twin for what
    it refuses), on two stores: what ``main`` answers for each (``k`` or the error's type);
    the two stores must end the same."""
    expected, got = _store(tmp_path / "py.db"), _store(tmp_path / "c.db")
    answers = []
    for writer in (sqlite_writer.Writer(expected, "OFF"), sqlite_writer.open_writer(got, "OFF")):
        out = []
        for payload in frames:
            try:
                writer.commit_frame(payload)
                out.append("k")
            except Exception as exc:  # noqa: BLE001 - what main answers "f" to
                out.append(type(exc).__name__)
        writer.close()
        answers.append(out)
    assert dump(got) == dump(expected)
    return answers[0], answers[1]


def _answers(writer, frames: list, refused: type[Exception]) -> list[str]:
    """Each frame committed by ``writer`` in turn: "k", or the error it was refused with
    (its message for an OperationalError, else its class name); the writer is closed."""
    out = []
    for frame in frames:
        try:
            writer.commit_frame(marshal.dumps(frame))
            out.append("k")
        except refused as exc:
            out.append(str(exc) if isinstance(exc, sqlite3.OperationalError) else type(exc).__name__)
    writer.close()
    return out


@pytest.mark.parametrize("twin", TWINS)
def test_a_spend_table_made_after_the_first_frames(tmp_path, twin) -> None:
    """The debit statement prepares and the spend one fails: the next frames prepare it again."""
    expected, got = _store(tmp_path / "py.db"), _store(tmp_path / "twin.db")
    for path in (expected, got):
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE spend")
        conn.close()
    spend = "CREATE TABLE spend (owner TEXT NOT NULL, day INTEGER NOT NULL, total_nano INTEGER NOT NULL, PRIMARY KEY (owner, day))"
    frames = [accounts("acct_1"), [settle(row(1))], [(spend, ())], [settle(row(2))], [settle(row(3)), settle(row(4))]]
    answers = [_answers(w, frames, sqlite3.OperationalError) for w in (sqlite_writer.Writer(expected, "OFF"), twin(got, "OFF"))]
    assert answers[0] == answers[1] == ["k", "no such table: spend", "k", "k", "k"]
    assert dump(got) == dump(expected)
    conn = sqlite3.connect(got)
    assert conn.execute("SELECT count(*), sum(total_nano) FROM spend").fetchone() == (3, 3 * 3 * 87_975)
    conn.close()


@pytest.mark.parametrize("twin", TWINS)
def test_sums_overflow_only_when_the_final_sum_does(tmp_path, twin) -> None:
    """Debits and spend are summed exactly: a running total beyond int64 that ends within it
    commits; a final sum beyond it fails the frame (OverflowError, as the sqlite3 binding)."""
    expected, got = _store(tmp_path / "py.db"), _store(tmp_path / "twin.db")
    frames = [
        accounts("acct_1"),
        [settle(row(1, total=2**62)), settle(row(2, total=2**62)), settle(row(3, total=-(2**62)))],
        [settle(row(4, total=2**62)), settle(row(5, total=2**62))],
        [settle(row(6, total=-(2**62))), settle(row(7, total=-(2**62))), settle(row(8, total=-1))],
    ]
    answers = [_answers(w, frames, OverflowError) for w in (sqlite_writer.Writer(expected, "OFF"), twin(got, "OFF"))]
    assert answers[0] == answers[1] == ["k", "k", "OverflowError", "OverflowError"]
    assert dump(got) == dump(expected)
    conn = sqlite3.connect(got)
    assert conn.execute("SELECT balance_nano FROM accounts").fetchone() == (10**15 - 2**62,)
    assert conn.execute("SELECT DISTINCT total_nano FROM spend").fetchall() == [(2**62,)]
    conn.close()


# crafted marshal bytes (marshal.dumps does not write these)
def _m_str(code: bytes, data: bytes) -> bytes:
    if code in (b"z", b"Z"):
        return code + bytes([len(data)]) + data
    return code + struct.pack("<i", len(data)) + data


def _m_tuple(*items: bytes) -> bytes:
    return b")" + bytes([len(items)]) + b"".join(items)


def _m_list(*items: bytes) -> bytes:
    return b"[" + struct.pack("<i", len(items)) + b"".join(items)


def _m_statement(sql: str, *params: bytes) -> bytes:
    return _m_list(_m_tuple(_m_str(b"u", sql.encode()), _m_tuple(*params)))


_NAME_SQL = "UPDATE accounts SET name = ? WHERE id = 'acct_1'"
_CRAFTED = {
    "utf8_bad_start": _m_statement(_NAME_SQL, _m_str(b"u", b"ok \xff")),
    "utf8_overlong": _m_statement(_NAME_SQL, _m_str(b"t", b"\xc0\x80")),
    "utf8_overlong_3": _m_statement(_NAME_SQL, _m_str(b"u", b"\xe0\x80\xaf")),
    "utf8_cut_short": _m_statement(_NAME_SQL, _m_str(b"u", b"ab\xe2\x9c")),
    "utf8_beyond_10ffff": _m_statement(_NAME_SQL, _m_str(b"u", b"\xf4\x90\x80\x80")),
    "utf8_lone_continuation": _m_statement(_NAME_SQL, _m_str(b"u", b"a\x80b")),
    "utf8_surrogate": _m_statement(_NAME_SQL, _m_str(b"u", b"\xed\xa0\x80")),
    "ascii_z_latin1": _m_statement(_NAME_SQL, _m_str(b"z", b"caf\xe9")),
    "ascii_Z_latin1": _m_statement(_NAME_SQL, _m_str(b"Z", b"\xff")),
    "ascii_a_latin1": _m_statement(_NAME_SQL, _m_str(b"a", b"na\xefve")),
    "ascii_A_latin1": _m_statement(_NAME_SQL, _m_str(b"A", b"\x80")),
    "long_unnormalized": _m_statement(_NAME_SQL, b"l" + struct.pack("<i", 2) + struct.pack("<HH", 5, 0)),
    "long_unnormalized_negative": _m_statement(_NAME_SQL, b"l" + struct.pack("<i", -1) + struct.pack("<H", 0)),
    "list_count_beyond_its_bytes": b"[" + struct.pack("<i", 2**20),
    "list_count_beyond_its_changes": b"[" + struct.pack("<i", 3) + _m_statement(_NAME_SQL, _m_str(b"z", b"x"))[5:],
}


@NOT_COMPILED
@pytest.mark.parametrize("payload", list(_CRAFTED.values()), ids=list(_CRAFTED))
def test_crafted_frames_marshal_refuses_or_reads_otherwise_go_to_the_twin(tmp_path, payload) -> None:
    """Bytes marshal.loads fails on, or reads otherwise than the compiled reader would bind
    them (an ASCII-typed str is Latin-1): the compiled reader refuses the frame, and the
    outcome is the twin's."""
    assert C is not None
    core = C.Writer(_store(tmp_path / "refused.db"), "OFF")
    assert core.commit_frame(marshal.dumps(accounts("acct_1")))
    assert core.commit_frame(payload) is False
    core.close()
    ref, got = _outcomes(tmp_path, [marshal.dumps(accounts("acct_1")), payload])
    assert ref == got


def test_crafted_frames_the_twin_fails_or_reads_as_latin1() -> None:
    for name, payload in _CRAFTED.items():
        if name.startswith("ascii_"):
            assert marshal.loads(payload)[0][1][0] in ("café", "ÿ", "naïve", "\x80")
        elif name != "utf8_surrogate":
            with pytest.raises((ValueError, EOFError)):
                marshal.loads(payload)


@NOT_COMPILED
def test_a_list_count_beyond_the_frame_allocates_nothing(tmp_path) -> None:
    import tracemalloc

    assert C is not None
    core = C.Writer(_store(tmp_path / "w.db"), "OFF")
    tracemalloc.start()
    try:
        for n in (2**24, 2**31 - 1):
            assert core.commit_frame(b"[" + struct.pack("<i", n)) is False
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()
        core.close()


@NOT_COMPILED
def test_valid_utf8_at_its_edges_is_read(tmp_path) -> None:
    edges = ["\x7f", "\x80", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff", "a\u0800b\U0001f600c"]
    frames = [accounts("acct_1")] + [[("UPDATE accounts SET name = ? WHERE id = 'acct_1'", (s,))] for s in edges]
    expected, got = _store(tmp_path / "py.db"), _store(tmp_path / "c.db")
    w, ref = _Core(got, "OFF"), sqlite_writer.Writer(expected, "OFF")
    for frame in frames:
        w.commit_frame(marshal.dumps(frame))  # read by the compiled reader, not refused
        ref.commit_frame(marshal.dumps(frame))
    w.close()
    ref.close()
    assert dump(got) == dump(expected)


@pytest.mark.parametrize("twin", TWINS)
def test_flagged_singletons_are_not_numbered(tmp_path, twin) -> None:
    """marshal numbers no None, True or False (FLAG_REF or not): a back-reference after them
    refers to the str before, as marshal.loads reads it."""
    ref0 = b"r" + struct.pack("<i", 0)
    sql = "UPDATE accounts SET name = ? || ? || coalesce(?, 'n') || ? || ? WHERE id = 'acct_1'"
    params = [b"\xc6", b"\xd4", b"\xce", b"\xfa\x01x", ref0]  # F, T, None, str "x": each with FLAG_REF
    payload = _m_statement(sql, *params)
    assert marshal.loads(payload) == [(sql, (False, True, None, "x", "x"))]
    path = _store(tmp_path / "w.db")
    w = twin(path, "OFF")
    w.commit_frame(marshal.dumps(accounts("acct_1")))
    w.commit_frame(payload)
    w.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM accounts").fetchone() == ("01nxx",)
    conn.close()


@NOT_COMPILED
def test_a_path_with_surrogate_escapes(tmp_path) -> None:
    """A file name that is not UTF-8 (str with surrogate escapes, as os.fsdecode gives)."""
    assert C is not None
    path = os.fsdecode(os.fsencode(str(tmp_path)) + b"/st\xffre.db")
    core = C.Writer(path, "OFF")
    assert core.commit_frame(marshal.dumps([("CREATE TABLE t (x)", ()), ("INSERT INTO t VALUES (?)", (1,))]))
    core.close()
    assert os.path.exists(os.fsencode(path))
    conn = sqlite3.connect(os.fsencode(path))
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()


@NOT_COMPILED
@pytest.mark.parametrize("fields", ["(*r.RECEIPT_FIELDS, 'extra')", "tuple(f.replace('created', 'made') for f in r.RECEIPT_FIELDS)"])
def test_a_stale_build_falls_back_to_the_twin(fields) -> None:
    """Built for other receipt fields: the import fails with ImportError, which the selector
    takes as not built (an AssertionError or ValueError would kill the writer process)."""
    code = (
        f"import meshfast_core.records_py as r; r.RECEIPT_FIELDS = {fields}\n"
        "from meshfast_core import _ext\n"
        "try:\n    import meshfast_core._sqlite_writer\nexcept ImportError as exc:\n    print('ImportError', exc)\n"
        "assert _ext.compiled('_sqlite_writer') is None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MESHFAST_NO_EXTENSIONS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60, check=True, text=True)
    assert done.stdout.startswith("ImportError meshfast_core._sqlite_writer was built for 24 receipt fields with created, ")


@NOT_COMPILED
def test_ascii_strings_of_every_length_and_a_byte_beyond_ascii_anywhere(tmp_path) -> None:
    """The ASCII check reads 8 bytes at a time: each length, a byte beyond ASCII at each place."""
    assert C is not None
    core = C.Writer(_store(tmp_path / "w.db"), "OFF")
    assert core.commit_frame(marshal.dumps(accounts("acct_1")))
    for n in range(41):
        for code in (b"z", b"a"):
            assert core.commit_frame(_m_statement(_NAME_SQL, _m_str(code, b"x" * n))), (code, n)
            for at in range(n):
                data = bytearray(b"x" * n)
                data[at] = 0xE9
                assert core.commit_frame(_m_statement(_NAME_SQL, _m_str(code, bytes(data)))) is False, (code, n, at)
    core.close()


def test_the_writer_process_holds_the_store_lock_until_it_exits(tmp_path) -> None:
    """A server killed with -9 leaves its writer committing the frames already sent: the
    store stays locked until the writer is done, so no new server loads balances that
    those commits then change under it."""
    from meshfast.store.embedded import StoreLocked

    path = str(tmp_path / "meshfast.db")
    store = EmbeddedStore(path)
    writer = store._writer.proc
    store._lockfh.close()  # as if the server were gone: only the writer holds the lock now
    store._lockfh = None
    with pytest.raises(StoreLocked):
        EmbeddedStore(path)
    writer.stdin.close()  # what the writer sees when the server dies: the end of its frames
    assert writer.wait(10) == 0
    writer.stdout.close()
    EmbeddedStore(path).close_sync()  # the writer is done: the store opens
