"""A node's registry on disk: its datasets and its decisions on shipped training plans (SQLite).

The ``fedplug node`` commands and the running node process use the same database at the same time
(the node reads approvals on every request), so every operation opens its own short-lived
connection, writes happen in ``BEGIN IMMEDIATE`` transactions, and the database runs in WAL mode
(readers never wait on a writer). ``PRAGMA user_version`` holds the schema version.

Plans are referred to by their SHA-256 (see :mod:`fedplug.planref`) or by a unique prefix of at
least :data:`MIN_PREFIX` hex digits, as ``git`` does with commits.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedplug.datasets import Dataset
from fedplug.errors import ConfigError, FedplugError, describe

if TYPE_CHECKING:
    from fedplug.plugins import FedplugPluginManager

SCHEMA_VERSION = 1
MIN_PREFIX = 8
MAX_PENDING_PLANS = 100
MAX_PENDING_MB = 64.0
PLAN_STATUSES = ("pending", "approved", "rejected")
_HASH = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    tags TEXT NOT NULL,
    options TEXT NOT NULL,
    added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plans (
    sha256 TEXT PRIMARY KEY,
    class_name TEXT,
    source TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    first_seen TEXT NOT NULL,
    decided TEXT,
    note TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class DatasetRecord:
    """A registered dataset: how to load it (``type`` and the loader's ``options``) and its tags."""

    name: str
    type: str
    tags: list[str]
    options: dict[str, Any]
    added: str


@dataclass(frozen=True)
class PlanRecord:
    """A shipped training plan the node has seen (or pre-approved by hash), and its status.

    ``class_name`` and ``source`` are None for a hash approved before the plan ever arrived.
    """

    sha256: str
    class_name: str | None
    source: str | None
    status: str
    first_seen: str
    decided: str | None
    note: str


def validate_dataset(name: str, type: str, tags: list[str], options: dict[str, Any] | None) -> str:
    """Check a dataset entry before it is stored; return its options as JSON."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(
            f"dataset name {name!r} is invalid; give a non-empty name without surrounding spaces"
        )
    if not isinstance(type, str) or not type:
        raise ConfigError(f"dataset type {type!r} is invalid; give a registered type name")
    if (
        not isinstance(tags, (list, tuple))
        or not tags
        or not all(isinstance(tag, str) and tag.strip() for tag in tags)
    ):
        raise ConfigError(
            f"dataset {name!r}: tags must be a non-empty list of non-empty strings, got "
            f"{tags!r}; experiments select datasets by their tags"
        )
    if options is None:
        options = {}
    if not isinstance(options, dict) or not all(isinstance(key, str) for key in options):
        raise ConfigError(
            f"dataset {name!r}: options must be a dict of loader keyword arguments (string keys), "
            f"got {options!r}"
        )
    clash = sorted({"tags", "name"} & set(options))
    if clash:
        raise ConfigError(
            f"dataset {name!r}: options {clash} are set by fedplug (the dataset's tags and "
            "name); remove them from the loader options"
        )
    try:
        options_json = json.dumps(options, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"dataset {name!r}: options {options!r} cannot be stored as JSON ({exc}); give "
            "strings, numbers, booleans, lists or dicts"
        ) from exc
    return options_json


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class NodeStore:
    """The node's SQLite database at ``path``, created with its schema if it does not exist.

    :param path: the database file; missing parent folders are created.
    :param max_pending_plans: plans kept waiting for review; past it, the oldest pending ones are
        forgotten (a researcher can ship any number of distinct sources).
    :param max_pending_mb: the most source text, in MiB, kept for pending plans (oldest out
        first); a single source larger than this is not recorded at all.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending_plans: int = MAX_PENDING_PLANS,
        max_pending_mb: float = MAX_PENDING_MB,
    ) -> None:
        self.path = Path(path)
        self.max_pending_plans = max_pending_plans
        self.max_pending_bytes = int(max_pending_mb * (1 << 20))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.closing(self._open()) as con:
                con.execute("PRAGMA journal_mode=WAL")
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"node database {str(self.path)!r} has schema version {version}, but this "
                        f"fedplug knows versions up to {SCHEMA_VERSION}; upgrade fedplug"
                    )
                if version < SCHEMA_VERSION:
                    con.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            con.execute(statement)
                    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    con.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"cannot use {str(self.path)!r} as a node database: {exc}; give the path of a "
                "fedplug node database, or of a file to create"
            ) from exc

    def _open(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(self._open()) as con:
            yield con

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside a write transaction, committed unless the block raises."""
        with contextlib.closing(self._open()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- datasets -------------------------------------------------------------------------------

    def add_dataset(
        self, name: str, type: str, tags: list[str], options: dict[str, Any] | None = None
    ) -> None:
        """Register dataset ``name``, loaded by dataset type ``type`` with keyword ``options``."""
        options_json = validate_dataset(name, type, tags, options)
        try:
            with self._write() as con:
                con.execute(
                    "INSERT INTO datasets (name, type, tags, options, added) VALUES (?, ?, ?, ?, ?)",
                    (name, type, json.dumps(list(tags)), options_json, _now()),
                )
        except sqlite3.IntegrityError:
            raise ConfigError(
                f"a dataset named {name!r} is already registered; choose another name, or "
                f"remove it first with `fedplug node dataset remove {name}`"
            ) from None

    def datasets(self) -> list[DatasetRecord]:
        """The registered datasets, sorted by name."""
        with self._read() as con:
            rows = con.execute("SELECT * FROM datasets ORDER BY name").fetchall()
        return [
            DatasetRecord(
                row["name"],
                row["type"],
                json.loads(row["tags"]),
                json.loads(row["options"]),
                row["added"],
            )
            for row in rows
        ]

    def remove_dataset(self, name: str) -> None:
        """Unregister dataset ``name`` (its data files are left alone)."""
        with self._write() as con:
            removed = con.execute("DELETE FROM datasets WHERE name = ?", (name,)).rowcount
            if not removed:
                names = [row[0] for row in con.execute("SELECT name FROM datasets ORDER BY name")]
                raise ConfigError(
                    f"no dataset named {name!r} is registered (registered: "
                    f"{', '.join(names) or 'none'}); `fedplug node dataset list` shows them"
                )

    def load_dataset(
        self, record: DatasetRecord, pm: FedplugPluginManager, stored: bool = True
    ) -> Dataset:
        """Load ``record`` with its type's loader from ``pm``; any failure is a ConfigError
        (``stored``: whether the record is in the registry, which its advice depends on)."""
        try:
            loader = pm.dataset_types[record.type]
            dataset = loader(**record.options, tags=list(record.tags), name=record.name)
            if not isinstance(dataset, Dataset):
                raise TypeError(
                    f"the loader returned {type(dataset).__name__}, not a fedplug Dataset"
                )
        except Exception as exc:
            detail = str(exc) if isinstance(exc, FedplugError) else describe(exc)
            advice = (
                f"fix it, or remove it with `fedplug node dataset remove {record.name}` and add it "
                "again"
                if stored
                else "nothing was added: fix it and run the command again"
            )
            raise ConfigError(
                f"dataset {record.name!r} (type {record.type}) could not be loaded: {detail}; "
                f"{advice}"
            ) from exc
        return dataset

    def load_datasets(self, pm: FedplugPluginManager) -> list[Dataset]:
        """Every registered dataset, loaded (the first failure raises)."""
        return [self.load_dataset(record, pm) for record in self.datasets()]

    # -- plans ----------------------------------------------------------------------------------

    def record_plan(self, sha256: str, class_name: str, source: str) -> str:
        """Remember a shipped plan (as pending when new) and return its current status.

        A hash approved in advance gets its class name and source filled in here. Pending plans
        are bounded (``max_pending_plans``, ``max_pending_mb``): the oldest pending ones make
        room for a new one; a source larger than all the room is refused unrecorded.
        """
        sha256 = _full_hash(sha256)
        size = len(source.encode("utf-8"))
        with self._write() as con:
            known = con.execute("SELECT status FROM plans WHERE sha256 = ?", (sha256,)).fetchone()
            if known is None and size > self.max_pending_bytes:
                raise ConfigError(
                    f"plan {class_name} (sha256 {sha256}) has {size / (1 << 20):.1f} MiB of source, "
                    f"more than this node keeps for review ({self.max_pending_bytes >> 20} MiB: "
                    "[limits] max_pending_mb); it was not recorded and its code was not run"
                )
            con.execute(
                "INSERT OR IGNORE INTO plans (sha256, class_name, source, status, first_seen) "
                "VALUES (?, ?, ?, 'pending', ?)",
                (sha256, class_name, source, _now()),
            )
            con.execute(
                "UPDATE plans SET class_name = ?, source = ? WHERE sha256 = ? AND source IS NULL",
                (class_name, source, sha256),
            )
            if known is None:
                self._evict_pending(con, keep=sha256)
            return con.execute("SELECT status FROM plans WHERE sha256 = ?", (sha256,)).fetchone()[0]

    def _evict_pending(self, con: sqlite3.Connection, keep: str) -> None:
        """Forget the oldest pending plans beyond the count and byte bounds (never ``keep``)."""
        rows = con.execute(
            "SELECT sha256, length(CAST(source AS BLOB)) FROM plans WHERE status = 'pending' "
            "ORDER BY first_seen DESC, rowid DESC"
        ).fetchall()
        kept, held = 0, 0
        for sha256, size in rows:
            kept, held = kept + 1, held + (size or 0)
            if sha256 != keep and (kept > self.max_pending_plans or held > self.max_pending_bytes):
                con.execute("DELETE FROM plans WHERE sha256 = ?", (sha256,))
                kept, held = kept - 1, held - (size or 0)

    def plan_status(self, sha256: str) -> str | None:
        """``'pending'``, ``'approved'`` or ``'rejected'``; None for a hash never seen."""
        with self._read() as con:
            row = con.execute(
                "SELECT status FROM plans WHERE sha256 = ?", (str(sha256).lower(),)
            ).fetchone()
        return None if row is None else row[0]

    def plans(self, status: str | None = None) -> list[PlanRecord]:
        """Known plans, oldest first, optionally only those with ``status``."""
        if status is not None and status not in PLAN_STATUSES:
            raise ConfigError(
                f"unknown plan status {status!r}; choose one of {', '.join(PLAN_STATUSES)}"
            )
        query, params = "SELECT * FROM plans", ()
        if status is not None:
            query, params = query + " WHERE status = ?", (status,)
        with self._read() as con:
            rows = con.execute(query + " ORDER BY first_seen, sha256", params).fetchall()
        return [PlanRecord(**dict(row)) for row in rows]

    def get_plan(self, ref: str) -> PlanRecord:
        """The plan whose hash is ``ref`` or starts with it (at least 8 hex digits, unique)."""
        with self._read() as con:
            return self._find(con, ref)

    def approve_plan(self, ref: str, note: str = "") -> PlanRecord:
        """Approve a plan; a full hash never seen is recorded as approved in advance."""
        return self._decide(ref, "approved", note)

    def reject_plan(self, ref: str, note: str = "") -> PlanRecord:
        """Reject a plan: the node refuses requests that ship it."""
        return self._decide(ref, "rejected", note)

    def _decide(self, ref: str, status: str, note: str) -> PlanRecord:
        with self._write() as con:
            key = ref.strip().lower() if isinstance(ref, str) else ref
            if (
                status == "approved"
                and isinstance(key, str)
                and _HASH.fullmatch(key)
                and con.execute("SELECT 1 FROM plans WHERE sha256 = ?", (key,)).fetchone() is None
            ):
                con.execute(
                    "INSERT INTO plans (sha256, status, first_seen, decided, note) "
                    "VALUES (?, 'approved', ?, ?, ?)",
                    (key, _now(), _now(), note),
                )
            else:
                sha256 = self._find(con, ref).sha256
                con.execute(
                    "UPDATE plans SET status = ?, decided = ?, note = ? WHERE sha256 = ?",
                    (status, _now(), note, sha256),
                )
                key = sha256
            return self._find(con, key)

    def _find(self, con: sqlite3.Connection, ref: str) -> PlanRecord:
        key = ref.strip().lower() if isinstance(ref, str) else ""
        if len(key) < MIN_PREFIX or not _HEX.fullmatch(key):
            raise ConfigError(
                f"plan reference {ref!r} is not a plan hash or a prefix of at least {MIN_PREFIX} "
                "hex digits; `fedplug node plan list` shows the hashes"
            )
        rows = con.execute(
            "SELECT * FROM plans WHERE sha256 LIKE ? ORDER BY sha256", (key + "%",)
        ).fetchall()
        if not rows:
            hint = (
                ""
                if len(key) == 64
                else "; to approve a plan in advance, give its full 64-digit hash"
            )
            raise ConfigError(
                f"no training plan matches {ref!r}; `fedplug node plan list` shows the known "
                f"plans{hint}"
            )
        if len(rows) > 1:
            candidates = ", ".join(f"{row['sha256'][:16]} ({row['class_name']})" for row in rows)
            raise ConfigError(
                f"plan prefix {ref!r} is ambiguous: it matches {candidates}; give more digits"
            )
        return PlanRecord(**dict(rows[0]))


def _full_hash(sha256: str) -> str:
    key = sha256.lower() if isinstance(sha256, str) else ""
    if not _HASH.fullmatch(key):
        raise ConfigError(f"plan hash {sha256!r} is not a SHA-256 (64 hex digits)")
    return key
