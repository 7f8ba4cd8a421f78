"""The tuning database: measured schedules keyed by workload, in SQLite (standard library).

A workload is a structural hash of the kernel (its canonical TC text), the
size values and the target file's contents, so a record survives renames and
is invalidated when the chip or the kernel changes.  Each record holds the
replayable schedule (JSON), the measurement (simulated cycles or seconds) and
any error.  Every write is one transaction: concurrent writers wait
(``busy_timeout``), and a writer killed mid-transaction leaves no partial
record (SQLite's atomic commit, WAL journal).
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass

from ir import printer
from ir.kernel import Kernel
from ir.target import Target

from .base import Schedule

CONFIRMED = "confirmed"  # strategy of a tuning run's re-timed final choice: ranked first by best()

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workload TEXT NOT NULL,
    kernel TEXT NOT NULL,
    target TEXT NOT NULL,
    sizes TEXT NOT NULL,
    schedule TEXT NOT NULL,
    cycles REAL,
    seconds REAL,
    error TEXT,
    strategy TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_workload ON records (workload);
"""


def workload_key(k: Kernel, sizes: dict[str, int], t: Target) -> str:
    h = hashlib.sha256()
    h.update(printer.kernel(k).encode())
    h.update(json.dumps(sorted(sizes.items())).encode())
    if t.path and os.path.exists(t.path):
        with open(t.path, "rb") as f:
            h.update(f.read())
    else:
        h.update(t.name.encode())
    return h.hexdigest()[:32]


@dataclass
class Record:
    id: int
    schedule: Schedule
    cycles: float | None
    seconds: float | None
    error: str | None


def _retrying(fn, seconds: float = 60.0):
    """``fn()``, tried again while SQLite says the database is locked or busy (up to ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class TuningDB:
    def __init__(self, path: str):
        self.path = path
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=60000")
        # switching a new file to WAL and creating the schema can answer "database is locked"
        # at once, without waiting on the busy timeout, while another process does the same
        # (two tuning workers opening one new database: seen in CI)
        _retrying(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))

        def schema():
            with self.conn:
                self.conn.executescript(SCHEMA)
        _retrying(schema)

    def add(self, workload: str, k: Kernel, t: Target, sizes: dict[str, int], schedule: Schedule,
            cycles: float | None = None, seconds: float | None = None, error: str | None = None) -> int:
        with self.conn:  # one transaction: all or nothing
            cur = self.conn.execute(
                "INSERT INTO records (workload, kernel, target, sizes, schedule, cycles, seconds, error, "
                "strategy, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (workload, k.name, t.name, json.dumps(sizes, sort_keys=True), schedule.to_json(), cycles,
                 seconds, error, schedule.strategy, time.time()))
            return cur.lastrowid

    def records(self, workload: str) -> list[Record]:
        rows = self.conn.execute("SELECT id, schedule, cycles, seconds, error FROM records WHERE workload = ? "
                                 "ORDER BY id", (workload,)).fetchall()
        return [Record(r[0], Schedule.from_json(r[1]), r[2], r[3], r[4]) for r in rows]

    def best(self, workload: str) -> Record | None:
        """The fastest record; a tuning run's confirmed choice (re-timed head to head against the
        default, strategy ``confirmed``) outranks single timings, which on a shared machine
        can be lucky."""
        row = self.conn.execute(
            "SELECT id, schedule, cycles, seconds, error FROM records WHERE workload = ? AND error IS NULL "
            "ORDER BY (strategy = ?) DESC, COALESCE(cycles, seconds) ASC, id ASC LIMIT 1",
            (workload, CONFIRMED)).fetchone()
        return None if row is None else Record(row[0], Schedule.from_json(row[1]), row[2], row[3], row[4])

    def count(self, workload: str | None = None) -> int:
        if workload is None:
            return self.conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return self.conn.execute("SELECT COUNT(*) FROM records WHERE workload = ?", (workload,)).fetchone()[0]

    def close(self):
        self.conn.close()


def default_path() -> str | None:
    return os.environ.get("ISAMAP_DB")
