"""A consistent copy of an open SQLite database in one self-contained file."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def copy_database(con: sqlite3.Connection, path: str | Path) -> None:
    """Copy ``con``'s database to ``path`` with SQLite's online backup: what is still in the
    write-ahead log is included (a plain file copy would miss it), and the copy keeps no log of
    its own. The caller holds whatever lock keeps other users of ``con`` out meanwhile."""
    target = sqlite3.connect(str(path))
    try:
        con.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")
    finally:
        target.close()
