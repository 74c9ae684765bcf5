"""The server as a process: drain on SIGTERM, client disconnects, config errors, twins end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tests.support import ROOT, MeshServer, free_port, local_provider_toml

CHAT = {"model": "sim-1", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def test_sigterm_drains_in_flight_stream(tmp_path):
    server = MeshServer(tmp_path, "[server]\ngrace_seconds = 10\n").start()
    result: dict = {}

    def consume():
        with httpx.stream(
            "POST",
            server.base_url + "/chat/completions",
            json=CHAT,
            headers={"x-mesh-sim-tps": "25", "Authorization": f"Bearer {server.key}"},
            timeout=10,
        ) as r:
            result["body"] = b"".join(r.iter_bytes())

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.4)  # the stream is under way (32 tokens at 25/s take ~1.3 s)
    server.terminate()
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/health", timeout=1)  # no new requests
    t.join(10)
    assert server.proc.wait(15) == 0
    server.stop()
    body = result["body"]
    assert body.endswith(b"data: [DONE]\n\n"), "the in-flight stream finished cleanly"
    assert body.count(b'"content":') >= 33


def test_client_disconnect_cancels_upstream(mesh, fake_upstream):
    before = fake_upstream.aborted_streams
    completed = fake_upstream.completed_streams
    with httpx.stream(
        "POST",
        mesh.base_url + "/chat/completions",
        json={
            "model": "up-slow-stream",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        },
        headers={"Authorization": f"Bearer {mesh.key}"},
    ) as r:
        it = r.iter_raw()
        next(it)
    deadline = time.monotonic() + 5
    while fake_upstream.aborted_streams == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_upstream.aborted_streams == before + 1, "meshfast closed the upstream request"
    assert fake_upstream.completed_streams == completed
    with openai.OpenAI(base_url=mesh.base_url, api_key=mesh.key, max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="up-stream", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert chunks[-1].choices[0].finish_reason == "stop", "the pool serves cleanly afterwards"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meshfast", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[server]\nport = 'eighty'\n", "server.port", "must be int"),
        ("[server]\nworkers = 0\n", "server.workers", "at least 1"),
        ("[server]\nbogus = 1\n", "server.bogus", "unknown key"),
        (
            "[[providers]]\nname = 'x'\nkind = 'openai'\nbase_url = 'ftp://x'\n",
            "providers[0].base_url",
            "http:// or https://",
        ),
        ("[[providers]]\nname = 'x'\nkind = 'grpc'\n", "providers[0].kind", "must be one of"),
        (
            "[[providers]]\nname = 'x'\nkind = 'openai'\nbase_url = 'http://h/v1'\nprivacy = 'secret'\n[[providers.models]]\nid = 'm'\n",
            "providers[0].privacy",
            "must be one of",
        ),
        (
            "[[providers]]\nname = 'x'\nkind = 'openai'\nbase_url = 'http://h/v1'\n[[providers.models]]\nid = 'm'\ninput_usd_per_mtok = -1\n",
            "providers[0].models[0].input_usd_per_mtok",
            "non-negative decimal",
        ),
        (
            "[[providers]]\nname = 'x'\nkind = 'openai'\nbase_url = 'http://h/v1'\n",
            "providers[0].models",
            "at least one",
        ),
        ("[server\n", "-", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(tmp_path, text, key, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for command in ("serve", "check-config"):
        proc = run_cli(command, "--config", str(path))
        assert proc.returncode == 2, proc.stderr
        assert str(path) in proc.stderr and key in proc.stderr and problem in proc.stderr, (
            proc.stderr
        )
        assert "Traceback" not in proc.stderr


def test_missing_config_file_and_bad_env(tmp_path):
    proc = run_cli("serve", "--config", str(tmp_path / "nope.toml"))
    assert proc.returncode == 2 and "file not found" in proc.stderr
    proc = run_cli("check-config", env={"MESHFAST_PORT": "http"})
    assert proc.returncode == 2 and "MESHFAST_PORT" in proc.stderr


def test_env_overrides_file(tmp_path):
    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\nport = 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshfast", "serve", "--config", str(cfg)],
        cwd=ROOT,
        env={
            **os.environ,
            "MESHFAST_PORT": str(port),
            "MESHFAST_STORE_PATH": str(tmp_path / "store" / "m.db"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start on MESHFAST_PORT")
    finally:
        proc.terminate()
        proc.wait(15)


def test_pure_python_twins_end_to_end(tmp_path, fake_upstream):
    """The whole data path with MESHFAST_NO_EXTENSIONS=1 behaves the same."""
    with MeshServer(
        tmp_path, local_provider_toml(fake_upstream.base_url), env={"MESHFAST_NO_EXTENSIONS": "1"}
    ) as server:
        with openai.OpenAI(base_url=server.base_url, api_key=server.key, max_retries=0) as client:
            c = client.chat.completions.create(
                model="up-stream", messages=[{"role": "user", "content": "x"}]
            )
            assert c.choices[0].message.content == "Hello from the fake upstream"
            chunks = list(
                client.chat.completions.create(
                    model="up-stream",
                    messages=[{"role": "user", "content": "x"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert (
                "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                == "Hello from the fake upstream"
            )
            assert chunks[-1].usage.total_tokens == 16
            with pytest.raises(openai.APIError):
                list(
                    client.chat.completions.create(
                        model="up-break", messages=[{"role": "user", "content": "x"}], stream=True
                    )
                )


def test_demo_prints_a_working_key_once(tmp_path):
    store = tmp_path / "demo" / "m.db"
    port = free_port()
    env = {**os.environ, "MESHFAST_STORE_PATH": str(store), "MESHFAST_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshfast", "serve", "--demo"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        key = None
        for line in proc.stdout:
            if line.strip().startswith("mesh_live_"):
                key = line.strip()
                break
        assert key, "the demo key was printed"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
        ) as client:
            c = client.chat.completions.create(
                model="sim-1", messages=[{"role": "user", "content": "hi"}]
            )
            assert c.choices[0].message.content
            assert client.get("/balance", cast_to=object)["balance_usd"] < "5"
    finally:
        proc.terminate()
        proc.wait(15)
        proc.stdout.close()
    again = run_cli(
        "serve", "--demo", env={"MESHFAST_STORE_PATH": str(store), "MESHFAST_WORKERS": "2"}
    )
    assert (
        again.returncode == 2
        and "server.workers" in again.stderr
        and "shared store" in again.stderr
    )


def test_store_in_use_is_refused(tmp_path):
    with MeshServer(tmp_path) as server:
        proc = run_cli(
            "serve", "--port", str(free_port()), env={"MESHFAST_STORE_PATH": str(server.store_path)}
        )
    assert proc.returncode == 2
    assert "in use by another meshfast process" in proc.stderr


def test_forked_workers_get_their_own_id_sequence():
    """granian forks its workers from the process that imported meshfast: each child must
    hand out hold and receipt ids of its own (a shared sequence once billed one call and
    dropped the other's receipt as a duplicate)."""
    from meshfast.store.base import new_id

    before = new_id("rcpt_")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id, then leave without running any cleanup
        os.write(w, new_id("rcpt_").encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 200).decode()
    os.close(r)
    parent = new_id("rcpt_")
    assert child.startswith("rcpt_") and child != parent
    assert child[5:21] != parent[5:21] == before[5:21]  # the child's process part is its own
