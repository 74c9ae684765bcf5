"""The operating CLI as real processes: on the store directly, then through a running server."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import httpx
import openai
import pytest

from tests.support import ROOT, MeshServer

TOKEN = "cli-test-admin-token"


def meshfast(tmp_path, *args: str, token: str = "", port: int | None = None, store=None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MESHFAST_STORE_PATH": str(store or tmp_path / "db" / "m.db"),
        "MESHFAST_ADMIN_TOKEN": token,
        "MESHFAST_CONFIG": "",
        "MESHFAST_ADMIN_URL": "",
    }
    if port is not None:
        env["MESHFAST_PORT"] = str(port)
    return subprocess.run(
        [sys.executable, "-m", "meshfast", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def ok(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 0, (p.args, p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return p.stdout


def chat(server: MeshServer, key: str):
    with openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=20) as c:
        return c.chat.completions.create(model="sim-1", messages=[{"role": "user", "content": "hi"}])


def test_cli_on_the_store_then_through_the_running_server(tmp_path):
    ok(meshfast(tmp_path, "accounts", "create", "acme", "--margin-pct", "2.5"))
    assert "$5" in ok(meshfast(tmp_path, "topup", "acme", "--usd", "5"))
    p = meshfast(tmp_path, "keys", "create", "--account", "acme", "--project", "web", "--rpm", "60", "--monthly-usd", "3")
    key = ok(p).splitlines()[-1]
    assert key.startswith("mesh_live_") and len(key) == 50
    assert "acme" in p.stderr and "web" in p.stderr
    listed = ok(meshfast(tmp_path, "keys", "list"))
    assert key[:14] in listed and key not in listed and "rpm=60" in listed
    assert "acme" in ok(meshfast(tmp_path, "accounts", "list"))
    assert ok(meshfast(tmp_path, "ledger", "verify")).strip() == "ledger ok: 1 accounts"
    p = meshfast(tmp_path, "accounts", "show", "nobody")
    assert p.returncode == 1 and p.stderr.startswith("meshfast: ") and "Traceback" not in p.stderr

    store = tmp_path / "db" / "m.db"
    env = {"MESHFAST_ADMIN_TOKEN": TOKEN, "MESHFAST_STORE_PATH": str(store)}
    with MeshServer(tmp_path, "", env=env, store_path=store, usd="") as server:
        assert chat(server, key).choices

        # The server holds the store: without the admin token the CLI says what to do.
        p = meshfast(tmp_path, "keys", "list", port=server.port)
        assert p.returncode == 2
        assert "in use by a running meshfast server" in p.stderr and "MESHFAST_ADMIN_TOKEN" in p.stderr

        # With it, the same commands go through the server's admin API.
        assert "balance $14.99" in ok(meshfast(tmp_path, "topup", "acme", "--usd", "10", "--chain", "base", "--tx", "0x1", token=TOKEN, port=server.port))
        assert "already credited" in ok(meshfast(tmp_path, "topup", "acme", "--usd", "10", "--chain", "base", "--tx", "0x1", token=TOKEN, port=server.port))
        p = meshfast(tmp_path, "topup", "acme", "--usd", "11", "--chain", "base", "--tx", "0x1", token=TOKEN, port=server.port)
        assert p.returncode == 1 and "already credited" in p.stderr
        usage = ok(meshfast(tmp_path, "usage", "--group-by", "model", "--json", token=TOKEN, port=server.port))
        assert '"calls": 1' in usage and '"sim-1"' in usage
        receipts = ok(meshfast(tmp_path, "receipts", "list", "--account", "acme", token=TOKEN, port=server.port))
        rid = receipts.splitlines()[1].split()[0]
        assert rid.startswith("rcpt_")
        assert "sim-1" in ok(meshfast(tmp_path, "receipts", "show", rid, token=TOKEN, port=server.port))

        key_id = ok(meshfast(tmp_path, "keys", "list", "--json", token=TOKEN, port=server.port)).split('"id": "')[1].split('"')[0]
        assert "revoked key" in ok(meshfast(tmp_path, "keys", "revoke", key_id, token=TOKEN, port=server.port))
        with pytest.raises(openai.AuthenticationError):
            chat(server, key)
        balance = httpx.get(f"{server.url}/admin/v1/accounts/acme", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert balance["balance_usd"].startswith("14.99")
        assert ok(meshfast(tmp_path, "ledger", "verify", token=TOKEN, port=server.port)).strip() == "ledger ok: 1 accounts"

    # The server is gone: the CLI is back on the store, which kept everything.
    assert "revoked" in ok(meshfast(tmp_path, "keys", "list"))
    assert ok(meshfast(tmp_path, "ledger", "verify")).strip() == "ledger ok: 1 accounts"


def test_ledger_verify_names_the_account_that_does_not_add_up(tmp_path):
    ok(meshfast(tmp_path, "accounts", "create", "acme"))
    ok(meshfast(tmp_path, "accounts", "create", "globex"))
    ok(meshfast(tmp_path, "topup", "acme", "--usd", "5"))
    ok(meshfast(tmp_path, "topup", "globex", "--usd", "7.25"))
    assert ok(meshfast(tmp_path, "ledger", "verify")).strip() == "ledger ok: 2 accounts"

    bad = tmp_path / "bad" / "m.db"
    bad.parent.mkdir()
    for suffix in ("", "-wal", "-shm"):
        src = tmp_path / "db" / ("m.db" + suffix)
        if src.exists():
            shutil.copy(src, str(bad) + suffix)
    with sqlite3.connect(bad) as conn:
        conn.execute("UPDATE accounts SET balance_nano = balance_nano + 1000000000 WHERE name = 'globex'")
    conn.close()

    p = meshfast(tmp_path, "ledger", "verify", store=bad)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "globex" in p.stdout and "acme" not in p.stdout and "8.25" in p.stdout
    assert ok(meshfast(tmp_path, "ledger", "verify")).strip() == "ledger ok: 2 accounts"  # the original is fine


def test_cli_errors_are_one_line_and_serve_help_still_works(tmp_path):
    p = meshfast(tmp_path, "topup", "nobody", "--usd", "1")
    assert p.returncode == 1 and p.stderr.strip() == "meshfast: No account 'nobody'."
    p = meshfast(tmp_path, "accounts", "create", "acme", "--fee-usd", "0.1.2")
    assert p.returncode == 1 and "fee_usd" in p.stderr
    p = meshfast(tmp_path, "topup", "acme", "--usd", "1", "--chain", "base")
    assert p.returncode == 2 and "--tx" in p.stderr
    assert "--workers" in ok(subprocess.run([sys.executable, "-m", "meshfast", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60))
    assert "ok" in ok(meshfast(tmp_path, "check-config"))
