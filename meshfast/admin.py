"""The admin API: accounts, projects, keys, top-ups, receipts, usage, ledger checks.

One implementation, two transports. :meth:`AdminAPI.call` is the whole API as a
function of ``(method, path, query, body)``; :meth:`AdminAPI.handle` puts it on HTTP
under ``/admin/v1/`` (bearer ``MESHFAST_ADMIN_TOKEN``), and the CLI calls it in-process
when no server holds the store. Errors are :class:`~meshfast.errors.MeshError`
subclasses; the server renders them, the CLI prints them.

Money crosses this boundary as decimal strings (``"12.50"``); integers are accepted,
floats are refused (they cannot say 0.1 exactly). Accounts are named by id
(``acct_...``) or by name everywhere.
"""

from __future__ import annotations

import calendar
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from meshfast import errors
from meshfast.asgi import header, send_json
from meshfast.config import PRIVACY_CLASSES
from meshfast.money import percent_to_ppm, usd_to_nano
from meshfast.store.base import Account, Limits, Project, Store

PREFIX = "/admin/v1/"
NO_STORE = [(b"cache-control", b"no-store")]

# A verifier checks that ``tx_id`` on its chain really paid ``amount_nano`` to this
# gateway for ``account`` (and raises a MeshError if not). ``None``: the chain is
# accepted on the operator's word (the admin token); that is all there is today.
# On-chain verification slots in here and nowhere else.
ChainVerifier = Callable[[Account, int, str], Awaitable[None]]
CHAINS: dict[str, ChainVerifier | None] = {"base": None, "solana": None, "manual": None}

LIMIT_FIELDS = ("rpm", "tpm", "monthly_usd", "daily_usd", "concurrency", "privacy_default", "privacy_min")
MAX_RECEIPTS = 1000

Handler = Callable[[list[str], dict[str, str], dict[str, Any]], Awaitable[tuple[int, Any]]]


# -- input validation ----------------------------------------------------------------
def _bad(param: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(f"{param}: {problem}", param=param)


def _only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for k in body:
        if k not in allowed:
            raise _bad(k, f"unknown field; expected {', '.join(allowed)}")


def _str(body: dict[str, Any], name: str, *, required: bool = False, default: str | None = None, max_len: int = 200) -> str | None:
    if name not in body or body[name] is None:
        if required:
            raise _bad(name, "is required")
        return default
    v = body[name]
    if not isinstance(v, str):
        raise _bad(name, f"must be a string, got {type(v).__name__}")
    v = v.strip()
    if required and not v:
        raise _bad(name, "must not be empty")
    if len(v) > max_len:
        raise _bad(name, f"must be at most {max_len} characters")
    return v


def _usd(value: Any, name: str) -> int:
    """A non-negative USD amount as nano-USD: decimal string or integer, never a float."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        hint = " (give money as a decimal string such as \"12.50\")" if isinstance(value, float) else ""
        raise _bad(name, f"must be a decimal string, got {type(value).__name__}{hint}")
    try:
        return usd_to_nano(value)
    except ValueError:
        raise _bad(name, f"must be a non-negative decimal USD amount (at most 9 decimal places), got {value!r}") from None


def _pct(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _bad(name, f"must be a decimal string such as \"5\" or \"2.5\", got {type(value).__name__}")
    try:
        return percent_to_ppm(value)
    except ValueError:
        raise _bad(name, f"must be a non-negative decimal percentage (at most 4 decimal places), got {value!r}") from None


def _int(value: Any, name: str, *, minimum: int = 0) -> int:
    if isinstance(value, str) and value.strip().isdigit():  # query strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, f"must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise _bad(name, f"must be at least {minimum}, got {value}")
    return value


def _timestamp(value: Any, name: str) -> float:
    """Unix seconds (number) or a UTC date ``YYYY-MM-DD``."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(calendar.timegm(time.strptime(text, "%Y-%m-%d")))
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise _bad(name, f"must be unix seconds or a date YYYY-MM-DD, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, f"must be unix seconds, got {type(value).__name__}")
    if not 0 < value < 1e11:
        raise _bad(name, f"must be unix seconds, got {value!r}")
    return float(value)


def _limits(body: dict[str, Any], base: Limits | None = None) -> Limits:
    """A Limits from the limit fields in ``body``; fields absent keep ``base``, null clears."""
    lim = Limits() if base is None else Limits(
        base.rpm, base.tpm, base.monthly_usd_nano, base.daily_usd_nano, base.concurrency,
        base.privacy_default, base.privacy_min,
    )  # fmt: skip
    for name in ("privacy_default", "privacy_min"):
        if name in body:
            value = body[name]
            if value is not None and value not in PRIVACY_CLASSES:
                raise _bad(name, f"must be one of {', '.join(PRIVACY_CLASSES)} or null")
            setattr(lim, name, value)
    for name in ("rpm", "tpm", "concurrency"):
        if name in body:
            setattr(lim, name, None if body[name] is None else _int(body[name], name, minimum=1))
    for name in ("monthly_usd", "daily_usd"):
        if name in body:
            setattr(lim, name + "_nano", None if body[name] is None else _usd(body[name], name))
    return lim


def _listing(items: list[Any]) -> dict[str, Any]:
    return {"object": "list", "data": items}


class AdminAPI:
    def __init__(self, store: Store, cfg: Any) -> None:
        self.store = store
        self.cfg = cfg
        self.chains: dict[str, ChainVerifier | None] = dict(CHAINS)
        token = getattr(cfg, "admin_token", None)
        self._expected = b"Bearer " + token.encode() if token else None
        # (pattern, {method: handler}); "*" matches one path segment.
        self.routes: list[tuple[tuple[str, ...], dict[str, Handler]]] = [
            (("accounts",), {"GET": self.list_accounts, "POST": self.create_account}),
            (("accounts", "*"), {"GET": self.get_account}),
            (("accounts", "*", "projects"), {"GET": self.list_projects, "POST": self.create_project}),
            (("accounts", "*", "topups"), {"POST": self.create_topup}),
            (("projects", "*"), {"GET": self.get_project, "PATCH": self.update_project}),
            (("keys",), {"GET": self.list_keys, "POST": self.create_key}),
            (("keys", "*"), {"GET": self.get_key, "PATCH": self.update_key}),
            (("keys", "*", "revoke"), {"POST": self.revoke_key}),
            (("receipts",), {"GET": self.list_receipts}),
            (("receipts", "*"), {"GET": self.get_receipt}),
            (("usage",), {"GET": self.usage}),
            (("ledger", "verify"), {"GET": self.verify_ledger}),
        ]

    # -- transports -----------------------------------------------------------------
    async def handle(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        """HTTP: bearer token, JSON body, query string -> :meth:`call` -> JSON answer."""
        given = header(scope, b"authorization") or b""
        expected = self._expected
        # Same answer for a missing and a wrong token; constant-time comparison.
        if expected is None or not hmac.compare_digest(given, expected):
            raise errors.AuthenticationFailed(
                "Missing or incorrect admin token: send 'Authorization: Bearer <MESHFAST_ADMIN_TOKEN>'.",
                code="invalid_admin_token",
            )
        payload: dict[str, Any] | None = None
        if body.strip():
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise errors.InvalidJSON(f"The request body is not valid JSON: {exc}") from None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        raw = scope.get("raw_path")
        path = raw.decode("latin-1").partition("?")[0] if raw else scope["path"]
        status, result = await self.call(scope["method"], path, query, payload)
        await send_json(send, status, orjson.dumps(result), NO_STORE)

    async def call(self, method: str, path: str, query: dict[str, str], body: dict | None) -> tuple[int, dict]:
        """The admin API as a function. ``path`` may be percent-encoded per segment."""
        if not path.startswith(PREFIX):
            raise errors.RouteNotFound(f"Unknown admin path {path}.")
        parts = [unquote(p) for p in path[len(PREFIX) :].strip("/").split("/")]
        route = next(
            (r for r in self.routes if len(r[0]) == len(parts) and all(p in ("*", s) for p, s in zip(r[0], parts, strict=True))),
            None,
        )
        if route is None or not all(parts):
            raise errors.RouteNotFound(f"Unknown admin path {path}.")
        pattern, methods = route
        handler = methods.get(method.upper())
        if handler is None:
            allow = ", ".join(methods)
            raise errors.MethodNotAllowed(
                f"{method} is not allowed on {path}; use {allow}.", headers=[(b"allow", allow.encode())]
            )
        if body is None:
            body = {}
        elif not isinstance(body, dict):
            raise errors.InvalidRequest("The request body must be a JSON object.")
        args = [s for p, s in zip(pattern, parts, strict=True) if p == "*"]
        return await handler(args, query or {}, body)

    # -- accounts ---------------------------------------------------------------------
    async def create_account(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        _only(body, ("name", "margin_pct", "fee_usd"))
        name = _str(body, "name", required=True, max_len=100)
        margin = None if body.get("margin_pct") is None else _pct(body["margin_pct"], "margin_pct")
        fee = None if body.get("fee_usd") is None else _usd(body["fee_usd"], "fee_usd")
        return 201, (await self.store.create_account(name, margin, fee)).public()

    async def list_accounts(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, _listing([a.public() for a in await self.store.accounts()])

    async def get_account(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, (await self.store.account(args[0])).public()

    # -- projects ---------------------------------------------------------------------
    async def create_project(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        _only(body, ("name",))
        name = _str(body, "name", required=True, max_len=100)
        return 201, (await self.store.create_project(args[0], name)).public()

    async def list_projects(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, _listing([p.public() for p in await self.store.projects(args[0])])

    # -- top-ups ----------------------------------------------------------------------
    async def create_topup(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        _only(body, ("amount_usd", "chain", "tx_id"))
        if body.get("amount_usd") is None:
            raise _bad("amount_usd", "is required")
        amount = _usd(body["amount_usd"], "amount_usd")
        if amount <= 0:
            raise _bad("amount_usd", "must be greater than zero")
        chain = _str(body, "chain", required=True, max_len=32)
        tx_id = _str(body, "tx_id", required=True, max_len=256)
        account = await self.store.account(args[0])
        topup, created = await self.credit(account, amount, chain, tx_id)
        out = topup.public()
        out["duplicate"] = not created
        # read again: a shared store's account is a snapshot from before the credit
        out["balance_usd"] = (await self.store.account(account.id)).public()["balance_usd"]
        return (201 if created else 200), out

    async def credit(self, account: Account, amount_nano: int, chain: str, tx_id: str) -> tuple[Any, bool]:
        """The one place a top-up is checked and credited (idempotent on (chain, tx_id))."""
        if chain not in self.chains:
            raise _bad("chain", f"must be one of {', '.join(self.chains)}, got {chain!r}")
        verifier = self.chains[chain]
        if verifier is not None:
            await verifier(account, amount_nano, tx_id)
        return await self.store.topup(account.id, amount_nano, chain, tx_id)

    # -- keys -------------------------------------------------------------------------
    async def create_key(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        _only(body, ("account", "project", "name", "expires_at", *LIMIT_FIELDS))
        account_ref = _str(body, "account", required=True)
        project_ref = _str(body, "project", required=True, max_len=100)
        name = _str(body, "name", default="", max_len=100)
        limits = _limits(body)
        expires_at = None if body.get("expires_at") is None else _timestamp(body["expires_at"], "expires_at")
        if expires_at is not None and expires_at <= time.time():
            raise _bad("expires_at", "is in the past")
        # Everything is valid: only now may a missing project be created.
        project = await self._project_for_key(await self.store.account(account_ref), project_ref)
        key, secret = await self.store.create_key(project, name, limits, expires_at)
        out = await self._key_out(key)
        out["secret"] = secret  # the only time it is shown
        return 201, out

    async def _project_for_key(self, account: Account, ref: str) -> Project:
        try:
            project = await self.store.project(ref, account.id)
        except errors.NotFound:
            if ref.startswith("proj_"):
                raise errors.NotFound(f"No project {ref!r}.", param="project", code="project_not_found") from None
            return await self.store.create_project(account.id, ref)
        if project.account_id != account.id:
            raise _bad("project", f"project {ref!r} belongs to another account")
        return project

    async def list_keys(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        keys = await self.store.keys(query.get("account") or None, query.get("project") or None)
        return 200, _listing([await self._key_out(k) for k in sorted(keys, key=lambda k: k.created)])

    async def _key_out(self, key: Any) -> dict[str, Any]:
        """key.public() (never the secret or its hash) plus the account and project names."""
        out = key.public()
        try:
            out["account_name"] = (await self.store.account(key.account_id)).name
            out["project_name"] = (await self.store.project(key.project_id)).name
        except errors.NotFound:
            pass
        return out

    async def get_project(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, (await self.store.project(args[0])).public()

    async def update_project(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        """Limits shared by all the project's keys: rpm, tpm, monthly_usd, daily_usd, concurrency."""
        _only(body, LIMIT_FIELDS)
        project = await self.store.project(args[0])
        return 200, (await self.store.update_project(project.id, _limits(body, project.limits))).public()

    async def get_key(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, await self._key_out(await self.store.key(args[0]))

    async def revoke_key(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        return 200, await self._key_out(await self.store.revoke_key(args[0]))

    async def update_key(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        _only(body, ("expires_at", *LIMIT_FIELDS))
        key = await self.store.key(args[0])
        limits = _limits(body, key.limits) if any(f in body for f in LIMIT_FIELDS) else None
        expires_at = None
        if "expires_at" in body:
            if body["expires_at"] is None:
                raise _bad("expires_at", "cannot be cleared; give unix seconds (or revoke the key)")
            expires_at = _timestamp(body["expires_at"], "expires_at")
        return 200, await self._key_out(await self.store.update_key(key.id, limits, expires_at))

    # -- receipts, usage, ledger --------------------------------------------------------
    async def list_receipts(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        account_id = (await self.store.account(query["account"])).id if query.get("account") else None
        key_id = (await self.store.key(query["key"])).id if query.get("key") else None
        limit = _int(query["limit"], "limit", minimum=1) if query.get("limit") else 100
        receipts = await self.store.receipts(account_id, key_id, min(limit, MAX_RECEIPTS))
        return 200, _listing([r.public() for r in receipts])

    async def get_receipt(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        receipt = await self.store.receipt(args[0])
        if receipt is None:
            raise errors.NotFound(f"No receipt {args[0]!r}.", code="receipt_not_found")
        return 200, receipt.public()

    async def usage(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        group_by = query.get("group_by") or "account"
        account_id = (await self.store.account(query["account"])).id if query.get("account") else None
        since = _timestamp(query["since"], "since") if query.get("since") else None
        rows = await self.store.usage(group_by, account_id, since)
        if group_by == "account":  # name the accounts, not only their ids
            for row in rows:
                try:
                    row["account_name"] = (await self.store.account(row["account"])).name
                except errors.NotFound:
                    row["account_name"] = None
        return 200, {"object": "usage", "group_by": group_by, "data": rows}

    async def verify_ledger(self, args: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        problems = await self.store.verify_ledger()
        return 200, {"ok": not problems, "accounts": len(await self.store.accounts()), "problems": problems}
