"""``meshfast serve --demo``: on an empty store, a demo account with a small balance and a key."""

from __future__ import annotations

from meshfast.money import usd_to_nano
from meshfast.store.base import Store

DEMO_ACCOUNT = "demo"
DEMO_PROJECT = "default"
DEMO_BALANCE_USD = "5"


async def create_demo(store: Store) -> str | None:
    """Create the demo account, project, top-up and key; return the key, or None when the
    store already has accounts (a demo never touches a store in use)."""
    if await store.accounts():
        return None
    account = await store.create_account(DEMO_ACCOUNT)
    project = await store.create_project(account.id, DEMO_PROJECT)
    await store.topup(account.id, usd_to_nano(DEMO_BALANCE_USD), "manual", "demo-initial-balance")
    _key, secret = await store.create_key(project, name="demo")
    return secret
