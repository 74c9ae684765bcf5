"""The admin API over real HTTP against a `meshfast serve` process (fresh store per test)."""

from __future__ import annotations

import httpx
import openai
import pytest

from meshfast.money import nano_to_usd, usd_to_nano
from tests.support import MeshServer

TOKEN = "admin-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start(tmp_path, token: str = TOKEN) -> MeshServer:
    store = tmp_path / "db" / "m.db"
    env = {"MESHFAST_ADMIN_TOKEN": token, "MESHFAST_STORE_PATH": str(store)}
    return MeshServer(tmp_path, "", env=env, store_path=store, usd="").start()


@pytest.fixture
def server(tmp_path):
    s = start(tmp_path)
    yield s
    assert s.stop() == 0, s.output()


@pytest.fixture
def admin(server):
    with httpx.Client(base_url=server.url + "/admin/v1", headers=AUTH, timeout=10) as c:
        yield c


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


def test_admin_api_is_off_without_a_token(tmp_path):
    s = start(tmp_path, token="")
    try:
        for headers in ({}, AUTH):
            err = error_of(httpx.get(s.url + "/admin/v1/accounts", headers=headers), 404)
            assert "MESHFAST_ADMIN_TOKEN" in err["message"]
    finally:
        s.stop()


def test_wrong_or_missing_token_is_401_with_one_answer(server):
    url = server.url + "/admin/v1/accounts"
    answers = []
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
        err = error_of(httpx.get(url, headers=headers), 401)
        assert err["code"] == "invalid_admin_token"
        answers.append(err)
    assert all(a == answers[0] for a in answers)
    r = httpx.get(url, headers=AUTH)
    assert r.status_code == 200 and r.json() == {"object": "list", "data": []}
    assert r.headers["cache-control"] == "no-store"


def test_accounts_projects_topups_keys_flow(admin):
    r = admin.post("/accounts", json={"name": "acme", "margin_pct": "2.5", "fee_usd": "0.001"})
    assert r.status_code == 201, r.text
    acct = r.json()
    assert acct["id"].startswith("acct_") and acct["margin_pct"] == "2.5" and acct["fee_usd"] == "0.001"
    assert error_of(admin.post("/accounts", json={"name": "acme"}), 409)["param"] == "name"
    assert admin.get("/accounts/acme").json()["id"] == acct["id"]
    assert admin.get(f"/accounts/{acct['id']}").json()["name"] == "acme"
    assert [a["name"] for a in admin.get("/accounts").json()["data"]] == ["acme"]
    assert error_of(admin.get("/accounts/nobody"), 404)["code"] == "account_not_found"

    assert admin.post("/accounts/acme/projects", json={"name": "web"}).status_code == 201
    assert error_of(admin.post("/accounts/acme/projects", json={"name": "web"}), 409)["param"] == "name"

    r = admin.post("/accounts/acme/topups", json={"amount_usd": "12.50", "chain": "base", "tx_id": "0xaa"})
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["duplicate"] is False and t["amount_usd"] == "12.5" and t["chain"] == "base"
    assert admin.get("/accounts/acme").json()["balance_usd"] == "12.5"

    r = admin.post("/keys", json={"account": "acme", "project": "web", "name": "ci", "rpm": 60, "monthly_usd": "5", "concurrency": 2})
    assert r.status_code == 201, r.text
    key = r.json()
    assert key["secret"].startswith("mesh_live_") and key["prefix"] == key["secret"][:14]
    assert key["limits"] == {"rpm": 60, "tpm": None, "monthly_usd": "5", "daily_usd": None, "concurrency": 2, "privacy_default": None, "privacy_min": None}
    assert "hash" not in key
    # A project that does not exist yet is created for the key.
    r = admin.post("/keys", json={"account": acct["id"], "project": "batch"})
    assert r.status_code == 201, r.text
    assert sorted(p["name"] for p in admin.get("/accounts/acme/projects").json()["data"]) == ["batch", "web"]

    r = admin.patch(f"/keys/{key['id']}", json={"rpm": None, "tpm": 1000, "expires_at": 4102444800})
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["rpm"] is None and r.json()["limits"]["tpm"] == 1000
    assert r.json()["expires_at"] == 4102444800


BAD_REQUESTS = [
    ("POST", "/accounts", {}, 400, "name"),
    ("POST", "/accounts", {"name": 7}, 400, "name"),
    ("POST", "/accounts", {"name": "x", "margin_pct": "-1"}, 400, "margin_pct"),
    ("POST", "/accounts", {"name": "x", "colour": "red"}, 400, "colour"),
    ("POST", "/accounts/acme/topups", {"amount_usd": 1.5, "chain": "manual", "tx_id": "a"}, 400, "amount_usd"),
    ("POST", "/accounts/acme/topups", {"amount_usd": "-3", "chain": "manual", "tx_id": "a"}, 400, "amount_usd"),
    ("POST", "/accounts/acme/topups", {"amount_usd": "0", "chain": "manual", "tx_id": "a"}, 400, "amount_usd"),
    ("POST", "/accounts/acme/topups", {"amount_usd": "1.0000000001", "chain": "manual", "tx_id": "a"}, 400, "amount_usd"),
    ("POST", "/accounts/acme/topups", {"amount_usd": "1", "chain": "ethereum", "tx_id": "a"}, 400, "chain"),
    ("POST", "/accounts/acme/topups", {"amount_usd": "1", "chain": "manual"}, 400, "tx_id"),
    ("POST", "/keys", {"account": "acme", "project": "p", "rpm": "ten"}, 400, "rpm"),
    ("POST", "/keys", {"account": "acme", "project": "p", "tpm": 0}, 400, "tpm"),
    ("POST", "/keys", {"account": "acme", "project": "p", "daily_usd": "1e3"}, 400, "daily_usd"),
    ("POST", "/keys", {"account": "acme", "project": "p", "expires_at": 1000}, 400, "expires_at"),
    ("POST", "/keys", {"account": "acme"}, 400, "project"),
    ("GET", "/usage?group_by=planet", None, 400, "group_by"),
    ("GET", "/receipts?limit=lots", None, 400, "limit"),
    ("GET", "/receipts/rcpt_nope", None, 404, None),
    ("GET", "/nowhere", None, 404, None),
    ("DELETE", "/accounts", None, 405, None),
    ("GET", "/keys/abc/revoke", None, 405, None),
]


def test_bad_requests_say_what_is_wrong(admin):
    admin.post("/accounts", json={"name": "acme"})
    for method, path, body, status, param in BAD_REQUESTS:
        r = admin.request(method, path, json=body)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), (method, path, body, r.text)
        assert r.json()["error"]["message"]
    assert admin.get("/accounts/acme").json()["balance_usd"] == "0"
    assert admin.get("/accounts/acme/projects").json()["data"] == []  # no half-done key creation


def test_bad_json_is_400(admin):
    r = admin.post("/accounts", content=b'{"name": ', headers={"content-type": "application/json"})
    assert error_of(r, 400)["code"] == "invalid_json"
    assert error_of(admin.post("/accounts", json=["acme"]), 400)["code"] == "invalid_request"


def test_topups_are_idempotent_per_chain_and_transaction(admin):
    admin.post("/accounts", json={"name": "acme"})
    body = {"amount_usd": "5", "chain": "solana", "tx_id": "5sig"}
    first = admin.post("/accounts/acme/topups", json=body)
    again = admin.post("/accounts/acme/topups", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["duplicate"] is True and again.json()["id"] == first.json()["id"]
    assert admin.get("/accounts/acme").json()["balance_usd"] == "5"
    # The same transaction with another amount is a conflict, not a second credit.
    err = error_of(admin.post("/accounts/acme/topups", json={**body, "amount_usd": "6"}), 409)
    assert err["param"] == "tx_id"
    # The same id on another chain is another transaction.
    assert admin.post("/accounts/acme/topups", json={**body, "chain": "base"}).status_code == 201
    assert admin.get("/accounts/acme").json()["balance_usd"] == "10"


def test_keys_list_never_shows_secrets_and_revoke(server, admin):
    admin.post("/accounts", json={"name": "acme"})
    admin.post("/accounts/acme/topups", json={"amount_usd": "5", "chain": "manual", "tx_id": "t1"})
    keys = [admin.post("/keys", json={"account": "acme", "project": p}).json() for p in ("web", "web", "batch")]
    r = admin.get("/keys")
    for k in keys:
        assert k["secret"] not in r.text
    assert all("secret" not in k and "hash" not in k for k in r.json()["data"])
    assert [k["id"] for k in r.json()["data"]] == [k["id"] for k in keys]
    assert len(admin.get("/keys", params={"account": "acme", "project": "web"}).json()["data"]) == 2

    with openai.OpenAI(base_url=server.base_url, api_key=keys[0]["secret"], max_retries=0, timeout=20) as c:
        assert c.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "hi"}]).choices
        r = admin.post(f"/keys/{keys[0]['id']}/revoke")
        assert r.status_code == 200 and r.json()["revoked"] is True
        with pytest.raises(openai.AuthenticationError) as exc:
            c.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "hi"}])
        assert exc.value.code == "key_revoked"
    assert [k["revoked"] for k in admin.get("/keys").json()["data"]] == [True, False, False]
    assert error_of(admin.post("/keys/key_nope/revoke"), 404)["code"] == "key_not_found"


def test_usage_receipts_and_ledger_after_chat_calls(server, admin):
    admin.post("/accounts", json={"name": "acme"})
    admin.post("/accounts/acme/topups", json={"amount_usd": "5", "chain": "manual", "tx_id": "t1"})
    key = admin.post("/keys", json={"account": "acme", "project": "web"}).json()
    receipt_ids = []
    with openai.OpenAI(base_url=server.base_url, api_key=key["secret"], max_retries=0, timeout=20) as c:
        for _ in range(3):
            raw = c.chat.completions.with_raw_response.create(model="sim-1", messages=[{"role": "user", "content": "hello"}])
            receipt_ids.append(raw.headers["x-mesh-receipt-id"])

    listed = admin.get("/receipts", params={"account": "acme"}).json()["data"]
    assert sorted(r["id"] for r in listed) == sorted(receipt_ids)
    assert len(admin.get("/receipts", params={"key": key["id"], "limit": "2"}).json()["data"]) == 2
    one = admin.get(f"/receipts/{receipt_ids[0]}").json()
    assert one["object"] == "receipt" and one["model"] == "sim-1" and one["key_id"] == key["id"]

    by_model = admin.get("/usage", params={"group_by": "model"}).json()["data"]
    assert [(u["model"], u["calls"]) for u in by_model] == [("sim-1", 3)]
    by_account = admin.get("/usage", params={"group_by": "account", "account": "acme", "since": "2020-01-01"}).json()
    assert by_account["data"][0]["account_name"] == "acme" and by_account["data"][0]["calls"] == 3
    assert admin.get("/usage", params={"group_by": "day", "since": "4102444800"}).json()["data"] == []

    total = sum(usd_to_nano(r["total_usd"]) for r in listed)
    assert total > 0
    assert admin.get("/accounts/acme").json()["balance_usd"] == nano_to_usd(usd_to_nano("5") - total)
    assert admin.get("/ledger/verify").json() == {"ok": True, "accounts": 1, "problems": []}
