"""The byte bounds Search and SyncVectors size their responses with are never below protobuf's
own encoding, and a response cut to a budget keeps every hit and cuts texts on characters."""

from __future__ import annotations

from typing import Any

import numpy as np

from protos.embedding.v1 import embedding_pb2 as pb
from server import message_size as size
from server.search import Hit, fit_hits
from server.servicers._convert import struct
from server.sync import SyncedChange, wire_size

METADATA: list[dict[str, Any]] = [
    {},
    {"title": "Black holes", "year": 2024, "ok": True, "none": None},
    {"n": list(range(300)), "nested": {"a": [1.5, "x" * 300, {"b": False}], "é": "ünïcødé 🚀"}},
    {f"k{i}": i * 1.25 for i in range(500)},
]


def _hit_bytes(hit: Hit) -> int:
    """The serialized size of ``hit`` as an item of a SearchResponse."""
    message = pb.SearchResponse(
        hits=[
            pb.SearchHit(
                id=hit.id,
                score=hit.score,
                text=hit.text,
                metadata=struct(hit.metadata),
                text_truncated=True,
                metadata_omitted=True,
            )
        ]
    )
    return message.ByteSize()


def test_struct_bound_covers_protobuf_encoding() -> None:
    for metadata in METADATA:
        assert size.struct(metadata) >= pb.SearchHit(metadata=struct(metadata)).ByteSize()


def test_sync_change_bound_covers_protobuf_encoding() -> None:
    for metadata in METADATA:
        change = SyncedChange(
            2**40, "doc-é-1", np.ones(128, np.float32), "text ü " * 999, metadata, True, "ab" * 32
        )
        message = pb.SyncVectorsResponse(
            changes=[
                pb.VectorChange(
                    sequence=change.sequence,
                    op=pb.VectorChange.OP_UPSERT,
                    id=change.doc_id,
                    vector=pb.Vector(data=b"\0" * 512, dims=128, precision=pb.PRECISION_FLOAT32),
                    text=change.text,
                    metadata=struct(metadata),
                    text_truncated=True,
                    content_hash=change.content_hash,
                )
            ]
        )
        assert wire_size(change) >= message.ByteSize()
        delete = SyncedChange(2**40, "doc-é-1", None)
        deleted = pb.SyncVectorsResponse(
            changes=[pb.VectorChange(sequence=2**40, op=pb.VectorChange.OP_DELETE, id="doc-é-1")]
        )
        assert wire_size(delete) >= deleted.ByteSize()


def test_hits_are_cut_to_the_budget_in_rank_order() -> None:
    texts = [f"{i} " + "ö" * 40_000 for i in range(10)]  # 80 KB each, two bytes per character
    hits = [Hit(f"d{i}", 1.0 - i / 10, text, METADATA[1]) for i, text in enumerate(texts)]
    budget = 250_000
    fitted = fit_hits(hits, budget)
    assert [h.id for h in fitted] == [h.id for h in hits]  # every hit stays
    assert sum(_hit_bytes(h) for h in fitted) <= budget
    assert [h.text_truncated for h in fitted[:3]] == [False] * 3 and fitted[3].text_truncated
    assert all(h.text_truncated and h.text == "" for h in fitted[4:])
    for hit, text in zip(fitted, texts, strict=True):
        assert text.startswith(hit.text)  # cut on a character, never inside one
        assert hit.metadata == METADATA[1] and not hit.metadata_omitted
    assert fit_hits(hits[:2], budget) == hits[:2]  # what fits is untouched


def test_metadata_is_left_out_of_the_lowest_hits_only_when_it_alone_does_not_fit() -> None:
    hits = [Hit(f"d{i}", 0.5, "", METADATA[3]) for i in range(40)]
    budget = 20 * size.struct(METADATA[3])
    fitted = fit_hits(hits, budget)
    assert sum(_hit_bytes(h) for h in fitted) <= budget
    kept = [not h.metadata_omitted for h in fitted]
    assert kept == sorted(kept, reverse=True) and 0 < sum(kept) < 40  # the best hits keep it
    assert all(h.metadata == {} for h in fitted if h.metadata_omitted)


def test_cut_utf8_keeps_whole_characters() -> None:
    assert size.cut_utf8("aé🚀b", 2) == "a"
    assert size.cut_utf8("aé🚀b", 3) == "aé"
    assert size.cut_utf8("aé🚀b", 6) == "aé"
    assert size.cut_utf8("aé🚀b", 7) == "aé🚀"
    assert size.cut_utf8("abc", -5) == ""
