"""Two meshfast servers (separate processes) on one Redis, through real sockets.

The shared checks use the Redis at 127.0.0.1:6379 with a key prefix per module; the
outage test runs a redis-server of its own (AOF, fsync always) so that it can stop and
restart it without touching anyone else's data.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import redis

from meshfast.money import margin_of, nano_to_usd, token_cost
from meshfast_core.tokens import scan_chat
from tests.support import (
    REDIS_URL,
    MeshServer,
    SlowStream,
    drop_prefix,
    free_port,
    needs_redis,
    redis_client,
)

ADMIN = "redis-admin-token-" + "z" * 20
MSG = [{"role": "user", "content": "hello"}]

pytestmark = needs_redis


def start_pair(tmp: Path, url: str, prefix: str, text: str = "") -> tuple[MeshServer, MeshServer]:
    env = {"MESHFAST_REDIS_URL": url, "MESHFAST_REDIS_PREFIX": prefix, "MESHFAST_ADMIN_TOKEN": ADMIN}
    servers = (MeshServer(tmp, text, env=env, usd=""), MeshServer(tmp, text, env=env, usd=""))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda s: s.start(), servers))
    return servers


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    prefix = "mftest-" + os.urandom(4).hex()
    a, b = start_pair(tmp_path_factory.mktemp("redis-pair"), REDIS_URL, prefix)
    try:
        yield a, b
        assert admin(a, "GET", "/ledger/verify")["ok"]
    finally:
        a.stop()
        b.stop()
        drop_prefix(prefix)


def admin(server, method, path, body=None):
    r = httpx.request(
        method, server.url + "/admin/v1" + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30
    )
    assert r.status_code < 300, r.text
    return r.json()


_n = iter(range(1_000_000))


def new_key(server, usd="10", **limits) -> tuple[str, dict]:
    account = f"acct{next(_n)}-{os.urandom(2).hex()}"
    admin(server, "POST", "/accounts", {"name": account})
    admin(server, "POST", f"/accounts/{account}/topups", {"amount_usd": usd, "chain": "manual", "tx_id": account})
    key = admin(server, "POST", "/keys", {"account": account, "project": "p", **limits})
    return key["secret"], key


def sdk(server, key):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def test_a_key_made_on_one_instance_works_on_the_other(pair):
    a, b = pair
    key, meta = new_key(a, "1")
    with sdk(b, key) as client:
        r = client.chat.completions.with_raw_response.create(model="sim-1", messages=MSG, max_tokens=5)
        receipt_id = r.headers["x-mesh-receipt-id"]
        assert r.parse().choices[0].message.content
    with sdk(a, key) as client:
        receipt = client.get(f"/receipts/{receipt_id}", cast_to=object)
        assert receipt["total_usd"] == r.headers["x-mesh-total-usd"]
        balance = client.get("/balance", cast_to=object)
    assert balance["balance_usd"] == nano_to_usd(1_000_000_000 - int(float(receipt["total_usd"]) * 1e9 + 0.5))


def test_200_calls_across_both_instances_never_overspend(pair):
    """200 concurrent calls split across both servers, against a balance that covers ten."""
    a, b = pair
    body = {"model": "sim-1", "messages": MSG, "max_tokens": 2000}
    raw = orjson.dumps(body)
    upstream = token_cost(scan_chat(body)[0], 500_000_000) + token_cost(2000, 1_500_000_000)
    hold = upstream + margin_of(upstream, 50_000, 0)
    key, meta = new_key(a, nano_to_usd(hold * 10 + hold // 2))
    barrier = threading.Barrier(200, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "x-mesh-sim-ttft-ms": "2000"}

    def one(i):
        server = a if i % 2 else b
        with httpx.Client(timeout=30) as c:
            c.get(server.url + "/health")
            barrier.wait()
            return c.post(server.base_url + "/chat/completions", content=raw, headers=headers).status_code

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        codes = list(pool.map(one, range(200)))
    assert codes.count(200) + codes.count(402) == 200, codes
    assert 5 <= codes.count(200) <= 10, codes.count(200)
    account = admin(a, "GET", f"/accounts/{meta['account_id']}")
    assert float(account["balance_usd"]) >= 0 and account["held_usd"] == "0"
    assert admin(b, "GET", "/ledger/verify")["ok"]


def test_rpm_50_is_exact_across_both_instances(pair):
    a, b = pair
    key, _ = new_key(a, "10", rpm=50)
    raw = orjson.dumps({"model": "sim-1", "messages": MSG, "max_tokens": 2})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    barrier = threading.Barrier(14, timeout=30)

    def five(i):
        server = a if i % 2 else b
        with httpx.Client(timeout=30) as c:
            c.get(server.url + "/health")
            barrier.wait()
            return [c.post(server.base_url + "/chat/completions", content=raw, headers=headers).status_code for _ in range(5)]

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(14) as pool:
        codes = [code for batch in pool.map(five, range(14)) for code in batch]
    elapsed = time.monotonic() - t0
    # The window (GCRA, 60 s) holds 50 and refills one request every 1.2 s: a burst that
    # takes less than that gets exactly 50, and each further 1.2 s at most one more.
    assert 50 <= codes.count(200) <= 50 + int(elapsed // 1.2), (codes.count(200), elapsed)
    assert codes.count(200) + codes.count(429) == 70


def test_revoke_on_a_ends_a_stream_on_b_within_100ms(pair):
    a, b = pair
    key, meta = new_key(a)
    stream = SlowStream(b.base_url, key)
    assert stream.first.wait(10)
    time.sleep(0.2)
    admin(a, "POST", f"/keys/{meta['id']}/revoke")
    returned = time.monotonic()
    with sdk(b, key) as client:  # right after the revoke call returned, on the other instance
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model="sim-1", messages=MSG)
        assert exc.value.body["code"] == "key_revoked"
    stream.join(5)
    took_ms = (stream.ended_at - returned) * 1000
    assert took_ms < 100, f"the stream on B ended {took_ms:.0f} ms after the revoke on A returned"
    assert b'"code":"key_revoked"' in stream.body and not stream.body.endswith(b"data: [DONE]\n\n")
    receipt = admin(a, "GET", f"/receipts/{stream.receipt_id}")
    assert receipt["status"] == "cancelled" and receipt["completion_tokens"] > 0


def test_the_cli_works_on_redis_while_servers_run(pair):
    """`meshfast keys revoke` and `meshfast ledger verify` talk to Redis directly; the
    revoke returns once both running servers acknowledged it."""
    a, b = pair
    key, meta = new_key(a, "1")
    with sdk(b, key) as client:
        client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)
    env = {**a.env, "MESHFAST_ADMIN_TOKEN": ""}
    out = subprocess.run(
        [sys.executable, "-m", "meshfast", "keys", "revoke", meta["id"]], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"revoked key {meta['id']}" in out.stdout
    with sdk(b, key) as client:
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model="sim-1", messages=MSG)
        assert exc.value.body["code"] == "key_revoked"
    out = subprocess.run(
        [sys.executable, "-m", "meshfast", "ledger", "verify"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("ledger ok"), out.stdout + out.stderr


def test_limit_changes_apply_on_the_other_instance_at_once(pair):
    a, b = pair
    key, meta = new_key(a, "10")
    with sdk(b, key) as client:
        client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)  # b caches the key
        admin(a, "PATCH", f"/keys/{meta['id']}", {"rpm": 1})
        r = client.chat.completions.with_raw_response.create(model="sim-1", messages=MSG, max_tokens=2)
        assert r.headers["x-ratelimit-limit-requests"] == "1"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)


def test_two_workers_share_the_redis_store(tmp_path):
    prefix = "mftest-" + os.urandom(4).hex()
    env = {"MESHFAST_REDIS_URL": REDIS_URL, "MESHFAST_REDIS_PREFIX": prefix, "MESHFAST_ADMIN_TOKEN": ADMIN}
    try:
        with MeshServer(tmp_path, "", env=env, usd="", workers=2) as server:
            key, meta = new_key(server, "1", rpm=10)
            raw = orjson.dumps({"model": "sim-1", "messages": MSG, "max_tokens": 2})
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                replies = list(
                    pool.map(
                        lambda _: httpx.post(server.base_url + "/chat/completions", content=raw, headers=headers, timeout=30),
                        range(16),
                    )
                )
            codes = [r.status_code for r in replies]
            assert codes.count(200) == 10 and codes.count(429) == 6, codes
            live = redis_client().smembers(f"{prefix}:instances")
            assert len(live) == 2  # one per worker, both following revocations
            # forked workers must not share an id sequence: every call its own receipt, billed
            receipts = {r.headers["x-mesh-receipt-id"] for r in replies if r.status_code == 200}
            assert len(receipts) == 10, receipts
            # one process part per worker; the kernel may hand all ten to one worker, so
            # more calls (a key without limits) until the other has answered too
            parts = {rid[5:21] for rid in receipts}
            more, _ = new_key(server, "1")
            more_headers = {**headers, "Authorization": f"Bearer {more}"}
            for _ in range(200):  # each on a new connection, which either worker may accept
                if len(parts) == 2:
                    break
                r = httpx.post(server.base_url + "/chat/completions", content=raw, headers=more_headers, timeout=30)
                parts.add(r.headers["x-mesh-receipt-id"][5:21])
            assert len(parts) == 2, parts
            report = admin(server, "GET", "/ledger/verify")
            assert report["ok"], report
            account = admin(server, "GET", f"/accounts/{meta['account_id']}")
            assert account["held_usd"] == "0" and len(admin(server, "GET", f"/receipts?account={meta['account_id']}")["data"]) == 10
    finally:
        drop_prefix(prefix)


@pytest.mark.slow
def test_redis_stopped_and_restarted_under_load(tmp_path):
    """503 store_unavailable while Redis is down, no receipt lost for calls that were
    served, and service resumes by itself."""
    server_bin = shutil.which("redis-server")
    if server_bin is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    cmd = [
        server_bin, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--appendonly", "yes",
        "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", str(tmp_path / "redis.log"),
    ]  # fmt: skip

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=port, socket_connect_timeout=0.2).ping():
                    return proc
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    rproc = start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    a, b = start_pair(tmp_path, url, "mf")
    try:
        key, meta = new_key(a, "100")
        raw = orjson.dumps({"model": "sim-1", "messages": MSG, "max_tokens": 5})
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        stop = threading.Event()
        results: list[tuple[float, int, str, str]] = []  # (start time, status, receipt id, error code)

        def load(server):
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        r = c.post(server.base_url + "/chat/completions", content=raw, headers=headers)
                    except httpx.HTTPError:
                        continue
                    code = r.json().get("error", {}).get("code", "") if r.status_code != 200 else ""
                    results.append((started, r.status_code, r.headers.get("x-mesh-receipt-id", ""), code))

        threads = [threading.Thread(target=load, args=(s,)) for s in (a, b, a, b)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        rproc.send_signal(signal.SIGTERM)
        rproc.wait(10)
        down_at = time.monotonic()
        time.sleep(1.5)
        restart_at = time.monotonic()
        rproc = start_redis()
        up_at = time.monotonic()
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()

        statuses = {s for _, s, _, _ in results}
        assert statuses <= {200, 503}, statuses
        # started while Redis was down, and not so close to its restart that the server
        # reached the store after Redis was back (a request takes some ms to get there)
        during = [(s, code, round(t - down_at, 3)) for t, s, _, code in results if down_at < t < restart_at - 0.2]
        assert during and all(s == 503 and code == "store_unavailable" for s, code, _ in during), ([x for x in during if x[0] != 503][:5])
        after = [(round(t - up_at, 3), s, code) for t, s, _, code in results if t > up_at + 1.0]
        assert after and all(s == 200 for _, s, _ in after), [x for x in after if x[1] != 200][:20]
        served = [rid for _, s, rid, _ in results if s == 200]
        assert len(served) > 50
        r = redis.Redis.from_url(url, decode_responses=True)
        stored = set(r.zrange(f"mf:{{{meta['account_id']}}}:rs", 0, -1))
        missing = [rid for rid in served if rid not in stored]
        assert not missing, f"{len(missing)} of {len(served)} served calls have no receipt"
        assert admin(a, "GET", "/ledger/verify")["ok"]
    finally:
        a.stop()
        b.stop()
        rproc.send_signal(signal.SIGTERM)
        rproc.wait(10)
