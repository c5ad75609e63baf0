"""Durable state for ``persona-exporter serve --storage.path DIR``: SQLite in WAL mode.

Why SQLite: it is in the standard library, its write-ahead log is checksummed and a
transaction cut short by a crash is rolled back on the next open, so the state on disk is
always the state after some whole batch. A home-made journal would have to get each of
those right again.

What is kept (format :data:`FORMAT`, in ``PRAGMA user_version``):

- ``series``: one row per held series, its absolute values (:mod:`..metrics.state`),
  rewritten when a batch touches it;
- ``scalars``: the one-label self-metrics, one JSON row;
- ``batches``: the remembered batch ids, each with its content hash and bounded answer,
  in the same transaction as the series the batch changed.

So an event acknowledged with 2xx (the answer follows the commit) survives ``kill -9``;
after a restart the counters continue where they were and a retried batch is recognised.
Disk use grows with series and remembered ids, never with traffic: rows are overwritten,
old ids pruned, and the log copied into the database every few seconds, off the event
loop (and truncated at a clean stop).

``synchronous=NORMAL`` (the default) survives a process crash, not a power loss: the last
commits may be lost with the machine. ``fsync=True`` (``--storage.fsync``) syncs every
commit (``synchronous=FULL``), at the cost of one fsync per batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..metrics.recorder import Recorder, build_version
from ..metrics.state import Changes, restore

logger = logging.getLogger("persona_exporter")

FORMAT = 1
APPLICATION_ID = 0x50455850  # "PEXP": our files, not any SQLite database
DB_NAME = "state.db"
LOCK_NAME = "lock"
PRUNE_EVERY = 1000  # commits between prunings of the remembered ids, at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series(kind TEXT NOT NULL, labels TEXT NOT NULL,
                                  state TEXT NOT NULL, PRIMARY KEY(kind, labels))
                                  WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scalars(name TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches(seq INTEGER PRIMARY KEY, batch_id TEXT NOT NULL UNIQUE,
                                   digest BLOB NOT NULL, answer TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS held(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class StorageError(RuntimeError):
    """The state cannot be kept: the directory is unusable, taken, or a write failed."""


@dataclass(frozen=True)
class StoredBatch:
    """A remembered batch: its id, the hash of its body, and its answer as JSON."""

    batch_id: str
    digest: bytes
    answer: str


class Store:
    """The state directory of one exporter. Open with :meth:`open`; one writer at a time
    (the ingestor's lock orders the commits)."""

    def __init__(self, directory: Path, db: sqlite3.Connection, lock: IO[bytes], *,
                 remembered: int) -> None:
        self.directory = directory
        self._db = db
        self._lock_file = lock
        self._remembered = remembered
        # Pruning is one indexed DELETE; every tenth of the cap keeps the table within
        # 110% of it.
        self._prune_every = max(1, min(PRUNE_EVERY, remembered // 10))
        self._commits = 0
        # Rows a failed commit could not write: absolute values, so the next commit that
        # succeeds carries them along and the disk catches up completely.
        self._pending_rows: dict[tuple[str, str], str] = {}
        self._pending_batches: list[StoredBatch] = []
        self._pending_scalars: str | None = None
        # Received spans acknowledged while they wait for their persona (genai/traces.py):
        # key -> JSON, or None for one released since.
        self._pending_held: dict[str, str | None] = {}
        self._closed = False
        self._guard = threading.Lock()

    # --- open ---

    @classmethod
    def open(cls, directory: str | Path, *, fsync: bool = False,
             remembered: int = 100_000) -> Store:
        """Open (or create) the state in ``directory``; raise StorageError with the reason
        when it cannot be used. A damaged database file is moved aside, not fatal."""
        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = (path / LOCK_NAME).open("ab")
        except OSError as error:
            raise StorageError(f"--storage.path {path}: cannot use the directory: "
                               f"{error.strerror or error}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StorageError(f"--storage.path {path}: another persona-exporter uses this "
                               "directory (two writers would overwrite each other's "
                               "counters); give each replica its own") from None
        try:
            db = _connect(path, fsync)
        except BaseException:
            lock.close()
            raise
        return cls(path, db, lock, remembered=remembered)

    # --- start ---

    def restore_into(self, recorder: Recorder) -> list[StoredBatch]:
        """Load the stored series into ``recorder`` (built with its config) and return the
        remembered batches, oldest first. Rows that do not fit are skipped, logged once
        and counted; they never stop the start. StorageError when the file cannot be
        read (the file is left as it is)."""
        try:
            return self._restore_into(recorder)
        except sqlite3.Error as error:
            raise StorageError(f"--storage.path {self.directory}: cannot read the state: "
                               f"{error}") from None

    def _restore_into(self, recorder: Recorder) -> list[StoredBatch]:
        db = self._db
        rows = db.execute("SELECT kind, labels, state FROM series").fetchall()
        scalars = db.execute("SELECT state FROM scalars WHERE name = 'scalars'").fetchone()
        skipped = restore(recorder, rows, scalars[0] if scalars else None)
        if skipped:
            recorder.instrument("persona_exporter_internal_errors_total").labels(
                "storage", "UnreadableRow").inc(len(skipped))
            logger.warning("storage: skipped %d stored row(s) that do not fit this version "
                           "(their series start again at 0): %s", len(skipped),
                           "; ".join(skipped[:3]))
        batches = [StoredBatch(*row) for row in db.execute(
            "SELECT batch_id, digest, answer FROM (SELECT * FROM batches ORDER BY seq DESC "
            "LIMIT ?) ORDER BY seq", (self._remembered,))]
        clean = self._meta("clean_shutdown")
        last = db.execute("SELECT seq, batch_id FROM batches ORDER BY seq DESC LIMIT 1")\
            .fetchone()
        if clean == "0":
            logger.info(
                "storage: recovered after an unclean stop, up to batch %s; a batch in flight "
                "at the stop was not acknowledged and was rolled back (its client retries it)",
                f"#{last[0]} ({last[1]!r})" if last else "(none yet)")
        logger.info("storage: %s - %d series, %d remembered batch ids restored",
                    self.directory / DB_NAME, len(rows) - len(skipped), len(batches))
        with self._transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '0')")
        return batches

    # --- run ---

    def commit(self, changes: Changes, batch: StoredBatch | None) -> None:
        """Write what a batch changed, with its id, in one transaction; raise StorageError
        when it failed (the changes are kept and written with the next commit)."""
        with self._guard:
            self._pending_rows.update(((k, labels), state) for k, labels, state in changes.rows)
            self._pending_scalars = changes.scalars
            self._pending_held.update(changes.held)
            self._pending_held.update(dict.fromkeys(changes.released))
            if batch is not None:
                self._pending_batches.append(batch)
            self._write()

    def committed(self, keys: list[tuple[str, str]]) -> tuple[dict[tuple[str, str], str],
                                                               str | None]:
        """What the disk holds for these series, and its scalars: what a failed commit
        puts the recorder back to. StorageError when it cannot be read either."""
        with self._guard:
            try:
                rows = {}
                for kind, labels in keys:
                    row = self._db.execute("SELECT state FROM series WHERE kind = ? AND "
                                           "labels = ?", (kind, labels)).fetchone()
                    if row is not None:
                        rows[(kind, labels)] = row[0]
                scalars = self._db.execute(
                    "SELECT state FROM scalars WHERE name = 'scalars'").fetchone()
            except sqlite3.Error as error:
                raise StorageError(f"reading the state back failed: {error}") from None
            return rows, scalars[0] if scalars else None

    def checkpoint(self) -> None:
        """Copy the log into the database (what SQLite would do inside a commit every 1,000
        pages); called periodically off the event loop. Never raises."""
        with self._guard:
            if self._closed:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as error:
                logger.warning("storage: checkpoint failed: %s", error)

    def discard_pending(self) -> None:
        """Forget what failed commits left: the recorder was put back to the disk's state.
        (Held spans are not the recorder's: they stay pending.)"""
        with self._guard:
            self._pending_rows.clear()
            self._pending_batches.clear()
            self._pending_scalars = None

    def flush(self) -> None:
        """Write what earlier failed commits left; raise StorageError while it fails."""
        with self._guard:
            if self._pending():
                self._write()

    def held_rows(self) -> list[tuple[str, str]]:
        """The spans that were waiting for their persona when the state was last written."""
        with self._guard:
            try:
                return list(self._db.execute("SELECT key, value FROM held"))
            except sqlite3.Error as error:
                raise StorageError(f"--storage.path {self.directory}: cannot read the "
                                   f"held spans: {error}") from None

    def _pending(self) -> bool:
        return bool(self._pending_rows or self._pending_batches or self._pending_scalars
                    or self._pending_held)

    def _write(self) -> None:
        if self._closed:
            raise StorageError("the state store is closed")
        try:
            with self._transaction() as cur:
                cur.executemany(
                    "INSERT INTO series VALUES (?, ?, ?) ON CONFLICT(kind, labels) "
                    "DO UPDATE SET state = excluded.state",
                    [(kind, labels, state) for (kind, labels), state
                     in self._pending_rows.items()])
                if self._pending_scalars is not None:
                    cur.execute("INSERT OR REPLACE INTO scalars VALUES ('scalars', ?)",
                                (self._pending_scalars,))
                cur.executemany(
                    "INSERT OR REPLACE INTO batches(batch_id, digest, answer) VALUES (?, ?, ?)",
                    [(b.batch_id, b.digest, b.answer) for b in self._pending_batches])
                if self._pending_held:
                    cur.executemany("INSERT OR REPLACE INTO held VALUES (?, ?)",
                                    [(k, v) for k, v in self._pending_held.items()
                                     if v is not None])
                    cur.executemany("DELETE FROM held WHERE key = ?",
                                    [(k,) for k, v in self._pending_held.items() if v is None])
                self._commits += 1
                if self._commits % self._prune_every == 0:
                    cur.execute("DELETE FROM batches WHERE seq <= (SELECT MAX(seq) FROM "
                                "batches) - ?", (self._remembered,))
        except sqlite3.Error as error:
            raise StorageError(f"writing the state to {self.directory / DB_NAME} failed: "
                               f"{error}") from None
        self._pending_rows.clear()
        self._pending_batches.clear()
        self._pending_scalars = None
        self._pending_held.clear()

    # --- stop ---

    def close(self) -> None:
        """Write what is pending, checkpoint the log into the database, mark a clean stop
        and release the directory. Safe to call twice."""
        with self._guard:
            if self._closed:
                return
            try:
                if self._pending():
                    self._write()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                with self._transaction() as cur:
                    cur.execute("INSERT OR REPLACE INTO meta VALUES ('clean_shutdown', '1')")
            except (sqlite3.Error, StorageError) as error:
                logger.error("storage: the last state could not be written at stop: %s", error)
            finally:
                self._closed = True
                self._db.close()
                self._lock_file.close()

    # --- helpers ---

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob(DB_NAME + "*") if p.is_file())

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) leaves the transaction open: close it, or the
            # next BEGIN fails and the store never recovers.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
            raise


# What says the file itself is bad; anything else (I/O error, disk full, locked) is the
# machine's trouble of the moment, and moving a good file aside for it would lose the state.
_DAMAGED = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})


def _connect(path: Path, fsync: bool) -> sqlite3.Connection:
    """Open the database, moving aside a file that is not ours, damaged or from a newer
    version (the exporter then starts from zero with one line that says so); raise
    StorageError for any other failure, so a passing I/O error never costs the state."""
    db_path = path / DB_NAME
    for _ in range(2):
        problem = None
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if app_id not in (0, APPLICATION_ID):
                problem = "not a persona-exporter state file"
            elif version > FORMAT:
                problem = f"written by a newer persona-exporter (format {version} > {FORMAT})"
            elif db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                problem = "damaged (quick_check failed)"
            else:
                _initialise(db, fsync)
                return db
        except sqlite3.DatabaseError as error:
            if db is not None:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            if getattr(error, "sqlite_errorname", None) not in _DAMAGED:
                raise StorageError(f"--storage.path {path}: cannot open {db_path}: {error} "
                                   "(the file is left as it is)") from None
            problem = f"unreadable ({error})"
        if db is not None:
            db.close()
        aside = _move_aside(db_path)
        logger.error("storage: %s is %s; moved it to %s and starting from zero (Prometheus "
                     "sees one counter reset)", db_path, problem, aside)
    raise StorageError(f"--storage.path {path}: cannot create a state file in it")


def _initialise(db: sqlite3.Connection, fsync: bool) -> None:
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
    db.execute("PRAGMA journal_size_limit = 67108864")  # the log shrinks after checkpoints
    # A checkpoint copies the log into the database and syncs it: never inside a commit,
    # which may run on the event loop; checkpoint() runs it on the ingest thread instead.
    db.execute("PRAGMA wal_autocheckpoint = 0")
    if db.execute("PRAGMA user_version").fetchone()[0] == 0:
        db.executescript(f"BEGIN; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID}; "
                         f"PRAGMA user_version = {FORMAT}; COMMIT;")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('created_by', ?)", (build_version(),))


def _move_aside(db_path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = db_path.with_name(f"{db_path.name}.broken-{stamp}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{db_path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    return aside
