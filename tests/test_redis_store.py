"""The Redis store through its own interface, on the real Redis at 127.0.0.1:6379.

Each test gets a key prefix of its own (and deletes its keys afterwards), so tests never
see each other's state. The end-to-end checks with two server processes are in
tests/test_redis_servers.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

import pytest
import redis

from meshfast import errors
from meshfast.money import usd_to_nano
from meshfast.store.base import Limits
from meshfast.store.redis_store import RedisStore
from tests.support import (
    REDIS_URL,
    cluster_port,
    drop_prefix,
    free_port,
    needs_redis,
    raw_command,
    receipt_for,
)

pytestmark = needs_redis


@pytest.fixture
def prefix():
    p = "mftest-" + os.urandom(4).hex()
    yield p
    drop_prefix(p)


def run(coro):
    return asyncio.run(coro)


async def opened(prefix: str, **kw) -> RedisStore:
    store = RedisStore(REDIS_URL, prefix=prefix, **kw)
    await store.attach()
    return store


async def funded(store: RedisStore, usd: str = "10", limits: Limits | None = None, project_limits: Limits | None = None):
    account = await store.create_account("acme-" + os.urandom(3).hex())
    project = await store.create_project(account.id, "default")
    if project_limits is not None:
        project = await store.update_project(project.id, project_limits)
    await store.topup(account.id, usd_to_nano(usd), "manual", "tx-" + os.urandom(4).hex())
    key, secret = await store.create_key(project, "k", limits)
    return account, project, key, secret


def test_a_call_holds_settles_and_leaves_a_receipt(prefix):
    async def main():
        store = await opened(prefix)
        try:
            account, project, key, secret = await funded(store, "1")
            created_id = key.id
            key = await store.authenticate(secret)  # the hot path uses the record it authenticated
            assert (key.id, key.project_id) == (created_id, project.id)
            acct, proj = await store.context(key)
            assert (acct.id, proj.id) == (account.id, project.id)
            hold = await store.place_hold(key, 300_000_000, 100)
            assert (await store.account(account.id)).held_nano == 300_000_000
            r = receipt_for(key, 120_000_000, 100_000_000)
            await store.settle(hold, r)
            after = await store.account(account.id)
            assert (after.balance_nano, after.held_nano) == (880_000_000, 0)
            assert after.spend[time.strftime("%Y-%m", time.gmtime())] == 120_000_000
            got = await store.receipt(r.id)
            assert got is not None and got.public() == r.public()
            assert [x.id for x in await store.receipts(account.id)] == [r.id]
            await store.settle(hold, r)  # a retried settle (reply lost) changes nothing
            assert (await store.account(account.id)).balance_nano == 880_000_000
            assert await store.verify_ledger() == []
            usage = await store.usage("model", account.id)
            assert usage[0]["calls"] == 1 and usage[0]["total_usd"] == "0.12"
        finally:
            await store.close()

    run(main())


def test_bad_secret_and_a_balance_that_does_not_cover(prefix):
    async def main():
        store = await opened(prefix)
        try:
            _, _, key, secret = await funded(store, "0.000001")
            with pytest.raises(errors.AuthenticationFailed):
                await store.authenticate("mesh_live_" + "x" * 40)
            key = await store.authenticate(secret)
            with pytest.raises(errors.InsufficientBalance, match=r"may cost up to \$0.01 .* \$0.000001 available"):
                await store.place_hold(key, 10_000_000, 1)
        finally:
            await store.close()

    run(main())


async def holds_from_both(a: RedisStore, b: RedisStore, secret: str, n: int = 200, amount: int = 100_000_000) -> list:
    """``n`` concurrent holds of ``amount`` on one key, alternating between two instances;
    the outcomes (holds or exceptions), in order."""
    ka, kb = await a.authenticate(secret), await b.authenticate(secret)
    return await asyncio.gather(
        *[(a.place_hold(ka, amount, 1) if i % 2 else b.place_hold(kb, amount, 1)) for i in range(n)],
        return_exceptions=True,
    )


def test_concurrent_holds_never_overspend(prefix):
    """200 concurrent holds from two instances against a balance that covers ten."""

    async def main():
        a, b = await opened(prefix), await opened(prefix)
        try:
            _, _, key, secret = await funded(a, "1")
            results = await holds_from_both(a, b, secret)
            held = [h for h in results if not isinstance(h, BaseException)]
            refused = [e for e in results if isinstance(e, errors.InsufficientBalance)]
            assert len(held) == 10 and len(refused) == 190
            for h in held:
                await a.settle(h, receipt_for(key, 100_000_000, 90_000_000))  # any instance can settle
            acct = await a.account(key.account_id)
            assert (acct.balance_nano, acct.held_nano) == (0, 0)
            assert await a.verify_ledger() == []
        finally:
            await a.close()
            await b.close()

    run(main())


def fcalls_sent(store: RedisStore) -> list[tuple]:
    """Record every command the store's hot-path connection sends (a spy, not a stub: the
    commands still go to Redis)."""
    sent: list[tuple] = []
    send_now = store.hot.send_now

    def spy(args):
        sent.append(args)
        return send_now(args)

    store.hot.send_now = spy  # type: ignore[method-assign]
    return sent


def test_the_operations_of_one_loop_iteration_share_one_call(prefix):
    """Admits and settles of one account queued together go to Redis as one batch call; the
    batch keeps each one's outcome: the balance covers exactly ten of 40 holds, and within
    one call a settle cannot be applied twice."""

    async def main():
        store = await opened(prefix)
        try:
            account, _, key, secret = await funded(store, "1")
            other, _, key2, secret2 = await funded(store, "1")
            key, key2 = await store.authenticate(secret), await store.authenticate(secret2)
            sent = fcalls_sent(store)
            results = await asyncio.gather(
                *[store.place_hold(key, 100_000_000, 1) for _ in range(40)],
                *[store.place_hold(key2, 1_000_000, 1) for _ in range(3)],
                return_exceptions=True,
            )
            batches = [c for c in sent if c[0] == "FCALL" and c[1] == store._fn["batch"]]
            assert sorted(c[3] for c in batches) == sorted([store._acct(account.id), store._acct(other.id)])
            held = [h for h in results[:40] if not isinstance(h, BaseException)]
            assert len(held) == 10
            assert all(isinstance(e, errors.InsufficientBalance) for e in results[:40] if isinstance(e, BaseException))
            assert all(not isinstance(h, BaseException) for h in results[40:])
            assert (await store.account(account.id)).held_nano == 1_000_000_000
            sent.clear()
            receipts = [receipt_for(key, 60_000_000, 50_000_000) for _ in held]
            twin = receipt_for(key, 60_000_000, 50_000_000)
            twin.id = receipts[0].id  # the same receipt id twice in one call
            await asyncio.gather(*[store.settle(h, r) for h, r in zip(held, receipts, strict=True)], store.settle(held[0], twin))
            assert len([c for c in sent if c[0] == "FCALL"]) == 1
            acct = await store.account(account.id)
            assert (acct.balance_nano, acct.held_nano) == (1_000_000_000 - 10 * 60_000_000, 0)
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_a_faulty_operation_fails_alone(prefix, caplog):
    """A batch call that fails for a reason other than an outage (an argument that cannot be
    sent, an error inside the function) is sent again one operation at a time: only the
    faulty one fails, its neighbours are served and billed."""

    async def main():
        store = await opened(prefix)
        try:
            account, _, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            ctx = store._context_of(key)
            good = [store.place_hold(key, 100_000_000, 1) for _ in range(3)]
            # an admit whose amount is not a number: the function raises a Lua error
            bad = ("a", (ctx.ver, key.id, key.project_id, "lots", 1, "hold_bad:1:k:p:1:0:0:00", "hold_bad",
                         store.hold_ttl_ms, store.window_ms, "2026-11", "2026-11-26", 0))  # fmt: skip
            unpackable = ("s", (object(),))  # hiredis cannot send it
            with caplog.at_level("ERROR", logger="meshfast.store"):
                results = await asyncio.gather(
                    *good, store._submit(account.id, *bad), store._submit(account.id, *unpackable), return_exceptions=True
                )
            assert "sending each alone" in caplog.text
            holds, lua_error, pack_error = results[:3], results[3], results[4]
            assert all(not isinstance(h, BaseException) for h in holds), holds
            assert isinstance(lua_error, redis.ResponseError)
            assert isinstance(pack_error, TypeError)
            for h in holds:
                await store.settle(h, receipt_for(key, 100_000_000, 90_000_000))
            acct = await store.account(account.id)
            assert (acct.balance_nano, acct.held_nano) == (usd_to_nano("1") - 300_000_000, 0)
            # every number the functions wrote is a plain integer (HINCRBY and int() read them)
            fields = await store.r.hgetall(store._acct(account.id))
            for name in ("balance", "held", "spent", "pn", f"h:{key.id}", f"h:{key.project_id}"):
                assert fields[name].lstrip("-").isdigit(), (name, fields[name])
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_a_batch_recovers_when_redis_lost_the_functions(prefix):
    """Redis restarted without persistence (no function library): the batch call is refused,
    the library loaded again and the batch sent again, so the calls go through."""

    async def main():
        store = await opened(prefix)
        try:
            account, _, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            await store.r.function_delete(store._fn["batch"].rsplit("_", 1)[0])
            holds = await asyncio.gather(*[store.place_hold(key, 1000, 1) for _ in range(3)])
            await store.settle(holds[0], receipt_for(key, 500, 400))
            acct = await store.account(account.id)
            assert (acct.held_nano, acct.balance_nano) == (2000, usd_to_nano("1") - 500)
        finally:
            await store.close()

    run(main())


def test_settle_never_takes_the_balance_below_zero(prefix):
    async def main():
        store = await opened(prefix)
        try:
            account, _, key, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            hold = await store.place_hold(key, 100_000_000, 1)
            r = receipt_for(key, 3_000_000_000, 2_500_000_000)  # usage far above the hold
            await store.settle(hold, r)
            assert r.capped and r.total_nano == 1_000_000_000 and r.margin_nano == 1_000_000_000 - 2_500_000_000
            assert (await store.account(account.id)).balance_nano == 0
            stored = await store.receipt(r.id)
            assert stored is not None and stored.capped and stored.total_nano == 1_000_000_000
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_a_receipt_id_written_by_another_call_is_reported(prefix, caplog):
    """Two settlements under one receipt id (ids are unique per process, so only a bug
    could do this): the first stays as written and the second is logged, not hidden."""

    async def main():
        store = await opened(prefix)
        try:
            _, _, key, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            first, second = await store.place_hold(key, 1_000, 1), await store.place_hold(key, 1_000, 1)
            r = receipt_for(key, 500, 400)
            await store.settle(first, r)
            twin = receipt_for(key, 700, 600)
            twin.id = r.id
            with caplog.at_level("ERROR", logger="meshfast.store"):
                await store.settle(second, twin)
            assert f"receipt id {r.id} was already written by another call" in caplog.text
            assert (await store.receipt(r.id)).total_nano == 500
        finally:
            await store.close()

    run(main())


def test_rpm_window_is_exact_across_instances(prefix):
    async def main():
        a, b = await opened(prefix, window_seconds=2.0), await opened(prefix, window_seconds=2.0)
        try:
            _, _, key, secret = await funded(a, "10", Limits(rpm=50))
            t0 = time.monotonic()
            results = await holds_from_both(a, b, secret, n=80, amount=1)
            elapsed = time.monotonic() - t0
            ok = [h for h in results if not isinstance(h, BaseException)]
            limited = [e for e in results if isinstance(e, errors.RateLimited)]
            # 50 at once, then the window refills one request every 2 s / 50 = 40 ms
            assert 50 <= len(ok) <= 50 + int(elapsed // 0.04), (len(ok), elapsed)
            assert len(ok) + len(limited) == 80
            assert limited[0].headers and limited[0].headers[0][0] == b"retry-after"
            headers = dict(a.rate_headers(ok[-1]))
            assert headers[b"x-ratelimit-limit-requests"] == b"50"
            for h in ok:
                await a.release(h)
            await asyncio.sleep(2.05)  # one whole window later: the full limit again
            ka = await a.authenticate(secret)
            again = await asyncio.gather(*[a.place_hold(ka, 1, 1) for _ in range(50)])
            assert len(again) == 50
        finally:
            await a.close()
            await b.close()

    run(main())


def test_limits_tpm_concurrency_and_budgets(prefix):
    async def main():
        store = await opened(prefix)
        try:
            _, _, key, secret = await funded(
                store, "10", Limits(tpm=1000, concurrency=2, daily_usd_nano=usd_to_nano("0.5"), monthly_usd_nano=usd_to_nano("0.8"))
            )
            key = await store.authenticate(secret)
            with pytest.raises(errors.TokensLimited, match="more than the 1000 tokens per minute"):
                await store.place_hold(key, 1, 1001)
            h1 = await store.place_hold(key, usd_to_nano("0.2"), 600)
            with pytest.raises(errors.TokensLimited):
                await store.place_hold(key, 1, 600)
            h2 = await store.place_hold(key, usd_to_nano("0.2"), 100)
            with pytest.raises(errors.ConcurrencyLimited):
                await store.place_hold(key, 1, 1)
            await store.settle(h1, receipt_for(key, usd_to_nano("0.2"), usd_to_nano("0.1"), tokens=100))
            # TPM corrected to actual use: 600 reserved, 100 used -> 500 back
            h3 = await store.place_hold(key, usd_to_nano("0.05"), 500)
            headers = dict(store.rate_headers(h3))  # 0.8 - 0.2 settled - 0.25 held
            assert headers[b"x-mesh-monthly-remaining-usd"] == b"0.35"
            await store.release(h2)
            # the daily ceiling counts what is held: 0.2 settled + 0.05 held + 0.3 > 0.5
            with pytest.raises(errors.DailyBudgetExceeded, match=r"Daily budget of \$0.5"):
                await store.place_hold(key, usd_to_nano("0.3"), 1)
            await store.release(h3)
        finally:
            await store.close()

    run(main())


def test_limits_hold_within_one_batch(prefix):
    """Limited and plain operations of one account in one batch call: each admit sees what
    the ones before it took (concurrency slots, the daily budget's held amount), and the
    settles of both kinds update the spend the next admits count."""

    async def main():
        store = await opened(prefix)
        try:
            account, project, key, secret = await funded(
                store, "10", Limits(concurrency=3, daily_usd_nano=usd_to_nano("0.35"))
            )
            plain_key, plain_secret = await store.create_key(project, "plain")
            key, plain_key = await store.authenticate(secret), await store.authenticate(plain_secret)
            sent = fcalls_sent(store)
            results = await asyncio.gather(
                *[store.place_hold(key, usd_to_nano("0.1"), 1) for _ in range(6)],
                *[store.place_hold(plain_key, usd_to_nano("0.1"), 1) for _ in range(4)],
                return_exceptions=True,
            )
            assert len([c for c in sent if c[0] == "FCALL"]) == 1
            limited, plain = results[:6], results[6:]
            ok = [h for h in limited if not isinstance(h, BaseException)]
            assert len(ok) == 3  # the concurrency cap (0.3 held is within the 0.35 daily budget)
            assert all(isinstance(e, errors.ConcurrencyLimited) for e in limited if isinstance(e, BaseException))
            assert all(not isinstance(h, BaseException) for h in plain)
            await asyncio.gather(*[store.settle(h, receipt_for(key, usd_to_nano("0.1"), usd_to_nano("0.09"))) for h in ok],
                                 *[store.settle(h, receipt_for(plain_key, usd_to_nano("0.1"), usd_to_nano("0.09"))) for h in plain])  # fmt: skip
            # 0.3 spent today by the limited key: one more 0.1 call would pass 0.35
            results = await asyncio.gather(store.place_hold(key, usd_to_nano("0.04"), 1), store.place_hold(key, usd_to_nano("0.1"), 1),
                                           return_exceptions=True)  # fmt: skip
            assert not isinstance(results[0], BaseException)
            assert isinstance(results[1], errors.DailyBudgetExceeded)
            await store.release(results[0])
            acct = await store.account(account.id)
            assert (acct.balance_nano, acct.held_nano) == (usd_to_nano("10") - usd_to_nano("0.7"), 0)
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_project_limits_apply_to_all_its_keys(prefix):
    async def main():
        store = await opened(prefix)
        try:
            account, project, key, secret = await funded(store, "10", project_limits=Limits(concurrency=1))
            key2, secret2 = await store.create_key(project, "second")
            key = await store.authenticate(secret)
            key2 = await store.authenticate(secret2)
            hold = await store.place_hold(key, 1, 1)
            with pytest.raises(errors.ConcurrencyLimited, match="project 'default'"):
                await store.place_hold(key2, 1, 1)
            await store.release(hold)
            await store.release(await store.place_hold(key2, 1, 1))
        finally:
            await store.close()

    run(main())


def test_a_limit_change_reaches_other_instances_at_once(prefix):
    async def main():
        a, b = await opened(prefix), await opened(prefix)
        try:
            _, _, key, secret = await funded(a, "10")
            kb = await b.authenticate(secret)
            await b.release(await b.place_hold(kb, 1, 1))  # b now caches the key
            await a.update_key(key.id, limits=Limits(concurrency=1))
            with pytest.raises(errors.StaleContext):
                await b.place_hold(kb, 1, 1)
            kb = await b.authenticate(secret)  # the pipeline starts over once
            assert kb.limits.concurrency == 1
            hold = await b.place_hold(kb, 1, 1)
            with pytest.raises(errors.ConcurrencyLimited):
                await b.place_hold(kb, 1, 1)
            await b.release(hold)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_expired_holds_are_released(prefix):
    """A worker that dies with holds open does not lock the balance forever."""

    async def main():
        dying = RedisStore(REDIS_URL, prefix=prefix, hold_ttl_seconds=1.0)
        await dying.check()  # loads the functions (on a cluster node: the cluster clients); no heartbeat
        account, _, key, secret = await funded(dying, "1")
        key = await dying.authenticate(secret)
        for _ in range(10):
            await dying.place_hold(key, 100_000_000, 1)
        with pytest.raises(errors.InsufficientBalance):
            await dying.place_hold(key, 100_000_000, 1)
        dying.hot.close()  # gone without releasing anything
        await dying.r.aclose()
        if dying._plain is not dying.r:  # on a cluster: the node connection for pub/sub
            await dying._plain.aclose()
        await asyncio.sleep(1.1)
        store = await opened(prefix)
        try:
            key = await store.authenticate(secret)
            hold = await store.place_hold(key, 100_000_000, 1)  # the expired holds were purged first
            acct = await store.account(account.id)
            assert acct.held_nano == 100_000_000
            await store.settle(hold, receipt_for(key, 50_000_000, 40_000_000))
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_admit_purges_when_the_earliest_hold_is_due_and_only_then(prefix):
    """admit skips the expired-hold scan until the earliest open hold's expiry (the account's
    "pn" field) has passed; a short-lived hold placed among long ones is still released by
    the first admit after it expires."""

    async def main():
        long = await opened(prefix)  # holds live 900 s
        short = await opened(prefix, hold_ttl_seconds=0.5)
        try:
            account, _, _, secret = await funded(long, "1")
            acct_key = long._acct(account.id)
            kl, ks = await long.authenticate(secret), await short.authenticate(secret)
            first = await long.place_hold(kl, 1000, 1)
            pn = int(await long.r.hget(acct_key, "pn"))
            assert pn == int(await long.r.zscore(long._base(account.id) + "hs", first.admission[1]))
            await long.place_hold(kl, 1000, 1)  # expires later: pn stays
            assert int(await long.r.hget(acct_key, "pn")) == pn
            await short.place_hold(ks, 5000, 1)  # expires sooner: pn moves to it
            assert int(await long.r.hget(acct_key, "pn")) < pn
            assert (await long.account(account.id)).held_nano == 7000
            await asyncio.sleep(0.6)
            await long.place_hold(kl, 1000, 1)  # the short hold is due: purged first
            assert (await long.account(account.id)).held_nano == 3000
            assert int(await long.r.hget(acct_key, "pn")) == pn  # the earliest open one again
            await long.settle(first, receipt_for(kl, 500, 400))
            assert await long.verify_ledger() == []
        finally:
            await long.close()
            await short.close()

    run(main())


def test_the_lifetime_total_stays_exact_past_2_pow_53(prefix):
    """settle writes "spent" with the other fields while it fits a Lua number exactly, and
    adds it with HINCRBY (exact 64-bit) once it would not."""

    async def main():
        store = await opened(prefix)
        try:
            account, _, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            acct_key = store._acct(account.id)
            await store.r.hset(acct_key, "spent", 2**53 - 10)
            for _ in range(2):
                hold = await store.place_hold(key, 1000, 1)
                await store.settle(hold, receipt_for(key, 7, 5))
            assert int(await store.r.hget(acct_key, "spent")) == 2**53 - 10 + 14
            assert (await store.account(account.id)).balance_nano == usd_to_nano("1") - 14
        finally:
            await store.close()

    run(main())


def test_revocation_is_acknowledged_by_every_instance(prefix):
    async def main():
        a, b = await opened(prefix), await opened(prefix)
        ended = []
        b.add_revoke_listener(ended.append)
        try:
            _, _, key, secret = await funded(a, "10")
            await b.authenticate(secret)
            t0 = time.monotonic()
            revoked = await a.revoke_key(key.id)
            took = time.monotonic() - t0
            assert revoked.revoked_at is not None
            assert ended == [key.id]  # b ended the key's streams before a's call returned
            assert took < 1.0
            with pytest.raises(errors.KeyRevoked):
                await b.authenticate(secret)
        finally:
            await a.close()
            await b.close()

    run(main())


def test_revocation_names_an_instance_that_does_not_acknowledge(prefix):
    async def main():
        a = await opened(prefix, ack_timeout=0.3)
        try:
            _, _, key, _ = await funded(a, "10")
            # an instance that registered, then hung: its heartbeat is current, it never answers
            await a.r.set(f"{prefix}:instance:hung-host:4242:abc", "1", px=5000)
            await a.r.sadd(f"{prefix}:instances", "hung-host:4242:abc")
            with pytest.raises(errors.RevocationUnconfirmed, match="hung-host:4242:abc"):
                await a.revoke_key(key.id)
            assert (await a.key(key.id)).revoked_at is not None  # revoked in the store regardless
            await a.r.delete(f"{prefix}:instance:hung-host:4242:abc")
            assert "hung-host:4242:abc" not in await a.live_instances()
        finally:
            await a.close()

    run(main())


def test_topups_are_idempotent_per_transaction(prefix):
    async def main():
        store = await opened(prefix)
        try:
            a = await store.create_account("one")
            b = await store.create_account("two")
            t, new = await store.topup(a.id, usd_to_nano("5"), "base", "0xabc")
            again, new2 = await store.topup(a.id, usd_to_nano("5"), "base", "0xabc")
            assert new and not new2 and again.id == t.id
            with pytest.raises(errors.Conflict):
                await store.topup(b.id, usd_to_nano("5"), "base", "0xabc")
            with pytest.raises(errors.Conflict):
                await store.topup(a.id, usd_to_nano("6"), "base", "0xabc")
            with pytest.raises(errors.Conflict):
                await store.create_account("one")
            assert (await store.account("one")).balance_nano == usd_to_nano("5")
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_settlements_kept_during_an_outage_are_written_once(prefix):
    """The hot path loses Redis (its connection points at a dead port) after a hold: the
    settle is kept, not lost; two concurrent flushes write it exactly once."""
    from meshfast.store.resp import RespConnection

    async def main():
        store = await opened(prefix)
        if store.cluster:
            await store.close()
            pytest.skip("swaps the single hot-path connection: a single Redis only (the cluster tests cover outages there)")
        try:
            account, _, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            hold = await store.place_hold(key, 100_000_000, 1)
            live, store.hot = store.hot, RespConnection(f"redis://127.0.0.1:{free_port()}/0")
            r = receipt_for(key, 40_000_000, 30_000_000)
            await store.settle(hold, r)  # no error: kept for later
            with pytest.raises(errors.StoreUnavailable):
                await store.place_hold(key, 1, 1)  # new calls fail closed meanwhile
            assert len(store._unsettled) >= 1
            store.hot.close()
            store.hot = live
            await asyncio.gather(store.flush(), store.flush())
            assert not store._unsettled and not store.failed
            acct = await store.account(account.id)
            assert (acct.balance_nano, acct.held_nano) == (960_000_000, 0)
            assert [x.id for x in await store.receipts(account.id)] == [r.id]
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_an_admit_cancelled_in_flight_gives_its_hold_back(prefix):
    async def main():
        store = await opened(prefix)
        try:
            account, _, _, secret = await funded(store, "1", Limits(concurrency=1))
            key = await store.authenticate(secret)
            task = asyncio.ensure_future(store.place_hold(key, 100_000_000, 1))
            await asyncio.sleep(0)  # the admit is on the wire
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.5)  # the kept release runs
            assert (await store.account(account.id)).held_nano == 0
            await store.release(await store.place_hold(key, 100_000_000, 1))  # the slot is free
        finally:
            await store.close()

    run(main())


def test_an_instance_that_missed_a_revocation_ends_the_streams_when_it_is_back(prefix):
    """b's revocation channel drops; a revokes meanwhile (b cannot acknowledge, so the call
    says so); on resubscribing b checks the keys it has calls on and ends them."""

    async def main():
        a, b = await opened(prefix, ack_timeout=0.3), await opened(prefix)
        try:
            _, _, key, secret = await funded(a, "10")
            ended: list[str] = []
            b.add_revoke_listener(ended.append, lambda: [key.id])
            admin = redis.Redis.from_url(REDIS_URL)
            ours = [c["id"] for c in admin.client_list(_type="pubsub") if c["name"] == f"meshfast:{b.instance_id}"]
            assert ours
            for cid in ours:
                admin.client_kill_filter(_id=cid)
            with pytest.raises(errors.RevocationUnconfirmed, match=b.instance_id):
                await a.revoke_key(key.id)
            for _ in range(40):
                if ended:
                    break
                await asyncio.sleep(0.05)
            assert ended == [key.id]
        finally:
            await a.close()
            await b.close()

    run(main())


def test_admit_refuses_a_key_revoked_behind_an_instances_back(prefix):
    """Even with no revocation message (b's cache still says the key is fine), the admit
    function sees the account's version moved and the key revoked in Redis."""

    async def main():
        a, b = await opened(prefix), await opened(prefix)
        try:
            _, _, key, secret = await funded(a, "10")
            kb = await b.authenticate(secret)
            await a._fcall("bump", key.account_id, f"k:{key.id}", "revoked_at", repr(time.time()))  # no PUBLISH
            with pytest.raises(errors.KeyRevoked):
                await b.place_hold(kb, 1, 1)
            with pytest.raises(errors.KeyRevoked):
                await b.authenticate(secret)  # and the cached copy is gone
        finally:
            await a.close()
            await b.close()

    run(main())


def test_an_admit_arriving_after_its_release_is_refused(prefix):
    """A release for an admit whose outcome was unknown can reach Redis first (the admit
    was still in flight on a connection that broke); the late admit must not hold."""

    async def main():
        store = await opened(prefix)
        try:
            account, project, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            member = f"hold_late1:1000:{key.id}:{project.id}:5:0:0:00"
            assert await store._fcall("release", account.id, member, store.window_ms, 5000) == 0
            ver = store._context_of(key).ver
            out = await store._fcall(
                "admit", account.id, ver, key.id, project.id, 1000, 5, member, "hold_late1", store.hold_ttl_ms,
                store.window_ms, "2026-11", "2026-11-26", 0,
            )  # fmt: skip
            assert out == ["released"]
            assert (await store.account(account.id)).held_nano == 0
        finally:
            await store.close()

    run(main())


def test_store_config_the_environment_url_wins_and_a_contradiction_is_refused(tmp_path, monkeypatch):
    from meshfast import config
    from meshfast.errors import ConfigError

    f = tmp_path / "c.toml"
    f.write_text('[store]\nkind = "embedded"\n')
    monkeypatch.setenv("MESHFAST_REDIS_URL", "redis://127.0.0.1:6379/0")
    assert config.load(str(f)).store.kind == "redis"  # the environment overrides the file
    monkeypatch.delenv("MESHFAST_REDIS_URL")
    f.write_text('[store]\nkind = "embedded"\nredis_url = "redis://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigError, match="store.kind"):
        config.load(str(f))
    f.write_text('[store]\nkind = "redis"\n')
    with pytest.raises(ConfigError, match="store.redis_url"):
        config.load(str(f))


def test_a_server_that_is_not_redis_is_named_as_such(tmp_path):
    """An HTTP server on the port: check() says so in one line, and the hot-path connection
    fails its calls instead of hanging."""
    from meshfast.store.resp import RespConnection

    async def main():
        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1024)
            writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(http, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="x")
        try:
            with pytest.raises(errors.StoreUnavailable, match="did not answer as Redis does"):
                await store.check()
            conn = RespConnection(f"redis://127.0.0.1:{port}/0")
            with pytest.raises(redis.ConnectionError, match="Redis protocol"):
                await conn.call("PING")
            conn.close()
        finally:
            await store.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_check_config_reaches_redis_and_names_a_cluster_that_cannot_serve(tmp_path):
    """`meshfast check-config` with the Redis store says whether Redis can serve meshfast:
    reachable (with its version), unreachable, or a Redis Cluster node whose cluster cannot
    serve (here a lone node with no slots): one clear line rather than failures call by
    call. A working cluster: tests/test_redis_cluster.py."""
    import shutil
    import subprocess
    import sys

    def check(url: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "MESHFAST_REDIS_URL": url, "MESHFAST_CONFIG": ""}
        return subprocess.run(
            [sys.executable, "-m", "meshfast", "check-config"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    p = check(REDIS_URL)
    assert p.returncode == 0 and re.search(r"reachable, Redis (Cluster )?7\.", p.stdout), (p.stdout, p.stderr)
    p = check(f"redis://127.0.0.1:{free_port()}/0")
    assert p.returncode == 2 and "unreachable" in p.stderr and "Traceback" not in p.stderr, p.stderr
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: the cluster-node check needs one of its own")
    port = cluster_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
         "--cluster-config-file", str(tmp_path / "nodes.conf"), "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not raw_command(port).startswith(b"+PONG"):
            assert proc.poll() is None, "the cluster-enabled redis-server exited at start"
            assert time.monotonic() < deadline, "the cluster-enabled redis-server did not answer"
            time.sleep(0.05)
        p = check(f"redis://127.0.0.1:{port}/0")
        assert p.returncode == 2 and "is a Redis Cluster node, but the cluster cannot serve" in p.stderr, (p.stdout, p.stderr)
        assert "Traceback" not in p.stderr
    finally:
        proc.terminate()
        proc.wait(10)
