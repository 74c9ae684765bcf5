"""The Store interface and its records.

Every hot-path state change is one call: ``authenticate`` (key -> record), ``context``
(the key's account and project), ``place_hold`` (check available balance and reserve,
atomically), ``settle`` (debit, release the hold, write the receipt, atomically) and
``revoke_key``. Every method that reads or changes state is a coroutine (only
``rate_headers`` and ``add_revoke_listener`` are plain calls). The embedded backend's
never suspend (no await inside), so each is atomic on the event loop; on a shared backend
each hot-path one maps to one server-side function call.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from meshfast import errors
from meshfast.money import nano_to_usd
from meshfast_core.keys import KEY_PREFIX, key_digest  # what a store keeps of a key
from meshfast_core.records import (  # noqa: F401  (compiled records, re-exported)
    RECEIPT_FIELDS,
    Account,
    Hold,
    Receipt,
    Settler,
    day_of,
    month_of,
    new_id,
    spend_buckets,
)

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_BODY_LEN = 40


def new_secret() -> str:
    return KEY_PREFIX + "".join(secrets.choice(BASE62) for _ in range(KEY_BODY_LEN))


def check_topup(amount_nano: int, chain: str, tx_id: str) -> None:
    if chain not in ("base", "solana", "manual"):
        raise errors.InvalidRequest("chain must be one of base, solana, manual.", param="chain")
    if not tx_id:
        raise errors.InvalidRequest("A transaction id is required.", param="tx_id")
    if amount_nano <= 0:
        raise errors.InvalidRequest("The amount must be greater than zero.", param="amount_usd")


@dataclass(slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    monthly_usd_nano: int | None = None
    daily_usd_nano: int | None = None
    concurrency: int | None = None
    privacy_default: str | None = None  # the class a call gets when it asks for none
    privacy_min: str | None = None  # a call asking for less is raised to this class

    def public(self) -> dict[str, Any]:
        return {
            "rpm": self.rpm,
            "tpm": self.tpm,
            "monthly_usd": None if self.monthly_usd_nano is None else nano_to_usd(self.monthly_usd_nano),
            "daily_usd": None if self.daily_usd_nano is None else nano_to_usd(self.daily_usd_nano),
            "concurrency": self.concurrency,
            "privacy_default": self.privacy_default,
            "privacy_min": self.privacy_min,
        }


def limits_json(limits: Limits) -> str:
    """Limits as stored (a JSON array, in field order)."""
    return orjson.dumps(
        [
            limits.rpm, limits.tpm, limits.monthly_usd_nano, limits.daily_usd_nano, limits.concurrency,
            limits.privacy_default, limits.privacy_min,
        ]
    ).decode()  # fmt: skip


def limits_from(text: str | None) -> Limits:
    return Limits(*orjson.loads(text)) if text else Limits()


@dataclass(slots=True)
class Project:
    id: str
    account_id: str
    name: str
    created: float = 0.0
    limits: Limits = field(default_factory=Limits)  # apply to all the project's keys together

    @property
    def label(self) -> str:
        """How messages name the project: "project 'web'"."""
        return f"project {self.name!r}"

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "project",
            "account_id": self.account_id,
            "name": self.name,
            "created": int(self.created),
            "limits": self.limits.public(),
        }


@dataclass(slots=True)
class KeyRecord:
    id: str
    project_id: str
    account_id: str
    hash: str  # sha256 hex of the whole secret; the secret itself is never stored
    prefix: str  # for display: "mesh_live_AbCd"
    name: str = ""
    created: float = 0.0
    revoked_at: float | None = None
    expires_at: float | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def label(self) -> str:
        """How messages name the key: "key mesh_live_AbCd..." (never the secret)."""
        return f"key {self.prefix}..."

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "api_key",
            "project_id": self.project_id,
            "account_id": self.account_id,
            "name": self.name,
            "prefix": self.prefix,
            "created": int(self.created),
            "revoked": self.revoked_at is not None,
            "revoked_at": None if self.revoked_at is None else int(self.revoked_at),
            "expires_at": None if self.expires_at is None else int(self.expires_at),
            "limits": self.limits.public(),
        }


@dataclass(slots=True)
class Topup:
    id: str
    account_id: str
    amount_nano: int
    chain: str
    tx_id: str
    created: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "topup",
            "account_id": self.account_id,
            "amount_usd": nano_to_usd(self.amount_nano),
            "chain": self.chain,
            "tx_id": self.tx_id,
            "created": int(self.created),
        }




def check_name(name: str, id_prefix: str, what: str) -> None:
    """An account or project name: non-empty, and never mistakable for an id."""
    if not name or name.startswith(id_prefix):
        raise errors.InvalidRequest(f"{what} name must be non-empty and not start with '{id_prefix}'.", param="name")


def new_key(project: Project, name: str, limits: Limits | None, expires_at: float | None) -> tuple[KeyRecord, str]:
    """A new key record for ``project`` and its secret (shown once, stored only hashed)."""
    secret = new_secret()
    key = KeyRecord(
        new_id("key_"), project.id, project.account_id, key_digest(secret), secret[: len(KEY_PREFIX) + 4],
        name, time.time(), None, expires_at, limits or Limits(),
    )  # fmt: skip
    return key, secret


def usable_key(key: KeyRecord | None, digest: str) -> KeyRecord:
    """The record a secret's digest found, if it may be used now: 401 without a hint
    whether a key exists, or 401 ``key_revoked`` for a revoked or expired one."""
    if key is None or not hmac.compare_digest(key.hash, digest):
        raise errors.AuthenticationFailed("Incorrect API key provided.")
    if key.revoked_at is not None:
        raise errors.KeyRevoked("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= time.time():
        raise errors.KeyRevoked("This API key has expired.")
    return key


class Store:
    """The interface every backend implements. Methods raise meshfast.errors classes."""

    #: True when the hot-path coroutines never suspend (the embedded store): the backend
    #: then also offers them as plain methods, ``key_now`` (``authenticate_digest``),
    #: ``context_now``, ``hold_now`` (``place_hold``) and ``settle_now``, which the pipeline
    #: calls instead, one coroutine fewer per stage, and settles through its ``settler``.
    immediate = False

    #: A ``meshfast_core.records.Gate`` that admits a call of a key it knows in two
    #: compiled calls (the key check, account and privacy class; then the hold), or
    #: ``None``. Only a store whose hot path never suspends offers one (the embedded store).
    gate: Any = None

    # -- hot path -------------------------------------------------------------
    async def authenticate(self, secret: str | bytes) -> KeyRecord:
        """The record of the key ``secret`` if it may be used now (else 401)."""
        return await self.authenticate_digest(key_digest(secret))

    async def authenticate_digest(self, digest: str) -> KeyRecord:
        """:meth:`authenticate` by the key's digest (``key_digest``), as the hot path has it
        (``meshfast_core.keys.bearer_digest`` of the Authorization header)."""
        raise NotImplementedError

    async def context(self, key: KeyRecord) -> tuple[Account, Project]:
        """The key's account and project as the hot path needs them (billing terms, limits,
        privacy defaults). A shared backend may answer from a local cache whose freshness
        ``place_hold`` verifies atomically (raising errors.StaleContext when it changed)."""
        raise NotImplementedError

    async def place_hold(self, key: KeyRecord, amount_nano: int, tokens: int = 0) -> Hold:
        """Admit the call under the key's and project's limits (429 otherwise) and hold
        ``amount_nano`` on the balance (402 otherwise), atomically; ``tokens`` is the TPM
        reservation (prompt estimate plus max output)."""
        raise NotImplementedError

    def rate_headers(self, hold: Hold) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit-* (and monthly budget) headers for an admitted call."""
        return []

    def add_revoke_listener(self, listener: Any, active_keys: Any = None) -> None:
        """``listener(key_id)`` runs after a key is revoked (to end its streams).
        ``active_keys()`` lists the key ids with calls in flight: a shared store that lost
        its revocation channel for a while checks those when it is back."""
        raise NotImplementedError

    async def settle(self, hold: Hold, receipt: Receipt) -> None:
        raise NotImplementedError

    async def release(self, hold: Hold) -> None:
        raise NotImplementedError

    def settler(self, call_type: type, margin_ppm: int, fee_nano: int, chars_per_token: int) -> Any:
        """The ``records.Settler`` the pipeline settles its calls with (``call_type``: its
        ``Call``; the billing defaults): on an ``immediate`` store one that settles on it,
        else one that only makes the answers' headers (the store's ``settle`` settles)."""
        return Settler(call_type, None, None, None, margin_ppm, fee_nano, chars_per_token)

    # -- control plane --------------------------------------------------------
    async def create_account(self, name: str, margin_ppm: int | None = None, fee_nano: int | None = None) -> Account:
        raise NotImplementedError

    async def account(self, ref: str) -> Account:
        raise NotImplementedError

    async def accounts(self) -> list[Account]:
        raise NotImplementedError

    async def create_project(self, account_ref: str, name: str) -> Project:
        raise NotImplementedError

    async def project(self, ref: str, account_ref: str | None = None) -> Project:
        raise NotImplementedError

    async def projects(self, account_ref: str | None = None) -> list[Project]:
        raise NotImplementedError

    async def create_key(self, project: Project, name: str = "", limits: Limits | None = None, expires_at: float | None = None) -> tuple[KeyRecord, str]:
        raise NotImplementedError

    async def key(self, key_id: str) -> KeyRecord:
        raise NotImplementedError

    async def keys(self, account_ref: str | None = None, project_ref: str | None = None) -> list[KeyRecord]:
        raise NotImplementedError

    async def revoke_key(self, key_id: str) -> KeyRecord:
        raise NotImplementedError

    async def update_key(self, key_id: str, limits: Limits | None = None, expires_at: float | None = None) -> KeyRecord:
        raise NotImplementedError

    async def update_project(self, project_id: str, limits: Limits) -> Project:
        raise NotImplementedError

    async def topup(self, account_ref: str, amount_nano: int, chain: str, tx_id: str) -> tuple[Topup, bool]:
        raise NotImplementedError

    async def receipt(self, receipt_id: str, account_id: str | None = None) -> Receipt | None:
        """One receipt by id (``account_id``: only if it belongs to that account)."""
        raise NotImplementedError

    async def receipts(self, account_id: str | None = None, key_id: str | None = None, limit: int = 100) -> list[Receipt]:
        raise NotImplementedError

    async def usage(self, group_by: str, account_id: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def verify_ledger(self) -> list[str]:
        raise NotImplementedError

    async def check(self) -> None:
        """Fail now, with StoreUnavailable and the reason, if the store cannot be used."""

    async def attach(self) -> None:
        """Bind background work to the running event loop (called once at start-up)."""

    async def flush(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError
