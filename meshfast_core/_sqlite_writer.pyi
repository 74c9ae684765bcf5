"""Type stub of the compiled SQLite writer core (twin: ``Writer`` in meshfast/store/sqlite_writer.py)."""

__all__ = ("DEBIT_SQL", "ROWS_PER_INSERT", "SPEND_SQL", "Writer", "receipt_insert")

ROWS_PER_INSERT: int
DEBIT_SQL: str
SPEND_SQL: str

def receipt_insert(rows: int) -> str: ...

class Writer:
    rows_per_insert: int
    def __init__(self, path: str, synchronous: str, rows_per_insert: int = ...) -> None: ...
    def commit_frame(self, payload: bytes) -> bool: ...
    def close(self) -> None: ...
