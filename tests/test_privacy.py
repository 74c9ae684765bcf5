"""Privacy classes end to end: refusals, the enforced class echoed, and no content kept."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support import MeshServer

ADMIN = "privacy-admin-token-" + "z" * 20
MARKER = "zebra-quokka-7731-marker"


@pytest.fixture(scope="module")
def priv(tmp_path_factory, fake_upstream):
    tmp = tmp_path_factory.mktemp("privacy")
    text = (
        "[server]\nlog_level = 'debug'\n\n"
        "[[providers]]\nname = 'vault'\nkind = 'openai'\n"
        f"base_url = '{fake_upstream.base_url}'\nprivacy = 'confidential'\n\n"
        "[[providers.models]]\nid = 'vault-echo'\nupstream = 'echo'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n\n"
        "[[providers.models]]\nid = 'vault-stream'\nupstream = 'stream'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n"
    )
    with MeshServer(tmp, text, env={"MESHFAST_ADMIN_TOKEN": ADMIN}) as server:
        yield server


def sdk(server):
    return openai.OpenAI(base_url=server.base_url, api_key=server.key, max_retries=0)


def test_class_above_what_endpoints_meet_is_403(priv):
    with sdk(priv) as client:
        with pytest.raises(openai.PermissionDeniedError) as exc:
            client.chat.completions.create(
                model="sim-1",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-mesh-privacy": "protected"},
            )
    assert exc.value.body["code"] == "privacy_class_unavailable"
    assert "protected" in exc.value.body["message"]


def test_enforced_class_is_echoed_and_body_field_works(priv, fake_upstream):
    with sdk(priv) as client:
        r = client.chat.completions.with_raw_response.create(
            model="vault-echo",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"mesh": {"privacy": "confidential"}},
        )
    assert r.headers["x-mesh-privacy"] == "confidential"
    assert "mesh" not in fake_upstream.requests[-1]["body"], "the mesh field is not sent upstream"


@pytest.mark.parametrize("klass", ["private_gateway", "confidential"])
def test_no_prompt_or_completion_text_is_kept(priv, klass):
    prompt = f"my secret is {MARKER}-{klass}"
    with sdk(priv) as client:
        r = client.chat.completions.with_raw_response.create(
            model="vault-echo",
            messages=[{"role": "user", "content": prompt}],
            extra_headers={"x-mesh-privacy": klass},
        )
        assert MARKER in r.parse().choices[0].message.content  # the echo upstream returned it
        chunks = list(
            client.chat.completions.create(
                model="vault-stream",
                messages=[{"role": "user", "content": prompt}],
                stream=True,
                extra_headers={"x-mesh-privacy": klass},
            )
        )
        assert chunks
        rid = r.headers["x-mesh-receipt-id"]
        receipt = client.get(f"/receipts/{rid}", cast_to=object)
    assert receipt["privacy"] == "confidential" and MARKER not in str(receipt)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    listing = httpx.get(priv.url + "/admin/v1/receipts", headers=admin).text
    assert MARKER not in listing
    assert httpx.get(priv.url + "/admin/v1/ledger/verify", headers=admin).json()[
        "ok"
    ]  # flushes the writer
    store_dir = priv.store_path.parent
    for f in store_dir.iterdir():
        assert MARKER.encode() not in f.read_bytes(), f"content found in {f.name}"
    assert MARKER not in priv.output(), "content found in the server log (debug level)"


def test_key_default_and_minimum_class(priv):
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = httpx.post(priv.url + "/admin/v1/accounts", json={"name": "policy"}, headers=admin)
    assert r.status_code == 201
    httpx.post(
        priv.url + "/admin/v1/accounts/policy/topups",
        json={"amount_usd": "1", "chain": "manual", "tx_id": "policy-1"},
        headers=admin,
    )
    key = httpx.post(
        priv.url + "/admin/v1/keys",
        json={
            "account": "policy",
            "project": "p",
            "privacy_default": "private_gateway",
            "privacy_min": "protected",
        },
        headers=admin,
    ).json()
    assert key["limits"]["privacy_min"] == "protected"
    with openai.OpenAI(base_url=priv.base_url, api_key=key["secret"], max_retries=0) as client:
        r = client.chat.completions.with_raw_response.create(
            model="vault-echo", messages=[{"role": "user", "content": "x"}]
        )
        assert r.headers["x-mesh-privacy"] == "private_gateway", "the key's default applies"
        r = client.chat.completions.with_raw_response.create(
            model="vault-echo",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-mesh-privacy": "standard"},
        )
        assert r.headers["x-mesh-privacy"] == "protected", (
            "a call cannot go below the key's minimum"
        )
        with pytest.raises(openai.PermissionDeniedError):  # sim is standard: below the minimum
            client.chat.completions.create(
                model="sim-1",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-mesh-privacy": "standard"},
            )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="vault-echo",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-mesh-privacy": "bogus"},
            )
