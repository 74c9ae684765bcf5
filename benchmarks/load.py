"""End-to-end load benchmark: meshfast in front of a static upstream, against the upstream alone
and against a minimal granian + upstream-client passthrough (the "floor").

    python -m benchmarks.load                  # what `make bench` runs
    python -m benchmarks.load --duration 3 --only W1,W3
    python -m benchmarks.load --upstream builtin --loader builtin --json out.json

It starts a fake OpenAI upstream (nginx with a generated config, or the bundled
benchmarks/static_upstream.py), starts ``meshfast serve`` and the floor
(benchmarks/passthrough_app.py under granian with meshfast's settings) pointed at it, checks
that one request and one stream go through each, then measures each workload DIRECT to the
upstream, through the FLOOR and THROUGH meshfast with the same load generator (wrk with
benchmarks/wrk/post.lua, or the bundled benchmarks/loadgen.py), with the servers' CPU time
per request, and prints them side by side with the README budgets. Then, in interleaved
rounds on the same meshfast server, W1/W2 with a key with every limit set vs without
(``--no-limits`` skips it) and W1/W2 routed by ``"model": "cheapest"`` among ~80 catalogue
endpoints vs pinned to the provider/model it picks (``--no-routing`` skips it).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.passthrough_app import UPSTREAM_ENV as FLOOR_UPSTREAM_ENV
from benchmarks.static_upstream import W1_PATH, W2_PATH, w1_body, w2_body

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_SCRIPT = HERE / "wrk" / "post.lua"
HOST = "127.0.0.1"

# Budgets for one meshfast worker with loader and upstream on the same cores.
BUDGET_W1_RPS = 15_000
BUDGET_W2_SPS = 8_000
BUDGET_W3_ADDED_P50_US = 300
# Routing comparison: cheapest within 5 % of the same workload pinned (req/s ratio).
ROUTING_TARGET_RATIO = 0.95
MONEY_TARGET_RATIO = 0.90  # the money core's budget: within 10 % of the data plane

WORKLOADS = {
    "W1": "chat, non-stream (~600 B answer)",
    "W2": "stream, 100 SSE events + usage",
    "W3": "chat, non-stream, 1 connection",
}

_PROMPT = [
    {"role": "system", "content": "You are a concise assistant for backend engineers."},
    {"role": "user", "content": "Explain connection pooling in an HTTP gateway in one paragraph."},
]


class BenchError(RuntimeError):
    """Something needed to run the benchmark failed (not a missed budget)."""


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    key: str = "",
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    status, _headers, data = http_exchange(port, method, path, body, key, timeout)
    return status, data


def http_exchange(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    key: str = "",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """Status, response headers (names lower-cased) and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def wait_http_ok(
    port: int, path: str, timeout: float, proc: subprocess.Popen | None, what: str
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before it was ready")
        try:
            status, _ = http_request(port, "GET", path, timeout=1.0)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"{what} not ready on port {port} after {timeout:.0f}s ({last})")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str] | None:
    """Fields of a /proc .../stat file after ``comm`` (index 0 is field 3, ``state``)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:  # the process or thread is gone
        return None
    return text[text.rfind(")") + 2 :].split()


def group_cpu_seconds(pgid: int) -> float:
    """utime + stime summed over every thread of every live process in process group ``pgid``
    (a server we started in its own session: granian's main process and its workers)."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(f"/proc/{entry.name}/stat")
        if fields is None or int(fields[2]) != pgid:  # field 5: pgrp
            continue
        try:
            tasks = os.listdir(f"/proc/{entry.name}/task")
        except OSError:
            continue
        for tid in tasks:
            tf = _stat_fields(f"/proc/{entry.name}/task/{tid}/stat")
            if tf is not None:
                ticks += int(tf[11]) + int(tf[12])  # fields 14, 15: utime, stime
    return ticks / CLK_TCK


class CpuMeter:
    """CPU seconds used by a server's process group between ``start()`` and ``seconds()``."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.started: float | None = None

    def start(self) -> None:
        self.started = group_cpu_seconds(self.pgid)

    def seconds(self) -> float:
        assert self.started is not None
        return group_cpu_seconds(self.pgid) - self.started


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


_apt_updated = False


def apt_install(package: str) -> bool:
    """Install ``package`` with apt-get when running as root; False when not possible."""
    global _apt_updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    log(f"{package} is not installed: installing it with apt-get (one-time, may take a minute)...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = f"apt-get install -y -qq {package}"
    if not _apt_updated:
        cmd = f"apt-get update -qq && {cmd}"
    rc = subprocess.run(["sh", "-c", cmd], env=env).returncode
    _apt_updated = _apt_updated or rc == 0
    if rc != 0:
        log(f"apt-get could not install {package} (exit {rc})")
        return False
    return True


def ensure_tool(binary: str, package: str, mode: str, fallback: str) -> str | None:
    """Path of ``binary`` (installing it if needed); None to use the bundled fallback."""
    if mode == "builtin":
        return None
    path = find_binary(binary)
    if path is None and apt_install(package):
        path = find_binary(binary)
    if path is None:
        if mode == binary:
            raise BenchError(
                f"--{'upstream' if binary == 'nginx' else 'loader'} {binary}: {binary} is not available"
            )
        log(f"{binary} unavailable: falling back to {fallback}")
    return path


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    stop_signal: int = signal.SIGTERM

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    """Owns the temp dir and every process the benchmark starts; stops them on exit."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="meshfast-bench-"))
        os.chmod(self.tmp, 0o755)  # nginx workers run unprivileged
        self.procs: list[Proc] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        stop_signal: int = signal.SIGTERM,
        env: dict | None = None,
        cwd: Path = ROOT,
    ) -> Proc:
        log_path = self.tmp / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(cwd),
                env=env,
                start_new_session=True,  # its own process group: Ctrl-C reaches us, we stop it
            )
        proc = Proc(name, popen, log_path, stop_signal)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            p = proc.popen
            if p.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, proc.stop_signal)  # the group we created for it
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        # granian workers and nginx workers share the leader's group: make sure none is left.
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
        self.procs.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- upstream


def _nginx_quote(raw: bytes) -> str:
    text = raw.decode()
    if "$" in text:
        raise BenchError("upstream body must not contain '$' (nginx would read it as a variable)")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _nginx_return(name: str, body: bytes) -> str:
    """`set` pieces + `return 200`: nginx refuses a config token longer than 4 KiB."""
    piece = 3000
    chunks = [body[i : i + piece] for i in range(0, len(body), piece)]
    if len(chunks) == 1:
        return f"return 200 {_nginx_quote(body)};"
    sets = "".join(
        f"set ${name}_{i} {_nginx_quote(c)};\n            " for i, c in enumerate(chunks)
    )
    joined = "".join(f"${{{name}_{i}}}" for i in range(len(chunks)))
    return f'{sets}return 200 "{joined}";'


def nginx_config(tmp: Path, port: int) -> str:
    user = ""
    if os.geteuid() == 0:
        group = "nogroup"
        try:
            grp.getgrnam(group)
        except KeyError:
            group = "nobody"
        user = f"user nobody {group};"
    t = str(tmp)
    return f"""# generated by benchmarks/load.py
{user}
daemon off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {t}/nginx-error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    client_body_buffer_size 64k;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen {HOST}:{port} backlog=4096;
        location = {W1_PATH} {{
            default_type application/json;
            {_nginx_return("w1", w1_body())}
        }}
        location = {W2_PATH} {{
            default_type text/event-stream;
            {_nginx_return("w2", w2_body())}
        }}
        location = /health {{
            default_type text/plain;
            return 200 'ok';
        }}
    }}
}}
"""


def start_upstream(stack: Stack, mode: str) -> tuple[str, int]:
    nginx = ensure_tool("nginx", "nginx", mode, "benchmarks/static_upstream.py")
    port = free_port()
    if nginx is not None:
        conf = stack.tmp / "nginx.conf"
        conf.write_text(nginx_config(stack.tmp, port))
        version = tool_version([nginx, "-v"])
        log(f"starting upstream: nginx {version} on {HOST}:{port} (worker_processes 1)")
        proc = stack.spawn(
            "nginx",
            [
                nginx,
                "-p",
                str(stack.tmp),
                "-c",
                str(conf),
                "-e",
                str(stack.tmp / "nginx-error.log"),
            ],
            signal.SIGTERM,
        )
        try:
            wait_http_ok(port, "/health", 15, proc.popen, "nginx")
        except BenchError:
            err = stack.tmp / "nginx-error.log"
            detail = proc.tail() + ("\n" + err.read_text(errors="replace") if err.exists() else "")
            if mode == "nginx":
                raise BenchError(f"nginx did not start:\n{detail}") from None
            log(f"nginx did not start, falling back to benchmarks/static_upstream.py:\n{detail}")
        else:
            return f"nginx {version}", port
        port = free_port()
    log(
        f"starting upstream: builtin benchmarks/static_upstream.py (uvloop + httptools) on {HOST}:{port}"
    )
    proc = stack.spawn(
        "upstream",
        [sys.executable, "-m", "benchmarks.static_upstream", "--host", HOST, "--port", str(port)],
    )
    wait_http_ok(port, "/health", 15, proc.popen, "static upstream")
    return "builtin (benchmarks/static_upstream.py)", port


# --------------------------------------------------------------------------- meshfast


def meshfast_config(upstream_port: int) -> str:
    base = f"http://{HOST}:{upstream_port}"
    return f"""# generated by benchmarks/load.py
[server]
log_level = "warning"
grace_seconds = 2

[sim]
enabled = false

[[providers]]
name = "bench"
kind = "openai"
base_url = "{base}/w1/v1"
privacy = "standard"
[[providers.models]]
id = "bench-chat"
upstream = "chat"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60

[[providers]]
name = "bench-stream"
kind = "openai"
base_url = "{base}/w2/v1"
privacy = "standard"
[[providers.models]]
id = "bench-stream"
upstream = "chat"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
{routing_config(base)}"""


# Providers for the routing comparison (``model: "cheapest"`` vs the provider/model it picks,
# pinned). Each name is a catalogue provider (or one named in ROUTING_CATALOGUE below), so every
# catalogue model it serves is a routable endpoint at its catalogue price; each points at one
# path of the static upstream: "w1" (the JSON answer) or "w2" (the SSE stream). A stream call
# needs the "streaming" capability, which every shipped chat model has, so the two workloads
# are told apart by the batch-only model below: cheapest of all, not streaming, served at w1
# only. A non-stream call (W1) therefore routes to it (w1); a stream call (W2) skips it and
# routes to the cheapest streaming endpoint, and every one of those is at w2 (the only other
# w1 endpoint, bench/bench-chat, costs far more).
ROUTING_PROVIDERS = {
    "deepinfra": "w2",
    "together": "w2",
    "groq": "w2",
    "openai": "w2",
    "batch-a": "w1",
    "batch-b": "w1",
}
# A [[catalogue.models]] override: a model the shipped catalogue lacks, served by the two
# batch providers at different prices, below every shipped paid price.
ROUTING_CATALOGUE = """
[[catalogue.models]]
id = "bench-batch"
family = "bench"
context_window = 131072
max_output_tokens = 16384
capabilities = ["tools", "json_schema"]
quality = 45
[[catalogue.models.endpoints]]
provider = "batch-a"
upstream = "chat"
input_usd_per_mtok = "0.01"
output_usd_per_mtok = "0.02"
privacy = "protected"
[[catalogue.models.endpoints]]
provider = "batch-b"
upstream = "chat"
input_usd_per_mtok = "0.01"
output_usd_per_mtok = "0.015"
privacy = "protected"
"""


def routing_config(base: str) -> str:
    providers = "".join(
        f"""
[[providers]]
name = "{name}"
kind = "openai"
base_url = "{base}/{path}/v1"
privacy = "standard"
"""
        for name, path in ROUTING_PROVIDERS.items()
    )
    return providers + ROUTING_CATALOGUE


def provision_bench_key(store_path: Path) -> tuple[str, str]:
    """A bench account with a balance no run can exhaust, on a fresh store, and two keys:
    one without limits and one with every limit set (far above what a run can reach), so
    the cost of the limit checks can be measured in the same run."""
    from meshfast.config import StoreConfig
    from meshfast.money import usd_to_nano
    from meshfast.store import open_store
    from meshfast.store.base import Limits

    store = open_store(StoreConfig(path=str(store_path)))

    async def create() -> tuple[str, str]:
        account = await store.create_account("bench")
        await store.topup(account.id, usd_to_nano("1000000"), "manual", "bench-balance")
        project = await store.create_project(account.id, "bench")
        _key, plain = await store.create_key(project, name="bench")
        big = Limits(
            rpm=10**9,
            tpm=10**12,
            monthly_usd_nano=usd_to_nano("900000"),
            daily_usd_nano=usd_to_nano("900000"),
            concurrency=10**6,
        )
        _key, limited = await store.create_key(project, name="bench-limited", limits=big)
        return plain, limited

    try:
        plain, limited = asyncio.run(create())
    finally:
        store.close_sync()
    return plain, limited


def start_meshfast(
    stack: Stack,
    upstream_port: int,
    workers: int,
    extra: list[str],
    *,
    name: str = "meshfast",
    env: dict[str, str] | None = None,
) -> tuple[Proc, int]:
    """``meshfast serve`` with the bench config, started as ``name``; ``env`` replaces the
    default store (a fresh embedded store in the stack's directory)."""
    conf = stack.tmp / f"{name}.toml"
    conf.write_text(meshfast_config(upstream_port))
    port = free_port()
    log(f"starting {name}: {workers} worker(s) on {HOST}:{port}")
    argv = [
        sys.executable, "-m", "meshfast", "serve", "--config", str(conf), "--host", HOST,
        "--port", str(port), "--workers", str(workers), *extra,
    ]  # fmt: skip
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESHFAST_") or k == "MESHFAST_BENCH_KEY"
    }
    full_env.update(env or {"MESHFAST_STORE_PATH": str(stack.tmp / "store" / "meshfast.db")})
    proc = stack.spawn(name, argv, signal.SIGTERM, env=full_env)
    try:
        wait_http_ok(port, "/health", 60, proc.popen, name)
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- {name} log ---\n{proc.tail()}") from None
    return proc, port


# --------------------------------------------------------------------------- floor


def granian_argv(workers: int, port: int, *app: str) -> list[str]:
    """granian serving ``app`` with the settings of ``meshfast serve`` (meshfast/cli.py:
    ASGI, uvloop, no websockets, backlog 2048)."""
    return [
        sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop", "--no-ws",
        "--workers", str(workers), "--backlog", "2048", "--host", HOST, "--port", str(port),
        "--log-level", "warning", *app,
    ]  # fmt: skip


def start_floor(stack: Stack, upstream_port: int, workers: int) -> tuple[Proc, int]:
    """benchmarks/passthrough_app.py under granian with the settings of ``meshfast serve``
    (meshfast/cli.py: ASGI, uvloop, no websockets, backlog 2048, same worker count)."""
    port = free_port()
    log(
        f"starting floor: granian + benchmarks/passthrough_app.py, {workers} worker(s) on {HOST}:{port}"
    )
    argv = granian_argv(workers, port, "benchmarks.passthrough_app:app")
    env = dict(os.environ, **{FLOOR_UPSTREAM_ENV: f"http://{HOST}:{upstream_port}"})
    proc = stack.spawn("floor", argv, signal.SIGTERM, env=env)
    try:
        wait_http_ok(port, "/health", 60, proc.popen, "floor (granian passthrough)")
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- floor log ---\n{proc.tail()}") from None
    return proc, port


def start_dataplane(stack: Stack, upstream_port: int, workers: int) -> tuple[Proc, int]:
    """meshfast with its money stages as pass-through steps (benchmarks/dataplane_app.py)
    under granian with the settings of ``meshfast serve``: the reference the money core's
    budget is measured against. It serves every call for free, so it is a benchmark only."""
    conf = stack.tmp / "dataplane.toml"
    conf.write_text(meshfast_config(upstream_port))
    port = free_port()
    log(f"starting dataplane: meshfast, money stages as pass-through, {workers} worker(s) on {HOST}:{port}")
    argv = granian_argv(workers, port, "--factory", "benchmarks.dataplane_app:create_app")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHFAST_")}
    env.update(MESHFAST_CONFIG=str(conf), MESHFAST_STORE_PATH=str(stack.tmp / "dataplane-store" / "unused.db"))
    proc = stack.spawn("dataplane", argv, signal.SIGTERM, env=env)
    try:
        wait_http_ok(port, "/health", 60, proc.popen, "dataplane (money stages pass-through)")
    except BenchError as exc:
        raise BenchError(f"{exc}\n--- dataplane log ---\n{proc.tail()}") from None
    return proc, port


# --------------------------------------------------------------------------- request bodies


def request_bodies() -> dict[str, bytes]:
    def dump(obj: dict) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    base = {"messages": _PROMPT, "max_tokens": 256, "temperature": 0.2}
    stream_opts = {"stream": True, "stream_options": {"include_usage": True}}
    return {
        # through meshfast: what a client sends
        "mesh_chat": dump({"model": "bench-chat", **base}),
        "mesh_stream": dump({"model": "bench-stream", **base, "stream": True}),
        # direct: what meshfast forwards upstream
        "direct_chat": dump({"model": "chat", **base}),
        "direct_stream": dump({"model": "chat", **base, **stream_opts}),
        # routing comparison: the router's cheapest pick (the pinned twins, naming the
        # provider/model it picks, are added by verify_routing)
        "cheapest_chat": dump({"model": "cheapest", **base}),
        "cheapest_stream": dump({"model": "cheapest", **base, "stream": True}),
    }


def pinned_body(cheapest_body: bytes, endpoint: str) -> bytes:
    """``cheapest_body`` with ``model`` set to ``endpoint`` (provider/model), nothing else."""
    obj = json.loads(cheapest_body)
    obj["model"] = endpoint
    return json.dumps(obj, separators=(",", ":")).encode()


# workload -> (cheapest body, pinned body, upstream path its pick must be at, stream?)
ROUTING_PLAN = {
    "W1": ("cheapest_chat", "pinned_chat", "w1", False),
    "W2": ("cheapest_stream", "pinned_stream", "w2", True),
}


def verify_routing(
    mesh_port: int, key: str, bodies: dict[str, bytes], mesh: Proc, workloads: list[str]
) -> dict[str, str]:
    """One ``cheapest`` call per workload, checked like the others (a chat.completion; a
    stream of 100 content events ending with [DONE]), answered with X-Mesh-Route-Mode
    ``cheapest`` by a provider at the workload's upstream path; then the same call pinned to
    the provider/model it picked (X-Mesh-Route-Mode ``pinned``, the same X-Mesh-Provider and
    X-Mesh-Model). Adds the pinned bodies to ``bodies``; returns {workload: provider/model}."""
    picks: dict[str, str] = {}
    try:
        for wl in workloads:
            cheapest, pinned, where, stream = ROUTING_PLAN[wl]
            check = check_stream_reply if stream else check_chat_reply
            status, headers, data = http_exchange(
                mesh_port, "POST", "/v1/chat/completions", bodies[cheapest], key
            )
            check(status, data, f"meshfast {wl} cheapest")
            provider = headers.get("x-mesh-provider", "")
            model = headers.get("x-mesh-model", "")
            mode = headers.get("x-mesh-route-mode", "")
            if mode != "cheapest" or ROUTING_PROVIDERS.get(provider) != where:
                raise BenchError(
                    f"meshfast {wl} cheapest: expected X-Mesh-Route-Mode cheapest and a provider "
                    f"at the {where} upstream path ({', '.join(n for n, w in ROUTING_PROVIDERS.items() if w == where)}), "
                    f"got mode {mode!r}, provider {provider!r}, model {model!r} (catalogue prices changed?)"
                )
            endpoint = f"{provider}/{model}"
            bodies[pinned] = pinned_body(bodies[cheapest], endpoint)
            status, headers, data = http_exchange(
                mesh_port, "POST", "/v1/chat/completions", bodies[pinned], key
            )
            check(status, data, f"meshfast {wl} pinned to {endpoint}")
            got = (
                headers.get("x-mesh-route-mode"),
                f"{headers.get('x-mesh-provider')}/{headers.get('x-mesh-model')}",
            )
            if got != ("pinned", endpoint):
                raise BenchError(
                    f"meshfast {wl} pinned to {endpoint}: answered as mode {got[0]!r} by {got[1]!r}"
                )
            picks[wl] = endpoint
    except (BenchError, OSError) as exc:
        raise BenchError(f"{exc}\n--- meshfast log ---\n{mesh.tail()}") from None
    return picks


def routable_chat_endpoints(mesh_port: int, key: str) -> tuple[int, int]:
    """(routable chat endpoints, providers serving them) from meshfast's GET /v1/models."""
    status, data = http_request(mesh_port, "GET", "/v1/models", key=key)
    if status != 200:
        raise BenchError(f"GET /v1/models: HTTP {status}: {data[:300]!r}")
    eps = [
        e["provider"]
        for m in json.loads(data)["data"]
        if m.get("kind") == "chat"
        for e in m.get("endpoints", ())
        if e.get("routable")
    ]
    return len(eps), len(set(eps))


def check_chat_reply(status: int, data: bytes, what: str) -> None:
    try:
        content = json.loads(data)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        content = None
    if status != 200 or not content:
        raise BenchError(
            f"{what}: expected 200 with a chat.completion, got HTTP {status}: {data[:300]!r}"
        )


def check_stream_reply(status: int, data: bytes, what: str) -> None:
    events = [e for e in data.split(b"\n\n") if e.strip()]
    errors = [e for e in events if b'"error"' in e]
    if status != 200 or not data.rstrip().endswith(b"data: [DONE]") or errors:
        raise BenchError(
            f"{what}: expected 200 and a stream ending with data: [DONE], got HTTP {status}, "
            f"{len(events)} events, tail {data[-300:]!r}"
        )
    content = sum(1 for e in events if b'"content"' in e)
    if content < 100:
        raise BenchError(f"{what}: expected 100 content events, got {content}")


def verify(
    upstream_port: int,
    mesh_port: int,
    key: str,
    bodies: dict[str, bytes],
    mesh: Proc,
    floor: tuple[Proc, int] | None,
) -> None:
    via = (
        "direct, through the floor and through meshfast" if floor else "direct and through meshfast"
    )
    log(f"checking: one chat and one stream, {via}")

    def check_chat(port: int, path: str, body: bytes, what: str) -> None:
        status, data = http_request(port, "POST", path, body, key)
        check_chat_reply(status, data, what)

    def check_stream(port: int, path: str, body: bytes, what: str) -> None:
        status, data = http_request(port, "POST", path, body, key)
        check_stream_reply(status, data, what)

    try:
        check_chat(upstream_port, W1_PATH, bodies["direct_chat"], "direct chat")
        check_stream(upstream_port, W2_PATH, bodies["direct_stream"], "direct stream")
        check_chat(mesh_port, "/v1/chat/completions", bodies["mesh_chat"], "meshfast chat")
        check_stream(mesh_port, "/v1/chat/completions", bodies["mesh_stream"], "meshfast stream")
    except (BenchError, OSError) as exc:
        raise BenchError(f"{exc}\n--- meshfast log ---\n{mesh.tail()}") from None
    if floor is not None:
        proc, port = floor
        try:
            check_chat(port, W1_PATH, bodies["direct_chat"], "floor chat")
            check_stream(port, W2_PATH, bodies["direct_stream"], "floor stream")
        except (BenchError, OSError) as exc:
            raise BenchError(f"{exc}\n--- floor log ---\n{proc.tail()}") from None


def verify_dataplane(plane: tuple[Proc, int], bodies: dict[str, bytes]) -> None:
    proc, port = plane
    try:
        status, data = http_request(port, "POST", "/v1/chat/completions", bodies["mesh_chat"], "")
        check_chat_reply(status, data, "dataplane chat")
        status, data = http_request(port, "POST", "/v1/chat/completions", bodies["mesh_stream"], "")
        check_stream_reply(status, data, "dataplane stream")
    except (BenchError, OSError) as exc:
        raise BenchError(f"{exc}\n--- dataplane log ---\n{proc.tail()}") from None


# --------------------------------------------------------------------------- load generation


@dataclass
class Run:
    rps: float
    p50_us: float
    p99_us: float
    requests: int
    duration_s: float
    errors: int = 0
    non2xx: int = 0
    raw: dict = field(default_factory=dict)
    # CPU seconds (utime + stime, all threads of the server's processes) during the measured
    # run, and per completed request; None for the direct runs (not measured there).
    server_cpu_s: float | None = None
    cpu_us_per_req: float | None = None


class Loader:
    def __init__(self, mode: str, threads: int, tmp: Path, key: str) -> None:
        self.wrk = ensure_tool("wrk", "wrk", mode, "benchmarks/loadgen.py")
        self.threads = threads
        self.tmp = tmp
        self.key = key
        if self.wrk:
            self.name = f"wrk {tool_version([self.wrk, '-v'])} ({threads} thread{'s' if threads > 1 else ''}, benchmarks/wrk/post.lua)"
        else:
            self.name = "builtin (benchmarks/loadgen.py, own process, uvloop + httptools)"

    def run(
        self,
        port: int,
        path: str,
        body: bytes,
        connections: int,
        duration: float,
        warmup: float,
        on_measure: Callable[[], None] | None = None,
    ) -> Run:
        """Warm up, call ``on_measure`` (if any) right before the measured run, measure."""
        body_file = self.tmp / f"body-{abs(hash(body))}.json"
        body_file.write_bytes(body)
        url = f"http://{HOST}:{port}{path}"
        start = on_measure or (lambda: None)
        if self.wrk:
            return self._wrk(url, body_file, connections, duration, warmup, start)
        return self._builtin(url, body_file, connections, duration, warmup, start)

    def _wrk(
        self,
        url: str,
        body_file: Path,
        connections: int,
        duration: float,
        warmup: float,
        on_measure: Callable[[], None],
    ) -> Run:
        env = dict(os.environ, MESHFAST_BENCH_BODY_FILE=str(body_file), MESHFAST_BENCH_KEY=self.key)
        threads = max(1, min(self.threads, connections))

        def wrk(seconds: float) -> str:
            secs = max(1, round(seconds))
            argv = [
                self.wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{secs}s",
                "--timeout",
                "10s",
                "-s",
                str(WRK_SCRIPT),
                url,
            ]
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=secs + 60)
            if out.returncode != 0:
                raise BenchError(
                    f"wrk failed (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
                )
            return out.stdout

        if warmup > 0:
            wrk(warmup)
        on_measure()
        stdout = wrk(duration)
        line = next((ln for ln in stdout.splitlines() if ln.startswith("MESHFAST_WRK ")), None)
        if line is None:
            raise BenchError(f"wrk printed no MESHFAST_WRK summary line:\n{stdout}")
        kv = {k: float(v) for k, v in (item.split("=", 1) for item in line.split()[1:])}
        secs = kv["duration_us"] / 1e6
        errors = int(kv["connect_errors"] + kv["read_errors"] + kv["write_errors"] + kv["timeouts"])
        return Run(
            rps=kv["requests"] / secs if secs else 0.0,
            p50_us=kv["p50_us"],
            p99_us=kv["p99_us"],
            requests=int(kv["requests"]),
            duration_s=secs,
            errors=errors,
            non2xx=int(kv["status_errors"]),
            raw=kv,
        )

    def _builtin(
        self,
        url: str,
        body_file: Path,
        connections: int,
        duration: float,
        warmup: float,
        on_measure: Callable[[], None],
    ) -> Run:
        def loadgen(seconds: float) -> dict:
            argv = [
                sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--body-file", str(body_file),
                "--header", f"Authorization: Bearer {self.key}", "--header", "Content-Type: application/json",
                "-c", str(connections), "-d", str(seconds), "-w", "0",
            ]  # fmt: skip
            out = subprocess.run(
                argv, capture_output=True, text=True, cwd=str(ROOT), timeout=seconds + 60
            )
            if out.returncode != 0:
                raise BenchError(
                    f"loadgen failed (exit {out.returncode}): {out.stderr.strip()[-2000:]}"
                )
            return json.loads(out.stdout.strip().splitlines()[-1])

        # Warm-up as its own run (like wrk) so the measured run can be bracketed for CPU time.
        if warmup > 0:
            loadgen(warmup)
        on_measure()
        res = loadgen(duration)
        return Run(
            rps=res["rps"],
            p50_us=res["p50_us"],
            p99_us=res["p99_us"],
            requests=res["requests"],
            duration_s=res["duration_s"],
            errors=res["errors"],
            non2xx=res["non2xx"],
            raw=res,
        )


Side = tuple[str, Loader, bytes, int, Proc]  # name, loader, body, server port, server


def ab_rounds(wl: str, what: str, a: Side, b: Side, rounds: int, duration: float, conns: int) -> list[tuple[Run, Run]]:
    """``rounds`` interleaved pairs of short runs (1 s warm-up + ``duration``) of A and B,
    each a (name, loader, body, port, server): the same meshfast server, or two servers
    started side by side; the order alternates every round (A first in even rounds) to
    cancel drift. Each run carries its server's CPU time."""
    pairs: list[tuple[Run, Run]] = []
    for rnd in range(rounds):
        got: dict[str, Run] = {}
        for name, ld, body, port, server in (a, b) if rnd % 2 == 0 else (b, a):
            meter = CpuMeter(server.popen.pid)
            run = ld.run(port, "/v1/chat/completions", body, conns, duration, 1.0, meter.start)
            if meter.started is not None and run.requests:
                run.server_cpu_s = round(meter.seconds(), 3)
                run.cpu_us_per_req = round(run.server_cpu_s * 1e6 / run.requests, 1)
            got[name] = run
        log(
            f"  {wl} {what} round {rnd + 1}/{rounds}: {a[0]} {got[a[0]].rps:,.0f}/s  {b[0]} {got[b[0]].rps:,.0f}/s"
        )
        pairs.append((got[a[0]], got[b[0]]))
        for name, _ld, _body, _port, server in (a, b):
            if server.popen.poll() is not None:
                raise BenchError(
                    f"{name} server exited (status {server.popen.returncode}) during {wl} {what}\n{server.tail()}"
                )
    return pairs


def ab_summary(pairs: list[tuple[Run, Run]]) -> dict:
    """Medians of interleaved (A, B) runs: req/s and cpu µs/req per side, and the median of
    the per-round B/A ratios (throughput; CPU per request)."""
    cpu = [
        (x.cpu_us_per_req, y.cpu_us_per_req)
        for x, y in pairs
        if x.cpu_us_per_req and y.cpu_us_per_req
    ]
    return {
        "a_rps": statistics.median(x.rps for x, _ in pairs),
        "b_rps": statistics.median(y.rps for _, y in pairs),
        "rps_ratio": statistics.median(y.rps / x.rps for x, y in pairs if x.rps),
        "a_cpu": statistics.median(x for x, _ in cpu) if cpu else None,
        "b_cpu": statistics.median(y for _, y in cpu) if cpu else None,
        "cpu_ratio": statistics.median(y / x for x, y in cpu) if cpu else 0.0,
    }


def ab_doc(sm: dict, a: str, b: str, target: float) -> dict:
    """The JSON record of an :func:`ab_summary` whose sides are named ``a`` and ``b``,
    with its verdict against ``target`` (the median B/A throughput ratio)."""
    return {
        f"{a}_rps": round(sm["a_rps"], 1),
        f"{b}_rps": round(sm["b_rps"], 1),
        "throughput_ratio": round(sm["rps_ratio"], 4),
        f"{a}_cpu_us_per_req": sm["a_cpu"],
        f"{b}_cpu_us_per_req": sm["b_cpu"],
        "cpu_ratio": round(sm["cpu_ratio"], 4),
        "target": f"throughput ratio >= {target}",
        "pass": sm["rps_ratio"] >= target,
    }


# --------------------------------------------------------------------------- report


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_lat(us: float) -> str:
    return f"{us:,.0f} µs" if us < 1000 else f"{us / 1000:,.2f} ms"


def fmt_ratio(base: float | None, mesh: float | None) -> str:
    return f"{mesh / base:.2f}x" if base and mesh is not None else "-"


def fmt_cpu(us: float | None) -> str:
    return "-" if us is None else f"{us:,.0f} µs"


def report(
    results: dict[str, dict[str, Run]], connections: int, with_floor: bool
) -> tuple[list[str], dict]:
    """The results table (one column per target; floor columns only ``with_floor``) and the
    budget verdicts (meshfast only)."""
    rows: list[tuple[str, ...]] = []
    verdicts: dict[str, dict] = {}
    head = (
        "workload",
        "metric",
        "direct",
        "floor",
        "meshfast",
        "mesh/direct",
        "mesh/floor",
        "budget (meshfast)",
        "result",
    )

    def row(
        label: str,
        metric: str,
        get: Callable[[Run], float | None],
        fmt: Callable[[float], str],
        d: Run,
        f: Run | None,
        m: Run,
        vs_direct: bool = True,
        budget: str = "",
        result: str = "",
    ) -> tuple[str, ...]:
        dv, fv, mv = get(d), get(f) if f else None, get(m)
        return (
            label,
            metric,
            "" if dv is None else fmt(dv),
            "-" if fv is None else fmt(fv),
            fmt(mv) if mv is not None else "-",
            fmt_ratio(dv, mv) if vs_direct else "",
            fmt_ratio(fv, mv),
            budget,
            result,
        )

    def cpu(r: Run) -> float | None:
        return r.cpu_us_per_req

    for wl in ("W1", "W2", "W3"):
        if wl not in results:
            continue
        d, m = results[wl]["direct"], results[wl]["meshfast"]
        f = results[wl].get("floor")
        conns = 1 if wl == "W3" else connections
        label = f"{wl} {WORKLOADS[wl].split(',')[0]}, {conns} conn{'s' if conns > 1 else ''}"
        if wl in ("W1", "W2"):
            unit = "req/s" if wl == "W1" else "streams/s"
            budget = BUDGET_W1_RPS if wl == "W1" else BUDGET_W2_SPS
            ok = m.rps >= budget
            verdicts[wl] = {
                "metric": f"meshfast {unit}",
                "value": round(m.rps, 1),
                "budget": f">= {budget}",
                "pass": ok,
            }
            rows.append(
                row(
                    label,
                    unit,
                    lambda r: r.rps,
                    fmt_rate,
                    d,
                    f,
                    m,
                    budget=f">= {budget:,} {unit}",
                    result="PASS" if ok else "MISS",
                )
            )
            rows.append(row("", "p50", lambda r: r.p50_us, fmt_lat, d, f, m))
            rows.append(row("", "p99", lambda r: r.p99_us, fmt_lat, d, f, m))
            rows.append(row("", "cpu µs/req", cpu, fmt_cpu, d, f, m, vs_direct=False))
        else:
            added = m.p50_us - d.p50_us
            ok = added <= BUDGET_W3_ADDED_P50_US
            verdicts[wl] = {
                "metric": "added p50 µs",
                "value": round(added, 1),
                "budget": f"<= {BUDGET_W3_ADDED_P50_US}",
                "pass": ok,
            }
            rows.append(row(label, "p50", lambda r: r.p50_us, fmt_lat, d, f, m))
            rows.append(row("", "p99", lambda r: r.p99_us, fmt_lat, d, f, m))
            rows.append(row("", "req/s", lambda r: r.rps, fmt_rate, d, f, m))
            rows.append(row("", "cpu µs/req", cpu, fmt_cpu, d, f, m, vs_direct=False))
            f_added = f"+{f.p50_us - d.p50_us:,.0f} µs" if f else "-"
            rows.append(
                (
                    "",
                    "added p50",
                    "",
                    f_added,
                    f"+{added:,.0f} µs",
                    "",
                    "",
                    f"<= {BUDGET_W3_ADDED_P50_US} µs added",
                    "PASS" if ok else "MISS",
                )
            )
    keep = [i for i in range(len(head)) if with_floor or head[i] not in ("floor", "mesh/floor")]
    head = tuple(head[i] for i in keep)
    rows = [tuple(r[i] for i in keep) for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = {i for i, h in enumerate(head) if h in ("direct", "floor", "meshfast") or "/" in h}

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    for r in rows:
        if r[0] and len(out) > 2:
            out.append("")
        out.append(line(r))
    return out, verdicts


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="End-to-end load benchmark: meshfast vs. the upstream alone and vs. a "
        "minimal granian passthrough (the floor).",
    )
    ap.add_argument(
        "--duration", type=float, default=10.0, help="measured seconds per run (default 10)"
    )
    ap.add_argument(
        "--warmup", type=float, default=2.0, help="warm-up seconds before each run (default 2)"
    )
    ap.add_argument(
        "--connections", type=int, default=32, help="connections for W1 and W2 (default 32)"
    )
    ap.add_argument(
        "--workers", type=int, default=1, help="meshfast (and floor) worker processes (default 1)"
    )
    ap.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the floor (granian + upstream client passthrough, benchmarks/passthrough_app.py)",
    )
    ap.add_argument(
        "--no-dataplane",
        dest="dataplane",
        action="store_false",
        help="skip the W1/W2 comparison of meshfast (money on) with its data plane alone "
        "(benchmarks/dataplane_app.py: money stages as pass-through)",
    )
    ap.add_argument(
        "--no-limits",
        dest="limits",
        action="store_false",
        help="skip the W1/W2 runs with a rate-limited key (limits on vs off)",
    )
    ap.add_argument(
        "--no-routing",
        dest="routing",
        action="store_false",
        help='skip the W1/W2 runs routed with "model": "cheapest" (cheapest vs pinned)',
    )
    ap.add_argument(
        "--ab-rounds",
        type=int,
        default=4,
        help="interleaved rounds of the limits on/off and routing cheapest/pinned comparisons",
    )
    ap.add_argument(
        "--ab-duration",
        type=float,
        default=4.0,
        help="seconds per run in the limits and routing comparisons",
    )
    ap.add_argument("--only", default="W1,W2,W3", help="comma-separated subset of W1,W2,W3")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument(
        "--upstream",
        choices=("auto", "nginx", "builtin"),
        default="auto",
        help="auto: nginx if installed/installable, else builtin",
    )
    ap.add_argument(
        "--loader",
        choices=("auto", "wrk", "builtin"),
        default="auto",
        help="auto: wrk if installed/installable, else builtin",
    )
    ap.add_argument(
        "--loader-threads",
        type=int,
        default=1,
        help="wrk threads (default 1; the machine also runs meshfast and the upstream)",
    )
    ap.add_argument(
        "--key",
        default=os.environ.get("MESHFAST_BENCH_KEY") or None,
        help="API key sent as Bearer [MESHFAST_BENCH_KEY; default: a bench account with a "
        "$1,000,000 balance is created on a fresh store, so auth, holds, settlement and "
        "receipts are all on]",
    )
    ap.add_argument(
        "--meshfast-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `meshfast serve` (repeatable)",
    )
    args = ap.parse_args(argv)
    only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    bad = [w for w in only if w not in WORKLOADS]
    if bad or not only:
        ap.error(f"--only: unknown workload(s) {', '.join(bad) or '(none)'}; choose from W1,W2,W3")
    args.only = [w for w in WORKLOADS if w in only]
    if args.duration <= 0 or args.warmup < 0 or args.connections < 1 or args.workers < 1:
        ap.error(
            "--duration > 0, --warmup >= 0, --connections >= 1 and --workers >= 1 are required"
        )
    if args.ab_rounds < 1 or args.ab_duration <= 0:
        ap.error("--ab-rounds >= 1 and --ab-duration > 0 are required")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_bench(lambda stack: _main(args, stack))


def run_bench(body: Callable[[Stack], int]) -> int:
    """Run ``body`` with a fresh :class:`Stack`; one line for a failure or Ctrl-C / SIGTERM,
    and every process it started is stopped in all cases."""
    signal.signal(signal.SIGTERM, _sigterm)
    stack = Stack()
    try:
        return body(stack)
    except BenchError as exc:
        print(f"\n[bench] FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\n[bench] interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if stack.procs:
            log(f"stopping {', '.join(p.name for p in reversed(stack.procs))}")
        stack.stop_all()


def _main(args: argparse.Namespace, stack: Stack) -> int:
    from meshfast import __version__ as mesh_version

    load_start = os.getloadavg()
    upstream_name, up_port = start_upstream(stack, args.upstream)
    limited_key = None
    if not args.key:
        args.key, limited_key = provision_bench_key(stack.tmp / "store" / "meshfast.db")
        log(
            "created a bench account and keys on a fresh store (auth, holds, settlement, receipts on)"
        )
    loader = Loader(args.loader, args.loader_threads, stack.tmp, args.key)
    (stack.tmp / "limited").mkdir(exist_ok=True)
    limited_loader = (
        Loader(args.loader, args.loader_threads, stack.tmp / "limited", limited_key)
        if limited_key
        else None
    )
    log(f"load generator: {loader.name}")
    mesh, mesh_port = start_meshfast(stack, up_port, args.workers, args.meshfast_arg)
    floor = start_floor(stack, up_port, args.workers) if args.floor else None
    money_wls = [w for w in args.only if w in ("W1", "W2")] if args.dataplane else []
    plane = start_dataplane(stack, up_port, args.workers) if money_wls else None
    bodies = request_bodies()
    verify(up_port, mesh_port, args.key, bodies, mesh, floor)
    if plane is not None:
        verify_dataplane(plane, bodies)
    route_wls = [w for w in args.only if w in ROUTING_PLAN] if args.routing else []
    route_picks: dict[str, str] = {}
    route_pool = (0, 0)
    if route_wls:
        log(f"checking routing: one cheapest and one pinned call for {', '.join(route_wls)}")
        route_picks = verify_routing(mesh_port, args.key, bodies, mesh, route_wls)
        route_pool = routable_chat_endpoints(mesh_port, args.key)
        log(
            f"  cheapest picks {', '.join(f'{wl} {ep}' for wl, ep in route_picks.items())} "
            f"among {route_pool[0]} routable chat endpoints of {route_pool[1]} providers"
        )
    # the servers whose CPU time is measured: the process group each was started in
    servers = {"meshfast": mesh} | ({"floor": floor[0]} if floor else {})

    plan = {
        "W1": (W1_PATH, "direct_chat", "mesh_chat", args.connections),
        "W2": (W2_PATH, "direct_stream", "mesh_stream", args.connections),
        "W3": (W1_PATH, "direct_chat", "mesh_chat", 1),
    }
    results: dict[str, dict[str, Run]] = {}
    for wl in args.only:
        path, direct_body, mesh_body, conns = plan[wl]
        results[wl] = {}
        targets = [("direct", up_port, path, direct_body)]
        if floor is not None:
            targets.append(("floor", floor[1], path, direct_body))
        targets.append(("meshfast", mesh_port, "/v1/chat/completions", mesh_body))
        for target, port, p, body in targets:
            log(
                f"running {wl} {target} ({WORKLOADS[wl]}; {conns} conn, {args.warmup:g}s warm-up + {args.duration:g}s)..."
            )
            server = servers.get(target.split("+")[0])
            meter = CpuMeter(server.popen.pid) if server else None
            run = (limited_loader if target == "meshfast+limits" else loader).run(
                port, p, bodies[body], conns, args.duration, args.warmup,
                meter.start if meter else None,
            )  # fmt: skip
            cpu_note = ""
            if meter is not None and meter.started is not None:
                run.server_cpu_s = round(meter.seconds(), 3)
                if run.requests:
                    run.cpu_us_per_req = round(run.server_cpu_s * 1e6 / run.requests, 1)
                cpu_note = f"  cpu {fmt_cpu(run.cpu_us_per_req)}/req"
            results[wl][target] = run
            note = (
                f", {run.errors} errors, {run.non2xx} non-2xx" if run.errors or run.non2xx else ""
            )
            log(
                f"  {wl} {target}: {run.rps:,.0f}/s  p50 {fmt_lat(run.p50_us)}  p99 {fmt_lat(run.p99_us)}{cpu_note}  ({run.requests:,} in {run.duration_s:.2f}s{note})"
            )
            for name, proc in servers.items():
                if proc.popen.poll() is not None:
                    raise BenchError(
                        f"{name} exited (status {proc.popen.returncode}) during {wl}\n{proc.tail()}"
                    )

    # Limits on vs off: interleaved short runs on the same server (order alternating to
    # cancel drift), compared by the median of the per-round ratios.
    ab: dict[str, list[tuple[Run, Run]]] = {}
    if limited_key and limited_loader is not None and args.limits:
        for wl in [w for w in args.only if w in ("W1", "W2")]:
            _path, _direct_body, mesh_body, conns = plan[wl]
            ab[wl] = ab_rounds(
                wl, "limits", ("off", loader, bodies[mesh_body], mesh_port, mesh),
                ("on", limited_loader, bodies[mesh_body], mesh_port, mesh),
                args.ab_rounds, args.ab_duration, conns,
            )  # fmt: skip
    # Money on (meshfast) vs the data plane alone (its money stages as pass-through): two
    # servers side by side, interleaved the same way.
    money: dict[str, list[tuple[Run, Run]]] = {}
    if plane is not None:
        for wl in money_wls:
            _path, _direct_body, mesh_body, conns = plan[wl]
            log(
                f"running {wl} money: dataplane vs meshfast, {args.ab_rounds} interleaved rounds "
                f"of 1s warm-up + {args.ab_duration:g}s each..."
            )
            money[wl] = ab_rounds(
                wl, "money", ("dataplane", loader, bodies[mesh_body], plane[1], plane[0]),
                ("meshfast", loader, bodies[mesh_body], mesh_port, mesh),
                args.ab_rounds, args.ab_duration, conns,
            )  # fmt: skip
    # Routing cheapest vs pinned, the same way: one key, the same messages, the pinned body
    # names the provider/model the cheapest body is routed to (same endpoint, same upstream).
    routing: dict[str, list[tuple[Run, Run]]] = {}
    for wl in route_picks:
        cheapest, pinned, _where, _stream = ROUTING_PLAN[wl]
        conns = plan[wl][3]
        log(
            f"running {wl} routing: pinned {route_picks[wl]} vs cheapest, {args.ab_rounds} "
            f"interleaved rounds of 1s warm-up + {args.ab_duration:g}s each..."
        )
        routing[wl] = ab_rounds(
            wl, "routing", ("pinned", loader, bodies[pinned], mesh_port, mesh),
            ("cheapest", loader, bodies[cheapest], mesh_port, mesh),
            args.ab_rounds, args.ab_duration, conns,
        )  # fmt: skip
    table, verdicts = report(results, args.connections, floor is not None)
    load_end = os.getloadavg()
    cores = os.cpu_count() or 0
    print()
    print(f"meshfast {mesh_version} end-to-end load benchmark")
    print(f"  upstream: {upstream_name}   loader: {loader.name}")
    if floor is not None:
        print(
            "  floor: granian ASGI passthrough (benchmarks/passthrough_app.py) with meshfast's "
            "granian settings and upstream client (meshfast_core.http.Pool)"
        )
    print(
        f"  meshfast workers: {args.workers}   CPUs: {cores}   python {platform.python_version()}   {args.duration:g}s per run after {args.warmup:g}s warm-up"
    )
    print(
        f"  load average before/after: {load_start[0]:.2f} / {load_end[0]:.2f}  (loader, upstream and servers share these CPUs)"
    )
    print(
        "  cpu µs/req: the server's CPU time (utime+stime, all threads of its processes) over the"
        " measured run / requests completed"
    )
    print()
    for ln in table:
        print(ln)
    warnings = [
        f"{wl} {t}: {r.errors} errors, {r.non2xx} non-2xx"
        for wl, rs in results.items()
        for t, r in rs.items()
        if r.errors or r.non2xx
    ]
    for w in warnings:
        print(f"WARNING: {w}")
    if ab:
        print()
        print(
            f"limits on (a key with every limit set: rpm, tpm, concurrency, daily and monthly USD) vs off: "
            f"{args.ab_rounds} interleaved rounds of {args.ab_duration:g}s each, medians"
        )
        for wl, pairs in ab.items():
            sm = ab_summary(pairs)
            print(
                f"  {wl}: off {sm['a_rps']:,.0f}/s   on {sm['b_rps']:,.0f}/s   on/off throughput {sm['rps_ratio']:.3f}x   "
                f"cpu per request on/off {sm['cpu_ratio']:.3f}x"
            )
    money_doc: dict[str, dict] = {}
    if money:
        print()
        print(
            "money on (meshfast: auth, hold, settlement, receipt) vs the data plane alone "
            "(benchmarks/dataplane_app.py, money stages as pass-through): "
            f"{args.ab_rounds} interleaved rounds of {args.ab_duration:g}s each, medians"
        )
        for wl, pairs in money.items():
            sm = ab_summary(pairs)
            money_doc[wl] = ab_doc(sm, "dataplane", "meshfast", MONEY_TARGET_RATIO)
            ok = money_doc[wl]["pass"]
            print(
                f"  {wl}: dataplane {sm['a_rps']:,.0f}/s   meshfast {sm['b_rps']:,.0f}/s   "
                f"meshfast/dataplane throughput {sm['rps_ratio']:.3f}x   cpu per request "
                f"{fmt_cpu(sm['b_cpu'])} vs {fmt_cpu(sm['a_cpu'])} ({sm['cpu_ratio']:.3f}x)   "
                f"{'PASS' if ok else 'MISS'} (>= {MONEY_TARGET_RATIO:.2f}x)"
            )
    routing_doc: dict[str, dict] = {}
    if routing:
        print()
        print(
            f'routing: cheapest ("model": "cheapest", {route_pool[0]} routable chat endpoints of '
            f"{route_pool[1]} providers) vs pinned (the provider/model it picks): "
            f"{args.ab_rounds} interleaved rounds of {args.ab_duration:g}s each, medians"
        )
        for wl, pairs in routing.items():
            sm = ab_summary(pairs)
            routing_doc[wl] = {
                "picked": route_picks[wl],
                **ab_doc(sm, "pinned", "cheapest", ROUTING_TARGET_RATIO),
                "rounds": [
                    {"first": "pinned" if i % 2 == 0 else "cheapest"}
                    | {
                        name: {k: v for k, v in asdict(r).items() if k != "raw"}
                        for name, r in (("pinned", a), ("cheapest", b))
                    }
                    for i, (a, b) in enumerate(pairs)
                ],
            }
            print(
                f"  {wl} ({route_picks[wl]}): pinned {sm['a_rps']:,.0f}/s   cheapest {sm['b_rps']:,.0f}/s   "
                f"cheapest/pinned throughput {sm['rps_ratio']:.3f}x   cpu per request cheapest/pinned "
                f"{sm['cpu_ratio']:.3f}x ({fmt_cpu(sm['b_cpu'])} vs {fmt_cpu(sm['a_cpu'])})   "
                f"{'PASS' if routing_doc[wl]['pass'] else 'MISS'} (>= {ROUTING_TARGET_RATIO:.2f}x)"
            )
    ab_warnings = [
        f"{wl} {what} round {i + 1} {name}: {r.errors} errors, {r.non2xx} non-2xx"
        for what, runs, names in (
            ("limits", ab, ("off", "on")),
            ("routing", routing, ("pinned", "cheapest")),
            ("money", money, ("dataplane", "meshfast")),
        )
        for wl, pairs in runs.items()
        for i, pair in enumerate(pairs)
        for name, r in zip(names, pair, strict=True)
        if r.errors or r.non2xx
    ]
    for w in ab_warnings:
        print(f"WARNING: {w}")
    print()
    summary = ", ".join(f"{wl} {'PASS' if v['pass'] else 'MISS'}" for wl, v in verdicts.items())
    print(f"budgets: {summary}")

    if args.json:
        doc = {
            "meshfast_version": mesh_version,
            "upstream": upstream_name,
            "loader": loader.name,
            "workers": args.workers,
            "connections": args.connections,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "cpus": cores,
            "floor": (
                {
                    "app": "benchmarks/passthrough_app.py",
                    "server": "granian asgi, uvloop, no websockets, backlog 2048",
                    "workers": args.workers,
                }
                if floor is not None
                else None
            ),
            "cpu_clock_ticks_per_s": CLK_TCK,
            "loadavg_before": load_start,
            "loadavg_after": load_end,
            "budgets": {
                "W1_rps": BUDGET_W1_RPS,
                "W2_streams_per_s": BUDGET_W2_SPS,
                "W3_added_p50_us": BUDGET_W3_ADDED_P50_US,
            },
            "results": {
                wl: {
                    t: {k: v for k, v in asdict(r).items() if k != "raw"} | {"loader_raw": r.raw}
                    for t, r in rs.items()
                }
                | {"verdict": verdicts.get(wl)}
                for wl, rs in results.items()
            },
            "routing": (
                {
                    "rounds": args.ab_rounds,
                    "duration_s": args.ab_duration,
                    "warmup_s": 1.0,
                    "routable_chat_endpoints": route_pool[0],
                    "routable_chat_providers": route_pool[1],
                    "medians": "per side: median over rounds; ratios: median of per-round ratios",
                    "workloads": routing_doc,
                }
                if routing_doc
                else None
            ),
        }
        doc["money"] = (
            {"rounds": args.ab_rounds, "duration_s": args.ab_duration, "workloads": money_doc}
            if money_doc
            else None
        )
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
