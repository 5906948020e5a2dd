"""SQLite WAL checkpoints in a thread of their own, off the writers' commits.

In WAL mode SQLite appends each commit's pages to the ``-wal`` file and copies them
into the database file later, at a checkpoint. By default the checkpoint runs inside
the commit that takes the log past ``wal_autocheckpoint`` pages (1,000): that commit
copies and syncs the pages of many before it returns, so one write in every few
waits for all their I/O, and the bigger the database the more scattered (and slower)
that copy. A store on a SQLite file runs a :class:`Checkpointer` instead: a daemon
thread with a connection of its own that, whenever the log has changed, runs
``PRAGMA wal_checkpoint(PASSIVE)`` at most every ``sqlite_checkpoint_interval``
seconds, while the writers go on (sqlite3 lets other threads run during the copy).
PASSIVE takes no lock a reader or writer waits for; what it cannot copy yet (pages a
reader still needs) is copied next time. The engine's own connections keep the
automatic checkpoint as a backstop, at :data:`BACKSTOP_PAGES`, for a thread that
falls behind.

Engines of several event loops on the same file share one checkpointer; it stops
when the last of them is disposed (or garbage-collected).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from urllib.parse import quote

log = logging.getLogger(__name__)

BACKSTOP_PAGES = 10_000
"""``wal_autocheckpoint`` of the engine's connections while a checkpointer runs: a
commit checkpoints only if the log has grown this far (~40 MB of 4 KB pages)."""

_lock = threading.Lock()
_running: dict[str, Checkpointer] = {}
"""The checkpointer of each database file, by absolute path."""


class Checkpointer:
    """One thread checkpointing one SQLite file's WAL (see the module docstring).

    Use :func:`acquire` and :func:`release` rather than the constructor: they share
    one checkpointer per file.
    """

    def __init__(self, path: str, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.users = 0
        self.checkpoints = 0
        """Checkpoints run so far (tests and diagnostics)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"asyncstore-checkpoint:{path}", daemon=True)

    @property
    def alive(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (a checkpoint under way finishes first); does not wait."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the thread has stopped (after :meth:`stop`)."""
        self._thread.join(timeout)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        seen: tuple[int, int] | None = None  # the log's (size, mtime) at the last checkpoint
        try:
            while not self._stop.wait(self.interval):
                try:
                    stat = os.stat(self.path + "-wal")
                except OSError:  # no log (yet, or any more): nothing to copy
                    continue
                mark = (stat.st_size, stat.st_mtime_ns)
                if mark == seen:
                    continue
                try:
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy, or the file went away: try again later
                    log.debug("checkpoint of %s failed: %s", self.path, exc)
                    if conn is not None:
                        conn.close()
                        conn = None
                    continue
                self.checkpoints += 1
                seen = mark
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never creates the file; no busy wait: a checkpoint that finds
        # another under way is skipped, not queued.
        conn = sqlite3.connect(
            f"file:{quote(self.path)}?mode=rw", uri=True, timeout=0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA wal_autocheckpoint = 0")  # this connection only checkpoints on purpose
        return conn


def running(path: str) -> Checkpointer | None:
    """The checkpointer of the SQLite file ``path``, if one runs."""
    with _lock:
        return _running.get(os.path.abspath(path))


def acquire(path: str, interval: float) -> Checkpointer:
    """The running checkpointer of ``path`` (started if none runs), with one more user."""
    path = os.path.abspath(path)
    with _lock:
        checkpointer = _running.get(path)
        if checkpointer is None or not checkpointer.alive:
            checkpointer = _running[path] = Checkpointer(path, interval)
            checkpointer.start()
        checkpointer.users += 1
        return checkpointer


def release(checkpointer: Checkpointer) -> None:
    """One user fewer; the last one stops the thread (without waiting for it)."""
    with _lock:
        checkpointer.users -= 1
        if checkpointer.users > 0:
            return
        if _running.get(checkpointer.path) is checkpointer:
            del _running[checkpointer.path]
    checkpointer.stop()


__all__ = ["BACKSTOP_PAGES", "Checkpointer", "acquire", "release", "running"]
