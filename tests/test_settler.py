"""records.Settler: a call's settlement in one call (price, settle, the answer's headers or
a stream's usage line), the compiled one against its pure-Python twin, on the pipeline's
own Call (read through its slots by the compiled twin) and on other objects (by name)."""

from __future__ import annotations

import time
from types import SimpleNamespace as NS

import pytest

from meshfast.billing import CONTENT_CHARS_PER_TOKEN
from meshfast.pipeline import SSE_HEADERS, Call
from meshfast_core import records, records_py
from meshfast_core.sse import usage_with_costs
from tests.test_records import _changes, _State

C = records.RECORDS_C
NOT_COMPILED = pytest.mark.skipif(C is None, reason="meshfast_core._records is not compiled (or disabled)")
TWINS = [pytest.param(records_py, id="py"), pytest.param(C, id="c", marks=NOT_COMPILED)]
ENDPOINT = NS(
    input_nano_per_mtok=500_000_000, cached_input_nano_per_mtok=250_000_000, output_nano_per_mtok=1_500_000_000,
    provider=NS(name="sim"), model=NS(upstream="sim-1"), privacy="protected",
    headers=((b"x-mesh-provider", b"sim"), (b"x-mesh-model", b"sim-1")),
)  # fmt: skip
KEY = NS(id="key_1", project_id="proj_1")
RATE = [(b"x-ratelimit-remaining-requests", b"9")]
USAGE_CHUNK = b'{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":120,"total_tokens":150}}'


class SubCall(Call):
    """A Call of another type: the compiled Settler reads it by name."""

    __slots__ = ()


def _setup(mod, call_type=Call, balance=10**9, stream=False, wakes=None):
    account = mod.Account("acct_1", "team", balance)
    frame = mod.Frame()
    wake = None if wakes is None else (lambda: wakes.append(frame.count))
    settler = mod.Settler(Call, {"acct_1": account}, frame, wake, 150_000, 3, CONTENT_CHARS_PER_TOKEN)
    call = call_type("chat", "auto", stream)
    call.key, call.account, call.endpoint = KEY, account, ENDPOINT
    call.hold = mod.take_hold(account, "key_1", 500_000, (_State(), _State()))
    call.prompt_estimate, call.mode, call.privacy, call.rate_headers = 1000, "cheapest", "protected", RATE
    call.tried = ["dead/x", "sim/sim-1"]
    call.started = time.monotonic() - 0.5
    call.first_byte = call.started + 0.25
    return settler, call, account, frame


def _stable(row: tuple) -> tuple:
    """A receipt row without its id, creation time and latency (they differ call to call)."""
    return row[2:18] + row[20:]


@pytest.mark.parametrize("mod", TWINS)
@pytest.mark.parametrize("call_type", [Call, SubCall, NS], ids=["call", "subclass", "other"])
def test_settle_body_prices_settles_and_makes_the_headers(mod, call_type) -> None:
    wakes: list[int] = []
    settler, call, account, frame = _setup(mod, Call if call_type is NS else call_type, wakes=wakes)
    if call_type is NS:
        call = NS(**{name: getattr(call, name) for name in Call.__slots__})
    hold = call.hold
    headers = settler.settle_body(call, (30, 120, 10), 0, None, 1234)
    assert call.hold is None and hold.closed and wakes == [1]
    [change] = _changes(frame)
    row = change[1]
    assert change[0] == "settle" and change[2:] == ("acct_1", row[17])
    assert _stable(row) == (
        "acct_1", "proj_1", "key_1", "chat", "auto", "cheapest", "sim", "sim-1", "protected", 30, 120, 10, "upstream",
        192_500, 28_878, 221_378, 0, "ok", 0, "dead/x,sim/sim-1",
    )  # fmt: skip
    assert row[0].startswith("rcpt_") and abs(row[19] - 250.0) < 1e-6 and row[18] >= 500
    assert (account.balance_nano, account.held_nano) == (10**9 - 221_378, 0)
    assert headers == [
        *ENDPOINT.headers, (b"x-mesh-route-mode", b"cheapest"), (b"x-mesh-privacy", b"protected"),
        (b"x-mesh-receipt-id", row[0].encode()), (b"x-mesh-upstream-cost-usd", b"0.0001925"),
        (b"x-mesh-margin-usd", b"0.000028878"), (b"x-mesh-total-usd", b"0.000221378"), *RATE,
        (b"content-type", b"application/json"), (b"content-length", b"1234"),
    ]  # fmt: skip
    # a second settlement into the same frame does not wake the writer again; a given id is kept
    settler2, call2, _, _ = _setup(mod)
    settler2 = mod.Settler(Call, {"acct_1": account}, frame, settler.wake, 0, 0, 4)
    call2.account, call2.hold = account, mod.take_hold(account, "key_1", 1, (_State(), _State()))
    call2.receipt_id = "rcpt_given"
    headers = settler2.settle_body(call2, None, 7, b"application/json; charset=utf-8", 0)
    assert (b"x-mesh-receipt-id", b"rcpt_given") in headers and headers[-2:] == [
        (b"content-type", b"application/json; charset=utf-8"), (b"content-length", b"0"),
    ]  # fmt: skip
    assert wakes == [1, 1] and len(frame) == 1  # the first frame was taken: this is a new one's first
    call2.hold = mod.take_hold(account, "key_1", 1, (_State(), _State()))
    settler2.settle_body(call2, None, 7, None, 0)
    assert wakes == [1, 1] and len(frame) == 2  # not the first change of its frame: no wake


@pytest.mark.parametrize("mod", TWINS)
def test_settle_caps_and_agrees_with_the_receipt(mod) -> None:
    settler, call, account, frame = _setup(mod, balance=600_000)
    account.held_nano += 500_000  # another call's hold: 100,000 left to cover this one
    receipt = settler.settle(call, None, 4000, "ok")  # estimates: 1000 in, 4000 out
    assert receipt.tokens_source == "estimated" and receipt.capped and receipt.total_nano == 100_000
    assert _changes(frame) == [("settle", receipt.row(), "acct_1", 100_000)]
    headers = settler.body_headers(call, receipt, b"text/plain", 5)
    for length in (9, 10, 1_000_000_007, 2**63 - 1):
        assert settler.body_headers(call, receipt, None, length)[-1] == (b"content-length", str(length).encode())
    assert headers[4:8] == [
        (b"x-mesh-receipt-id", receipt.id.encode()), (b"x-mesh-upstream-cost-usd", b"0.0065"),
        (b"x-mesh-margin-usd", b"-0.0064"), (b"x-mesh-total-usd", b"0.0001"),
    ]  # fmt: skip


@NOT_COMPILED
@pytest.mark.parametrize("status", ["ok", "error", "cancelled"])
@pytest.mark.parametrize("counts", [None, (30, 120, 10), (2**70, 0, 0)])
def test_twins_agree(status, counts) -> None:
    out = []
    for mod in (records_py, C):
        settler, call, account, frame = _setup(mod)
        receipt = settler.settle(call, counts, 17, status)
        out.append((_stable(receipt.row()), account.balance_nano, account.held_nano, _stable(_changes(frame)[0][1])))
    assert out[0] == out[1]


@pytest.mark.parametrize("mod", TWINS)
def test_stream_head_names_the_receipt(mod) -> None:
    settler, call, _, _ = _setup(mod, stream=True)
    headers = settler.stream_head(call, SSE_HEADERS)
    assert call.receipt_id.startswith("rcpt_") and headers == [
        *ENDPOINT.headers, (b"x-mesh-route-mode", b"cheapest"), (b"x-mesh-privacy", b"protected"),
        (b"x-mesh-receipt-id", call.receipt_id.encode()), *RATE, *SSE_HEADERS,
    ]  # fmt: skip
    # a store that settles by its coroutines: headers only
    plain = mod.Settler(Call, None, None, None, 0, 0, 4)
    assert plain.stream_head(call, ())[-2][0] == b"x-mesh-receipt-id"
    with pytest.raises(RuntimeError):
        plain.settle(call, None, 0, "ok")


def _scanner(usage=None, content_length=0, usage_chunk=None):
    return NS(usage=usage, content_length=content_length, usage_chunk=usage_chunk)


@pytest.mark.parametrize("mod", TWINS)
def test_settle_stream(mod) -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 120, "total_tokens": 150}
    settler, call, account, frame = _setup(mod, stream=True)
    settler.stream_head(call, ())
    rid = call.receipt_id
    call.include_usage = True
    line = settler.settle_stream(call, _scanner(usage, 480, USAGE_CHUNK), "ok")
    [change] = _changes(frame)
    row = change[1]
    assert row[0] == rid and row[11:15] == (30, 120, 0, "upstream") and row[20:22] == (1, "ok")
    assert line == b"data: " + usage_with_costs(USAGE_CHUNK, rid, row[15], row[16], row[17]) + b"\n\n"
    assert settler.settle_stream(call, _scanner(usage, 480, USAGE_CHUNK), "ok") == b""  # settled: nothing more
    assert _changes(frame) == []
    # not asked for, or not ok: no line; the delivered content billed when no usage came
    for include, status, delivered, chunk, completion in (
        (False, "ok", 5, USAGE_CHUNK, 2), (True, "error", 4, USAGE_CHUNK, 1), (True, "cancelled", 0, None, 0),
        (True, "ok", 9, None, 3), (True, "error", 2**70, None, 2**70 // 4),
    ):  # fmt: skip
        settler, call, account, frame = _setup(mod, stream=True)
        call.include_usage = include
        assert settler.settle_stream(call, _scanner(None, delivered, chunk), status) == b""
        row = _changes(frame)[0][1]
        assert (row[12], row[14], row[21]) == (completion, "estimated", status) and call.hold is None
    # an upstream failure with no usage and nothing delivered releases the hold: no charge
    settler, call, account, frame = _setup(mod, stream=True)
    hold = call.hold
    assert settler.settle_stream(call, _scanner(), "error") == b""
    assert hold.closed and call.hold is None and (account.balance_nano, account.held_nano) == (10**9, 0)
    assert len(frame) == 0


@pytest.mark.parametrize("mod", TWINS)
def test_bad_calls_raise_as_the_twin(mod) -> None:
    settler, call, account, frame = _setup(mod)
    call.hold = None
    with pytest.raises(AssertionError):
        settler.settle_body(call, None, 0, None, 0)
    settler, call, account, frame = _setup(mod)
    del call.kind
    with pytest.raises(AttributeError):
        settler.settle(call, None, 0, "ok")
    settler, call, account, frame = _setup(mod)
    call.account = None
    with pytest.raises((TypeError, AttributeError)):
        settler.settle(call, None, 0, "ok")
    settler, call, account, frame = _setup(mod)
    call.hold.account_id = "acct_gone"
    with pytest.raises(KeyError):
        settler.settle(call, None, 0, "ok")
    assert call.hold is None and len(frame) == 0  # priced, taken off the call, then refused by the store
    settler, call, account, frame = _setup(mod)
    call.mode = None
    with pytest.raises(AttributeError):
        settler.body_headers(call, NS(id="r", upstream_cost_nano=1, margin_nano=1, total_nano=2), None, 0)
    with pytest.raises(ValueError):
        mod.Settler(Call, None, None, None, 0, 0, 0)


@NOT_COMPILED
def test_the_compiled_settler_reads_the_call_by_its_slots() -> None:
    """A Call whose type overrides attribute access is read by name (through it)."""

    class Loud(Call):
        __slots__ = ()

        def __getattribute__(self, name):
            if name == "mode":
                return "loud"
            return object.__getattribute__(self, name)

    settler, call, _, _ = _setup(C, Loud)
    settler = C.Settler(Loud, settler.accounts, settler.frame, None, 0, 0, 4)
    assert (b"x-mesh-route-mode", b"loud") in settler.stream_head(call, ())
