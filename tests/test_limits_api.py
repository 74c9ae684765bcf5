"""Per-key and per-project limits and instant revocation, end to end through the openai SDK.

The server runs with ``[limits] window_seconds = 2`` so window edges are reached in
seconds; the rules are the same as per minute."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import openai
import pytest

from tests.support import MeshServer, SlowStream, local_provider_toml

ADMIN = "limits-admin-token-" + "y" * 20
MSG = [{"role": "user", "content": "hello"}]
WINDOW = 2.0


@pytest.fixture(scope="module")
def lim(tmp_path_factory, fake_upstream):
    tmp = tmp_path_factory.mktemp("limits")
    text = f"[limits]\nwindow_seconds = {WINDOW}\n" + local_provider_toml(fake_upstream.base_url)
    with MeshServer(tmp, text, env={"MESHFAST_ADMIN_TOKEN": ADMIN}) as server:
        yield server
        r = httpx.get(
            server.url + "/admin/v1/ledger/verify", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert r.json()["ok"], r.json()


def admin(server, method, path, body=None):
    r = httpx.request(
        method,
        server.url + "/admin/v1" + path,
        json=body,
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code < 300, r.text
    return r.json()


_n = iter(range(1_000_000))


def new_key(server, project=None, usd="10", **limits) -> tuple[str, dict]:
    account = f"acct{next(_n)}"
    admin(server, "POST", "/accounts", {"name": account})
    admin(
        server,
        "POST",
        f"/accounts/{account}/topups",
        {"amount_usd": usd, "chain": "manual", "tx_id": account},
    )
    key = admin(server, "POST", "/keys", {"account": account, "project": project or "p", **limits})
    return key["secret"], key


def sdk(server, key):
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


def test_rpm_edge_and_headers(lim, fake_upstream):
    key, _ = new_key(lim, rpm=3)
    with sdk(lim, key) as client:
        remaining = []
        for _ in range(3):
            r = client.chat.completions.with_raw_response.create(
                model="sim-1", messages=MSG, max_tokens=2
            )
            assert r.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert remaining == [2, 1, 0]
        seen = len(fake_upstream.requests)
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="up-echo", messages=MSG, max_tokens=2)
        assert exc.value.body["code"] == "rate_limit_exceeded"
        assert int(exc.value.response.headers["retry-after"]) >= 1
        assert len(fake_upstream.requests) == seen, "a refused call never reaches the upstream"
        time.sleep(WINDOW / 3 + 0.05)  # one request's worth of the window has refilled
        client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)


def test_tpm_reserves_then_corrects_to_actual_usage(lim):
    key, _ = new_key(lim, tpm=3000)
    with sdk(lim, key) as client:
        # reserves prompt + 2500, uses prompt + 8: the correction gives the rest back
        r = client.chat.completions.with_raw_response.create(
            model="sim-1", messages=MSG, max_tokens=2500, extra_headers={"x-mesh-sim-tokens": "8"}
        )
        assert r.headers["x-ratelimit-limit-tokens"] == "3000"
        assert (
            int(r.headers["x-ratelimit-remaining-tokens"]) < 500
        )  # while it ran, the reservation counted
        r = client.chat.completions.with_raw_response.create(
            model="sim-1", messages=MSG, max_tokens=2500, extra_headers={"x-mesh-sim-tokens": "8"}
        )
        assert r.status_code == 200, "the first call's unused reservation was given back"
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=5000)
        assert exc.value.body["code"] == "tokens_per_minute_exceeded"
        assert "Lower max_tokens" in exc.value.body["message"]


def test_concurrency_cap_under_parallel_load(lim):
    key, _ = new_key(lim, concurrency=2)
    barrier = threading.Barrier(6)

    def one(_):
        with sdk(lim, key) as client:
            barrier.wait()
            try:
                client.chat.completions.create(
                    model="sim-1",
                    messages=MSG,
                    max_tokens=2,
                    extra_headers={"x-mesh-sim-ttft-ms": "700"},
                )
                return "ok"
            except openai.RateLimitError as exc:
                return exc.body["code"]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    assert results.count("ok") == 2, results
    assert results.count("concurrency_limit_exceeded") == 4, results
    with sdk(lim, key) as client:  # the slots are free again
        client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)


def test_monthly_ceiling_counts_holds(lim):
    # sim-1 with max_tokens 10000 holds about $0.016; a $0.025 ceiling fits one such hold, not two
    key, meta = new_key(lim, monthly_usd="0.025")
    started = threading.Event()

    def slow_call():
        with sdk(lim, key) as client:
            started.set()
            client.chat.completions.create(
                model="sim-1",
                messages=MSG,
                max_tokens=10000,
                extra_headers={"x-mesh-sim-ttft-ms": "800"},
            )

    t = threading.Thread(target=slow_call)
    t.start()
    started.wait()
    time.sleep(0.3)
    with sdk(lim, key) as client:
        with pytest.raises(openai.RateLimitError) as exc:
            client.chat.completions.create(model="sim-1", messages=MSG, max_tokens=10000)
        assert exc.value.body["code"] == "monthly_budget_exceeded"
        t.join()
        r = client.chat.completions.with_raw_response.create(
            model="sim-1", messages=MSG, max_tokens=10000
        )
        left = float(r.headers["x-mesh-monthly-remaining-usd"])
        assert 0 < left < 0.025


def test_project_limits_apply_to_all_its_keys_together(lim):
    key_a, meta = new_key(lim, project="shared")
    project_id = meta["project_id"]
    admin(lim, "PATCH", f"/projects/{project_id}", {"rpm": 2})
    key_b = admin(lim, "POST", "/keys", {"account": meta["account_id"], "project": "shared"})[
        "secret"
    ]
    with sdk(lim, key_a) as a, sdk(lim, key_b) as b:
        a.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)
        b.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as exc:
            a.chat.completions.create(model="sim-1", messages=MSG, max_tokens=2)
        assert "project" in exc.value.body["message"]


def test_revoke_ends_a_running_stream_within_100ms(lim):
    key, meta = new_key(lim)
    stream = SlowStream(lim.base_url, key)
    assert stream.first.wait(10)
    time.sleep(0.2)
    admin(lim, "POST", f"/keys/{meta['id']}/revoke")
    revoked_at = time.monotonic()
    stream.join(5)
    took_ms = (stream.ended_at - revoked_at) * 1000
    assert took_ms < 100, f"the stream ended {took_ms:.0f} ms after the revoke returned"
    assert b'"code":"key_revoked"' in stream.body and not stream.body.endswith(b"data: [DONE]\n\n")
    with sdk(lim, key) as client:
        with pytest.raises(openai.AuthenticationError) as exc:
            client.chat.completions.create(model="sim-1", messages=MSG)
        assert exc.value.body["code"] == "key_revoked"
    receipt = admin(lim, "GET", f"/receipts/{stream.receipt_id}")
    assert receipt["status"] == "cancelled" and receipt["completion_tokens"] > 0


def test_revoke_ends_every_stream_of_that_key_and_no_other(lim):
    key, meta = new_key(lim)
    other_key, other_meta = new_key(lim)
    mine = [SlowStream(lim.base_url, key), SlowStream(lim.base_url, key)]
    other = SlowStream(lim.base_url, other_key)
    assert all(s.first.wait(10) for s in (*mine, other))
    admin(lim, "POST", f"/keys/{meta['id']}/revoke")
    for s in mine:
        s.join(5)
        assert b'"code":"key_revoked"' in s.body
    time.sleep(0.3)
    assert not other.ended.is_set() and b"key_revoked" not in other.body  # still running
    admin(lim, "POST", f"/keys/{other_meta['id']}/revoke")  # and ends the same way
    other.join(5)
    assert b'"code":"key_revoked"' in other.body


def test_expired_key_behaves_as_revoked(lim):
    key, meta = new_key(lim)
    admin(lim, "PATCH", f"/keys/{meta['id']}", {"expires_at": int(time.time()) + 1})
    time.sleep(1.2)
    with sdk(lim, key) as client, pytest.raises(openai.AuthenticationError) as exc:
        client.chat.completions.create(model="sim-1", messages=MSG)
    assert exc.value.body["code"] == "key_revoked"
