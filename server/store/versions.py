"""Model versions of a collection: the one that serves, a migration target, a retained previous.

A collection is bound to one model version (CollectionMeta.fingerprint). Its other versions are
hidden collections of the same store, named after it with a reserved separator (U+001F, which
:func:`server.ingest.validate_collection` refuses in names clients send):

    NAME            the version that serves (searches, syncs, ingests)
    NAME\\x1fnext    the version a migration is filling (another model's vectors)
    NAME\\x1fprev    the version the last cutover replaced, kept for rollback until ``gc``
                    after the retention

Each hidden version is a whole collection (documents, change log, keys, its own content hashes:
a content hash includes the model fingerprint, so two versions never share a vector entry).
A cutover or a rollback renames the three sets of keys in one LMDB write transaction, so a
reader (or a restart after kill -9) sees either the old or the new binding, never a mix.

The meta database holds one record per collection with a migration in progress
(``migration\\0NAME`` -> JSON {"to", "dimension", "started"}) and one per retained version
(``retired\\0NAME`` -> JSON {"fingerprint", "retired_at"}); both change in the same
transactions as the keys they describe. Functions here run inside a caller's write
transaction (:class:`server.store.lmdb_store.Store` wraps them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.store import records as rec
from server.store.records import CollectionMeta

SEPARATOR = "\x1f"
NEXT = "next"
PREV = "prev"
_SWAP = "swap"  # a scratch name, used only inside a transaction
_PREFIXED = ("docs", "logpos", "changes", "keys")


def hidden(name: str, role: str) -> str:
    """The stored name of ``name``'s ``role`` version (NEXT or PREV)."""
    return f"{name}{SEPARATOR}{role}"


def is_hidden(name: str) -> bool:
    return SEPARATOR in name


def _migration_key(name: str) -> bytes:
    return b"migration\0" + name.encode("utf-8")


def _retired_key(name: str) -> bytes:
    return b"retired\0" + name.encode("utf-8")


@dataclass(frozen=True)
class Migration:
    """A migration in progress: ``name`` is being re-embedded into model ``to`` (its vectors
    ``dimension`` wide) since ``started`` (Unix seconds)."""

    name: str
    to: str
    dimension: int
    started: float


@dataclass(frozen=True)
class Retained:
    """The previous version of ``name``: model ``fingerprint``, replaced at ``retired_at``
    (Unix seconds); ``gc`` drops it once the retention has passed."""

    name: str
    fingerprint: str
    retired_at: float
    behind: bool = False  # writes since the cutover did not all reach it (its model was not served)


class VersionError(Exception):
    """A migration, cutover or rollback asked of a collection in the wrong state (the message
    says which state and what to do)."""


class MigrationIncomplete(VersionError):
    """The cutover found documents of the serving version without their new version yet."""

    def __init__(self, name: str, missing: list[str]) -> None:
        shown = ", ".join(repr(m) for m in missing[:5])
        super().__init__(
            f"collection {name!r}: {len(missing)} documents have no vector of the new model yet "
            f"({shown}{', ...' if len(missing) > 5 else ''}); the migration goes on"
        )
        self.missing = missing


def read_migration(txn: Any, meta_db: Any, name: str) -> Migration | None:
    raw = txn.get(_migration_key(name), db=meta_db)
    if raw is None:
        return None
    data = json.loads(bytes(raw))
    return Migration(name, str(data["to"]), int(data["dimension"]), float(data["started"]))


def read_retained(txn: Any, meta_db: Any, name: str) -> Retained | None:
    raw = txn.get(_retired_key(name), db=meta_db)
    if raw is None:
        return None
    data = json.loads(bytes(raw))
    return Retained(name, str(data["fingerprint"]), float(data["retired_at"]), bool(data.get("behind")))


def mark_behind(txn: Any, dbs: Mapping[str, Any], name: str) -> None:
    """A write to ``name`` could not reach its retained version: a rollback would lose it, so
    rollback is refused from now on (see :func:`rollback`)."""
    retained = read_retained(txn, dbs["meta"], name)
    if retained is not None and not retained.behind:
        _put_retained(txn, dbs, Retained(name, retained.fingerprint, retained.retired_at, True))


def _get_meta(txn: Any, dbs: Mapping[str, Any], name: str) -> CollectionMeta | None:
    raw = txn.get(name.encode("utf-8"), db=dbs["collections"])
    return None if raw is None else CollectionMeta.unpack(raw)


def drop_keys(txn: Any, dbs: Mapping[str, Any], name: str) -> None:
    """Remove collection ``name`` whole (header, documents, log, positions, keys)."""
    pfx = rec.prefix(name)
    for db in _PREFIXED:
        cursor = txn.cursor(db=dbs[db])
        if not cursor.set_range(pfx):
            continue
        while bytes(cursor.key()).startswith(pfx):
            if not cursor.delete():
                break
    txn.delete(name.encode("utf-8"), db=dbs["collections"])


def _rename(txn: Any, dbs: Mapping[str, Any], old: str, new: str) -> None:
    """Move every key of collection ``old`` to ``new`` (which must not exist)."""
    old_pfx, new_pfx = rec.prefix(old), rec.prefix(new)
    for db in _PREFIXED:
        cursor = txn.cursor(db=dbs[db])
        rows: list[tuple[bytes, bytes]] = []
        if cursor.set_range(old_pfx):
            for k, v in cursor:
                key = bytes(k)
                if not key.startswith(old_pfx):
                    break
                rows.append((key, bytes(v)))
        for key, value in rows:
            txn.delete(key, db=dbs[db])
            txn.put(new_pfx + key[len(old_pfx) :], value, db=dbs[db])
    raw = txn.get(old.encode("utf-8"), db=dbs["collections"])
    if raw is not None:
        txn.delete(old.encode("utf-8"), db=dbs["collections"])
        meta = CollectionMeta.unpack(raw)
        # A renamed version is another collection to every checkpoint (SyncVectors, saved
        # indexes): sequences of the old binding mean nothing under the new one.
        meta.incarnation = rec.new_incarnation()
        txn.put(new.encode("utf-8"), meta.pack(), db=dbs["collections"])


def _swap(txn: Any, dbs: Mapping[str, Any], a: str, b: str) -> None:
    scratch = hidden(a, _SWAP)
    _rename(txn, dbs, a, scratch)
    _rename(txn, dbs, b, a)
    _rename(txn, dbs, scratch, b)


def begin(txn: Any, dbs: Mapping[str, Any], name: str, to: str, dimension: int, now: float) -> bool:
    """Start (or resume: returns True) migrating ``name`` to model ``to``. A target left by a
    migration to another model is dropped. VersionError: no such collection, already on
    ``to``, or documents stored without text (nothing to re-embed them from)."""
    meta = _get_meta(txn, dbs, name)
    if meta is None:
        raise VersionError(f"no collection {name!r}")
    if meta.fingerprint == to:
        raise VersionError(f"collection {name!r} is already on model {to}")
    current = read_migration(txn, dbs["meta"], name)
    target = hidden(name, NEXT)
    target_meta = _get_meta(txn, dbs, target)
    resumed = current is not None and current.to == to and target_meta is not None
    if not resumed:
        drop_keys(txn, dbs, target)
        txn.put(
            target.encode("utf-8"),
            CollectionMeta(to, dimension, incarnation=rec.new_incarnation()).pack(),
            db=dbs["collections"],
        )
        record = {"to": to, "dimension": dimension, "started": now}
        txn.put(_migration_key(name), json.dumps(record).encode(), db=dbs["meta"])
    return resumed


def abort(txn: Any, dbs: Mapping[str, Any], name: str) -> bool:
    """Forget ``name``'s migration and its target; False when none was in progress."""
    if read_migration(txn, dbs["meta"], name) is None:
        return False
    drop_keys(txn, dbs, hidden(name, NEXT))
    txn.delete(_migration_key(name), db=dbs["meta"])
    return True


def _ids(txn: Any, dbs: Mapping[str, Any], name: str) -> dict[str, tuple[str | None, Any]]:
    """doc id -> (text, metadata) of every document of ``name``."""
    pfx = rec.prefix(name)
    out: dict[str, tuple[str | None, Any]] = {}
    cursor = txn.cursor(db=dbs["docs"])
    if cursor.set_range(pfx):
        for k, v in cursor:
            key = bytes(k)
            if not key.startswith(pfx):
                break
            doc = rec.unpack_doc(v)
            out[rec.suffix_str(key)] = (doc.text, doc.metadata)
    return out


def cutover(txn: Any, dbs: Mapping[str, Any], name: str, now: float) -> Retained:
    """Bind ``name`` to its migration target: the target must hold every document of the serving
    version with the same text and metadata (MigrationIncomplete names those missing; documents it holds that
    the serving version no longer has are dropped first). The serving version becomes the
    retained previous one (replacing an older retained one), the migration record goes."""
    migration = read_migration(txn, dbs["meta"], name)
    target = hidden(name, NEXT)
    if migration is None or _get_meta(txn, dbs, target) is None:
        raise VersionError(f"collection {name!r} has no migration in progress")
    source, done = _ids(txn, dbs, name), _ids(txn, dbs, target)
    missing = sorted(i for i, form in source.items() if done.get(i) != form)
    if missing:
        raise MigrationIncomplete(name, missing)
    extra = [i for i in done if i not in source]
    if extra:
        _delete_docs(txn, dbs, target, extra)
    previous = _get_meta(txn, dbs, name)
    assert previous is not None  # checked by begin; only cutover/rollback rename it
    drop_keys(txn, dbs, hidden(name, PREV))
    _rename(txn, dbs, name, hidden(name, PREV))
    _rename(txn, dbs, target, name)
    txn.delete(_migration_key(name), db=dbs["meta"])
    retained = Retained(name, previous.fingerprint, now)
    _put_retained(txn, dbs, retained)
    return retained


def rollback(txn: Any, dbs: Mapping[str, Any], name: str, now: float) -> Retained:
    """Swap ``name`` and its retained previous version (nothing is embedded); the version that
    served is retained in its place (a second rollback rolls forward). VersionError when there
    is no retained version or a migration is in progress."""
    if read_migration(txn, dbs["meta"], name) is not None:
        raise VersionError(
            f"collection {name!r} has a migration in progress; finish it or abort it "
            "(`embed-server migrate --abort`) before rolling back"
        )
    retained = read_retained(txn, dbs["meta"], name)
    serving = _get_meta(txn, dbs, name)
    if retained is None or serving is None or _get_meta(txn, dbs, hidden(name, PREV)) is None:
        raise VersionError(f"collection {name!r} has no previous version to roll back to")
    if retained.behind:
        raise VersionError(
            f"collection {name!r}: its previous version (model {retained.fingerprint}) missed "
            "writes made since the cutover while that model was not served; rolling back would "
            "lose them. Migrate to that model instead (it reuses every vector it still has)"
        )
    _swap(txn, dbs, name, hidden(name, PREV))
    swapped = Retained(name, serving.fingerprint, now)
    _put_retained(txn, dbs, swapped)
    return swapped


def _put_retained(txn: Any, dbs: Mapping[str, Any], retained: Retained) -> None:
    record = {
        "fingerprint": retained.fingerprint,
        "retired_at": retained.retired_at,
        "behind": retained.behind,
    }
    txn.put(_retired_key(retained.name), json.dumps(record).encode(), db=dbs["meta"])


def expire(txn: Any, dbs: Mapping[str, Any], retention_s: float, now: float) -> list[str]:
    """Drop every retained version retired more than ``retention_s`` seconds before ``now``;
    returns the names of the collections whose previous version went."""
    cursor = txn.cursor(db=dbs["meta"])
    dropped: list[str] = []
    expired: list[str] = []
    if cursor.set_range(b"retired\0"):
        for k, v in cursor:
            key = bytes(k)
            if not key.startswith(b"retired\0"):
                break
            if float(json.loads(bytes(v))["retired_at"]) + retention_s <= now:
                expired.append(key[len(b"retired\0") :].decode("utf-8"))
    for name in expired:
        drop_keys(txn, dbs, hidden(name, PREV))
        txn.delete(_retired_key(name), db=dbs["meta"])
        dropped.append(name)
    return dropped


def forget(txn: Any, dbs: Mapping[str, Any], name: str) -> None:
    """Drop every hidden version and record of ``name`` (the collection itself was dropped)."""
    for role in (NEXT, PREV):
        drop_keys(txn, dbs, hidden(name, role))
    txn.delete(_migration_key(name), db=dbs["meta"])
    txn.delete(_retired_key(name), db=dbs["meta"])


def _delete_docs(txn: Any, dbs: Mapping[str, Any], name: str, doc_ids: list[str]) -> None:
    """Remove documents from a hidden version (no change log: it is renamed with a fresh
    incarnation, so every reader starts it from scratch)."""
    raw = txn.get(name.encode("utf-8"), db=dbs["collections"])
    meta = CollectionMeta.unpack(raw)
    for doc_id in doc_ids:
        dkey = rec.doc_key(name, doc_id)
        old_raw = txn.get(dkey, db=dbs["docs"])
        if old_raw is None:
            continue
        old = rec.unpack_doc(old_raw)
        pos = txn.get(dkey, db=dbs["logpos"])
        if pos is not None:
            seq, _key = rec.unpack_logpos(pos)
            txn.delete(rec.seq_key(name, seq), db=dbs["changes"])
            txn.delete(dkey, db=dbs["logpos"])
        txn.delete(dkey, db=dbs["docs"])
        txn.delete(rec.int_key(name, old.key), db=dbs["keys"])
        meta.documents -= 1
    txn.put(name.encode("utf-8"), meta.pack(), db=dbs["collections"])
