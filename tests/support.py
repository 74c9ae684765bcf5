"""Helpers to run meshfast as a real server process in tests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("MESHFAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not _redis_up(), reason=f"no Redis at {REDIS_URL} (the test machines run one)")


def redis_client(url: str = REDIS_URL):
    """A synchronous client for ``url``: redis-py's cluster client when it names a Redis
    Cluster node (tests can run against a cluster with MESHFAST_TEST_REDIS_URL)."""
    import redis
    from redis.cluster import RedisCluster

    r = redis.Redis.from_url(url)
    if int(r.info("cluster").get("cluster_enabled", 0)):
        r.close()
        return RedisCluster.from_url(url)
    return r


def drop_prefix(prefix: str, url: str = REDIS_URL) -> None:
    """Delete every Redis key a test made under ``prefix``."""
    import redis
    from redis.cluster import RedisCluster

    r = redis.Redis.from_url(url)
    if int(r.info("cluster").get("cluster_enabled", 0)):  # every node, a key at a time
        with RedisCluster.from_url(url) as cluster:
            for key in list(cluster.scan_iter(match=prefix + ":*", count=1000)):
                cluster.delete(key)
        return
    keys = list(r.scan_iter(match=prefix + ":*", count=1000))
    if keys:
        r.delete(*keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_provider_toml(
    base_url: str, *, first_byte_timeout: float = 1.0, name: str = "local"
) -> str:
    models = ["echo", "stream", "slow", "slow-stream", "break", "err-429", "err-500", "err-400", "hang"]
    out = [
        "[[providers]]",
        f'name = "{name}"',
        'kind = "openai"',
        f'base_url = "{base_url}"',
        'api_key_env = "FAKE_UPSTREAM_KEY"',
        f"first_byte_timeout = {first_byte_timeout}",
        "read_timeout = 2.0",
    ]
    for m in models:
        out += [
            "",
            "[[providers.models]]",
            f'id = "up-{m}"',
            f'upstream = "{m}"',
            "input_usd_per_mtok = 0.15",
            "output_usd_per_mtok = 0.60",
        ]
    out += [
        "",
        "[[providers.models]]",
        'id = "up-embed"',
        'upstream = "embed"',
        'kind = "embedding"',
        "input_usd_per_mtok = 0.02",
    ]
    return "\n".join(out) + "\n"


def provision(store_path: Path, *, usd: str = "100", account: str = "test", limits=None) -> str:
    """Create an account with a balance and a key on a store no server holds; return the key."""
    from meshfast.config import StoreConfig
    from meshfast.money import usd_to_nano
    from meshfast.store import open_store

    store = open_store(StoreConfig(path=str(store_path), synchronous="NORMAL"))

    async def create() -> str:
        try:
            acct = await store.account(account)
        except Exception:
            acct = await store.create_account(account)
        project = await store.create_project(acct.id, f"p{len(await store.projects(acct.id))}")
        if usd != "0":
            await store.topup(acct.id, usd_to_nano(usd), "manual", f"test-{os.urandom(6).hex()}")
        _key, secret = await store.create_key(project, name="test", limits=limits)
        return secret

    try:
        secret = asyncio.run(create())
    finally:
        store.close_sync()
    return secret


class MeshServer:
    """``meshfast serve`` in a subprocess on a free port, with a config written to ``tmp``."""

    def __init__(
        self,
        tmp: Path,
        config_text: str = "",
        *,
        env: dict[str, str] | None = None,
        workers: int = 1,
        store_path: Path | None = None,
        usd: str = "100",
    ) -> None:
        self.port = free_port()
        self.config = tmp / f"meshfast-{self.port}.toml"
        self.config.write_text(config_text)
        self.log = tmp / f"meshfast-{self.port}.log"
        self.store_path = store_path or tmp / f"store-{self.port}" / "meshfast.db"
        self.key = provision(self.store_path, usd=usd) if usd else ""
        self.env = {
            **os.environ,
            "FAKE_UPSTREAM_KEY": "sk-fake-upstream",
            "MESHFAST_STORE_PATH": str(self.store_path),
            **(env or {}),
        }
        self.workers = workers
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 30.0) -> MeshServer:
        self._logfh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meshfast",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._logfh,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"meshfast exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"meshfast did not become healthy:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def terminate(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logfh.close()
        return self.proc.returncode

    def __enter__(self) -> MeshServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class SlowStream:
    """A long simulator stream (400 tokens at 20 a second) read in a thread: the receipt
    id, the raw body so far, and when it ended, so a test can cut it off mid-way."""

    def __init__(self, base_url: str, key: str) -> None:
        self.receipt_id = ""
        self.chunks: list[bytes] = []
        self.ended_at = 0.0
        self.first = threading.Event()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(base_url, key))
        self._thread.start()

    def _read(self, base_url: str, key: str) -> None:
        try:
            with httpx.stream(
                "POST",
                base_url + "/chat/completions",
                json={"model": "sim-1", "messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 400},
                headers={"Authorization": f"Bearer {key}", "x-mesh-sim-tps": "20", "x-mesh-sim-tokens": "400"},
                timeout=30,
            ) as r:
                self.receipt_id = r.headers["x-mesh-receipt-id"]
                for chunk in r.iter_raw():
                    self.chunks.append(chunk)
                    self.first.set()
        finally:
            self.ended_at = time.monotonic()
            self.ended.set()

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def join(self, timeout: float) -> None:
        assert self.ended.wait(timeout), "the stream did not end"
        self._thread.join()


def cluster_port(taken: list[int] | tuple[int, ...] = ()) -> int:
    """A free port for a Redis Cluster node, whose cluster bus (port + 10000) is free too."""

    def bindable(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    while True:
        p = free_port()
        if p + 10000 <= 65535 and p not in taken and bindable(p + 10000):
            return p


def raw_command(port: int, command: bytes = b"PING\r\n") -> bytes:
    """One inline command to a local Redis and the start of its reply (b"" if it does not
    answer): for servers that redis-py should not be pointed at yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(command)
            return conn.recv(4096)
    except OSError:
        return b""


class RedisClusterNodes:
    """A Redis Cluster of three primaries (and ``replicas`` replicas of each) on free ports
    (each node also listens on its port + 10000, the cluster bus), for tests of the Redis
    store on a cluster. A primary that stops answering for ``node_timeout_ms`` is failed
    over to one of its replicas."""

    def __init__(self, workdir: Path, replicas: int = 0, node_timeout_ms: int = 15000) -> None:
        self.workdir = workdir
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.procs: list[subprocess.Popen] = []
        self.ports: list[int] = []

    def _port(self) -> int:
        return cluster_port(self.ports)

    _ping = staticmethod(raw_command)

    def start(self) -> str:
        import shutil

        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.skip("redis-server and redis-cli are needed to start a Redis Cluster")
        for i in range(3 * (1 + self.replicas)):
            port = self._port()
            self.ports.append(port)
            d = self.workdir / f"node{i}"
            d.mkdir()
            self.procs.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
                 "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no", "--dir", str(d)],
                stdout=subprocess.DEVNULL,
            ))  # fmt: skip
        deadline = time.monotonic() + 10
        while not all(self._ping(p).startswith(b"+PONG") for p in self.ports):
            assert all(p.poll() is None for p in self.procs), "a cluster node exited at start"
            assert time.monotonic() < deadline, "the cluster nodes did not start"
            time.sleep(0.05)
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not all(b"cluster_state:ok" in self._ping(p, b"CLUSTER INFO\r\n") for p in self.ports):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.1)
        # a replica takes over only once it has synced with its primary
        while self.replicas and sum(b"master_link_status:up" in self._ping(p, b"INFO replication\r\n") for p in self.ports) < 3 * self.replicas:
            assert time.monotonic() < deadline, "the replicas did not sync with their primaries"
            time.sleep(0.1)
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def kill(self, port: int) -> None:
        """Stop one node at once, as a crash would."""
        self.procs[self.ports.index(port)].kill()

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def receipt_for(key, total: int, upstream: int, tokens: int = 10):
    """A receipt of ``total`` nano-USD (``upstream`` of it the upstream's) for a call of ``key``."""
    from meshfast.store.base import Receipt, new_id

    return Receipt(
        id=new_id("rcpt_"), created=time.time(), account_id=key.account_id, project_id=key.project_id,
        key_id=key.id, kind="chat", model="m", route_mode="model", provider="p", upstream_model="m",
        privacy="standard", prompt_tokens=tokens, completion_tokens=0, cached_tokens=0, tokens_source="upstream",
        upstream_cost_nano=upstream, margin_nano=total - upstream, total_nano=total, latency_ms=1.0,
        ttft_ms=None, stream=False, status="ok",
    )  # fmt: skip
