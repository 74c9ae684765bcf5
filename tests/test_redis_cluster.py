"""The Redis store on a Redis Cluster of three primaries started for this module.

Every key an account's functions touch carries the account's hash tag, so each batch call
runs on the one node that serves the account's slot; the global keys (key hashes,
instances, names) live wherever their slots are. The whole of tests/test_redis_store.py
and tests/test_redis_servers.py also passes against a cluster: point
MESHFAST_TEST_REDIS_URL at one of its nodes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import openai
import pytest
from redis.cluster import RedisCluster

from meshfast import errors
from meshfast.store.redis_store import RedisStore
from tests.support import ROOT, MeshServer, RedisClusterNodes, drop_prefix, needs_redis
from tests.test_redis_servers import ADMIN, MSG, admin, new_key
from tests.test_redis_store import funded, holds_from_both, receipt_for, run

pytestmark = needs_redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster"))
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def prefix(cluster):
    p = "mfcl-" + os.urandom(4).hex()
    yield p
    drop_prefix(p, url(cluster, 0))


def url(cluster: RedisClusterNodes, node: int) -> str:
    return f"redis://127.0.0.1:{cluster.ports[node]}/0"


async def opened(cluster: RedisClusterNodes, prefix: str, node: int = 0) -> RedisStore:
    store = RedisStore(url(cluster, node), prefix=prefix)
    await store.attach()
    return store


def test_a_cluster_serves_calls_exactly(cluster, prefix):
    """Batched calls on the node that serves the account's slot: a balance that covers ten
    holds serves ten of 40, receipts and the ledger are right, and every key of the account
    shares one slot."""

    async def main():
        store = await opened(cluster, prefix)
        try:
            assert store.cluster and (await store.probe()).startswith("Redis Cluster 7.")
            account, _, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            results = await asyncio.gather(*[store.place_hold(key, 100_000_000, 1) for _ in range(40)], return_exceptions=True)
            held = [h for h in results if not isinstance(h, BaseException)]
            assert len(held) == 10
            assert all(isinstance(e, errors.InsufficientBalance) for e in results if isinstance(e, BaseException))
            receipts = [receipt_for(key, 60_000_000, 50_000_000) for _ in held]
            await asyncio.gather(*[store.settle(h, r) for h, r in zip(held, receipts, strict=True)])
            acct = await store.account(account.id)
            assert (acct.balance_nano, acct.held_nano) == (1_000_000_000 - 600_000_000, 0)
            assert (await store.receipt(receipts[3].id, account.id)).total_nano == 60_000_000
            assert await store.verify_ledger() == []
            with RedisCluster.from_url(url(cluster, 1)) as r:
                keys = [k.decode() for k in r.scan_iter(match=f"{prefix}:{{{account.id}}}:*", count=1000)]
                assert len(keys) > 12 and len({r.keyslot(k) for k in keys}) == 1
        finally:
            await store.close()

    run(main())


def test_instances_on_different_nodes_stay_exact_and_hear_revocations(cluster, prefix):
    """Two instances reaching the cluster through different nodes: 200 holds split across
    them against a balance for ten, and a revocation through one acknowledged by the other
    (PUBLISH on a cluster reaches every node)."""

    async def main():
        a, b = await opened(cluster, prefix, 0), await opened(cluster, prefix, 1)
        try:
            _, _, key, secret = await funded(a, "1")
            results = await holds_from_both(a, b, secret)
            held = [h for h in results if not isinstance(h, BaseException)]
            assert len(held) == 10
            for h in held:
                await b.settle(h, receipt_for(key, 100_000_000, 90_000_000))
            assert len(await a.live_instances()) == 2
            await a.revoke_key(key.id)  # returns once b acknowledged
            with pytest.raises(errors.KeyRevoked):
                await b.authenticate(secret)
            assert await b.verify_ledger() == []
        finally:
            await a.close()
            await b.close()

    run(main())


def begin_move(cluster: RedisClusterNodes, slot: int, to_port: int) -> tuple:
    """Start migrating one hash slot to the node at ``to_port`` (IMPORTING / MIGRATING)."""
    r = RedisCluster.from_url(url(cluster, 0))
    src = r.nodes_manager.get_node_from_slot(slot)
    nodes = {n.port: n for n in r.get_primaries()}
    ids = {n.port: r.execute_command("CLUSTER MYID", target_nodes=n) for n in nodes.values()}
    nodes[to_port].redis_connection.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[src.port])
    src.redis_connection.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to_port])
    return r, slot, src, nodes, ids[to_port], to_port


def finish_move(state: tuple) -> None:
    """Move the slot's keys, then give the slot to its new node everywhere."""
    r, slot, src, nodes, dst_id, to_port = state
    try:
        while keys := src.redis_connection.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.redis_connection.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
        for n in nodes.values():
            n.redis_connection.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    finally:
        r.close()


def test_an_account_moved_to_another_node_is_served_again(cluster, prefix):
    """Resharding: the account's slot moves to another node while an instance holds the
    old slot map. While the slot migrates, calls fail closed and a settlement is kept; after,
    the next calls are answered MOVED: they fail closed (503, nothing billed twice) and the
    map moves the slot, then calls go to the new node and the kept settlement is written."""

    async def main():
        store = await opened(cluster, prefix)
        try:
            account, _, _, secret = await funded(store, "1")
            key = await store.authenticate(secret)
            hold = await store.place_hold(key, 100_000_000, 1)
            acct_key = store._acct(account.id)
            slot = store.r.keyslot(acct_key)
            here = store.r.get_node_from_key(acct_key).port
            moving = begin_move(cluster, slot, next(p for p in cluster.ports if p != here))
            # while the slot migrates: calls fail closed, a settlement is kept for later
            with pytest.raises(errors.StoreUnavailable):
                await store.place_hold(key, 10_000_000, 1)
            await store.settle(hold, receipt_for(key, 60_000_000, 50_000_000))
            assert len(store._unsettled) == 1 and not store.failed
            finish_move(moving)  # then MOVED: the kept settlement and new calls go to the new node
            served, refused = 0, 0
            for _ in range(20):
                try:
                    h = await store.place_hold(key, 10_000_000, 1)
                except errors.StoreUnavailable:
                    refused += 1
                    await asyncio.sleep(0.1)
                    continue
                await store.settle(h, receipt_for(key, 5_000_000, 4_000_000))
                served += 1
            assert served >= 15 and refused <= 5, (served, refused)
            deadline = time.monotonic() + 5
            while store._unsettled and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not store._unsettled and not store.failed
            acct = await store.account(account.id)
            assert (acct.balance_nano, acct.held_nano) == (1_000_000_000 - 60_000_000 - served * 5_000_000, 0)
            assert await store.verify_ledger() == []
        finally:
            await store.close()

    run(main())


def test_a_server_on_the_cluster_with_the_openai_sdk(cluster, prefix, tmp_path):
    """`meshfast check-config` names the cluster; a server on it answers the openai SDK
    with receipts, streams included."""
    env = {"MESHFAST_REDIS_URL": url(cluster, 2), "MESHFAST_REDIS_PREFIX": prefix, "MESHFAST_ADMIN_TOKEN": ADMIN}
    p = subprocess.run(
        [sys.executable, "-m", "meshfast", "check-config"], env={**os.environ, **env, "MESHFAST_CONFIG": ""},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0 and "reachable, Redis Cluster 7." in p.stdout and "3 primaries" in p.stdout, (p.stdout, p.stderr)
    with MeshServer(tmp_path, "", env=env, usd="") as server:
        key, meta = new_key(server, "1")
        with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30) as client:
            raw = client.chat.completions.with_raw_response.create(model="sim-1", messages=MSG, max_tokens=5)
            assert raw.http_response.status_code == 200 and raw.headers["x-mesh-receipt-id"].startswith("rcpt_")
            chunks = list(client.chat.completions.create(
                model="sim-1", messages=MSG, max_tokens=5, stream=True, stream_options={"include_usage": True}
            ))  # fmt: skip
            usage = chunks[-1].usage
            assert usage is not None and usage.model_extra["mesh"]["receipt_id"].startswith("rcpt_")
        assert len(admin(server, "GET", f"/receipts?account={meta['account_id']}")["data"]) == 2
        assert admin(server, "GET", "/ledger/verify")["ok"]



async def failover_scenario(ports: list[int], pids: list[int], prefix: str) -> None:
    """The failover test's steps (run in a process of its own, see below)."""
    nodes = dict(zip(ports, pids, strict=True))
    probe = RedisStore(f"redis://127.0.0.1:{ports[1]}/0", prefix=prefix)
    await probe.attach()
    account, _, key, secret = await funded(probe, "1")
    victim = probe.r.get_node_from_key(probe._acct(account.id)).port
    await probe.close()
    a = RedisStore(f"redis://127.0.0.1:{victim}/0", prefix=prefix)  # follows revocations through the victim
    await a.attach()
    b = RedisStore(f"redis://127.0.0.1:{next(p for p in ports if p != victim)}/0", prefix=prefix)
    await b.attach()
    try:
        ka = await a.authenticate(secret)
        await a.settle(await a.place_hold(ka, 100_000_000, 1), receipt_for(ka, 60_000_000, 50_000_000))
        await asyncio.sleep(0.5)  # replicated
        os.kill(nodes[victim], signal.SIGKILL)
        refused, deadline = 0, time.monotonic() + 20
        while True:
            try:
                ka = await a.authenticate(secret)  # as the pipeline does: its cache is cleared on resubscribing
                hold = await a.place_hold(ka, 100_000_000, 1)
                break
            except (errors.StoreUnavailable, errors.StaleContext):
                refused += 1
                assert time.monotonic() < deadline, "the account was not served again after the failover"
                await asyncio.sleep(0.2)
        assert refused >= 1
        await a.settle(hold, receipt_for(ka, 60_000_000, 50_000_000))
        acct = await b.account(account.id)
        assert (acct.balance_nano, acct.held_nano) == (1_000_000_000 - 120_000_000, 0)
        deadline = time.monotonic() + 10
        while len(await b.live_instances()) < 2:  # a's channel moved to a live node
            assert time.monotonic() < deadline, "the instance did not follow revocations again"
            await asyncio.sleep(0.2)
        await b.revoke_key(key.id)
        try:
            await a.authenticate(secret)
            raise AssertionError("a revoked key was accepted")
        except errors.KeyRevoked:
            pass
        assert await b.verify_ledger() == []
        print(f"failover followed: {refused} call(s) refused while the replica took over")
    finally:
        await a.close()
        await b.close()


@pytest.mark.slow
def test_a_failover_is_followed(tmp_path_factory):
    """The primary that serves an account (and the node an instance follows revocations
    through) crashes; its replica takes over at another address. Calls on the account fail
    closed (503) until then and are served again after, with no reconfiguration; the
    revocation channel moves to a live node. The steps run in a process of their own:
    redis-py's cluster client, reading the cluster anew after the crash, leaves unclosed
    node objects behind (ResourceWarnings this suite treats as errors)."""
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("redis-failover"), replicas=1, node_timeout_ms=1000)
    prefix = "mfcl-" + os.urandom(4).hex()
    try:
        nodes.start()
        code = (
            "import asyncio; from tests.test_redis_cluster import failover_scenario; "
            f"asyncio.run(failover_scenario({nodes.ports!r}, {[p.pid for p in nodes.procs]!r}, {prefix!r}))"
        )
        p = subprocess.run([sys.executable, "-W", "ignore::ResourceWarning", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert p.returncode == 0 and "failover followed" in p.stdout, (p.stdout, p.stderr[-3000:])
    finally:
        nodes.stop()
