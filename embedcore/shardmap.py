"""The shard map: which servers exist, which of them hold which collection and document.

A map is JSON, from a file or the ``EMBED_SHARD_MAP`` environment variable (JSON text, or a
path to a JSON file)::

    {
      "shards": [
        {"name": "shard-0", "replicas": ["embed-server-0.embed-server-headless:50051"]},
        {"name": "shard-1", "replicas": ["10.0.0.7:50051", "10.0.0.8:50051"]}
      ],
      "split": ["scifact"],          // collections split by document id over every shard
      "pinned": {"legal": "shard-1"} // collections placed by hand (moved, or kept together)
    }

Placement (a pure function of the map, so every client computes the same answer):

- a **whole collection** (not in ``split``) lives on one shard: ``pinned`` if named there, else
  the consistent-hash ring (``uhashring``, ketama) over the shard names keyed by the collection
  name. Adding a shard moves about 1/N of the collections, the others stay put.
- a **split collection** has its documents spread over every shard: the ring keyed by
  ``collection/document id``. Routing by id (not by content) keeps an update or a delete on the
  shard that holds the old version.

A shard's ``replicas`` are servers that each hold all of that shard's data: the router writes
to every one of them and reads from any (failing over on UNAVAILABLE). The first is the
primary (edge sync prefers it: sequence numbers belong to one store).

Errors: :class:`ShardMapError` (a ``ValueError``) names the file or variable and the offending
part (``shards[1].replicas: ...``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uhashring import HashRing

__all__ = ["ENV_VAR", "Shard", "ShardMap", "ShardMapError"]

ENV_VAR = "EMBED_SHARD_MAP"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^(?:[a-z]+:(?:///)?)?[^\s:/]+(?:\.[^\s:/]+)*:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")


class ShardMapError(ValueError):
    """A shard map that cannot be used: unreadable, not JSON, or not the documented shape."""


@dataclass(frozen=True)
class Shard:
    """One shard: a name (stable: placement hashes it) and 1+ replica addresses (HOST:PORT)."""

    name: str
    replicas: tuple[str, ...]

    @property
    def primary(self) -> str:
        return self.replicas[0]


@dataclass(frozen=True)
class ShardMap:
    """Shards, split collections and pinned collections; see the module docstring."""

    shards: tuple[Shard, ...]
    split: frozenset[str] = frozenset()
    pinned: Mapping[str, str] = field(default_factory=dict)
    source: str = "<shard map>"

    def __post_init__(self) -> None:
        names = [s.name for s in self.shards]
        # ketama ring: 160 points per shard, md5; deterministic across processes and machines
        object.__setattr__(self, "_ring", HashRing(nodes=names, hash_fn="ketama"))
        object.__setattr__(self, "_by_name", {s.name: s for s in self.shards})

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: Any, source: str = "<shard map>") -> ShardMap:
        """The map in ``data`` (decoded JSON); ShardMapError naming ``source`` and the part."""

        def fail(where: str, why: str) -> ShardMapError:
            return ShardMapError(f"shard map {source}: {where}: {why}")

        if not isinstance(data, dict):
            raise fail("top level", f"expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"shards", "split", "pinned"}
        if unknown:
            raise fail("top level", f"unknown keys {sorted(unknown)} (allowed: shards, split, pinned)")
        raw_shards = data.get("shards")
        if not isinstance(raw_shards, list) or not raw_shards:
            raise fail("shards", "expected a non-empty list of {name, replicas} objects")
        shards: list[Shard] = []
        seen_addresses: dict[str, str] = {}
        for i, raw in enumerate(raw_shards):
            where = f"shards[{i}]"
            if not isinstance(raw, dict) or set(raw) != {"name", "replicas"}:
                raise fail(where, "expected an object with exactly the keys name and replicas")
            name, replicas = raw["name"], raw["replicas"]
            if not isinstance(name, str) or not _NAME.match(name):
                raise fail(f"{where}.name", f"{name!r} is not a name (letters, digits, . _ -; 1-63)")
            if name in (s.name for s in shards):
                raise fail(f"{where}.name", f"{name!r} is used by another shard")
            if not isinstance(replicas, list) or not replicas:
                raise fail(f"{where}.replicas", "expected a non-empty list of HOST:PORT addresses")
            for j, address in enumerate(replicas):
                if not isinstance(address, str) or not _ADDRESS.match(address):
                    raise fail(f"{where}.replicas[{j}]", f"{address!r} is not a HOST:PORT address")
                if address in seen_addresses:
                    raise fail(
                        f"{where}.replicas[{j}]",
                        f"{address} is already a replica of {seen_addresses[address]}",
                    )
                seen_addresses[address] = name
            shards.append(Shard(name, tuple(replicas)))
        split = data.get("split", [])
        if not isinstance(split, list) or not all(isinstance(c, str) and c for c in split):
            raise fail("split", "expected a list of collection names")
        pinned = data.get("pinned", {})
        if not isinstance(pinned, dict):
            raise fail("pinned", "expected an object {collection: shard name}")
        names = {s.name for s in shards}
        for collection, shard in pinned.items():
            if shard not in names:
                raise fail(f"pinned.{collection}", f"no shard named {shard!r} (shards: {sorted(names)})")
            if collection in split:
                raise fail(
                    f"pinned.{collection}", "a split collection lives on every shard; it cannot be pinned"
                )
        return cls(tuple(shards), frozenset(split), dict(pinned), source)

    @classmethod
    def load(cls, path: str | Path) -> ShardMap:
        """The map in the JSON file ``path``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ShardMapError(f"shard map {path}: cannot be read: {exc.strerror or exc}") from exc
        return cls.loads(text, str(path))

    @classmethod
    def loads(cls, text: str, source: str = "<shard map>") -> ShardMap:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ShardMapError(f"shard map {source}: not JSON: {exc}") from exc
        return cls.parse(data, source)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ShardMap | None:
        """The map ``EMBED_SHARD_MAP`` gives (JSON text when it starts with ``{``, else a file
        path); None when it is unset or empty."""
        value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        if not value:
            return None
        if value.startswith("{"):
            return cls.loads(value, f"${ENV_VAR}")
        return cls.load(value)

    @classmethod
    def single(cls, address: str) -> ShardMap:
        """One shard with one replica: what a plain ``--server HOST:PORT`` means."""
        return cls.parse({"shards": [{"name": "default", "replicas": [address]}]}, f"--server {address}")

    # --- placement -----------------------------------------------------------------------------
    def shard(self, name: str) -> Shard:
        try:
            return self._by_name[name]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            raise ShardMapError(f"shard map {self.source}: no shard named {name!r}") from None

    def is_split(self, collection: str) -> bool:
        return collection in self.split

    def shard_for_collection(self, collection: str) -> Shard:
        """The shard that holds the whole (not split) ``collection``."""
        if collection in self.pinned:
            return self.shard(self.pinned[collection])
        return self.shard(str(self._ring.get_node(collection)))  # type: ignore[attr-defined]

    def shard_for_document(self, collection: str, doc_id: str) -> Shard:
        """The shard that holds document ``doc_id`` of ``collection`` (split or not)."""
        if collection not in self.split:
            return self.shard_for_collection(collection)
        return self.shard(str(self._ring.get_node(f"{collection}/{doc_id}")))  # type: ignore[attr-defined]

    def shards_for(self, collection: str) -> tuple[Shard, ...]:
        """Every shard a search or a sync of ``collection`` must ask, in map order."""
        return self.shards if collection in self.split else (self.shard_for_collection(collection),)

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": [{"name": s.name, "replicas": list(s.replicas)} for s in self.shards],
            "split": sorted(self.split),
            "pinned": dict(self.pinned),
        }
