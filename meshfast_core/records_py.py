"""The money hot path's records: a call's hold and its receipt (pure-Python twin of
``_records.pyx``).

Both are made on every call, and a receipt is written field by field, so the compiled
twin keeps them as C objects with typed slots: built by one C call (a dataclass runs a
24-line ``__init__`` in the interpreter, about 5,000 instructions) and turned into the
row a store writes by another. Fields and behaviour are the same in both twins.
"""

from __future__ import annotations

import itertools
import marshal
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from .keys import bearer_digest
from .limits import finish
from .pricing import call_cost, hold_worst
from .sse import usage_counts, usage_with_costs
from .usd import cost_headers, usd_bytes

__all__ = (
    "ID_COUNTER_START", "RECEIPT_FIELDS", "Account", "Frame", "Gate", "Hold", "KeyEntry", "Receipt", "Settler",
    "account_public", "asked_privacy", "day_of", "hold_amount", "id_seed", "month_of", "new_id", "priced_receipt",
    "receipt_as_dict", "receipt_public", "release_hold", "reseed_ids", "settle_hold", "spend_buckets", "take_hold",
)  # fmt: skip

# the receipt's fields in order: its row, the receipts table's columns
RECEIPT_FIELDS = (
    "id", "created", "account_id", "project_id", "key_id", "kind", "model", "route_mode",
    "provider", "upstream_model", "privacy", "prompt_tokens", "completion_tokens",
    "cached_tokens", "tokens_source", "upstream_cost_nano", "margin_nano", "total_nano",
    "latency_ms", "ttft_ms", "stream", "status", "capped", "attempts",
)  # fmt: skip


# -- ids -------------------------------------------------------------------------------
# An id is a prefix, a random per-process part (16 hex digits) and a decimal counter from
# 10**12 (13 digits for the next 9 * 10**12 ids, so ids keep one width and sort in the
# order they were made): unique across processes and restarts with no syscall per id.
ID_COUNTER_START = 10**12
_process = ""
_counter = itertools.count()


def reseed_ids(process_hex: str, start: int) -> None:
    """Start a new id sequence: ``process_hex`` (16 hex digits) and the first counter value."""
    global _process, _counter
    if len(process_hex) != 16 or not process_hex.isascii():
        raise ValueError("the process part of an id is 16 hex digits")
    _process, _counter = process_hex, itertools.count(start)


def id_seed() -> tuple[str, int]:
    """A fresh sequence's ``reseed_ids`` arguments: a random process part and start. Each
    twin draws one at import and in every forked child (granian forks its workers from the
    process that imported this): two workers must never hand out the same ids."""
    return os.urandom(8).hex(), ID_COUNTER_START + int.from_bytes(os.urandom(3), "big")


def _new_process_ids() -> None:
    reseed_ids(*id_seed())


def new_id(prefix: str) -> str:
    """A unique id: ``prefix``, this process's part and the next counter value."""
    return f"{prefix}{_process}{next(_counter)}"


_new_process_ids()
os.register_at_fork(after_in_child=_new_process_ids)


def _usd(nano: int) -> str:
    return usd_bytes(nano).decode()


# -- spend buckets -------------------------------------------------------------------
def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def day_of(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


# (start, end) of the UTC day last asked for, in epoch seconds, and its buckets
_bucket_cache: tuple[float, float, tuple[str, str]] = (0.0, -1.0, ("", ""))


def spend_buckets(ts: float) -> tuple[str, str]:
    """("YYYY-MM", "YYYY-MM-DD") in UTC for ``ts``; cached per day (called on every settle)."""
    global _bucket_cache
    start, end, buckets = _bucket_cache
    if start <= ts < end:
        return buckets
    day_start = ts // 86400 * 86400
    _bucket_cache = (day_start, day_start + 86400, (month_of(ts), day_of(ts)))
    return _bucket_cache[2]


@dataclass(slots=True)
class Account:
    """An account: its balance, what open holds reserve of it, its own margin and fee
    (``None``: the configured default), and its spend by month and day."""

    id: str
    name: str
    balance_nano: int = 0
    held_nano: int = 0
    margin_ppm: int | None = None  # None: the configured default
    fee_nano: int | None = None
    created: float = 0.0
    spend: dict[str, int] = field(default_factory=dict)  # "YYYY-MM" -> nano-USD

    def public(self) -> dict[str, Any]:
        return account_public(self)


@dataclass(slots=True)
class Hold:
    id: str  # the shared store's handle; "" in the embedded store (its holds never leave the process)
    account_id: str
    key_id: str
    amount_nano: int
    # meshfast.limits.Admission: the limits this call took; in the embedded store's plain
    # path (no limit on key or project) the (key, project) limit states instead
    admission: Any = None
    closed: bool = False  # settled or released (the embedded store closes a hold once)


@dataclass(slots=True)
class Receipt:
    id: str
    created: float
    account_id: str
    project_id: str
    key_id: str
    kind: str  # chat | embeddings
    model: str  # as requested
    route_mode: str
    provider: str
    upstream_model: str
    privacy: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    tokens_source: str  # upstream | estimated
    upstream_cost_nano: int
    margin_nano: int
    total_nano: int
    latency_ms: float
    ttft_ms: float | None
    stream: bool
    status: str  # ok | error | cancelled
    capped: bool = False  # the total was capped at what the balance could cover
    attempts: str = ""  # the endpoints tried, in order ("provider/model,provider/model")

    def row(self) -> tuple:
        """The fields in order (``RECEIPT_FIELDS``), as a store writes them, with ``stream``
        and ``capped`` as SQLite's 0 / 1: the sqlite3 module binds a bool (not exactly an
        int) through its adapter lookup, which cost the writer about 3,000 instructions per
        bool."""
        return (
            self.id, self.created, self.account_id, self.project_id, self.key_id, self.kind, self.model,
            self.route_mode, self.provider, self.upstream_model, self.privacy, self.prompt_tokens,
            self.completion_tokens, self.cached_tokens, self.tokens_source, self.upstream_cost_nano,
            self.margin_nano, self.total_nano, self.latency_ms, self.ttft_ms, 1 if self.stream else 0,
            self.status, 1 if self.capped else 0, self.attempts,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return receipt_as_dict(self)

    def public(self) -> dict[str, Any]:
        return receipt_public(self)


def priced_receipt(
    receipt_id: str, account: Any, key: Any, endpoint: Any, kind: str, requested_model: str,
    counts: tuple[int, int, int] | None, estimated_prompt: int, estimated_completion: int,
    started: float, first_byte: float, stream: bool, status: str, route_mode: str, attempts: str,
    margin_ppm: int, fee_nano: int,
) -> Receipt:
    """The receipt of a call that ends now: ``counts`` are the upstream's ``(prompt,
    completion, cached)`` tokens (``meshfast_core.sse.body_usage`` / ``usage_counts``), else
    ``None`` and the estimates are billed (``tokens_source`` says which). Priced by
    ``pricing.call_cost`` at the endpoint's prices, with the account's own margin and fee
    when it has them, else ``margin_ppm`` / ``fee_nano``; ``started`` and ``first_byte``
    are ``time.monotonic()`` readings (``first_byte`` 0: nothing arrived)."""
    if counts is not None:
        prompt, completion, cached = counts
        source = "upstream"
    else:
        prompt, completion, cached, source = estimated_prompt, estimated_completion, 0, "estimated"
    upstream, margin = call_cost(
        prompt, completion, cached,
        endpoint.input_nano_per_mtok, endpoint.cached_input_nano_per_mtok, endpoint.output_nano_per_mtok,
        margin_ppm if account.margin_ppm is None else account.margin_ppm,
        fee_nano if account.fee_nano is None else account.fee_nano,
    )  # fmt: skip
    latency_ms = (time.monotonic() - started) * 1000
    return Receipt(
        receipt_id, time.time(), account.id, key.project_id, key.id, kind, requested_model, route_mode,
        endpoint.provider.name, endpoint.model.upstream, endpoint.privacy,
        prompt, completion, cached, source, upstream, margin, upstream + margin,
        latency_ms, (first_byte - started) * 1000 if first_byte else None, stream, status, False, attempts,
    )  # fmt: skip


def take_hold(account: Account, key_id: str, amount_nano: int, admission: Any) -> Hold | None:
    """Reserve ``amount_nano`` of the account's available balance (balance less open
    holds) for one call: its open :class:`Hold`, or ``None`` when the balance does not cover
    it (nothing is reserved then). ``admission``: what the call took of its limits."""
    if amount_nano > account.balance_nano - account.held_nano:
        return None
    account.held_nano += amount_nano
    return Hold("", account.id, key_id, amount_nano, admission)


def hold_amount(
    account: Any, candidates: Any, prompt_tokens: int, asked: Any, n: Any, max_output: int | None, margin_ppm: int,
    fee_nano: int,
) -> tuple[int, int]:
    """``(nano-USD, tokens)`` a call's hold reserves: ``pricing.hold_worst`` over the
    candidates (``asked``: the request's ``max_completion_tokens`` / ``max_tokens``, 0 if
    none; ``n``: its ``n``, 1 if none) with the account's own margin and fee, else
    ``margin_ppm`` / ``fee_nano``."""
    return hold_worst(
        candidates, prompt_tokens, asked, n, max_output, margin_ppm if account.margin_ppm is None else account.margin_ppm,
        fee_nano if account.fee_nano is None else account.fee_nano,
    )  # fmt: skip


def _check(value: Any, cls: type, name: str) -> None:
    # the compiled twin's typed arguments: exactly this type (None refused too)
    if type(value) is not cls:
        raise TypeError(f"Argument '{name}' has incorrect type (expected {cls.__name__}, got {type(value).__name__})")


def asked_privacy(req: dict[str, Any], raw: bytes | None) -> Any:
    """The privacy class a call asks for (``""``: none): the ``X-Mesh-Privacy`` header's
    value ``raw``, else the body's ``mesh`` object's ``privacy``; the ``mesh`` object is
    taken out of the request (it is never forwarded)."""
    _check(req, dict, "req")
    if raw is None and "mesh" not in req:
        return ""  # the common case: nothing asked
    privacy = (raw or b"").decode("latin-1")
    mesh = req.pop("mesh", None)
    if not privacy and isinstance(mesh, dict):
        privacy = mesh.get("privacy") or ""
    return privacy


class KeyEntry:
    """What the embedded store's :class:`Gate` knows of one live key without an expiry,
    built on the key's first use and dropped on any control-plane change: the key record,
    its id, its account, the key's and its project's limit states (``states``, the pair a
    plain hold keeps), whether neither has a limit (``plain``), the privacy class a call
    that asks for none is served under (``privacy``), and ``served``: each known class
    asked -> the class served (raised to the key's or project's minimum)."""

    __slots__ = ("account", "key", "key_id", "plain", "privacy", "served", "states")

    def __init__(
        self, key: Any, account: Account, key_state: Any, project_state: Any, plain: bool, privacy: Any, served: dict[str, Any]
    ) -> None:
        _check(served, dict, "served")
        self.key, self.key_id, self.account = key, key.id, account
        self.states = (key_state, project_state)
        self.plain, self.privacy, self.served = bool(plain), privacy, served

    def __repr__(self) -> str:
        return f"KeyEntry({self.key_id!r}, privacy={self.privacy!r})"


class Gate:
    """A call's admission on the embedded store in two calls around the router: ``enter``
    (the key check, its account and the privacy class served) and ``hold`` (the hold's
    amount and the hold). ``entries`` maps a key's digest to its :class:`KeyEntry`; a key
    that is not there (unknown, malformed, revoked, expiring, not used yet) is left to the
    store's own checks. ``failed``: the store's writer failed (no call is taken).

    The store supplies what is not the gate's: ``hold(key, amount, tokens)`` and
    ``rate_headers(hold)`` for a key or project with limits, ``refuse(amount, balance,
    held)`` (the 402) and ``unavailable()`` (the 503)."""

    __slots__ = ("_hold", "_rate_headers", "_refuse", "_unavailable", "entries", "failed")

    def __init__(self, entries: dict[str, KeyEntry], hold: Any, rate_headers: Any, refuse: Any, unavailable: Any) -> None:
        _check(entries, dict, "entries")
        self.entries = entries
        self.failed: BaseException | None = None
        self._hold, self._rate_headers, self._refuse, self._unavailable = hold, rate_headers, refuse, unavailable

    def enter(self, auth: Any, privacy: Any, req: dict[str, Any]) -> tuple[Any, Account, Any, Any, KeyEntry] | None:
        """``(key, account, privacy served, max output asked, entry)`` of a call whose
        ``Authorization`` value ``auth`` is a key in ``entries``, ``privacy`` its
        ``X-Mesh-Privacy`` value (:func:`asked_privacy`, which takes ``mesh`` out of
        ``req``); the max output asked is ``max_completion_tokens`` / ``max_tokens`` (0 if
        none). ``None`` (``req`` untouched) for any other ``auth``."""
        _check(req, dict, "req")
        if type(auth) is not bytes:
            return None
        digest = bearer_digest(auth)
        if digest is None:
            return None
        entry = self.entries.get(digest)
        if entry is None:
            return None
        _check(entry, KeyEntry, "entry")
        asked = asked_privacy(req, privacy)
        if not asked:
            served = entry.privacy
        elif type(asked) is str:
            served = entry.served.get(asked, asked)  # an unknown class as asked: the router's 400
        else:
            served = asked
        return entry.key, entry.account, served, req.get("max_completion_tokens") or req.get("max_tokens") or 0, entry

    def hold(
        self, call: Any, entry: KeyEntry, candidates: Any, prompt_tokens: int, asked: Any, req: dict[str, Any],
        max_output: int | None, margin_ppm: int, fee_nano: int,
    ) -> Hold:
        """The call's hold: :func:`hold_amount` (``asked``: what ``enter`` returned), then,
        when neither the key nor its project has a limit, :func:`take_hold` of it with the
        two limit states (503 when the writer failed, 402 when the balance does not cover
        it); else the store's ``hold`` and ``call.rate_headers`` its ``rate_headers``."""
        _check(entry, KeyEntry, "entry")
        _check(req, dict, "req")
        account = entry.account
        amount, tokens = hold_amount(account, candidates, prompt_tokens, asked, req.get("n") or 1, max_output, margin_ppm, fee_nano)
        if not entry.plain:
            hold = self._hold(entry.key, amount, tokens)
            call.rate_headers = self._rate_headers(hold)
            return hold
        if self.failed is not None:
            raise self._unavailable()
        hold = take_hold(account, entry.key_id, amount, entry.states)
        if hold is None:
            raise self._refuse(amount, account.balance_nano, account.held_nano)
        return hold


def release_hold(account: Account, hold: Hold, used_tokens: int | None) -> None:
    """Close a hold, once: give its amount back to the account's available balance and the
    limits it took back to them (``limits.finish`` for an ``Admission``; ``used_tokens``:
    the call's, to correct tokens per minute; ``None``: nothing was used)."""
    if not hold.closed:
        hold.closed = True
        account.held_nano -= hold.amount_nano
        if type(hold.admission) is not tuple:
            finish(hold.admission, time.monotonic(), hold.amount_nano, used_tokens)


def settle_hold(account: Account, hold: Hold, receipt: Receipt, frame: Frame) -> None:
    """Settle a call in memory: close its hold (``release_hold``, with the call's tokens),
    debit the receipt's total from the balance
    (capped at what the balance can cover: the receipt then says ``capped``) and count it
    in the spend of the account (by month: nothing reads an account's day) and of the key
    and the project (by month and day; ``hold.admission``: their limit states on the plain
    path, else an ``Admission``). Appends the store writer's change,
    ``("settle", receipt.row(), account id, total)``, to ``frame``. (The compiled twin
    counts the spend in running C totals of the Account and the Limiters, which readers
    see added to the dicts; a state of another type by its ``spend`` dict, as here.)"""
    release_hold(account, hold, receipt.prompt_tokens + receipt.completion_tokens)
    # The hold is the worst case; should usage exceed it, never take the balance below zero.
    available = account.balance_nano - account.held_nano
    if receipt.total_nano > available:
        receipt.total_nano = max(available, 0)
        receipt.margin_nano = receipt.total_nano - receipt.upstream_cost_nano
        receipt.capped = True
    total = receipt.total_nano
    account.balance_nano -= total
    month, day = spend_buckets(receipt.created)
    adm = hold.admission
    key_state, project_state = adm if type(adm) is tuple else adm.states
    account.spend[month] = account.spend.get(month, 0) + total
    for spend in (key_state.spend, project_state.spend):
        spend[month] = spend.get(month, 0) + total
        spend[day] = spend.get(day, 0) + total
    frame.settle(receipt, account.id, total)


class Frame:
    """The store writer's changes not yet sent, and how many. ``take()`` is the frame the
    writer process reads (meshfast/store/sqlite_writer.py): its length (4 bytes,
    big-endian), then ``marshal.dumps`` of the list of changes (``[``, the count in 4
    bytes, little-endian, the changes). This twin keeps the changes' tuples and marshals
    them at ``take``, with marshal's back-references to strings met before. The compiled
    twin encodes each change as it is put (a settle field by field in C, writing each
    shared string once and referring back to it; anything else by ``marshal.dumps(change,
    2)``, which writes no back-references, so it can stand beside the others); both
    frames read back as the same changes."""

    __slots__ = ("changes",)

    def __init__(self) -> None:
        self.changes: list[tuple] = []

    @property
    def count(self) -> int:
        return len(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def settle(self, receipt: Receipt, account_id: str, total: int) -> None:
        """Append ``("settle", receipt.row(), account_id, total)`` (what ``settle_hold`` does)."""
        self.changes.append(("settle", receipt.row(), account_id, total))

    def put(self, change: tuple) -> None:
        """Append one change (a ``(sql, params)`` statement, or any change) in order."""
        self.changes.append(change)

    def take(self) -> bytes:
        """The frame of every change so far, and an empty frame from here on."""
        payload = marshal.dumps(self.changes)
        self.changes = []
        return struct.pack(">I", len(payload)) + payload

    def clear(self) -> None:
        """Drop every change not yet taken."""
        self.changes = []


class Settler:
    """A call's settlement on a store whose hot path never suspends (the embedded one), one
    call each, and the headers of its answer. ``accounts`` (id -> Account), ``frame`` (the
    writer's) and ``wake`` (called when a settlement is the first change of a frame: the
    writer times its sending) are the store's; ``None`` for a store that settles by its
    own coroutines, whose calls only take the headers here. ``margin_ppm`` and
    ``fee_nano`` are the configured defaults, ``chars_per_token`` what a stream's delivered
    content is billed by when the upstream reports no usage. ``call_type`` is the
    pipeline's ``Call``: the compiled twin reads its ``__slots__`` directly (any other
    object by name, as here).

    ``settle_body`` and ``settle_stream`` are what ``Pipeline.close`` and the store's
    ``settle_now`` do, with ``Pipeline.route_headers`` and ``usd.cost_headers`` (a JSON
    answer) or ``sse.usage_with_costs`` (a stream's usage chunk), in one call."""

    __slots__ = ("call_type", "accounts", "frame", "wake", "margin_ppm", "fee_nano", "per_token")

    def __init__(
        self, call_type: type, accounts: dict[str, Any] | None, frame: Any, wake: Any, margin_ppm: int,
        fee_nano: int, chars_per_token: int,
    ) -> None:  # fmt: skip
        if chars_per_token < 1:
            raise ValueError("chars_per_token must be positive")
        self.call_type, self.accounts, self.frame, self.wake = call_type, accounts, frame, wake
        self.margin_ppm, self.fee_nano, self.per_token = margin_ppm, fee_nano, chars_per_token

    def settle(self, call: Any, counts: tuple[int, int, int] | None, completion_estimate: int, status: str) -> Any:
        """Price the call, settle it on the store and return its receipt."""
        hold = call.hold
        if hold is None:
            raise AssertionError("the call holds nothing to settle")
        if self.frame is None:
            raise RuntimeError("this Settler settles no call (its store is not immediate)")
        receipt = priced_receipt(
            call.receipt_id or new_id("rcpt_"), call.account, call.key, call.endpoint, call.kind,
            call.requested_model, counts, call.prompt_estimate, completion_estimate, call.started,
            call.first_byte, call.stream, status, call.mode, ",".join(call.tried), self.margin_ppm, self.fee_nano,
        )  # fmt: skip
        call.hold = None  # settled now, whatever follows
        settle_hold(self.accounts[hold.account_id], hold, receipt, self.frame)  # type: ignore[index]
        if self.frame.count == 1 and self.wake is not None:
            self.wake()
        return receipt

    def _route(self, call: Any) -> list[tuple[bytes, bytes]]:
        return [*call.endpoint.headers, (b"x-mesh-route-mode", call.mode.encode()), (b"x-mesh-privacy", call.privacy.encode())]

    def body_headers(self, call: Any, receipt: Any, content_type: bytes | None, length: int) -> list[tuple[bytes, bytes]]:
        """The headers of a JSON answer of ``length`` bytes settled by ``receipt``: route,
        receipt and costs, rate, content type (JSON unless given) and length."""
        headers = self._route(call)
        headers += cost_headers(receipt.id, receipt.upstream_cost_nano, receipt.margin_nano, receipt.total_nano)
        headers += call.rate_headers
        headers.append((b"content-type", content_type or b"application/json"))
        headers.append((b"content-length", str(length).encode()))
        return headers

    def settle_body(
        self, call: Any, counts: tuple[int, int, int] | None, completion_estimate: int, content_type: bytes | None,
        length: int,
    ) -> list[tuple[bytes, bytes]]:  # fmt: skip
        """A JSON answer's settlement (status ``ok``): its headers (``body_headers``)."""
        return self.body_headers(call, self.settle(call, counts, completion_estimate, "ok"), content_type, length)

    def stream_head(self, call: Any, tail: Any) -> list[tuple[bytes, bytes]]:
        """A stream's headers: route, its new receipt id (set on the call), the rate
        headers, then ``tail``."""
        call.receipt_id = new_id("rcpt_")
        return [*self._route(call), (b"x-mesh-receipt-id", call.receipt_id.encode()), *call.rate_headers, *tail]

    def settle_stream(self, call: Any, scanner: Any, status: str) -> bytes:
        """A stream's end: settle it from what ``scanner`` saw (its usage, else the content
        it delivered), or release its hold when the upstream failed (``status`` ``error``)
        with no usage and nothing delivered; the usage line to send before ``[DONE]``
        (``b""`` if none: not asked for, none came, or not ``ok``). Nothing when the call
        holds nothing (settled already)."""
        hold = call.hold
        if hold is None:
            return b""
        counts = usage_counts(scanner.usage)
        delivered = scanner.content_length
        if status == "error" and counts is None and not delivered:
            if self.frame is None:
                raise RuntimeError("this Settler settles no call (its store is not immediate)")
            release_hold(self.accounts[hold.account_id], hold, None)  # type: ignore[index]
            call.hold = None
            return b""
        receipt = self.settle(call, counts, -(-delivered // self.per_token), status)
        if status == "ok" and call.include_usage:
            chunk = scanner.usage_chunk
            if chunk is not None:
                r = receipt
                return b"data: " + usage_with_costs(chunk, r.id, r.upstream_cost_nano, r.margin_nano, r.total_nano) + b"\n\n"
        return b""


# shared by both twins' methods: none is on the hot path
def account_public(a: Any) -> dict[str, Any]:
    """An account as the API shows it: amounts as USD decimal strings."""
    month = month_of(time.time())
    return {
        "id": a.id,
        "object": "account",
        "name": a.name,
        "balance_usd": _usd(a.balance_nano),
        "held_usd": _usd(a.held_nano),
        "available_usd": _usd(a.balance_nano - a.held_nano),
        "month": month,
        "month_spend_usd": _usd(a.spend.get(month, 0)),
        "margin_pct": None if a.margin_ppm is None else _usd(a.margin_ppm * 100_000),
        "fee_usd": None if a.fee_nano is None else _usd(a.fee_nano),
        "created": int(a.created),
    }


def receipt_as_dict(r: Any) -> dict[str, Any]:
    """Every field of a receipt by name (``stream`` and ``capped`` as booleans): what a
    shared store keeps."""
    return {name: getattr(r, name) for name in RECEIPT_FIELDS}


def receipt_public(r: Any) -> dict[str, Any]:
    """A receipt as the API shows it: amounts as USD decimal strings, times to three places."""
    d = receipt_as_dict(r)
    d["upstream_cost_usd"] = _usd(d.pop("upstream_cost_nano"))
    d["margin_usd"] = _usd(d.pop("margin_nano"))
    d["total_usd"] = _usd(d.pop("total_nano"))
    d["object"] = "receipt"
    d["created"] = round(r.created, 3)
    d["latency_ms"] = round(r.latency_ms, 3)
    d["ttft_ms"] = None if r.ttft_ms is None else round(r.ttft_ms, 3)
    return d
