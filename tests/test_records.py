"""The hot path's records (meshfast_core.records): the compiled Hold and Receipt against
their pure-Python twins (dataclasses)."""

from __future__ import annotations

import dataclasses
import itertools
import marshal
import os
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast_core import records, records_py
from meshfast_core.exceptions import LimitExceeded

C = records.RECORDS_C
NOT_COMPILED = pytest.mark.skipif(C is None, reason="meshfast_core._records is not compiled (or disabled)")
TWINS = [
    pytest.param(records_py, id="py"),
    pytest.param(C, id="c", marks=NOT_COMPILED),
]
VALUES = (
    "rcpt_1", 1764180000.25, "acct_1", "proj_1", "key_1", "chat", "auto", "cheapest", "sim", "sim-1",
    "protected", 30, 120, 10, "upstream", 76_500, 11_475, 87_975, 0.61, 0.5, True, "ok", False, "sim/sim-1",
)  # fmt: skip


def test_records_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert records.COMPILED, "meshfast_core._records did not load: build it with setup.py build_ext"
    assert records.Receipt is C.Receipt and records.Hold is C.Hold


def test_receipt_fields_are_the_dataclass_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(records_py.Receipt)) == records.RECEIPT_FIELDS


@pytest.mark.parametrize("mod", TWINS)
def test_receipt_row_dict_and_public(mod) -> None:
    r = mod.Receipt(*VALUES)
    row = r.row()
    assert row == (*VALUES[:20], 1, "ok", 0, "sim/sim-1")  # stream and capped as 0 / 1
    assert type(row[20]) is int and type(row[22]) is int
    assert r.as_dict() == dict(zip(records.RECEIPT_FIELDS, VALUES, strict=True))
    pub = r.public()
    assert (pub["upstream_cost_usd"], pub["margin_usd"], pub["total_usd"]) == ("0.0000765", "0.000011475", "0.000087975")
    assert pub["object"] == "receipt" and "total_nano" not in pub and pub["created"] == 1764180000.25
    assert mod.Receipt(**r.as_dict()) == r  # a shared store's copy reads back whole
    assert mod.Receipt(*VALUES[:22]).row()[22:] == (0, "")  # capped and attempts default


@pytest.mark.parametrize("mod", TWINS)
def test_receipt_fields_change_in_place(mod) -> None:
    r = mod.Receipt(*VALUES)
    r.total_nano, r.margin_nano, r.capped = 50_000, -26_500, True  # settlement caps a total
    assert r.row()[16:18] == (-26_500, 50_000) and r.row()[22] == 1 and r.capped is True
    assert r != mod.Receipt(*VALUES)
    r.ttft_ms = None
    assert r.public()["ttft_ms"] is None


@NOT_COMPILED
def test_twins_agree() -> None:
    py, c = records_py.Receipt(*VALUES), C.Receipt(*VALUES)
    assert (c.row(), c.as_dict(), c.public(), repr(c)) == (py.row(), py.as_dict(), py.public(), repr(py))
    assert c != py  # different types never compare equal (as two dataclasses would not)
    hp, hc = records_py.Hold("h", "acct_1", "key_1", 10, ("a", "b")), C.Hold("h", "acct_1", "key_1", 10, ("a", "b"))
    assert repr(hc) == repr(hp) and not hc.closed
    hc.closed = True
    assert hc.closed is True and hc == C.Hold("h", "acct_1", "key_1", 10, ("a", "b"), True)
    with pytest.raises(TypeError):
        C.Receipt(*VALUES[:10])  # missing fields, as the dataclass refuses them


@pytest.mark.parametrize("mod", TWINS)
def test_new_id_format(mod) -> None:
    a, b = mod.new_id("rcpt_"), mod.new_id("rcpt_")
    assert a.startswith("rcpt_") and len(a) == len(b) == 5 + 16 + 13 and a[5:21] == b[5:21]
    assert int(b[21:]) == int(a[21:]) + 1 and a < b  # one width, in the order they were made
    assert mod.new_id("x" * 60).startswith("x" * 60)  # any prefix length


@NOT_COMPILED
def test_new_id_twins_agree() -> None:
    process = os.urandom(8).hex()  # a fresh sequence: ids stay unique in this process
    for mod in (records_py, C):
        mod.reseed_ids(process, 10**12 + 7)
    assert [C.new_id(p) for p in ("rcpt_", "acct_", "x" * 60)] == [records_py.new_id(p) for p in ("rcpt_", "acct_", "x" * 60)]
    with pytest.raises(ValueError):
        C.reseed_ids("abc", 1)
    for mod in (records_py, C):  # leave both on sequences of their own
        mod.reseed_ids(os.urandom(8).hex(), 10**12)


@pytest.mark.parametrize("mod", TWINS)
def test_priced_receipt(mod) -> None:
    from types import SimpleNamespace as NS

    endpoint = NS(
        input_nano_per_mtok=500_000_000, cached_input_nano_per_mtok=250_000_000, output_nano_per_mtok=1_500_000_000,
        provider=NS(name="sim"), model=NS(upstream="sim-1"), privacy="protected",
    )  # fmt: skip
    key = NS(id="key_1", project_id="proj_1")
    plain, own = mod.Account("acct_1", "plain"), mod.Account("acct_2", "own", margin_ppm=0, fee_nano=7)
    t0 = time.monotonic()
    args = ("rcpt_9", plain, key, endpoint, "chat", "auto", None, 1000, 2000, t0, t0 + 0.25, True, "cancelled", "cheapest", "sim/sim-1")
    r = mod.priced_receipt(*args, 50_000, 3)  # no upstream usage: the estimates, marked so
    assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.tokens_source) == (1000, 2000, 0, "estimated")
    assert (r.upstream_cost_nano, r.margin_nano) == (3_500_000, 175_003)  # 500,000 + 3,000,000; 5 %, + 3
    assert r.total_nano == 3_675_003 and r.capped is False and r.stream is True
    assert (r.id, r.account_id, r.project_id, r.key_id, r.provider, r.upstream_model, r.privacy) == (
        "rcpt_9", "acct_1", "proj_1", "key_1", "sim", "sim-1", "protected",
    )
    assert (r.route_mode, r.status, r.attempts, r.model, r.kind) == ("cheapest", "cancelled", "sim/sim-1", "auto", "chat")
    assert abs(r.ttft_ms - 250.0) < 1e-6 and r.latency_ms >= 0 and abs(r.created - time.time()) < 5
    o = mod.priced_receipt("rcpt_8", own, key, endpoint, "chat", "m", (100, 10, 40), 0, 0, t0, 0.0, False, "ok", "model", "", 50_000, 3)
    assert (o.tokens_source, o.cached_tokens, o.upstream_cost_nano, o.margin_nano, o.ttft_ms) == ("upstream", 40, 55_000, 7, None)


def _changes(frame) -> list:
    """The changes a frame holds, read back as the writer process reads them (``take``
    empties it)."""
    data = frame.take()
    (size,) = struct.unpack(">I", data[:4])
    assert size == len(data) - 4 and data[4] & 0x7F == ord("[")  # flagged (FLAG_REF) by marshal.dumps
    assert struct.unpack("<i", data[5:9])[0] == len(marshal.loads(data[4:]))
    return marshal.loads(data[4:])


def _typed(value):
    """A value with the type of everything in it, and floats by repr (-0.0 is not 0.0)."""
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_typed(v) for v in value))
    return (type(value).__name__, repr(value) if type(value) is float else value)


class _State:
    """What settle_hold reads of a key's or project's limit state: its spend by bucket."""

    def __init__(self) -> None:
        self.spend: dict[str, int] = {}


class _Admission:
    def __init__(self, states: tuple) -> None:
        self.states = states


@pytest.mark.parametrize("mod", TWINS)
def test_account_record(mod) -> None:
    a = mod.Account("acct_1", "team", 5_000_000_000, margin_ppm=150_000)
    assert (a.balance_nano, a.held_nano, a.fee_nano, a.created, a.spend) == (5_000_000_000, 0, None, 0.0, {})
    assert a == mod.Account("acct_1", "team", 5_000_000_000, 0, 150_000) and a != mod.Account("acct_1", "team")
    month = records.month_of(time.time())
    a.held_nano, a.spend[month] = 1_000_000_000, 250_000_000
    pub = a.public()
    assert (pub["balance_usd"], pub["held_usd"], pub["available_usd"]) == ("5", "1", "4")
    assert (pub["month"], pub["month_spend_usd"], pub["margin_pct"], pub["fee_usd"]) == (month, "0.25", "15", None)
    assert "Account(id='acct_1'" in repr(a)


@pytest.mark.parametrize("mod", TWINS)
def test_take_hold_reserves_only_what_is_available(mod) -> None:
    a = mod.Account("acct_1", "team", 1_000)
    states = (_State(), _State())
    h = mod.take_hold(a, "key_1", 600, states)
    assert (h.id, h.account_id, h.key_id, h.amount_nano, h.admission, h.closed) == ("", "acct_1", "key_1", 600, states, False)
    assert a.held_nano == 600
    assert mod.take_hold(a, "key_1", 401, states) is None and a.held_nano == 600  # 400 left
    assert mod.take_hold(a, "key_1", 400, states) is not None and a.held_nano == 1_000


@pytest.mark.parametrize("mod", TWINS)
def test_settle_hold_debits_releases_and_counts_spend(mod) -> None:
    a = mod.Account("acct_1", "team", 1_000_000)
    key_state, project_state = _State(), _State()
    h = mod.take_hold(a, "key_1", 500_000, (key_state, project_state))
    r = mod.Receipt(*VALUES)  # total 87,975
    frame = mod.Frame()
    assert mod.settle_hold(a, h, r, frame) is None
    assert _changes(frame) == [("settle", r.row(), "acct_1", 87_975)]
    assert h.closed and (a.balance_nano, a.held_nano) == (1_000_000 - 87_975, 0)
    month, day = records.spend_buckets(r.created)
    assert a.spend == {month: 87_975}  # an account's spend is by month only
    assert key_state.spend == project_state.spend == {month: 87_975, day: 87_975}
    # a second settlement of the same hold debits again but releases nothing twice
    mod.settle_hold(a, h, mod.Receipt(*VALUES), frame)
    assert (a.balance_nano, a.held_nano) == (1_000_000 - 2 * 87_975, 0)
    assert key_state.spend[day] == a.spend[month] == 2 * 87_975


@pytest.mark.parametrize("mod", TWINS)
def test_settle_hold_caps_at_the_balance(mod) -> None:
    a = mod.Account("acct_1", "team", 50_000)
    states = (_State(), _State())
    h = mod.take_hold(a, "key_1", 50_000, states)
    r = mod.Receipt(*VALUES)  # upstream 76,500 + margin 11,475: more than the balance
    frame = mod.Frame()
    mod.settle_hold(a, h, r, frame)
    assert _changes(frame)[0][3] == 50_000 and _changes(frame) == []  # taken
    assert (r.total_nano, r.margin_nano, r.capped) == (50_000, 50_000 - 76_500, True)
    assert (a.balance_nano, a.held_nano) == (0, 0)


@pytest.mark.parametrize("mod", TWINS)
def test_settle_hold_finishes_an_admission(mod) -> None:
    from meshfast_core import limits

    a = mod.Account("acct_1", "team", 10**9)
    key_state = limits.Limiter()
    key_state.configure(None, None, None, None, 10**9, 60.0)  # a monthly ceiling: admission counts holds
    project_state = limits.Limiter()
    month, day = records.spend_buckets(time.time())
    admission = limits.admit((key_state, project_state), time.monotonic(), 150, 400_000, month, day)
    assert key_state.held_nano == 400_000
    h = mod.take_hold(a, "key_1", 400_000, admission)
    r = mod.Receipt(*VALUES)
    r.created = time.time()
    mod.settle_hold(a, h, r, mod.Frame())
    assert key_state.held_nano == 0 and key_state.spend == {month: 87_975, day: 87_975}
    assert project_state.spend == {month: 87_975, day: 87_975}


@pytest.mark.parametrize("mod", TWINS)
def test_release_hold_gives_back_once(mod) -> None:
    from meshfast_core import limits

    a = mod.Account("acct_1", "team", 10**9)
    key_state, project_state = limits.Limiter(), limits.Limiter()
    key_state.configure(None, None, None, None, 10**9, 60.0)  # a monthly ceiling: admission counts holds
    month, day = records.spend_buckets(time.time())
    h = mod.take_hold(a, "key_1", 400_000, limits.admit((key_state, project_state), time.monotonic(), 150, 400_000, month, day))
    plain = mod.take_hold(a, "key_1", 100_000, (_State(), _State()))
    assert a.held_nano == 500_000 and key_state.held_nano == 400_000
    mod.release_hold(a, h, None)
    mod.release_hold(a, h, None)  # once only
    mod.release_hold(a, plain, None)
    assert h.closed and plain.closed and a.held_nano == 0 and key_state.held_nano == 0
    assert a.balance_nano == 10**9 and key_state.spend == {}  # nothing debited or spent


@pytest.mark.parametrize("mod", TWINS)
def test_a_missing_record_is_an_error_not_a_crash(mod) -> None:
    """None where a record belongs (a refused take_hold's result passed on) raises; the
    compiled functions would otherwise read the fields of None."""
    a = mod.Account("acct_1", "team", 10**9)
    r = mod.Receipt(*VALUES)
    h = mod.take_hold(a, "key_1", 1, (_State(), _State()))
    for call in (
        lambda: mod.release_hold(a, None, None),
        lambda: mod.release_hold(None, h, None),
        lambda: mod.settle_hold(a, None, r, mod.Frame()),
        lambda: mod.settle_hold(a, h, None, mod.Frame()),
        lambda: mod.take_hold(None, "key_1", 1, None),
    ):
        with pytest.raises((TypeError, AttributeError)):
            call()
    assert a.held_nano == 1 and a.balance_nano == 10**9


def test_empty_frames_alike() -> None:
    frames = [records_py.Frame(), *([C.Frame()] if C is not None else [])]
    for f in frames:
        assert (f.count, len(f), _changes(f)) == (0, 0, [])


_STR = st.text(max_size=300) | st.text(st.characters(max_codepoint=127), min_size=250, max_size=260) | st.just("a\ud800")
_INT = st.integers(-(2**70), 2**70) | st.sampled_from([2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63 - 1, -(2**63), 2**63, 0])
_ANY = st.none() | st.booleans() | _INT | st.floats() | _STR | st.binary(max_size=6) | st.tuples(_INT, _STR)


@NOT_COMPILED
@settings(max_examples=300, deadline=None)
@given(
    fields=st.lists(_ANY, min_size=24, max_size=24), flags=st.tuples(st.booleans(), st.booleans()), account_id=_ANY,
    total=_ANY, statements=st.lists(st.tuples(_STR, st.lists(_ANY, max_size=3).map(tuple)), max_size=3),
)  # fmt: skip
def test_settle_changes_in_frames_read_back_alike(fields, flags, account_id, total, statements) -> None:
    """The compiled frame writes each settle change field by field; the twin marshals the
    change's tuple. Both read back (marshal.loads, what the writer process's twin runs) as
    the same changes, of the same types, in the order they were put."""
    fields[20], fields[22] = flags
    got = []
    for mod in (records_py, C):
        frame = mod.Frame()
        r = mod.Receipt(*fields)
        for sql, params in statements:
            frame.put((sql, params))
        frame.settle(r, account_id, total)
        frame.put(("UPDATE t SET a = ?", (1,)))
        frame.settle(r, account_id, total)
        assert frame.count == len(statements) + 3
        got.append(_changes(frame))
    change = ("settle", records_py.Receipt(*fields).row(), account_id, total)
    expected = [*statements, change, ("UPDATE t SET a = ?", (1,)), change]
    assert _typed(got[0]) == _typed(got[1]) == _typed(expected)


@NOT_COMPILED
def test_a_change_that_cannot_be_marshalled_leaves_the_frame_as_it_was() -> None:
    """The compiled frame refuses it when it is put (the twin's marshal.dumps at ``take``
    refuses the whole frame, as the store's list of changes did)."""
    for mod in (C,):
        frame = mod.Frame()
        frame.put(("UPDATE t SET a = ?", ("é",)))
        first = mod.Receipt(*VALUES)
        frame.settle(first, "acct_1", 7)
        r = mod.Receipt(*VALUES)
        r.project_id, r.model = "proj_" + "2", "m" + "2"  # new strings, flagged before it fails
        r.attempts = object()  # marshal refuses it
        with pytest.raises(ValueError):
            frame.settle(r, "acct_1", 5)
        with pytest.raises(ValueError):
            frame.put(("UPDATE t SET a = ?", (object(),)))
        r.attempts = "x" * 5000  # the buffer grows past its first size
        frame.settle(r, "acct_1", 5)
        frame.settle(first, "acct_1", 7)
        expected = [("UPDATE t SET a = ?", ("é",)), ("settle", first.row(), "acct_1", 7), ("settle", r.row(), "acct_1", 5)]
        assert _changes(frame) == [*expected, expected[1]]
        frame.settle(r, "acct_1", 5)  # a taken frame refers back to nothing before it
        assert _changes(frame) == [expected[2]]


@NOT_COMPILED
def test_the_compiled_frame_refers_back_to_strings_it_has_written() -> None:
    """Shared strings (ids, model, provider...) are written once per frame and referred back
    to, as marshal.dumps does: a smaller frame, and fewer strings for the writer to read."""
    frame, twin = C.Frame(), records_py.Frame()
    receipts = [C.Receipt(*VALUES) for _ in range(50)]
    for n, r in enumerate(receipts):
        r.id = f"rcpt_{n}"
        frame.settle(r, r.account_id, 1)
        twin.settle(records_py.Receipt(*r.row()), r.account_id, 1)
    data, twin_data = frame.take(), twin.take()
    assert marshal.loads(data[4:]) == marshal.loads(twin_data[4:])
    assert len(data) < len(marshal.dumps(marshal.loads(twin_data[4:]), 2)) * 0.7
    assert data.count(b"protected") == 1


# -- spend: running totals in C fields, the spend dicts as their readers see them ----------
# (the compiled records keep the current month's and day's totals as C fields of Account
# and Limiter and fold them into ``spend`` when the bucket changes or it is read)
def _limits_of(mod):
    """The limits module whose Limiter goes with ``mod``'s records."""
    import sys

    from meshfast_core import limits, limits_py

    return limits_py if mod is records_py else sys.modules[limits.LimiterC.__module__]


JAN31 = 1738324800.5  # 2025-01-31 12:00:00.5 UTC
DAY = 86400


def _settle_at(mod, account, states, created: float, total) -> None:
    h = mod.take_hold(account, "key_1", 0, states)
    r = mod.Receipt(*VALUES)
    r.created, r.upstream_cost_nano, r.margin_nano, r.total_nano = created, total, 0, total
    mod.settle_hold(account, h, r, mod.Frame())


def _used(lim, state, month: str, day: str) -> tuple:
    """What admit and monthly_left count of ``state``'s spend (no read of ``.spend``)."""
    out = []
    for daily, monthly in ((-(10**40), None), (None, -(10**40))):
        state.configure(None, None, None, daily, monthly, 60.0)
        with pytest.raises(LimitExceeded) as exc:
            lim.admit((state,), T_MONO, 0, 1, month, day)
        out.append(exc.value.used)
    state.configure(None, None, None, None, 10**40, 60.0)
    out.append(10**40 - state.monthly_left(month))
    state.configure(None, None, None, None, None, 60.0)
    return tuple(out)


T_MONO = 1_000.0


@pytest.mark.parametrize("mod", TWINS)
def test_spend_rolls_over_a_day_and_a_month(mod) -> None:
    lim = _limits_of(mod)
    a = mod.Account("acct_1", "team", 10**12)
    key, project = lim.Limiter(), lim.Limiter()
    steps = [(JAN31, 100), (JAN31 + 60, 50), (JAN31 + DAY, 7), (JAN31 + DAY + 1, 3), (JAN31 + 2 * DAY, 1_000)]
    expected = [
        (("2025-01", "2025-01-31"), (100, 100, 100)),
        (("2025-01", "2025-01-31"), (150, 150, 150)),
        (("2025-02", "2025-02-01"), (7, 7, 7)),  # a new month and day
        (("2025-02", "2025-02-01"), (10, 10, 10)),
        (("2025-02", "2025-02-02"), (1_000, 1_010, 1_010)),  # a new day, same month
    ]
    for (created, total), ((month, day), used) in zip(steps, expected, strict=True):
        _settle_at(mod, a, (key, project), created, total)
        assert _used(lim, key, month, day) == _used(lim, project, month, day) == used
    assert _used(lim, key, "2025-01", "2025-01-31") == (150, 150, 150)  # a finished month and day
    assert a.spend == {"2025-01": 150, "2025-02": 1_010}
    assert key.spend == project.spend == {
        "2025-01": 150, "2025-01-31": 150, "2025-02": 1_010, "2025-02-01": 10, "2025-02-02": 1_000,
    }  # fmt: skip
    assert all(type(v) is int for v in [*a.spend.values(), *key.spend.values()])
    # a settle back in a finished day (a receipt made before midnight, settled after)
    _settle_at(mod, a, (key, project), JAN31 + DAY + 5, 2)
    assert _used(lim, key, "2025-02", "2025-02-01") == (12, 1_012, 1_012)
    assert key.spend["2025-02-02"] == 1_000 and key.spend["2025-02-01"] == 12 and a.spend["2025-02"] == 1_012


@pytest.mark.parametrize("mod", TWINS)
def test_spend_beyond_int64(mod) -> None:
    """Totals whose sum leaves int64 (and one beyond it) stay exact Python ints."""
    lim = _limits_of(mod)
    a = mod.Account("acct_1", "team", 10**30)
    key, project = lim.Limiter(), lim.Limiter()
    totals = [2**62, 2**62, 2**63 - 1, 5, 2**70, 1, -(2**63), 0]
    for n, total in enumerate(totals):
        _settle_at(mod, a, (key, project), JAN31, total)
        spent = sum(totals[: n + 1])
        assert _used(lim, key, "2025-01", "2025-01-31") == (spent, spent, spent)
    assert a.spend == {"2025-01": sum(totals)} and a.balance_nano == 10**30 - sum(totals)
    assert key.spend == {"2025-01": sum(totals), "2025-01-31": sum(totals)}


@pytest.mark.parametrize("mod", TWINS)
def test_spend_readers_see_every_settle(mod) -> None:
    """The account's public view, the spend dicts (read, changed, replaced) and the
    ceilings all count the settles so far."""
    lim = _limits_of(mod)
    a = mod.Account("acct_1", "team", 10**12)
    key, project = lim.Limiter(), lim.Limiter()
    now = time.time()
    month, day = records.spend_buckets(now)
    _settle_at(mod, a, (key, project), now, 0)
    assert a.spend == {month: 0} and key.spend == {month: 0, day: 0}  # a bucket even for 0
    for _ in range(2):
        _settle_at(mod, a, (key, project), now, 87_975)
    assert a.public()["month_spend_usd"] == "0.00017595"
    key.configure(None, None, None, None, 1_000_000, 60.0)
    assert key.monthly_left(month) == 1_000_000 - 2 * 87_975
    key.spend[day] = 5  # set by hand (tests, start-up): the settles after it add to it
    _settle_at(mod, a, (key, project), now, 10)
    assert key.spend == {month: 2 * 87_975 + 10, day: 15} and key.monthly_left(month) == 1_000_000 - 2 * 87_975 - 10
    key.spend = {}  # replaced: nothing pending survives
    a.spend = {month: 1}
    assert key.spend == {} and key.monthly_left(month) == 1_000_000 and a.public()["month_spend_usd"] == "0.000000001"
    _settle_at(mod, a, (key, project), now, 4)
    assert key.spend == {month: 4, day: 4} and a.spend == {month: 5}
    assert project.spend == {month: 2 * 87_975 + 14, day: 2 * 87_975 + 14}
    assert "2025" in repr(a) or month in repr(a)
    assert a == mod.Account("acct_1", "team", a.balance_nano, 0, None, None, 0.0, {month: 5})


@pytest.mark.parametrize("mod", TWINS)
def test_spend_of_subclassed_and_other_states(mod) -> None:
    """A Limiter subclass (the stores' LimitState) counts in C; any other state with a
    ``spend`` dict by its dict."""
    lim = _limits_of(mod)

    class Sub(lim.Limiter):
        __slots__ = ("owner",)

    a = mod.Account("acct_1", "team", 10**12)
    key, project = Sub(), _State()
    for _ in range(3):
        _settle_at(mod, a, (key, project), JAN31, 11)
    assert _used(lim, key, "2025-01", "2025-01-31") == (33, 33, 33)
    assert key.spend == project.spend == {"2025-01": 33, "2025-01-31": 33}


SPEND_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["settle", "settle", "settle", "used", "read", "set"]),
        st.integers(0, 70),  # days after JAN31
        st.sampled_from([0, 1, 87_975, 2**31, 2**62, 2**63 - 1, 2**64, -(2**62)]),
    ),
    max_size=40,
)


def _spend_trace(mod, steps: list) -> list:
    lim = _limits_of(mod)
    a = mod.Account("acct_1", "team", 10**40)
    key, project = lim.Limiter(), lim.Limiter()
    out: list = []
    for op, days, total in steps:
        ts = JAN31 + days * DAY
        month, day = records.month_of(ts), records.day_of(ts)
        if op == "settle":
            _settle_at(mod, a, (key, project), ts, total)
        elif op == "used":
            out.append((_used(lim, key, month, day), _used(lim, project, month, day)))
        elif op == "read":
            out.append((dict(a.spend), dict(key.spend), dict(project.spend)))
        else:
            key.spend[day] = total
    out.append((a.spend, key.spend, project.spend, a.balance_nano))
    return out


@NOT_COMPILED
@settings(max_examples=200, deadline=None)
@given(steps=SPEND_STEPS)
def test_spend_differential_py_c(steps: list) -> None:
    assert _spend_trace(records_py, steps) == _spend_trace(C, steps)


@NOT_COMPILED
@pytest.mark.parametrize("start", [0, 8, 998, 10**12 - 3, 10**19 - 2, 2**64 - 3])
def test_new_id_counts_up_as_the_twin_does(start) -> None:
    """The compiled ids count their decimal digits up in place: across a carry and a new
    digit they are the twin's, for any prefix (ASCII or not, short or long)."""
    process = os.urandom(8).hex()
    prefixes = ("rcpt_", "", "é_", "x" * 48, "x" * 49, "hold_") * 3
    got = []
    for mod in (records_py, C):
        mod.reseed_ids(process, start)
        got.append([mod.new_id(p) for p in prefixes])
    assert got[0] == got[1]
    for mod in (records_py, C):  # leave both on sequences of their own
        mod.reseed_ids(os.urandom(8).hex(), 10**12)


_EDGE = [0, 1, 500_000_000, 2**63 - 1, 2**63, 2**70, -5, True, 1.5e6]


def _receipt_endpoint(input_price, cached_price, output_price):
    from meshfast.config import ModelConfig
    from meshfast.providers.base import Endpoint, Provider

    model = ModelConfig("m", "m-up", max_output_tokens=None)  # no cap: the receipt does not read it
    return Endpoint(Provider("prov", "standard"), model, input_price, output_price, cached_price, privacy="protected")


def _receipt_outcome(mod, endpoint, counts, account):
    key = dataclasses.make_dataclass("K", ["id", "project_id"])("key_1", "proj_1")
    try:
        r = mod.priced_receipt(
            "rcpt_1", account, key, endpoint, "chat", "m", counts, 1000, 2000, 1.0, 2.0, False, "ok", "model", "", 50_000, 3,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - compared, not handled
        return type(exc)
    return tuple(v for f, v in zip(records.RECEIPT_FIELDS, r.row(), strict=True) if f not in ("created", "latency_ms"))


@NOT_COMPILED
def test_priced_receipt_on_endpoints_agrees_with_the_twin() -> None:
    """A real endpoint (read through its tariff) with int64-edge, huge, negative and non-int
    prices: the compiled receipt is the twin's field for field (or raises what it raises)."""
    accounts = [(C.Account("a", "n"), records_py.Account("a", "n"))]
    accounts.append((C.Account("a", "n", margin_ppm=2**63 - 1, fee_nano=2**63 - 1), records_py.Account("a", "n", margin_ppm=2**63 - 1, fee_nano=2**63 - 1)))
    for prices in itertools.product(_EDGE, [0, 2**63 - 1, 2**70, -1, 1.5], _EDGE):
        ep = _receipt_endpoint(*prices)
        for counts in (None, (100, 10, 40), (2**40, 2**40, 0), (10, 5, 20), (2**64, 1, 0)):
            for c_acct, py_acct in accounts:
                want = _receipt_outcome(records_py, ep, counts, py_acct)
                assert _receipt_outcome(C, ep, counts, c_acct) == want, (prices, counts)


@pytest.mark.parametrize("mod", TWINS)
def test_a_changed_endpoint_is_billed_at_its_new_values(mod) -> None:
    from meshfast.config import ModelConfig
    from meshfast.providers.base import Provider

    ep = _receipt_endpoint(1_000_000, 1_000_000, 1_000_000)
    acct = mod.Account("a", "n", margin_ppm=0, fee_nano=0)
    ep.input_nano_per_mtok, ep.cached_input_nano_per_mtok, ep.output_nano_per_mtok = 2_000_000, 1_000_000, 3_000_000
    ep.provider, ep.model, ep.privacy = Provider("other", "standard"), ModelConfig("m", "m-up-2"), "confidential"
    r = _receipt_outcome(mod, ep, (100, 10, 40), acct)
    f = dict(zip([f for f in records.RECEIPT_FIELDS if f not in ("created", "latency_ms")], r, strict=True))
    assert (f["upstream_cost_nano"], f["provider"], f["upstream_model"], f["privacy"]) == (60 * 2 + 40 + 10 * 3, "other", "m-up-2", "confidential")
