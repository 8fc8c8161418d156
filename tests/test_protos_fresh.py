"""Generated gRPC code must be exactly what protos/codegen.py makes from the .proto files."""

from __future__ import annotations

import filecmp
from pathlib import Path

from protos.codegen import PROTO_FILES, REPO_ROOT, generate


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    generate(tmp_path)
    compared = 0
    for proto in PROTO_FILES:
        stem = Path(proto).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            fresh = tmp_path / f"{stem}{suffix}"
            checked_in = REPO_ROOT / f"{stem}{suffix}"
            assert checked_in.is_file(), f"{checked_in} missing: run python -m protos.codegen"
            assert filecmp.cmp(fresh, checked_in, shallow=False), (
                f"{checked_in.relative_to(REPO_ROOT)} is stale: run python -m protos.codegen"
            )
            compared += 1
    assert compared == 3 * len(PROTO_FILES)


def test_tei_contract_names_and_numbers() -> None:
    """TEI clients depend on package, service, method, field names and numbers."""
    from protos.tei.v1 import tei_pb2

    file = tei_pb2.DESCRIPTOR
    assert file.package == "tei.v1"
    methods = {s.name: [m.name for m in s.methods] for s in file.services_by_name.values()}
    assert methods == {
        "Info": ["Info"],
        "Embed": ["Embed", "EmbedStream", "EmbedSparse", "EmbedSparseStream", "EmbedAll", "EmbedAllStream"],
        "Predict": ["Predict", "PredictPair", "PredictStream", "PredictPairStream"],
        "Rerank": ["Rerank", "RerankStream"],
        "Tokenize": ["Tokenize", "TokenizeStream", "Decode", "DecodeStream"],
    }
    numbers = {
        name: {f.name: f.number for f in file.message_types_by_name[name].fields}
        for name in (
            "EmbedAllRequest",
            "EmbedSparseRequest",
            "PredictPairRequest",
            "RerankRequest",
            "DecodeRequest",
        )
    }
    assert numbers == {
        "EmbedAllRequest": {"inputs": 1, "truncate": 2, "truncation_direction": 3, "prompt_name": 4},
        "EmbedSparseRequest": {"inputs": 1, "truncate": 2, "truncation_direction": 3, "prompt_name": 4},
        "PredictPairRequest": {"inputs": 1, "truncate": 2, "raw_scores": 3, "truncation_direction": 4},
        "RerankRequest": {
            "query": 1,
            "texts": 2,
            "truncate": 3,
            "raw_scores": 4,
            "return_text": 5,
            "truncation_direction": 6,
        },
        "DecodeRequest": {"ids": 1, "skip_special_tokens": 2},
    }
    embed = file.message_types_by_name["EmbedRequest"]
    assert {f.name: f.number for f in embed.fields} == {
        "inputs": 1,
        "truncate": 2,
        "normalize": 3,
        "truncation_direction": 4,
        "prompt_name": 5,
        "dimensions": 6,
    }
    info = file.message_types_by_name["InfoResponse"]
    assert [(f.name, f.number) for f in info.fields][-1] == ("tokenization_workers", 13)
    meta = file.message_types_by_name["Metadata"]
    assert [f.name for f in meta.fields] == [
        "compute_chars",
        "compute_tokens",
        "total_time_ns",
        "tokenization_time_ns",
        "queue_time_ns",
        "inference_time_ns",
    ]


def test_own_enums_start_unspecified() -> None:
    from protos.embedding.v1 import embedding_pb2

    for enum in embedding_pb2.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values[0].name.endswith("_UNSPECIFIED") and enum.values[0].number == 0
    for message in embedding_pb2.DESCRIPTOR.message_types_by_name.values():
        for enum in message.enum_types:
            assert enum.values[0].name.endswith("_UNSPECIFIED")
