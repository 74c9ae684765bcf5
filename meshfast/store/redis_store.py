"""The Redis store: state shared by many workers and hosts, exact under concurrency.

The hot path talks to Redis through one pipelined connection of our own
(meshfast/store/resp.py, hiredis parsing); redis-py serves the control plane, the
revocation channel and the heartbeat.

Every hot-path state change is one call of a Redis function (meshfast/store/lua/meshfast.lua):
``admit`` (revocation and expiry, balance, every limit of the key and its project, and the
hold, atomically), ``settle`` (close the hold, debit, receipt, spend summaries) and
``revoke``. So a call costs two round trips: admit and settle.

What an instance reads per key (the key's limits, its project's limits and privacy
rules, the account's billing terms) is cached here, stamped with the account's ``ver``;
admit refuses a stale stamp (``errors.StaleContext``, which the pipeline retries once
with a fresh copy), so a change of limits applies to the very next call everywhere.

Revocation: the revoke function publishes on ``<prefix>:revoke``; every instance
(registered by a heartbeat key) ends the key's streams, drops it from its cache and
acknowledges; ``revoke_key`` returns only when every live instance has, and fails loudly
naming those that did not within ``ack_timeout``.

Redis unreachable: authentication and holds fail closed (503 ``store_unavailable``); a
settlement that cannot be written is kept and retried until Redis answers (settle is
idempotent by receipt id), so a call that was served is never lost while this process
lives. redis-py reconnects by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError as RedisAuthError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from meshfast import errors
from meshfast.config import redacted_url
from meshfast.limits import insufficient_balance, refusal, reset_value
from meshfast.money import nano_to_usd, usd_bytes
from meshfast.store.base import (
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
    limits_from,
    limits_json,
    month_of,
    new_id,
    new_key,
    spend_buckets,
    usable_key,
)
from meshfast.store.resp import ClusterRespConnection, RespConnection

log = logging.getLogger("meshfast.store")

LUA_SOURCE = (Path(__file__).parent / "lua" / "meshfast.lua").read_text()
LIBRARY = "meshfast_" + hashlib.sha1(LUA_SOURCE.encode()).hexdigest()[:12]
HEARTBEAT_EVERY = 0.5  # seconds between an instance's heartbeats
HEARTBEAT_TTL_MS = 2000  # an instance silent this long is no longer live
ACK_TIMEOUT = 1.0  # seconds a revoke waits for every live instance
SETTLE_RETRY_EVERY = 0.2  # seconds between attempts to write settlements Redis refused
CACHE_MAX = 100_000  # cached key contexts; the cache is emptied when it grows past this
BATCH_MAX = 64  # operations per batch call: bounds how long one call keeps Redis busy
# RedisClusterException: redis-py's cluster client reached no node while reading the cluster
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException)
# Redis answers these while it cannot serve (starting, a failover, a long script, a slot
# moved or moving on a cluster): an outage
_UNAVAILABLE = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS", "OOM", "MISCONF", "MOVED", "ASK")
# ... and these, from inside a function on a cluster node whose slot is migrating or whose
# cluster is down (the function stopped before its writes: see the Lua's run_ops)
_UNAVAILABLE_IN = ("a non local key", "cluster is down", "do not hash to the same slot")
# after these a cluster's hot path reads the slot map again (a failover may be under way)
_REMAP = ("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN")


def _outage(exc: Exception) -> Exception:
    """A Redis failure as the client sees it: an outage (connection lost, Redis not ready,
    out of memory, cannot persist) is StoreUnavailable; any other error reply is a bug and
    stays what it is (an internal error, logged)."""
    if isinstance(exc, ResponseError) and not (str(exc).startswith(_UNAVAILABLE) or any(m in str(exc) for m in _UNAVAILABLE_IN)):
        return exc
    return errors.StoreUnavailable("The gateway's store (Redis) is unavailable; no call is taken until it is back.")


def _unreachable(where: str, exc: BaseException) -> errors.StoreUnavailable:
    """Why Redis at ``where`` cannot be used, in one line (start-up and check-config)."""
    if isinstance(exc, RedisAuthError):  # a ConnectionError too: first
        return errors.StoreUnavailable(f"{where} refused the login (check the password in the URL): {exc}")
    if isinstance(exc, RedisClusterException):  # e.g. slots not all served yet
        return errors.StoreUnavailable(f"{where} is a Redis Cluster node, but the cluster cannot serve: {exc}")
    if isinstance(exc, _DOWN):
        return errors.StoreUnavailable(f"{where} is unreachable: {exc}")
    # e.g. InvalidResponse: something else answers on that port
    return errors.StoreUnavailable(f"{where} did not answer as Redis does (is it a Redis server?): {exc}")


def _opt_int(v: str | None) -> int | None:
    return None if v in (None, "") else int(v)


def _opt_float(v: str | None) -> float | None:
    return None if v in (None, "") else float(v)


def _limit_args(lim: Limits) -> tuple[int, int, int, int, int]:
    """rpm tpm monthly daily concurrency as the admit function takes them (0 / -1: none)."""
    return (
        lim.rpm or 0,
        lim.tpm or 0,
        -1 if lim.monthly_usd_nano is None else lim.monthly_usd_nano,
        -1 if lim.daily_usd_nano is None else lim.daily_usd_nano,
        lim.concurrency or 0,
    )


NO_LIMITS = _limit_args(Limits())


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


ACCOUNT_FIELDS = ("id", "name", "balance", "held", "margin_ppm", "fee_nano", "created", "ver")


def _account_from(h: dict[str, str], month_spend: int | None = None) -> Account:
    a = Account(
        h["id"], h["name"], int(h.get("balance", 0)), int(h.get("held", 0)),
        _opt_int(h.get("margin_ppm")), _opt_int(h.get("fee_nano")), float(h.get("created", 0)),
    )  # fmt: skip
    if month_spend is not None:
        a.spend[month_of(time.time())] = month_spend
    return a


def _project_from(h: dict[str, str]) -> Project:
    return Project(h["id"], h["account_id"], h["name"], float(h["created"]), limits_from(h.get("limits")))


def _key_from(h: dict[str, str]) -> KeyRecord:
    return KeyRecord(
        h["id"], h["project_id"], h["account_id"], h["hash"], h["prefix"], h.get("name", ""),
        float(h["created"]), _opt_float(h.get("revoked_at")), _opt_float(h.get("expires_at")),
        limits_from(h.get("limits")),
    )  # fmt: skip


def _receipt_from(h: dict[str, str]) -> Receipt:
    r = Receipt(**orjson.loads(h["j"]))
    if "c" in h:  # capped at what the balance could cover when it settled
        r.total_nano = int(h["c"])
        r.margin_nano = r.total_nano - r.upstream_cost_nano
        r.capped = True
    return r


class _Context:
    """What this instance caches for one key: its record, account terms and project."""

    __slots__ = ("key", "account", "project", "ver", "limit_args", "member_tail")

    def __init__(self, key: KeyRecord, account: Account, project: Project, ver: str) -> None:
        self.key = key
        self.account = account
        self.project = project
        self.ver = ver
        # what every admit of this key sends, built once per load: its expiry, then the
        # limits only when the key or its project has any (admit skips them otherwise)
        klim, plim = _limit_args(key.limits), _limit_args(project.limits)
        limited = (klim, plim) != (NO_LIMITS, NO_LIMITS)
        self.limit_args = (0 if key.expires_at is None else int(key.expires_at * 1000), *((*klim, *plim) if limited else ()))
        self.member_tail = f":{klim[1]}:{plim[1]}:{int(klim[4] > 0)}{int(plim[4] > 0)}"


class _Batch:
    """The operations of one account queued for one batch call, and their futures."""

    __slots__ = ("flat", "futs")

    def __init__(self) -> None:
        self.flat: list[Any] = []  # the batch function's arguments: op n arg_1 .. arg_n ...
        self.futs: list[asyncio.Future] = []

    def add(self, op: str, args: tuple[Any, ...] | list[Any], fut: asyncio.Future) -> None:
        self.flat += (op, len(args), *args)
        self.futs.append(fut)

    def split(self) -> list[_Batch]:
        """Each operation as a batch of its own."""
        out, flat, i = [], self.flat, 0
        for fut in self.futs:
            n = flat[i + 1]
            alone = _Batch()
            alone.add(flat[i], flat[i + 2 : i + 2 + n], fut)
            out.append(alone)
            i += 2 + n
        return out

    def fail(self, exc: BaseException) -> None:
        for fut in self.futs:
            if not fut.done():
                fut.set_exception(exc)


class RedisStore(Store):
    """Call ``check()`` (or ``attach()``, which a server runs) before anything else: it
    loads the functions and, when the URL names a Redis Cluster node, switches to the
    cluster clients."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "meshfast",
        window_seconds: float = 60.0,
        hold_ttl_seconds: float = 900.0,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.window_ms = int(window_seconds * 1000)
        self.hold_ttl_ms = int(hold_ttl_seconds * 1000)
        self.ack_timeout = ack_timeout
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.r = aioredis.Redis.from_url(
            # health checks: a channel whose node went silent (no reset) is noticed and left
            url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=2,
            client_name=f"meshfast:{self.instance_id}",  # CLIENT LIST names the instance
        )  # fmt: skip
        self.hot: RespConnection | ClusterRespConnection = RespConnection(url)  # the hot path's pipelined connection (meshfast/store/resp.py)
        self.cluster = False  # set by probe() when the URL names a Redis Cluster node
        self._plain = self.r  # a connection to the URL's node: pub/sub on a cluster
        self.channel = f"{prefix}:revoke"
        self._fn = {name: f"{LIBRARY}_{name}" for name in ("admit", "settle", "batch", "release", "revoke", "topup", "context", "bump")}
        self._batches: dict[str, _Batch] = {}  # account id -> operations queued this loop iteration
        self._batch_scheduled = False
        self._cache: dict[str, _Context] = {}  # sha256 of the secret -> context
        self._by_key: dict[str, str] = {}  # key id -> sha256, to drop a key's context
        self._recent: dict[str, _Context] = {}  # the latest load per key, cached or not
        self._revoked_seen: dict[str, float] = {}  # key id -> when its revocation arrived here
        self._generation = 0  # bumped on every revocation seen: loads that straddle one are not cached
        self._listeners: list[Any] = []
        self._active_keys: list[Any] = []  # callables: key ids with calls in flight here
        self._unsettled: deque[tuple[str, str, list[Any]]] = deque()  # (settle|release, account id, args)
        self.failed: list[tuple[str, str, list[Any]]] = []  # kept items Redis rejected as errors (logged)
        self._kept_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._retry_task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()
        self._closing = False

    # -- keys -----------------------------------------------------------------------
    def _acct(self, aid: str) -> str:
        return f"{self.prefix}:{{{aid}}}:a"

    def _base(self, aid: str) -> str:
        return f"{self.prefix}:{{{aid}}}:"

    def _g(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    # -- Redis calls ------------------------------------------------------------------
    async def load_functions(self) -> None:
        """Load this version's function library unless Redis already has it (on a cluster:
        on every primary, replacing a copy of the same version)."""
        code = LUA_SOURCE.replace("__LIB__", LIBRARY)
        if self.cluster:  # every primary the hot path's map knows (it follows failovers)
            await self.hot.call_all("FUNCTION", "LOAD", "REPLACE", code)  # type: ignore[union-attr]
            return
        try:
            await self.r.function_load(code)
        except ResponseError as exc:
            if "already exists" not in str(exc):
                raise

    async def _fcall(self, name: str, aid: str, *args: Any) -> Any:
        """One function call (the library is loaded again if Redis lost it, e.g. a restart
        without persistence; on a cluster, a node that does not answer makes it read the
        slot map and try once more: every function but the hot path's batch is safe to
        repeat). Redis down -> StoreUnavailable."""
        fn = self._fn[name]
        for attempt in (1, 2):
            cmd = ("FCALL", fn, 1, self._acct(aid), *args)
            try:
                return await self.hot.call(*cmd)
            except _DOWN as exc:
                if self.cluster and attempt == 1:
                    await self.hot.reload_now()  # type: ignore[union-attr]
                    continue
                raise _outage(exc) from exc
            except ResponseError as exc:  # Redis answered: it did not run the function
                self._moved(exc)
                if "Function not found" not in str(exc) or attempt == 2:
                    raise _outage(exc) from exc
            await self._do(self.load_functions())
        raise AssertionError("unreachable")

    def _moved(self, exc: BaseException) -> None:
        """On a cluster, a call that failed because of where it went: a node that no longer
        serves the slot (resharding, a failover) answers MOVED, and the next calls go where
        it says; a node that does not answer makes the hot path read the slot map again (a
        failover promotes a replica elsewhere). ASK (a slot in the middle of a migration)
        only fails the call."""
        if not self.cluster:
            return
        if isinstance(exc, ResponseError) and str(exc).startswith("MOVED "):
            self.hot.moved(str(exc))  # type: ignore[union-attr]
        elif isinstance(exc, _DOWN) or (isinstance(exc, ResponseError) and str(exc).startswith(_REMAP)):
            self.hot.reload()  # type: ignore[union-attr]

    # -- batched hot-path calls ---------------------------------------------------------
    def _submit(self, aid: str, op: str, args: tuple[Any, ...] | list[Any]) -> asyncio.Future:
        """Queue one admit ("a") or settle ("s") of account ``aid``; its future gets the
        operation's reply. Every operation queued for one account in one loop iteration
        goes to Redis as one call of the batch function, which reads and writes the account
        once for all of them (Redis's CPU per call is most of the Redis store's cost)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        batch = self._batches.get(aid)
        if batch is None:
            batch = self._batches[aid] = _Batch()
            if not self._batch_scheduled:
                self._batch_scheduled = True
                loop.call_soon(self._send_batches)
        batch.add(op, args, fut)
        if len(batch.futs) >= BATCH_MAX:
            self._send_batch(aid, self._batches.pop(aid))
        return fut

    def _send_batches(self) -> None:
        self._batch_scheduled = False
        batches, self._batches = self._batches, {}
        for aid, batch in batches.items():
            self._send_batch(aid, batch)
        self.hot.flush()  # out in this loop iteration

    def _send_batch(self, aid: str, batch: _Batch, attempt: int = 1) -> None:
        cmd = ("FCALL", self._fn["batch"], 1, self._acct(aid), *batch.flat)
        try:
            sent = self.hot.send_now(cmd)
        except Exception as exc:  # an argument hiredis cannot pack: a bug, not an outage
            self._batch_failed(aid, batch, exc)
            return
        if sent is None:  # not connected: connect, then send
            asyncio.get_running_loop().create_task(self._connect_and_send(aid, batch, cmd, attempt))
        else:
            sent.add_done_callback(lambda f: self._batch_replied(aid, batch, attempt, f))

    async def _connect_and_send(self, aid: str, batch: _Batch, cmd: tuple[Any, ...], attempt: int) -> None:
        try:
            sent = await self.hot.start(cmd)
        except _DOWN as exc:  # never sent: the callers get an outage, and nothing ran
            self._moved(exc)
            batch.fail(_outage(exc))
            return
        except BaseException as exc:  # a bad argument, or cancelled at shutdown: never sent
            self._batch_failed(aid, batch, exc if isinstance(exc, Exception) else errors.StoreUnavailable("The gateway is shutting down."))
            if not isinstance(exc, Exception):
                raise
            return
        sent.add_done_callback(lambda f: self._batch_replied(aid, batch, attempt, f))

    def _batch_replied(self, aid: str, batch: _Batch, attempt: int, sent: asyncio.Future) -> None:
        exc = RedisConnectionError("the batch call was cancelled") if sent.cancelled() else sent.exception()
        if exc is None:
            replies = sent.result()
            if isinstance(replies, list) and len(replies) == len(batch.futs):
                for fut, reply in zip(batch.futs, replies, strict=True):
                    if not fut.done():  # a caller cancelled meanwhile: the reply is dropped
                        fut.set_result(reply)
                return
            exc = ResponseError(f"the batch function answered {len(replies) if isinstance(replies, list) else type(replies).__name__} replies for {len(batch.futs)} operations")
        self._moved(exc)
        if isinstance(exc, ResponseError) and "Function not found" in str(exc) and attempt == 1:
            # Redis lost the library (a restart without persistence): nothing ran; load it, send again
            asyncio.get_running_loop().create_task(self._reload_and_send(aid, batch))
        elif isinstance(exc, _DOWN) or _outage(exc) is not exc:
            batch.fail(exc)  # an outage: admits keep a release, settles are kept for the retry
        else:
            self._batch_failed(aid, batch, exc)

    def _batch_failed(self, aid: str, batch: _Batch, exc: BaseException) -> None:
        """A batch call failed for a reason that is not an outage (a bug: an argument that
        cannot be sent, an error in the function). The checks of the batch function come
        before its writes, so each operation is sent again alone: only the faulty one fails."""
        if len(batch.futs) == 1:
            batch.fail(exc)
            return
        log.error("a batch of %d Redis operations failed (%s); sending each alone", len(batch.futs), exc)
        for alone in batch.split():
            self._send_batch(aid, alone)
        self.hot.flush()

    async def _reload_and_send(self, aid: str, batch: _Batch) -> None:
        try:
            await self._do(self.load_functions())
        except Exception as exc:
            batch.fail(exc)
            return
        self._send_batch(aid, batch, attempt=2)
        self.hot.flush()

    async def _do(self, coro: Any) -> Any:
        try:
            return await coro
        except (*_DOWN, ResponseError) as exc:
            self._moved(exc)
            raise _outage(exc) from exc

    # -- hot path ---------------------------------------------------------------------
    async def authenticate_digest(self, digest: str) -> KeyRecord:
        ctx = self._cache.get(digest)
        if ctx is None:
            ctx = await self._load(digest)
        return usable_key(ctx.key, digest)

    async def _load(self, digest: str) -> _Context:
        generation = self._generation
        ref = await self._do(self.hot.call("GET", self._g(f"kh:{digest}")))
        if not ref:
            raise errors.AuthenticationFailed("Incorrect API key provided.")
        kid, aid = ref.split(" ")
        k, a, p = await self._fcall("context", aid, kid)
        if not k:
            raise errors.AuthenticationFailed("Incorrect API key provided.")
        ah = {name: v for name, v in zip(ACCOUNT_FIELDS, a, strict=True) if v is not None}
        ctx = _Context(_key_from(_pairs(k)), _account_from(ah), _project_from(_pairs(p)), ah.get("ver", "0"))
        if len(self._recent) >= 4096:
            self._recent.clear()
        self._recent[digest] = ctx  # this call's copy, cached or not (admit checks it anyway)
        if generation == self._generation:  # no revocation arrived meanwhile
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
                self._by_key.clear()
            self._cache[digest] = ctx
            self._by_key[kid] = digest
        return ctx

    def _drop(self, key_id: str) -> None:
        digest = self._by_key.pop(key_id, None)
        if digest is not None:
            self._cache.pop(digest, None)
            self._recent.pop(digest, None)

    def _context_of(self, key: KeyRecord) -> _Context:
        ctx = self._cache.get(key.hash) or self._recent.get(key.hash)
        if ctx is None or ctx.key is not key:  # changed since authenticate: start over
            raise errors.StaleContext("The key changed while the call started.")
        return ctx

    async def context(self, key: KeyRecord) -> tuple[Account, Project]:
        ctx = self._context_of(key)
        return ctx.account, ctx.project

    async def place_hold(self, key: KeyRecord, amount_nano: int, tokens: int = 0) -> Hold:
        ctx = self._context_of(key)
        month, day = spend_buckets(time.time())
        hid = new_id("hold_")
        member = f"{hid}:{amount_nano}:{key.id}:{key.project_id}:{tokens}{ctx.member_tail}"
        sent = time.monotonic()
        fut = self._submit(key.account_id, "a", (
            ctx.ver, key.id, key.project_id, amount_nano, tokens, member, hid,
            self.hold_ttl_ms, self.window_ms, month, day, *ctx.limit_args,
        ))  # fmt: skip
        try:
            out = await fut  # StoreUnavailable: never sent, nothing ran (raised as it is)
        except (asyncio.CancelledError, *_DOWN) as exc:
            # the admit may have run: release the hold once Redis answers, so a short outage
            # does not leave its slots and amount held until the hold expires
            self._keep(("release", key.account_id, [member, self.window_ms, self.hold_ttl_ms]))
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _outage(exc) from exc
        except ResponseError as exc:
            raise _outage(exc) from exc
        status = out[0]
        if status == "ok":
            hold = Hold(hid, key.account_id, key.id, amount_nano, (self._headers(out), member))
            seen = self._revoked_seen.get(key.id)
            if seen is not None and seen >= sent:
                # revoked while the admit was on its way back: the stream would start after
                # this instance acknowledged the revocation; refuse it here instead
                await self.release(hold)
                raise errors.KeyRevoked("This API key has been revoked.")
            return hold
        if status in ("stale", "revoked"):
            self._drop(key.id)
        if status == "stale":
            raise errors.StaleContext("The key's limits or terms changed; reload and retry.")
        if status == "revoked":
            raise errors.KeyRevoked("This API key has been revoked.")
        if status == "expired":
            raise errors.KeyRevoked("This API key has expired.")
        if status == "released":  # only a late duplicate gets here; nobody waits for it
            raise errors.StoreUnavailable("The call's hold was given up; retry.")
        if status == "balance":
            raise insufficient_balance(amount_nano, int(out[1]), int(out[2]))
        is_key = out[1] == "key"
        owner = key.label if is_key else ctx.project.label
        lim = key.limits if is_key else ctx.project.limits
        number = int(out[3])
        if status in ("daily", "monthly"):
            raise refusal(status, owner, lim, tokens, amount_nano, number, 0)
        retry_after = float("inf") if number < 0 else number / 1000
        raise refusal(status, owner, lim, tokens, amount_nano, 0, retry_after)

    @staticmethod
    def _headers(out: list[Any]) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        if len(out) == 2:  # neither the key nor its project has limits
            return headers
        rpm, rpm_left, rpm_reset, tpm, tpm_left, tpm_reset, monthly_left = (int(x) for x in out[2:9])
        if rpm:
            headers += [
                (b"x-ratelimit-limit-requests", b"%d" % rpm),
                (b"x-ratelimit-remaining-requests", b"%d" % rpm_left),
                (b"x-ratelimit-reset-requests", reset_value(rpm_reset / 1000)),
            ]
        if tpm:
            headers += [
                (b"x-ratelimit-limit-tokens", b"%d" % tpm),
                (b"x-ratelimit-remaining-tokens", b"%d" % tpm_left),
                (b"x-ratelimit-reset-tokens", reset_value(tpm_reset / 1000)),
            ]
        if monthly_left >= 0:
            headers.append((b"x-mesh-monthly-remaining-usd", usd_bytes(monthly_left)))
        return headers

    def rate_headers(self, hold: Hold) -> list[tuple[bytes, bytes]]:
        return hold.admission[0]

    def add_revoke_listener(self, listener: Any, active_keys: Any = None) -> None:
        self._listeners.append(listener)
        if active_keys is not None:
            self._active_keys.append(active_keys)

    async def settle(self, hold: Hold, receipt: Receipt) -> None:
        month, day = spend_buckets(receipt.created)
        doc = orjson.dumps(receipt.as_dict())  # every field, by name
        args = [
            hold.admission[1], receipt.id, receipt.total_nano, receipt.upstream_cost_nano,
            receipt.prompt_tokens + receipt.completion_tokens, int(receipt.created * 1000), month, day,
            receipt.key_id, receipt.project_id, self.window_ms, doc, hold.account_id,
        ]  # fmt: skip
        aid = hold.account_id
        # Whatever happens to the caller now (a client gone, a revocation), the reply is
        # handled by _settled, which keeps the settlement for a retry on an outage.
        fut = self._submit(aid, "s", args)
        fut.add_done_callback(lambda f: self._settled(f, aid, args))
        try:
            out = await asyncio.shield(fut)
        except (*_DOWN, ResponseError, errors.StoreUnavailable):
            return  # kept or logged by _settled
        if out[0] == "dup":  # a reply to this very send: another call wrote this receipt id
            log.error("receipt id %s was already written by another call; this call's settlement was not applied", receipt.id)
        elif out[0] != "noaccount" and int(out[1]):
            receipt.total_nano = int(out[0])
            receipt.margin_nano = receipt.total_nano - receipt.upstream_cost_nano
            receipt.capped = True

    def _settled(self, fut: asyncio.Future, aid: str, args: list[Any]) -> None:
        if fut.cancelled():  # the connection's futures are never cancelled but by a caller
            return
        exc = fut.exception()
        if exc is None:
            if fut.result()[0] == "noaccount":
                log.error("receipt %s not written: account %s is not in Redis (was it wiped?)", args[1], aid)
            return
        bug = isinstance(exc, TypeError | ValueError)  # an argument that cannot be sent
        if bug or (isinstance(exc, ResponseError) and "Function not found" not in str(exc) and _outage(exc) is exc):
            log.error("receipt %s could not be written and is set aside: %s", args[1], exc)
            self.failed.append(("settle", aid, args))
        else:  # an outage, or a Redis that lost the functions: the retry reloads and writes it
            self._keep(("settle", aid, args))

    async def release(self, hold: Hold) -> None:
        args = [hold.admission[1], self.window_ms, self.hold_ttl_ms]
        try:
            await self._fcall("release", hold.account_id, *args)
        except errors.StoreUnavailable:
            self._keep(("release", hold.account_id, args))

    def _keep(self, item: tuple[str, str, list[Any]]) -> None:
        """A settle or release Redis did not take: retried until it does (both are safe to
        repeat), so no served call goes unbilled while this process lives."""
        self._unsettled.append(item)
        if item[0] == "settle":
            log.warning("Redis unreachable: receipt %s kept in memory until it can be written (%d waiting)", item[2][1], len(self._unsettled))
        if self._retry_task is None or self._retry_task.done():
            try:
                self._retry_task = asyncio.get_running_loop().create_task(self._retry_kept())
            except RuntimeError:  # no loop (closing): flush() or close() writes them
                pass

    async def _retry_kept(self) -> None:
        while self._unsettled and not self._closing:
            await asyncio.sleep(SETTLE_RETRY_EVERY)
            await self._write_kept()

    async def _write_kept(self) -> None:
        async with self._kept_lock:  # one writer at a time, in order
            while self._unsettled:
                item = self._unsettled[0]
                kind, aid, args = item
                try:
                    await self._fcall(kind, aid, *args)
                except errors.StoreUnavailable:
                    return
                except ResponseError as exc:  # a bug, not an outage: set it aside, go on
                    log.error("kept %s for %s failed and is set aside: %s", kind, args[1] if kind == "settle" else args[0], exc)
                    self.failed.append(item)
                if self._unsettled and self._unsettled[0] is item:
                    self._unsettled.popleft()
                if not self._unsettled:
                    log.warning("Redis is back: every kept settlement is written")

    # -- revocation across instances ---------------------------------------------------
    def _on_revoked(self, key_id: str) -> None:
        self._generation += 1
        self._drop(key_id)
        now = time.monotonic()
        if len(self._revoked_seen) > 10_000:
            self._revoked_seen = {k: t for k, t in self._revoked_seen.items() if now - t < 60}
        self._revoked_seen[key_id] = now
        for listener in self._listeners:
            listener(key_id)

    async def _listen(self) -> None:
        """Follow the revocation channel; acknowledge each revocation once handled."""
        while not self._closing:
            pubsub = self._plain.pubsub()  # on a cluster, every node sees every PUBLISH
            try:
                await pubsub.subscribe(self.channel)
                # Revocations may have been missed while unsubscribed: forget every cached key,
                # and end the calls in flight on keys revoked meanwhile.
                self._generation += 1
                self._cache.clear()
                self._by_key.clear()
                self._recent.clear()
                await self._resync()
                self._subscribed.set()
                await self._beat()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg["type"] != "message":
                        continue
                    nonce, _, key_id = msg["data"].partition(" ")
                    self._on_revoked(key_id)
                    ack = self._g(f"ack:{nonce}")
                    async with self.r.pipeline(transaction=False) as pipe:
                        pipe.rpush(ack, self.instance_id).expire(ack, 60)
                        await pipe.execute()
            except asyncio.CancelledError:
                raise
            except (*_DOWN, RedisError) as exc:
                if self._subscribed.is_set():
                    log.warning("revocation channel lost (%s); reconnecting", exc)
                self._subscribed.clear()
                if self.cluster:
                    await self._next_channel_node()
                await asyncio.sleep(0.2)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001 - the connection may already be gone
                    pass

    async def _resync(self) -> None:
        in_flight = sorted({kid for active in self._active_keys for kid in active()})
        if not in_flight:
            return
        key_accounts = await self.r.hmget(self._g("key_accounts"), in_flight)
        async with self.r.pipeline(transaction=False) as pipe:
            for kid, aid in zip(in_flight, key_accounts, strict=True):
                pipe.hget(self._base(aid or "-") + f"k:{kid}", "revoked_at")
            revoked = await pipe.execute()
        for kid, at in zip(in_flight, revoked, strict=True):
            if at:
                self._on_revoked(kid)

    async def _beat(self) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.set(self._g(f"instance:{self.instance_id}"), "1", px=HEARTBEAT_TTL_MS)
            pipe.sadd(self._g("instances"), self.instance_id)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        """Register this instance as live while it follows the revocation channel."""
        while not self._closing:
            await asyncio.sleep(HEARTBEAT_EVERY)
            if self._subscribed.is_set():
                try:
                    await self._beat()
                except (*_DOWN, RedisError):
                    pass

    async def live_instances(self) -> list[str]:
        """Instances whose heartbeat is current; forgets the others."""
        members = sorted(await self._do(self.r.smembers(self._g("instances"))))
        if not members:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for iid in members:
                pipe.exists(self._g(f"instance:{iid}"))
            flags = await self._do(pipe.execute())
        dead = [iid for iid, up in zip(members, flags, strict=True) if not up]
        if dead:
            await self._do(self.r.srem(self._g("instances"), *dead))
        return [iid for iid, up in zip(members, flags, strict=True) if up]

    async def revoke_key(self, key_id: str) -> KeyRecord:
        aid = await self._account_of_key(key_id)
        nonce = os.urandom(8).hex()
        live = set(await self.live_instances())  # before the announcement: all of these hear it
        at = await self._fcall("revoke", aid, key_id, repr(time.time()), self.channel, nonce)
        if not at:
            raise errors.NotFound(f"No key {key_id!r}.", code="key_not_found")
        self._drop(key_id)
        ack = self._g(f"ack:{nonce}")
        deadline = time.monotonic() + self.ack_timeout
        while True:
            missing = live - set(await self._do(self.r.lrange(ack, 0, -1)))
            if not missing:
                break
            if time.monotonic() >= deadline:
                raise errors.RevocationUnconfirmed(
                    f"Key {key_id} is revoked in the store, but {len(missing)} instance(s) did not acknowledge "
                    f"within {self.ack_timeout:g} s: {', '.join(sorted(missing))}. They refuse the key on its next "
                    "call, but may still be streaming with it; check those instances."
                )
            await asyncio.sleep(0.002)
        return await self.key(key_id)

    # -- control plane ----------------------------------------------------------------
    async def create_account(self, name: str, margin_ppm: int | None = None, fee_nano: int | None = None) -> Account:
        check_name(name, "acct_", "An account")
        a = Account(new_id("acct_"), name, 0, 0, margin_ppm, fee_nano, time.time())
        if not await self._do(self.r.hsetnx(self._g("account_names"), name, a.id)):
            raise errors.Conflict(f"An account named {name!r} already exists.", param="name")
        fields: dict[str, Any] = {"id": a.id, "name": name, "balance": 0, "held": 0, "spent": 0, "topped": 0, "created": repr(a.created), "ver": 0}
        if margin_ppm is not None:
            fields["margin_ppm"] = margin_ppm
        if fee_nano is not None:
            fields["fee_nano"] = fee_nano
        async with self.r.pipeline(transaction=not self.cluster) as pipe:  # two slots on a cluster
            pipe.hset(self._acct(a.id), mapping=fields).sadd(self._g("accounts"), a.id)
            await self._do(pipe.execute())
        return a

    async def _account_id(self, ref: str) -> str:
        if ref.startswith("acct_"):
            return ref
        aid = await self._do(self.r.hget(self._g("account_names"), ref))
        if aid is None:
            raise errors.NotFound(f"No account {ref!r}.", code="account_not_found")
        return aid

    async def account(self, ref: str) -> Account:
        aid = await self._account_id(ref)
        month = month_of(time.time())
        values = await self._do(self.r.hmget(self._acct(aid), [*ACCOUNT_FIELDS, f"s:{aid}:{month}"]))
        if values[0] is None:
            raise errors.NotFound(f"No account {ref!r}.", code="account_not_found")
        h = {name: v for name, v in zip(ACCOUNT_FIELDS, values, strict=False) if v is not None}
        return _account_from(h, int(values[-1] or 0))

    async def _account_ids(self) -> list[str]:
        return sorted(await self._do(self.r.smembers(self._g("accounts"))))

    async def accounts(self) -> list[Account]:
        out = [await self.account(aid) for aid in await self._account_ids()]
        return sorted(out, key=lambda a: a.created)

    async def create_project(self, account_ref: str, name: str) -> Project:
        a = await self.account(account_ref)
        check_name(name, "proj_", "A project")
        p = Project(new_id("proj_"), a.id, name, time.time())
        base = self._base(a.id)
        if not await self._do(self.r.hsetnx(base + "pn", name, p.id)):
            raise errors.Conflict(f"Account {a.name!r} already has a project named {name!r}.", param="name")
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(
                base + f"p:{p.id}",
                mapping={"id": p.id, "account_id": a.id, "name": name, "created": repr(p.created), "limits": limits_json(p.limits)},
            )
            pipe.sadd(base + "ps", p.id).hset(self._g("project_accounts"), p.id, a.id)
            await self._do(pipe.execute())
        return p

    async def project(self, ref: str, account_ref: str | None = None) -> Project:
        if ref.startswith("proj_"):
            aid = await self._do(self.r.hget(self._g("project_accounts"), ref))
            pid = ref
        elif account_ref is not None:
            aid = await self._account_id(account_ref)
            pid = await self._do(self.r.hget(self._base(aid) + "pn", ref))
        else:
            aid = pid = None
        h = await self._do(self.r.hgetall(self._base(aid) + f"p:{pid}")) if aid and pid else None
        if not h:
            raise errors.NotFound(f"No project {ref!r}.", code="project_not_found")
        return _project_from(h)

    async def projects(self, account_ref: str | None = None) -> list[Project]:
        aids = [await self._account_id(account_ref)] if account_ref is not None else await self._account_ids()
        out = []
        for aid in aids:
            for pid in await self._do(self.r.smembers(self._base(aid) + "ps")):
                out.append(_project_from(await self._do(self.r.hgetall(self._base(aid) + f"p:{pid}"))))
        return sorted(out, key=lambda p: p.created)

    async def update_project(self, project_id: str, limits: Limits) -> Project:
        p = await self.project(project_id)
        await self._fcall("bump", p.account_id, f"p:{p.id}", "limits", limits_json(limits))
        p.limits = limits
        return p

    async def create_key(self, project: Project, name: str = "", limits: Limits | None = None, expires_at: float | None = None) -> tuple[KeyRecord, str]:
        k, secret = new_key(project, name, limits, expires_at)
        base = self._base(k.account_id)
        fields = {
            "id": k.id, "project_id": k.project_id, "account_id": k.account_id, "hash": k.hash, "prefix": k.prefix,
            "name": name, "created": repr(k.created), "revoked_at": "",
            "expires_at": "" if expires_at is None else repr(expires_at), "limits": limits_json(k.limits),
        }  # fmt: skip
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(base + f"k:{k.id}", mapping=fields).sadd(base + "ks", k.id)
            pipe.hset(self._g("key_accounts"), k.id, k.account_id)
            pipe.set(self._g(f"kh:{k.hash}"), f"{k.id} {k.account_id}")
            await self._do(pipe.execute())
        return k, secret

    async def _account_of_key(self, key_id: str) -> str:
        aid = await self._do(self.r.hget(self._g("key_accounts"), key_id))
        if aid is None:
            raise errors.NotFound(f"No key {key_id!r}.", code="key_not_found")
        return aid

    async def key(self, key_id: str) -> KeyRecord:
        aid = await self._account_of_key(key_id)
        h = await self._do(self.r.hgetall(self._base(aid) + f"k:{key_id}"))
        if not h:
            raise errors.NotFound(f"No key {key_id!r}.", code="key_not_found")
        return _key_from(h)

    async def keys(self, account_ref: str | None = None, project_ref: str | None = None) -> list[KeyRecord]:
        aids = [await self._account_id(account_ref)] if account_ref is not None else await self._account_ids()
        pid = (await self.project(project_ref, account_ref)).id if project_ref is not None else None
        out = []
        for aid in aids:
            base = self._base(aid)
            for kid in await self._do(self.r.smembers(base + "ks")):
                k = _key_from(await self._do(self.r.hgetall(base + f"k:{kid}")))
                if pid is None or k.project_id == pid:
                    out.append(k)
        return sorted(out, key=lambda k: k.created)

    async def update_key(self, key_id: str, limits: Limits | None = None, expires_at: float | None = None) -> KeyRecord:
        k = await self.key(key_id)
        fields: list[Any] = []
        if limits is not None:
            fields += ["limits", limits_json(limits)]
        if expires_at is not None:
            fields += ["expires_at", repr(expires_at)]
        if fields:
            await self._fcall("bump", k.account_id, f"k:{k.id}", *fields)
            self._drop(k.id)
        return await self.key(key_id)

    async def topup(self, account_ref: str, amount_nano: int, chain: str, tx_id: str) -> tuple[Topup, bool]:
        check_topup(amount_nano, chain, tx_id)
        a = await self.account(account_ref)
        owner = await self._do(self.r.set(self._g(f"tx:{chain}:{tx_id}"), a.id, nx=True, get=True))
        if owner is not None and owner != a.id:
            raise errors.Conflict(f"Transaction {chain}:{tx_id} was already credited with different details.", param="tx_id")
        t = Topup(new_id("top_"), a.id, amount_nano, chain, tx_id, time.time())
        doc = orjson.dumps({"id": t.id, "amount_nano": amount_nano, "chain": chain, "tx_id": tx_id, "created": t.created})
        out = await self._fcall("topup", a.id, f"{chain}:{tx_id}", amount_nano, doc)
        if out[0] == "dup":
            prior = orjson.loads(out[1])
            if prior["amount_nano"] != amount_nano:
                raise errors.Conflict(f"Transaction {chain}:{tx_id} was already credited with different details.", param="tx_id")
            return Topup(prior["id"], a.id, amount_nano, chain, tx_id, prior["created"]), False
        if out[0] == "max":
            raise errors.InvalidRequest(
                f"This top-up would take the balance above ${nano_to_usd(2**53 - 1)}, the most one account can hold.",
                param="amount_usd",
            )
        return t, True

    # -- reads --------------------------------------------------------------------------
    async def receipt(self, receipt_id: str, account_id: str | None = None) -> Receipt | None:
        await self.flush()
        aids = [account_id] if account_id else await self._account_ids()
        if not aids:
            return None
        async with self.r.pipeline(transaction=False) as pipe:
            for aid in aids:
                pipe.hgetall(self._base(aid) + f"r:{receipt_id}")
            found = await self._do(pipe.execute())
        for h in found:
            if h:
                return _receipt_from(h)
        return None

    async def _receipts_of(self, aid: str, since: float | None = None, newest: int | None = None) -> list[Receipt]:
        base = self._base(aid)
        if newest is not None:
            ids = await self._do(self.r.zrevrange(base + "rs", 0, newest - 1))
        else:
            lo = int(since * 1000) if since else "-inf"
            ids = await self._do(self.r.zrangebyscore(base + "rs", lo, "+inf"))
        out = []
        for start in range(0, len(ids), 500):
            async with self.r.pipeline(transaction=False) as pipe:
                for rid in ids[start : start + 500]:
                    pipe.hgetall(base + f"r:{rid}")
                out += [_receipt_from(h) for h in await self._do(pipe.execute()) if h]
        return out

    async def receipts(self, account_id: str | None = None, key_id: str | None = None, limit: int = 100) -> list[Receipt]:
        await self.flush()
        aids = [account_id] if account_id else await self._account_ids()
        out: list[Receipt] = []
        for aid in aids:
            rs = await self._receipts_of(aid, newest=None if key_id else limit)
            out += [r for r in rs if key_id is None or r.key_id == key_id]
        out.sort(key=lambda r: r.created, reverse=True)
        return out[:limit]

    async def usage(self, group_by: str, account_id: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        getters = {
            "account": lambda r: r.account_id,
            "project": lambda r: r.project_id,
            "key": lambda r: r.key_id,
            "model": lambda r: r.model,
            "day": lambda r: time.strftime("%Y-%m-%d", time.gmtime(r.created)),
        }
        if group_by not in getters:
            raise errors.InvalidRequest(f"group_by must be one of {', '.join(getters)}.", param="group_by")
        await self.flush()
        get = getters[group_by]
        groups: dict[str, list[int]] = {}
        for aid in [account_id] if account_id else await self._account_ids():
            for r in await self._receipts_of(aid, since=since):
                g = groups.setdefault(get(r), [0, 0, 0, 0, 0, 0])
                for i, v in enumerate((1, r.prompt_tokens, r.completion_tokens, r.upstream_cost_nano, r.margin_nano, r.total_nano)):
                    g[i] += v
        return [
            {
                group_by: name,
                "calls": g[0],
                "prompt_tokens": g[1],
                "completion_tokens": g[2],
                "upstream_cost_usd": nano_to_usd(g[3]),
                "margin_usd": nano_to_usd(g[4]),
                "total_usd": nano_to_usd(g[5]),
            }
            for name, g in sorted(groups.items())
        ]

    async def verify_ledger(self) -> list[str]:
        """Per account: top-ups minus receipt totals equals the balance, the running totals
        agree with the records, the held amount equals the open holds, no balance below zero,
        and every receipt's total is upstream cost plus margin."""
        await self.flush()
        problems = []
        for aid in await self._account_ids():
            base = self._base(aid)
            name, balance, held, topped_total, spent_total = await self._do(
                self.r.hmget(self._acct(aid), ["name", "balance", "held", "topped", "spent"])
            )
            balance, held = int(balance or 0), int(held or 0)
            label = f"account {name} ({aid})"
            topups = [orjson.loads(v) for v in (await self._do(self.r.hgetall(base + "tu"))).values()]
            topped = sum(t["amount_nano"] for t in topups)
            receipts = await self._receipts_of(aid)
            spent = sum(r.total_nano for r in receipts)
            if topped - spent != balance:
                problems.append(
                    f"{label}: top-ups minus receipts is {nano_to_usd(topped - spent)} but the balance is {nano_to_usd(balance)}"
                )
            if int(topped_total or 0) != topped or int(spent_total or 0) != spent:
                problems.append(f"{label}: running totals (topped {topped_total}, spent {spent_total}) differ from the records ({topped}, {spent})")
            if balance < 0:
                problems.append(f"{label}: balance is below zero ({nano_to_usd(balance)})")
            holds = await self._do(self.r.zrange(base + "hs", 0, -1))
            open_held = sum(int(member.split(":")[1]) for member in holds)
            if open_held != held:
                problems.append(f"{label}: held {nano_to_usd(held)} but the open holds add up to {nano_to_usd(open_held)}")
            for r in receipts:
                if r.total_nano != r.upstream_cost_nano + r.margin_nano:
                    problems.append(f"{label}: receipt {r.id} total {r.total_nano} != upstream {r.upstream_cost_nano} + margin {r.margin_nano}")
        return problems

    # -- lifecycle ----------------------------------------------------------------------
    async def probe(self) -> str:
        """Reach Redis and check it can serve meshfast, writing nothing: its version (7.0 or
        newer, for Redis Functions). A Redis Cluster node switches this store to the cluster
        clients (every command to the node serving its key's slot). Returns what it found
        ("Redis <version>" or "Redis Cluster <version>, <n> primaries"); StoreUnavailable
        with the reason if Redis cannot serve."""
        where = f"Redis at {redacted_url(self.url)}"
        try:
            server = await self._plain.info("server")
            cluster = await self._plain.info("cluster")
            version = str(server.get("redis_version", "0"))
            major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
            if major < 7:
                raise errors.StoreUnavailable(f"{where} is Redis {version}; meshfast needs Redis 7.0 or newer (Redis Functions).")
            if not int(cluster.get("cluster_enabled", 0)):
                return f"Redis {version}"
            if not self.cluster:
                await self._use_cluster()
            return f"Redis Cluster {version}, {len(self.r.get_primaries())} primaries"  # type: ignore[union-attr]
        except (*_DOWN, RedisError) as exc:
            raise _unreachable(where, exc) from exc

    async def _next_channel_node(self) -> None:
        """On a cluster, follow the revocation channel through another node next time (any
        node sees every PUBLISH): the one it used may be the one that failed."""
        hot: ClusterRespConnection = self.hot  # type: ignore[assignment]
        self.hot.reload()  # type: ignore[union-attr]
        nodes = hot.nodes()
        here = self._plain.connection_pool.connection_kwargs
        now = (here.get("host"), here.get("port"))
        later = [n for n in nodes if n != now] or nodes
        if not later:
            return
        old, self._plain = self._plain, aioredis.Redis.from_url(
            hot.url_for(*later[self._generation % len(later)]), decode_responses=True, health_check_interval=2,
            socket_connect_timeout=1.0, socket_timeout=2.0, client_name=f"meshfast:{self.instance_id}",
        )  # fmt: skip
        try:
            await old.aclose()
        except Exception:  # noqa: BLE001 - the node may be gone
            pass

    async def _use_cluster(self) -> None:
        """The URL names a Redis Cluster node: the control plane goes through redis-py's
        cluster client and the hot path through one pipelined connection per node. Every
        key an account's functions touch carries the account's hash tag, so each call runs
        on one node; the global keys (key hashes, instances, names) live wherever their
        slots are."""
        cluster = RedisCluster.from_url(
            self.url, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0,
            client_name=f"meshfast:{self.instance_id}",
        )  # fmt: skip
        try:
            await cluster.initialize()
        except BaseException:
            await cluster.aclose()
            raise
        self.r = cluster  # type: ignore[assignment]
        self.hot.close()
        self.hot = ClusterRespConnection(cluster, self.url)
        self.cluster = True

    async def check(self) -> None:
        """Reach Redis now and load the functions; StoreUnavailable with the reason if not."""
        await self.probe()
        where = f"Redis at {redacted_url(self.url)}"
        try:
            await self.load_functions()
        except ResponseError as exc:
            raise errors.StoreUnavailable(f"{where} refused the meshfast functions: {exc}") from exc
        except (*_DOWN, RedisError) as exc:
            raise _unreachable(where, exc) from exc

    async def attach(self) -> None:
        """Load the functions, follow the revocation channel, start the heartbeat."""
        await self.check()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._heartbeat())]
        await asyncio.wait_for(self._subscribed.wait(), 5.0)

    async def flush(self) -> None:
        """Write any settlement Redis refused earlier (as far as Redis answers now)."""
        if self._unsettled:
            await self._write_kept()

    async def close(self) -> None:
        self._closing = True
        for task in [*self._tasks, self._retry_task]:
            if task is not None:
                task.cancel()
        await self.flush()
        receipts = [args[1] for kind, _, args in self._unsettled if kind == "settle"]
        if receipts:
            log.error(
                "Redis unreachable at exit: %d receipt(s) could not be written: %s",
                len(receipts), ", ".join(receipts),
            )  # fmt: skip
        elif self._unsettled:  # releases only: those holds are freed when they expire
            log.warning("Redis unreachable at exit: %d hold(s) not released; they expire by themselves", len(self._unsettled))
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.delete(self._g(f"instance:{self.instance_id}")).srem(self._g("instances"), self.instance_id)
                await pipe.execute()
        except (*_DOWN, RedisError):
            pass
        self.hot.close()
        await self.r.aclose()
        if self.cluster:  # redis-py keeps the node it started from apart from the others
            await self.r.nodes_manager.aclose("startup_nodes")  # type: ignore[attr-defined]
        if self._plain is not self.r:
            await self._plain.aclose()
