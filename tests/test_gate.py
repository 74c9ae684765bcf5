"""A call's admission on the embedded store in two calls (meshfast_core.records.Gate):
``enter`` (key check, account, privacy class) and ``hold`` (hold amount and hold), the
compiled one against its Python twin, and the embedded store's entries (filled on a key's
first use, dropped by every control-plane change)."""

from __future__ import annotations

import asyncio
import itertools
import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfast import errors
from meshfast.config import PRIVACY_CLASSES, StoreConfig
from meshfast.limits import LimitState, insufficient_balance, privacy_table, served_privacy
from meshfast.store import open_store
from meshfast.store.base import KeyRecord, Limits, key_digest
from meshfast_core import records, records_py

C = records.RECORDS_C
NOT_COMPILED = pytest.mark.skipif(C is None, reason="meshfast_core._records is not compiled (or disabled)")
TWINS = [
    pytest.param(records_py, id="py"),
    pytest.param(C, id="c", marks=NOT_COMPILED),
]
SECRET = "mesh_live_" + "A" * 40
AUTH = b"Bearer " + SECRET.encode()
MISSING = object()


def _unavailable() -> errors.StoreUnavailable:
    return errors.StoreUnavailable("down")


class Slow:
    """The store's side of a gate, recorded: the limited path's hold and rate headers."""

    def __init__(self) -> None:
        self.holds: list[tuple] = []

    def hold(self, key: Any, amount: int, tokens: int) -> str:
        self.holds.append((key, amount, tokens))
        return "limited-hold"

    def rate_headers(self, hold: Any) -> list[tuple[bytes, bytes]]:
        return [(b"x-ratelimit-limit-requests", hold.encode())]


def endpoint(ip: Any = 1_000_000, op: Any = 2_000_000, cap: Any = 4096) -> SimpleNamespace:
    return SimpleNamespace(input_nano_per_mtok=ip, output_nano_per_mtok=op, model=SimpleNamespace(max_output_tokens=cap))


def gate_for(mod: Any, key_limits: Limits | None = None, project_limits: Limits | None = None, *, balance: Any = 10**9,
             margin_ppm: Any = None, fee_nano: Any = None, plain: bool | None = None) -> tuple[Any, Any, Slow]:
    """A gate of ``mod`` knowing one key (``SECRET``), built as the embedded store builds it."""
    key_limits, project_limits = key_limits or Limits(), project_limits or Limits()
    account = mod.Account("acct_1", "a", balance, 0, margin_ppm, fee_nano)
    key = KeyRecord("key_1", "proj_1", "acct_1", key_digest(SECRET), SECRET[:14], limits=key_limits)
    key_state = LimitState(key.label, key_limits, 60.0)
    project_state = LimitState("project 'p'", project_limits, 60.0)
    default, served = privacy_table(key_limits, project_limits)
    if plain is None:
        plain = key_state.plain and project_state.plain
    entry = mod.KeyEntry(key, account, key_state, project_state, plain, default, served)
    slow = Slow()
    gate = mod.Gate({key.hash: entry}, slow.hold, slow.rate_headers, insufficient_balance, _unavailable)
    return gate, entry, slow


def outcome(fn: Any, *args: Any) -> Any:
    """What a call returns, or the type and text of what it raises."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - compared between twins
        return type(exc), getattr(exc, "message", str(exc))


def test_gate_compiled_loaded() -> None:
    if os.environ.get("MESHFAST_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("MESHFAST_NO_EXTENSIONS is set")
    assert records.Gate is C.Gate and records.KeyEntry is C.KeyEntry and records.hold_amount is C.hold_amount


@pytest.mark.parametrize("mod", TWINS)
def test_enter_leaves_any_other_key_to_the_store(mod) -> None:
    gate, _, _ = gate_for(mod)
    for auth in (None, "Bearer " + SECRET, b"", b"Bearer", AUTH.lower(), AUTH + b"x", b"Bearer mesh_live_short", bytearray(AUTH)):
        req = {"mesh": {"privacy": "confidential"}}
        assert gate.enter(auth, b"protected", req) is None
        assert req == {"mesh": {"privacy": "confidential"}}  # untouched: the slow path reads it


@pytest.mark.parametrize("mod", TWINS)
def test_enter_a_known_key(mod) -> None:
    gate, entry, _ = gate_for(mod)
    for req, asked in (
        ({}, 0), ({"max_tokens": 7}, 7), ({"max_completion_tokens": 5, "max_tokens": 7}, 5),
        ({"max_completion_tokens": None, "max_tokens": 3}, 3), ({"max_completion_tokens": 0, "max_tokens": None}, 0),
    ):  # fmt: skip
        key, account, privacy, got, e = gate.enter(AUTH, None, req)
        assert (key, account, privacy, got, e) == (entry.key, entry.account, "standard", asked, entry)
    assert gate.enter(b"bearer  " + SECRET.encode() + b" \t", None, {})[4] is entry  # as bearer_digest reads it
    assert repr(entry).startswith("KeyEntry('key_1'") and entry.plain is True and entry.key_id == "key_1"


ASKS = (None, b"", b"protected", b"confidential", b"nonsense", b"\xff", b"Standard")
MESHES = (MISSING, None, {}, {"privacy": "private_gateway"}, {"privacy": "standard"}, {"privacy": 5}, {"privacy": ["x"]},
          {"privacy": ""}, {"privacy": None}, "protected", ["protected"])  # fmt: skip
LIMITS = (Limits(), Limits(privacy_default="protected"), Limits(privacy_min="private_gateway"),
          Limits(privacy_default="confidential", privacy_min="protected"), Limits(privacy_min="standard"))  # fmt: skip


@pytest.mark.parametrize("mod", TWINS)
def test_enter_serves_the_class_the_pipeline_rule_gives(mod) -> None:
    """Every header and body ``mesh`` asked, under keys and projects with defaults and
    minimums: the class served is ``limits.served_privacy`` of ``asked_privacy``, and the
    ``mesh`` object is taken out of the request exactly as the slow path takes it."""
    for key_limits, project_limits in itertools.product(LIMITS, LIMITS):
        gate, _, _ = gate_for(mod, key_limits, project_limits)
        for raw, mesh in itertools.product(ASKS, MESHES):
            req: dict[str, Any] = {"model": "m"} if mesh is MISSING else {"model": "m", "mesh": mesh}
            expected_req = dict(req)
            asked = records_py.asked_privacy(expected_req, raw)
            served = gate.enter(AUTH, raw, req)[2]
            assert served == served_privacy(asked, key_limits, project_limits), (raw, mesh, key_limits, project_limits)
            assert req == expected_req
            assert mod.asked_privacy(dict(req), raw) == records_py.asked_privacy(dict(req), raw)


@pytest.mark.parametrize("mod", TWINS)
def test_hold_plain(mod) -> None:
    gate, entry, slow = gate_for(mod, margin_ppm=100_000, fee_nano=7)
    eps = [endpoint(), endpoint(3_000_000, 1_000_000, 100)]
    call = SimpleNamespace(rate_headers=[])
    hold = gate.hold(call, entry, eps, 1000, 50, {"n": 2}, None, 50_000, 0)
    amount, tokens = records_py.hold_amount(entry.account, eps, 1000, 50, 2, None, 50_000, 0)
    assert (hold.amount_nano, hold.account_id, hold.key_id, hold.id, hold.closed) == (amount, "acct_1", "key_1", "", False)
    assert hold.admission is entry.states and entry.account.held_nano == amount
    assert call.rate_headers == [] and slow.holds == []  # the plain path has no windows
    assert amount == records_py.hold_worst(eps, 1000, 50, 2, None, 100_000, 7)[0]  # the account's own margin and fee
    mod.release_hold(entry.account, hold, None)
    assert entry.account.held_nano == 0


@pytest.mark.parametrize("mod", TWINS)
def test_hold_refused_when_the_balance_or_the_writer_cannot(mod) -> None:
    eps = [endpoint()]
    gate, entry, _ = gate_for(mod, balance=1000)
    amount = records_py.hold_amount(entry.account, eps, 1000, 0, 1, None, 0, 0)[0]
    with pytest.raises(errors.InsufficientBalance) as info:
        gate.hold(None, entry, eps, 1000, 0, {}, None, 0, 0)
    assert info.value.message == insufficient_balance(amount, 1000, 0).message and entry.account.held_nano == 0
    gate, entry, _ = gate_for(mod)
    gate.failed = RuntimeError("the store writer process exited")
    with pytest.raises(errors.StoreUnavailable):
        gate.hold(None, entry, eps, 1000, 0, {}, None, 0, 0)
    assert entry.account.held_nano == 0
    gate.failed = None
    assert gate.hold(None, entry, eps, 1000, 0, {}, None, 0, 0).amount_nano == amount


@pytest.mark.parametrize("mod", TWINS)
def test_hold_of_a_key_with_limits_is_the_stores(mod) -> None:
    gate, entry, slow = gate_for(mod, Limits(rpm=10))
    assert entry.plain is False
    call = SimpleNamespace(rate_headers=[])
    gate.failed = RuntimeError("down")  # the store's hold checks it on this path
    assert gate.hold(call, entry, [endpoint()], 1000, 20, {"max_tokens": 20}, None, 0, 0) == "limited-hold"
    amount, tokens = records_py.hold_amount(entry.account, [endpoint()], 1000, 20, 1, None, 0, 0)
    assert slow.holds == [(entry.key, amount, tokens)]
    assert call.rate_headers == [(b"x-ratelimit-limit-requests", b"limited-hold")] and entry.account.held_nano == 0


@pytest.mark.parametrize("mod", TWINS)
def test_wrong_types_raise_alike(mod) -> None:
    gate, entry, _ = gate_for(mod)
    account = entry.account
    with pytest.raises(TypeError):
        mod.Gate(None, None, None, None, None)
    with pytest.raises(TypeError):
        gate.enter(AUTH, None, None)
    with pytest.raises(TypeError):
        gate.enter(AUTH, None, [("mesh", 1)])
    with pytest.raises(TypeError):
        gate.hold(None, None, [], 0, 0, {}, None, 0, 0)
    with pytest.raises(TypeError):
        gate.hold(None, entry, [], 0, 0, None, None, 0, 0)
    with pytest.raises(TypeError):
        mod.KeyEntry(entry.key, account, None, None, True, "standard", None)
    with pytest.raises(TypeError):
        mod.asked_privacy(None, None)
    gate.entries[key_digest(SECRET)] = "not an entry"
    with pytest.raises(TypeError):
        gate.enter(AUTH, None, {})


_AMOUNTS = st.one_of(
    st.integers(0, 10**7), st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64, -1, -(2**63)]), st.none(), st.just("7"),
)


@NOT_COMPILED
@settings(max_examples=300, deadline=None)
@given(
    prompt=_AMOUNTS, asked=_AMOUNTS, n=_AMOUNTS, max_output=st.one_of(st.none(), _AMOUNTS), margin=_AMOUNTS,
    fee=_AMOUNTS, own_margin=st.one_of(st.none(), _AMOUNTS), own_fee=st.one_of(st.none(), _AMOUNTS),
    prices=st.lists(st.tuples(_AMOUNTS, _AMOUNTS, _AMOUNTS), min_size=0, max_size=3),
)
def test_hold_amount_twins_agree(prompt, asked, n, max_output, margin, fee, own_margin, own_fee, prices) -> None:
    """The compiled hold amount (on a compiled or a twin account) is the twin's, answer or
    error, beyond int64 and for values that are not ints too."""
    eps = [endpoint(*p) for p in prices]
    args = (eps, prompt, asked, n, max_output, margin, fee)
    want = outcome(records_py.hold_amount, records_py.Account("a", "a", 0, 0, own_margin, own_fee), *args)
    assert outcome(C.hold_amount, C.Account("a", "a", 0, 0, own_margin, own_fee), *args) == want
    assert outcome(C.hold_amount, records_py.Account("a", "a", 0, 0, own_margin, own_fee), *args) == want


@NOT_COMPILED
@settings(max_examples=200, deadline=None)
@given(
    balance=st.one_of(st.integers(-10, 10**12), st.just(2**70)), held=st.integers(0, 10**9),
    prompt=st.integers(0, 10**6), asked=st.integers(0, 10**5), own=st.booleans(), plain=st.booleans(),
)
def test_hold_twins_agree(balance, held, prompt, asked, own, plain) -> None:
    """The compiled gate's hold (on compiled and on twin accounts) against the twin's: the
    same amount held or the same refusal, the same account afterwards."""
    results = []
    for mod, account_mod in ((records_py, records_py), (C, C), (C, records_py)):
        gate, entry, slow = gate_for(mod, balance=balance, margin_ppm=250_000 if own else None, plain=plain)
        if account_mod is not mod:
            twin = records_py.Account("acct_1", "a", balance, 0, 250_000 if own else None)
            entry = mod.KeyEntry(entry.key, twin, *entry.states, plain, "standard", {})
        entry.account.held_nano = held
        call = SimpleNamespace(rate_headers=[])
        got = outcome(gate.hold, call, entry, [endpoint(), endpoint(5, 5, 10)], prompt, asked, {"n": 3}, None, 10_000, 3)
        if not isinstance(got, tuple) and not isinstance(got, str):
            got = (got.amount_nano, got.key_id, got.admission is entry.states)
        results.append((got, entry.account.held_nano, entry.account.balance_nano, slow.holds, call.rate_headers))
    assert results[1] == results[0] and results[2] == results[0]


# -- the embedded store's entries --------------------------------------------------------


def test_store_entries_are_filled_on_first_use_and_dropped_on_every_change(tmp_path) -> None:
    store = open_store(StoreConfig(path=str(tmp_path / "m.db")))

    async def run() -> None:
        account = await store.create_account("a")
        project = await store.create_project(account.id, "p")
        key, secret = await store.create_key(project)
        digest = key_digest(secret)
        auth = b"Bearer " + secret.encode()
        gate = store.gate
        assert gate.enter(auth, None, {}) is None  # not used yet: the store's checks first
        assert store.key_now(digest) is key
        found = gate.enter(auth, None, {})
        assert found[:4] == (key, account, "standard", 0) and found[4].states == (store._states[key.id], store._states[project.id])

        other, _ = await store.create_key(project)
        changes = [
            lambda: store.create_account("b"),
            lambda: store.create_project(account.id, "q"),
            lambda: store.create_key(project),
            lambda: store.update_project(project.id, Limits(privacy_default="protected")),
            lambda: store.update_key(key.id, limits=Limits(privacy_min="confidential")),
            lambda: store.topup(account.id, 1000, "manual", "t1"),
            lambda: store.revoke_key(other.id),
        ]
        for change in changes:
            store.key_now(digest)
            assert gate.enter(auth, None, {}) is not None
            await change()
            assert gate.enter(auth, None, {}) is None, change
        store.key_now(digest)
        assert gate.enter(auth, None, {})[2] == "confidential"  # the new limits, at once
        assert gate.enter(auth, None, {"mesh": {"privacy": "protected"}})[2] == "confidential"

        await store.update_key(key.id, limits=Limits(rpm=5))
        store.key_now(digest)
        entry = gate.enter(auth, None, {})[4]
        assert entry.plain is False  # a limit: the hold is the store's own, with its headers
        call = SimpleNamespace(rate_headers=[])
        hold = gate.hold(call, entry, [endpoint()], 10, 0, {}, 0, 0, 0)
        assert type(hold.admission) is not tuple and dict(call.rate_headers)[b"x-ratelimit-limit-requests"] == b"5"
        await store.release(hold)

        await store.update_key(key.id, expires_at=2e9)  # an expiry: never in the gate
        assert store.key_now(digest) is key and gate.enter(auth, None, {}) is None
        await store.revoke_key(key.id)  # a revocation takes effect on the next call
        assert gate.enter(auth, None, {}) is None
        with pytest.raises(errors.KeyRevoked):
            store.key_now(digest)
        await store.close()

    asyncio.run(run())


def test_store_refuses_calls_once_its_writer_failed(tmp_path) -> None:
    store = open_store(StoreConfig(path=str(tmp_path / "m.db")))

    async def run() -> None:
        account = await store.create_account("a")
        await store.topup(account.id, 10**9, "manual", "t1")
        key, secret = await store.create_key(await store.create_project(account.id, "p"))
        store.key_now(key_digest(secret))
        entry = store.gate.enter(b"Bearer " + secret.encode(), None, {})[4]
        store._writer.failed = RuntimeError("the store writer process exited")
        assert store.gate.failed is store._writer.failed
        with pytest.raises(errors.StoreUnavailable):
            store.gate.hold(None, entry, [endpoint()], 10, 0, {}, 0, 0, 0)
        with pytest.raises(errors.StoreUnavailable):
            store.hold_now(key, 10)
        store._writer.failed = None
        await store.close()

    asyncio.run(run())


def test_a_minimum_that_does_not_resolve_keeps_the_key_on_the_slow_path(tmp_path) -> None:
    store = open_store(StoreConfig(path=str(tmp_path / "m.db")))

    async def run() -> None:
        account = await store.create_account("a")
        key, secret = await store.create_key(await store.create_project(account.id, "p"), limits=Limits(privacy_min="secret"))
        assert store.key_now(key_digest(secret)) is key
        assert store.gate.enter(b"Bearer " + secret.encode(), None, {}) is None  # served_privacy raises for it
        await store.close()

    asyncio.run(run())


def test_privacy_classes_are_the_tables_keys() -> None:
    assert tuple(privacy_table(Limits(), Limits())[1]) == PRIVACY_CLASSES
