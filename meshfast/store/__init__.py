"""State: accounts, projects, keys, balances, holds, receipts, top-ups.

:class:`~meshfast.store.base.Store` is the interface; ``embedded`` is the one-process
backend (memory, made durable in SQLite by a group-committing writer process);
``redis_store`` is the shared one (many workers and hosts on one Redis).
"""

from meshfast.config import StoreConfig
from meshfast.store.base import Account, Hold, KeyRecord, Project, Receipt, Store, Topup

__all__ = ["Account", "Hold", "KeyRecord", "Project", "Receipt", "Store", "Topup", "open_store"]


def open_store(cfg: StoreConfig, *, lock: bool = True) -> Store:
    """Open the configured store: Redis when a URL is set, else the embedded one."""
    if cfg.kind == "redis":
        from meshfast.store.redis_store import RedisStore

        assert cfg.redis_url is not None
        return RedisStore(
            cfg.redis_url, prefix=cfg.redis_prefix, window_seconds=cfg.window_seconds, hold_ttl_seconds=cfg.hold_ttl_seconds
        )
    from meshfast.store.embedded import EmbeddedStore

    return EmbeddedStore(cfg.path, lock=lock, synchronous=cfg.synchronous, window_seconds=cfg.window_seconds)
