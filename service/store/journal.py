"""The store's change journal: how processes sharing one store directory see each other's writes.

On Ray Serve the HTTP API runs in ingress replicas and the forwards in model replicas: separate
processes, possibly on separate nodes, on one store directory (a shared mount). Each keeps its
own in-memory index (:mod:`service.store.index`). A shared :class:`~service.store.AdapterStore`
therefore does every mutation under :class:`ChangeJournal.locked` (``fcntl.flock`` on
``<root>/.lock``: one writer at a time across processes and nodes; NFSv4 and EFS implement it),
re-reads the name from disk first (another process may have written it) and appends
``<generation> <name>`` to ``<root>/.journal`` after it. A :class:`StoreWatcher` thread in every
process reads the journal every ``interval_s`` and re-reads only the names that changed; a reader
that fell behind the journal's bounded window rescans the whole store.

Why a file rather than a Ray named actor or a pub/sub channel: the store directory is already the
truth every process shares, and it survives the restart of any process; a file needs nothing else
kept alive, and costs a reader one ``stat`` per poll while nothing changes. The bound is stated
and tested: a change is seen by every process within ``interval_s`` plus one read (plus the NFS
attribute cache, see docs/ray.md).

Sizes: the journal keeps the last :data:`MAX_ENTRIES` lines (names are at most 64 characters), so
it stays under about 300 KB whatever the store's history; a reader reads at most that.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from lookaside.checkpoint.atomic import write_file_atomic
from service.errors import StoreBusy

if TYPE_CHECKING:
    from service.store import AdapterStore

log = logging.getLogger("service.store.journal")

JOURNAL_FILE = ".journal"
LOCK_FILE = ".lock"
MAX_ENTRIES = 4096
"""Lines kept; a reader more than this many changes behind rescans the whole store."""
LOCK_TIMEOUT_S = 30.0
"""Longest wait for another process's write (an upload's fsyncs); past it :class:`StoreBusy`."""


class ChangeJournal:
    """``<root>/.journal`` and ``<root>/.lock`` of one store (module docstring)."""

    def __init__(self, root: Path, *, max_entries: int = MAX_ENTRIES) -> None:
        self.root = Path(root)
        self.path = self.root / JOURNAL_FILE
        self.max_entries = max_entries

    @contextmanager
    def locked(self, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the store-wide write lock (polled without blocking, so the wait is bounded)."""
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"another process held the store's write lock for over {timeout_s:.0f} "
                        "s; retry shortly"
                    )
                time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def read(self) -> list[tuple[int, str]]:
        """Every ``(generation, name)`` kept, oldest first (``[]`` before the first write)."""
        try:
            with self.path.open("rb") as f:
                data = f.read(self.max_entries * 80 + 1)
        except FileNotFoundError:
            return []
        entries = []
        for line in data.decode("ascii", errors="replace").splitlines():
            gen, _, name = line.partition(" ")
            if gen.isdigit() and name:
                entries.append((int(gen), name))
        return entries

    def generation(self) -> int:
        """The newest generation written (0 before the first write)."""
        entries = self.read()
        return entries[-1][0] if entries else 0

    def record(self, name: str) -> int:
        """Append one change of ``name`` (hold :meth:`locked`); returns its generation."""
        entries = self.read()
        gen = (entries[-1][0] if entries else 0) + 1
        entries.append((gen, name))
        text = "".join(f"{g} {n}\n" for g, n in entries[-self.max_entries :])
        write_file_atomic(self.path, text.encode("ascii"))
        return gen

    def changed_since(self, seen: int) -> tuple[int, list[str] | None]:
        """(newest generation, names changed after ``seen``), or None for the names when the
        journal no longer reaches back to ``seen`` (rescan everything)."""
        entries = self.read()
        if not entries:
            return seen, []
        newest = entries[-1][0]
        if newest < seen or entries[0][0] > seen + 1:
            return newest, None  # behind the window, or the journal was reset: rescan
        names = list(dict.fromkeys(n for g, n in entries if g > seen))
        return newest, names


class StoreWatcher:
    """A thread that keeps one process's store index current with the other processes' writes.

    ``on_change`` is called (on the watcher thread) with the names re-read, after the index holds
    their new state; its exceptions are logged, never raised.
    """

    def __init__(
        self,
        store: AdapterStore,
        *,
        interval_s: float,
        on_change: Callable[[list[str]], None] | None = None,
    ) -> None:
        if store.journal is None:
            raise ValueError("StoreWatcher needs a shared store (AdapterStore(shared=True))")
        self.store = store
        self.journal = store.journal
        self.interval_s = interval_s
        self.on_change = on_change
        self.generation = self.journal.generation()
        self.polls = 0
        """Polls done; :attr:`reads` of them found the journal changed (for tests, metrics)."""
        self.reads = 0
        self._stat: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lookaside-store-watch", daemon=True)

    def start(self) -> StoreWatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def poll(self) -> list[str]:
        """One check (the thread calls it every ``interval_s``); the names re-read."""
        self.polls += 1
        try:
            st = os.stat(self.journal.path)
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stat:
            return []  # one stat while nothing changes
        self._stat = stamp
        self.reads += 1
        newest, names = self.journal.changed_since(self.generation)
        if names is None:
            names = self.store.rescan()
        else:
            for name in names:
                self.store.refresh(name)
        self.generation = newest
        if names and self.on_change is not None:
            try:
                self.on_change(names)
            except Exception:
                log.exception("handling store changes of %s failed", names)
        return names

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # a bad read must not end the thread: the next poll retries
                log.exception("reading the store's change journal failed")
