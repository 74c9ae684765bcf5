"""State: accounts, projects, keys, balances, holds, receipts, top-ups.

:class:`~meshfast.store.base.Store` is the interface; ``embedded`` is the one-process
backend (memory, made durable in SQLite by a group-committing writer thread).
"""

from meshfast.config import StoreConfig
from meshfast.store.base import Account, Hold, KeyRecord, Project, Receipt, Store, Topup

__all__ = ["Account", "Hold", "KeyRecord", "Project", "Receipt", "Store", "Topup", "open_store"]


def open_store(cfg: StoreConfig, *, lock: bool = True) -> Store:
    """Open the configured store (only ``embedded`` exists so far)."""
    from meshfast.store.embedded import EmbeddedStore

    return EmbeddedStore(cfg.path, lock=lock, synchronous=cfg.synchronous, window_seconds=cfg.window_seconds)
