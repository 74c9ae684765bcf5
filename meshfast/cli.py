"""The ``meshfast`` command line. Every option also reads a MESHFAST_* environment variable.

``serve`` and ``check-config`` run the gateway; the other commands operate it (accounts,
top-ups, keys, receipts, usage, ledger). Each of those is one or more admin API requests
``(method, path, query, body)`` answered by :class:`meshfast.admin.AdminAPI`: in-process on
the configured store when no server holds it, else over HTTP by the running server's
admin API (``MESHFAST_ADMIN_TOKEN``). One implementation, so both paths behave alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson

from meshfast import __version__, config
from meshfast.errors import ConfigError, MeshError, StoreUnavailable


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshfast", description="OpenAI-compatible LLM router with a compiled hot path."
    )
    parser.add_argument("--version", action="version", version=f"meshfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (granian, ASGI, uvloop)")
    serve.add_argument(
        "--config", default=_env("MESHFAST_CONFIG"), help="TOML config file [MESHFAST_CONFIG]"
    )
    serve.add_argument(
        "--host", default=None, help="bind address [MESHFAST_HOST, default 127.0.0.1]"
    )
    serve.add_argument("--port", type=int, default=None, help="port [MESHFAST_PORT, default 8080]")
    serve.add_argument(
        "--workers", type=int, default=None, help="worker processes [MESHFAST_WORKERS, default 1]"
    )
    serve.add_argument(
        "--log-level",
        default=None,
        choices=config.LOG_LEVELS,
        help="[MESHFAST_LOG_LEVEL, default info]",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        default=os.environ.get("MESHFAST_DEMO", "") not in ("", "0"),
        help="on an empty store, create a demo account with a small balance and print its key once [MESHFAST_DEMO]",
    )
    check = sub.add_parser("check-config", help="validate a config file and print what it serves")
    check.add_argument(
        "--config", default=_env("MESHFAST_CONFIG"), help="TOML config file [MESHFAST_CONFIG]"
    )
    add_admin_commands(sub)
    return parser


def load_config(args: argparse.Namespace) -> config.Config:
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "workers", "log_level")}
    return config.load(args.config, overrides)


def prepare_store(cfg: config.Config, demo: bool) -> None:
    """Check the store can be opened by this server (and create the demo key) before granian
    starts workers, so problems are one clear line instead of a worker crash loop."""
    from meshfast.demo import DEMO_BALANCE_USD, create_demo
    from meshfast.store import open_store
    from meshfast.store.embedded import StoreLocked

    if cfg.workers > 1 and cfg.store.kind == "embedded":
        raise ConfigError(
            cfg.source,
            "server.workers",
            f"{cfg.workers} workers need a shared store; the embedded store belongs to one process. "
            "Run one worker (it uses the compiled hot path) or configure a shared store.",
        )
    try:
        store = open_store(cfg.store)
    except StoreLocked:
        lock = cfg.store.path + ".lock"
        try:
            with open(lock) as fh:
                pid = fh.read().strip()
        except OSError:
            pid = "?"
        raise ConfigError(
            cfg.source, "store.path", f"{cfg.store.path} is in use by another meshfast process (pid {pid})"
        ) from None
    where = store_label(cfg)

    async def prepare() -> None:
        try:
            await store.check()
            if not demo:
                return
            secret = await create_demo(store)
            if secret is None:
                how = (
                    "run `meshfast keys create --account demo --project default` (the CLI works on Redis directly)"
                    if cfg.store.kind == "redis"
                    else "stop the server and run `meshfast keys create --account demo --project default`"
                )
                print(
                    f"meshfast: --demo: the store {where} already has accounts, so no demo account was "
                    f"created. For another key: {how}, or set MESHFAST_ADMIN_TOKEN for the server and the CLI.",
                    file=sys.stderr,
                )
            else:
                print(
                    f"meshfast: demo account 'demo' with ${DEMO_BALANCE_USD} created. Its API key, shown only once:\n\n"
                    f"    {secret}\n\n"
                    f"    export OPENAI_BASE_URL=http://{cfg.host}:{cfg.port}/v1 OPENAI_API_KEY={secret}\n",
                    flush=True,
                )
        finally:
            await store.close()

    try:
        asyncio.run(prepare())
    except StoreUnavailable as exc:
        raise ConfigError(cfg.source, "store.redis_url", exc.message) from None


def store_label(cfg: config.Config) -> str:
    """Where the state lives, for messages (a Redis URL without its password)."""
    if cfg.store.kind != "redis" or not cfg.store.redis_url:
        return cfg.store.path
    return config.redacted_url(cfg.store.redis_url)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    prepare_store(cfg, args.demo)
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    # Workers are separate processes that build the app from the environment.
    if args.config:
        os.environ["MESHFAST_CONFIG"] = os.path.abspath(args.config)
    os.environ["MESHFAST_HOST"] = cfg.host
    os.environ["MESHFAST_PORT"] = str(cfg.port)
    os.environ["MESHFAST_WORKERS"] = str(cfg.workers)
    os.environ["MESHFAST_LOG_LEVEL"] = cfg.log_level
    models = sum(len(p.models) for p in cfg.providers) + (3 if cfg.sim.enabled else 0)
    print(
        f"meshfast {__version__}: serving {models} models on http://{cfg.host}:{cfg.port}/v1 "
        f"with {cfg.workers} worker(s) (config: {cfg.source}, store: {store_label(cfg)}"
        + (f", prefix {cfg.store.redis_prefix})" if cfg.store.kind == "redis" else ")"),
        file=sys.stderr,
        flush=True,
    )
    server = Server(
        "meshfast.server:create_app",
        address=cfg.host,
        port=cfg.port,
        interface=Interfaces.ASGI,
        workers=cfg.workers,
        loop=Loops.uvloop,
        websockets=False,
        backlog=2048,
        log_level=LogLevels(cfg.log_level),
        factory=True,
        workers_kill_timeout=int(cfg.grace_seconds) + 5,
    )
    server.serve()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    print(f"{cfg.source}: ok")
    if cfg.store.kind == "redis":
        from meshfast.store.redis_store import RedisStore

        async def probe() -> str:
            store = RedisStore(cfg.store.redis_url or "", prefix=cfg.store.redis_prefix)
            try:
                return await store.probe()
            finally:
                await store.close()

        try:
            found = asyncio.run(probe())
        except StoreUnavailable as exc:
            print(f"  store: {exc.message}", file=sys.stderr)
            return 2
        print(f"  store: {store_label(cfg)}, prefix {cfg.store.redis_prefix!r}: reachable, {found}")
    else:
        print(f"  store: {store_label(cfg)}")
    if cfg.sim.enabled:
        print("  provider sim (built-in simulator): sim-1, sim-1-mini, sim-embed-1")
    for p in cfg.providers:
        print(
            f"  provider {p.name} ({p.kind}, {p.privacy}) {p.base_url}: {', '.join(m.id for m in p.models)}"
        )
    return 0


# -- operating commands: the admin API, in-process or over HTTP ------------------------
Call = Callable[[str, str, dict[str, str] | None, dict[str, Any] | None], Awaitable[dict[str, Any]]]
API = "/admin/v1"
GROUP_BY = ("account", "project", "key", "model", "day")


class CLIExit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteError(MeshError):
    """An error answer from a running server's admin API."""


def _seg(ref: str) -> str:
    return quote(ref, safe="")


def _common(p: argparse.ArgumentParser, *, json_flag: bool = False) -> argparse.ArgumentParser:
    p.add_argument("--config", default=_env("MESHFAST_CONFIG"), help="TOML config file [MESHFAST_CONFIG]")
    p.add_argument(
        "--url",
        default=_env("MESHFAST_ADMIN_URL"),
        help="always use the admin API of the server at this URL [MESHFAST_ADMIN_URL]; "
        "default: the configured store directly, or the local server when it holds the store",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the raw JSON")
    return p


def add_admin_commands(sub: Any) -> None:
    acc = sub.add_parser("accounts", help="create and list accounts").add_subparsers(dest="action", required=True)
    p = _common(acc.add_parser("create", help="create an account"))
    p.add_argument("name")
    p.add_argument("--margin-pct", help="this account's margin in percent (default: [billing] margin_pct)")
    p.add_argument("--fee-usd", help="this account's fixed fee per call in USD (default: [billing] fee_usd)")
    p.set_defaults(run=cmd_accounts_create)
    _common(acc.add_parser("list", help="list accounts and balances"), json_flag=True).set_defaults(run=cmd_accounts_list)
    p = _common(acc.add_parser("show", help="show one account"), json_flag=True)
    p.add_argument("account", help="account name or id")
    p.set_defaults(run=cmd_accounts_show)

    p = _common(sub.add_parser("topup", help="credit an account (idempotent per chain and transaction id)"))
    p.add_argument("account", help="account name or id")
    p.add_argument("--usd", required=True, help="amount in USD, a decimal such as 12.50")
    p.add_argument("--chain", default="manual", choices=("manual", "base", "solana"), help="default: manual")
    p.add_argument("--tx", help="transaction id; required for base/solana, generated for manual")
    p.set_defaults(run=cmd_topup)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="action", required=True)
    p = _common(keys.add_parser("create", help="create an API key; the key is the last line of stdout"))
    p.add_argument("--account", required=True, help="account name or id")
    p.add_argument("--project", required=True, help="project name or id (created if missing)")
    p.add_argument("--name", default="", help="a label for the key")
    p.add_argument("--rpm", type=int, help="requests per minute")
    p.add_argument("--tpm", type=int, help="tokens per minute")
    p.add_argument("--monthly-usd", help="spend cap per calendar month (UTC)")
    p.add_argument("--daily-usd", help="spend cap per day (UTC)")
    p.add_argument("--concurrency", type=int, help="calls in flight at once")
    p.add_argument("--expires-at", help="unix seconds or YYYY-MM-DD (UTC)")
    p.set_defaults(run=cmd_keys_create)
    p = _common(keys.add_parser("list", help="list keys (never their secrets)"), json_flag=True)
    p.add_argument("--account", help="account name or id")
    p.add_argument("--project", help="project name or id")
    p.set_defaults(run=cmd_keys_list)
    p = _common(keys.add_parser("revoke", help="revoke a key at once"))
    p.add_argument("key_id")
    p.set_defaults(run=cmd_keys_revoke)

    rec = sub.add_parser("receipts", help="show receipts").add_subparsers(dest="action", required=True)
    p = _common(rec.add_parser("show", help="show one receipt"), json_flag=True)
    p.add_argument("receipt_id")
    p.set_defaults(run=cmd_receipts_show)
    p = _common(rec.add_parser("list", help="list recent receipts"), json_flag=True)
    p.add_argument("--account", help="account name or id")
    p.add_argument("--key", help="key id")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(run=cmd_receipts_list)

    p = _common(sub.add_parser("usage", help="usage and spend, grouped"), json_flag=True)
    p.add_argument("--group-by", default="account", choices=GROUP_BY)
    p.add_argument("--account", help="account name or id")
    p.add_argument("--since", help="unix seconds or YYYY-MM-DD (UTC)")
    p.set_defaults(run=cmd_usage)

    led = sub.add_parser("ledger", help="check the books").add_subparsers(dest="action", required=True)
    p = _common(led.add_parser("verify", help="balances equal top-ups minus receipts; exit 1 if not"), json_flag=True)
    p.set_defaults(run=cmd_ledger_verify)


# -- transport ------------------------------------------------------------------------
def _server_url(cfg: config.Config) -> str:
    host = cfg.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.port}"


async def _run_admin(cfg: config.Config, args: argparse.Namespace) -> int:
    url = args.url
    if not url:
        from meshfast.admin import AdminAPI
        from meshfast.store import open_store
        from meshfast.store.embedded import StoreLocked

        try:
            store = open_store(cfg.store)
        except StoreLocked:
            store = None
        if store is not None:
            try:
                await store.check()  # an unreachable Redis: say which, once
            except StoreUnavailable as exc:
                await store.close()
                raise CLIExit(1, exc.message) from None
            api = AdminAPI(store, cfg)

            async def local(method: str, path: str, query: dict[str, str] | None, body: dict[str, Any] | None) -> dict[str, Any]:
                return (await api.call(method, path, query or {}, body))[1]

            try:
                return await args.run(local, args)
            finally:
                await store.close()  # flushes every write
        if not cfg.admin_token:
            raise CLIExit(
                2,
                f"the store {os.path.abspath(cfg.store.path)} is in use by a running meshfast server; "
                "set MESHFAST_ADMIN_TOKEN to the server's admin token so the CLI can use its admin API",
            )
        url = _server_url(cfg)
    elif not cfg.admin_token:
        raise CLIExit(2, f"--url {url}: set MESHFAST_ADMIN_TOKEN to the server's admin token")
    import httpx

    url = url.rstrip("/")
    async with httpx.AsyncClient(
        base_url=url, headers={"authorization": f"Bearer {cfg.admin_token}"}, timeout=30
    ) as client:

        async def remote(method: str, path: str, query: dict[str, str] | None, body: dict[str, Any] | None) -> dict[str, Any]:
            try:
                resp = await client.request(
                    method, path, params=query or None,
                    content=None if body is None else orjson.dumps(body),
                    headers={"content-type": "application/json"} if body is not None else None,
                )  # fmt: skip
            except httpx.HTTPError as exc:
                raise CLIExit(1, f"cannot reach the meshfast admin API at {url}: {exc}") from None
            try:
                data = orjson.loads(resp.content)
            except orjson.JSONDecodeError:
                data = None
            if resp.status_code >= 400 or not isinstance(data, dict):
                err = data.get("error") if isinstance(data, dict) else None
                message = err.get("message") if isinstance(err, dict) else None
                exc = RemoteError(message or f"{url}{path}: HTTP {resp.status_code}")
                exc.status = resp.status_code
                raise exc
            return data

        return await args.run(remote, args)


# -- output -----------------------------------------------------------------------------
def _usd(v: str | None) -> str:
    return "-" if v is None else f"${v}"


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _limits_text(lim: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in lim.items() if v is not None and k in ("rpm", "tpm", "concurrency")]
    parts += [f"{k.split('_')[0]}=${v}" for k, v in lim.items() if v is not None and k.endswith("_usd")]
    return " ".join(parts) or "none"


def _key_status(k: dict[str, Any]) -> str:
    if k["revoked"]:
        return "revoked"
    if k["expires_at"] is not None and k["expires_at"] <= time.time():
        return "expired"
    return "active"


# -- commands ---------------------------------------------------------------------------
async def cmd_accounts_create(call: Call, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.margin_pct is not None:
        body["margin_pct"] = args.margin_pct
    if args.fee_usd is not None:
        body["fee_usd"] = args.fee_usd
    a = await call("POST", f"{API}/accounts", None, body)
    print(f"created account {a['name']} ({a['id']})")
    return 0


async def cmd_accounts_list(call: Call, args: argparse.Namespace) -> int:
    data = await call("GET", f"{API}/accounts", None, None)
    if args.json:
        _print_json(data)
        return 0
    rows = [
        [a["name"], a["id"], _usd(a["balance_usd"]), _usd(a["held_usd"]), _usd(a["available_usd"]),
         _usd(a["month_spend_usd"]), "default" if a["margin_pct"] is None else a["margin_pct"] + "%"]
        for a in sorted(data["data"], key=lambda a: a["name"])
    ]  # fmt: skip
    _table(["NAME", "ID", "BALANCE", "HELD", "AVAILABLE", "MONTH SPEND", "MARGIN"], rows)
    return 0


async def cmd_accounts_show(call: Call, args: argparse.Namespace) -> int:
    a = await call("GET", f"{API}/accounts/{_seg(args.account)}", None, None)
    if args.json:
        _print_json(a)
        return 0
    projects = await call("GET", f"{API}/accounts/{_seg(args.account)}/projects", None, None)
    a = dict(a, projects=", ".join(p["name"] for p in projects["data"]) or "-")
    _kv(a)
    return 0


def _kv(d: dict[str, Any]) -> None:
    width = max(len(k) for k in d)
    for k, v in d.items():
        if k == "object":
            continue
        if k == "created" or k.endswith("_at"):
            v = _when(v)
        print(f"{k.ljust(width)}  {'-' if v is None else v}")


async def cmd_topup(call: Call, args: argparse.Namespace) -> int:
    tx = args.tx
    if not tx:
        if args.chain != "manual":
            raise CLIExit(2, f"--tx is required for --chain {args.chain}")
        tx = f"cli-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"
    t = await call("POST", f"{API}/accounts/{_seg(args.account)}/topups", None,
                   {"amount_usd": args.usd, "chain": args.chain, "tx_id": tx})  # fmt: skip
    if t["duplicate"]:
        print(f"already credited: {t['chain']}:{t['tx_id']} (${t['amount_usd']}, {t['id']}); nothing changed; balance ${t['balance_usd']}")
    else:
        print(f"credited ${t['amount_usd']} to {args.account} ({t['chain']}:{t['tx_id']}, {t['id']}); balance ${t['balance_usd']}")
    return 0


async def cmd_keys_create(call: Call, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"account": args.account, "project": args.project, "name": args.name}
    for name in ("rpm", "tpm", "concurrency", "monthly_usd", "daily_usd", "expires_at"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    k = await call("POST", f"{API}/keys", None, body)
    expires = "" if k["expires_at"] is None else f"; expires {_when(k['expires_at'])}"
    print(
        f"created key {k['id']} for account {k.get('account_name', k['account_id'])}, "
        f"project {k.get('project_name', k['project_id'])}; limits: {_limits_text(k['limits'])}{expires}\n"
        "the key is shown once, on the next line of stdout; store it now",
        file=sys.stderr,
        flush=True,
    )
    print(k["secret"])
    return 0


async def cmd_keys_list(call: Call, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("account", args.account), ("project", args.project)) if v}
    data = await call("GET", f"{API}/keys", query, None)
    if args.json:
        _print_json(data)
        return 0
    rows = [
        [k["id"], k["prefix"] + "...", k.get("account_name", k["account_id"]), k.get("project_name", k["project_id"]),
         k["name"] or "-", _key_status(k), _limits_text(k["limits"]), _when(k["created"])]
        for k in data["data"]
    ]  # fmt: skip
    _table(["ID", "KEY", "ACCOUNT", "PROJECT", "NAME", "STATUS", "LIMITS", "CREATED"], rows)
    return 0


async def cmd_keys_revoke(call: Call, args: argparse.Namespace) -> int:
    k = await call("POST", f"{API}/keys/{_seg(args.key_id)}/revoke", None, None)
    print(f"revoked key {k['id']} ({k['prefix']}..., account {k.get('account_name', k['account_id'])}, "
          f"project {k.get('project_name', k['project_id'])})")  # fmt: skip
    return 0


async def cmd_receipts_show(call: Call, args: argparse.Namespace) -> int:
    r = await call("GET", f"{API}/receipts/{_seg(args.receipt_id)}", None, None)
    if args.json:
        _print_json(r)
    else:
        _kv(r)
    return 0


async def cmd_receipts_list(call: Call, args: argparse.Namespace) -> int:
    query = {k: str(v) for k, v in (("account", args.account), ("key", args.key), ("limit", args.limit)) if v}
    data = await call("GET", f"{API}/receipts", query, None)
    if args.json:
        _print_json(data)
        return 0
    rows = [
        [r["id"], _when(r["created"]), r["model"], r["provider"], r["prompt_tokens"], r["completion_tokens"],
         _usd(r["total_usd"]), r["status"]]
        for r in data["data"]
    ]  # fmt: skip
    _table(["ID", "CREATED", "MODEL", "PROVIDER", "IN", "OUT", "TOTAL", "STATUS"], rows)
    return 0


async def cmd_usage(call: Call, args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("group_by", args.group_by), ("account", args.account), ("since", args.since)) if v}
    data = await call("GET", f"{API}/usage", query, None)
    if args.json:
        _print_json(data)
        return 0
    g = args.group_by
    rows = [
        [r.get("account_name") or r[g] if g == "account" else r[g], r["calls"], r["prompt_tokens"], r["completion_tokens"],
         _usd(r["upstream_cost_usd"]), _usd(r["margin_usd"]), _usd(r["total_usd"])]
        for r in data["data"]
    ]  # fmt: skip
    _table([g.upper(), "CALLS", "PROMPT TOK", "COMPLETION TOK", "UPSTREAM", "MARGIN", "TOTAL"], rows)
    return 0


async def cmd_ledger_verify(call: Call, args: argparse.Namespace) -> int:
    data = await call("GET", f"{API}/ledger/verify", None, None)
    if args.json:
        _print_json(data)
    elif data["ok"]:
        print(f"ledger ok: {data['accounts']} accounts")
    else:
        for problem in data["problems"]:
            print(problem)
        print(f"ledger NOT ok: {len(data['problems'])} problem(s) in {data['accounts']} accounts", file=sys.stderr)
    return 0 if data["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "check-config":
            return cmd_check_config(args)
        if getattr(args, "run", None) is not None:
            return asyncio.run(_run_admin(config.load(args.config), args))
    except ConfigError as exc:
        print(f"meshfast: configuration error: {exc}", file=sys.stderr)
        return 2
    except CLIExit as exc:
        print(f"meshfast: {exc.message}", file=sys.stderr)
        return exc.code
    except MeshError as exc:
        print(f"meshfast: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `meshfast keys list | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 1
