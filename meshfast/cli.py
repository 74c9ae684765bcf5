"""The ``meshfast`` command line. Every option also reads a MESHFAST_* environment variable."""

from __future__ import annotations

import argparse
import os
import sys

from meshfast import __version__, config
from meshfast.errors import ConfigError


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
    check = sub.add_parser("check-config", help="validate a config file and print what it serves")
    check.add_argument(
        "--config", default=_env("MESHFAST_CONFIG"), help="TOML config file [MESHFAST_CONFIG]"
    )
    return parser


def load_config(args: argparse.Namespace) -> config.Config:
    overrides = {k: getattr(args, k, None) for k in ("host", "port", "workers", "log_level")}
    return config.load(args.config, overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_config(args)
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
        f"with {cfg.workers} worker(s) (config: {cfg.source})",
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
    if cfg.sim.enabled:
        print("  provider sim (built-in simulator): sim-1, sim-1-mini, sim-embed-1")
    for p in cfg.providers:
        print(
            f"  provider {p.name} ({p.kind}, {p.privacy}) {p.base_url}: {', '.join(m.id for m in p.models)}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "check-config":
            return cmd_check_config(args)
    except ConfigError as exc:
        print(f"meshfast: configuration error: {exc}", file=sys.stderr)
        return 2
    return 1
