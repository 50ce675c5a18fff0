"""The SQL engine a kNN store persists through: a small interface (`SqlEngine`) and SQLite (`SqliteEngine`).

The store speaks a few portable statements (`CREATE TABLE IF NOT EXISTS`, `INSERT ... ON CONFLICT DO UPDATE`,
`DELETE`, `SELECT`) written with `?` placeholders, which `SqlEngine.sql` rewrites to the engine's own style, so a
server database (Postgres through psycopg: `%s`, `BYTEA`) is one more subclass.

SQLite runs in WAL mode with `synchronous=FULL`. WAL: a commit appends to `<file>-wal`, readers never block the
writer, and a process killed mid-transaction leaves frames without a commit record, which the next open ignores.
FULL rather than NORMAL: NORMAL keeps every commit atomic but may lose the last ones on a power cut or OS crash,
which would leave the store behind the training checkpoint it was committed with; the store commits once per
checkpoint, so the extra fsync per commit costs nothing that shows.
"""

from __future__ import annotations

import abc
import contextlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence


class EngineError(Exception):
    """A database that cannot be used as asked (not a database, cannot be written, locked): one line."""


class SqlEngine(abc.ABC):
    """One connection to one database. Statements are written with `?`; `sql()` turns them into this engine's
    placeholder style. Outside `transaction()` every statement commits on its own."""

    placeholder: str = "?"
    blob_type: str = "BLOB"
    name: str = "?"  # what error messages call the database (a path, a URL)

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the database (creating it where that is how the engine works) and check it can be written."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run one statement; its result rows (empty for statements that return none)."""

    @abc.abstractmethod
    def executemany(self, sql: str, rows: Iterable[Sequence]) -> None:
        """Run one statement once per row of parameters."""

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Everything inside commits together or not at all (rolled back on an exception or a killed process)."""

    @abc.abstractmethod
    def table_names(self) -> set[str]:
        """The tables the database holds."""

    @abc.abstractmethod
    def close(self) -> None: ...


class SqliteEngine(SqlEngine):
    """A SQLite file in WAL mode, `synchronous=FULL` (see the module docstring). Connecting changes nothing in a
    file that turns out not to be a database, nor in one that cannot be written."""

    def __init__(self, path: str | os.PathLike, timeout_s: float = 5.0):
        self.path = os.fspath(path)
        self.name = self.path
        self.timeout_s = timeout_s
        self._conn: sqlite3.Connection | None = None

    def connect(self) -> None:
        path = self.path
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.exists(path) and not os.path.isfile(path):
            raise EngineError(f"{path} is not a file; pass the path of a store file")
        if not os.path.exists(path):
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise EngineError(f"{path} cannot be written: cannot create {folder} ({e.strerror})") from None
        elif not os.access(path, os.W_OK):
            raise EngineError(f"{path} cannot be written (read-only file); make it writable or pass another path")
        if not os.access(folder, os.W_OK):
            raise EngineError(f"{path} cannot be written: its directory {folder} is read-only (SQLite writes "
                              f"{os.path.basename(path)}-wal next to it); make it writable or pass another path")
        conn = sqlite3.connect(path, timeout=self.timeout_s, isolation_level=None)
        try:
            conn.execute("PRAGMA schema_version").fetchone()  # reads the header: fails on a file that is not SQLite
        except sqlite3.DatabaseError as e:
            conn.close()
            raise EngineError(f"{path} is not a SQLite database ({e}); delete it or pass a new path") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise EngineError(f"{path}: SQLite refused WAL mode (journal_mode stays {mode!r}); put the store "
                                  f"on a local file system")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock: fails now, not at the first commit
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            conn.close()
            why = "it is locked by another process" if "locked" in str(e) else str(e)
            raise EngineError(f"{path} cannot be written ({why}); close the other user or pass another path") from None
        except EngineError:
            conn.close()
            raise
        self._conn = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise EngineError(f"{self.path} is not open (connect() first, or it was closed)")
        return self._conn

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise EngineError(f"{self.path}: {e}") from None

    def executemany(self, sql: str, rows: Iterable[Sequence]) -> None:
        try:
            self._connection().executemany(sql, rows)
        except sqlite3.Error as e:
            raise EngineError(f"{self.path}: {e}") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._connection().in_transaction:  # SQLite may have rolled back already
                self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def table_names(self) -> set[str]:
        return {r[0] for r in self.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
