from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FLOAT32: _ClassVar[Precision]
    PRECISION_FLOAT16: _ClassVar[Precision]
    PRECISION_INT8: _ClassVar[Precision]
    PRECISION_UBINARY: _ClassVar[Precision]

class TruncationDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_DIRECTION_UNSPECIFIED: _ClassVar[TruncationDirection]
    TRUNCATION_DIRECTION_RIGHT: _ClassVar[TruncationDirection]
    TRUNCATION_DIRECTION_LEFT: _ClassVar[TruncationDirection]

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEARCH_MODE_DENSE: _ClassVar[SearchMode]
    SEARCH_MODE_LEXICAL: _ClassVar[SearchMode]
    SEARCH_MODE_HYBRID: _ClassVar[SearchMode]

class Fusion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_UNSPECIFIED: _ClassVar[Fusion]
    FUSION_RRF: _ClassVar[Fusion]
    FUSION_WEIGHTED: _ClassVar[Fusion]
PRECISION_UNSPECIFIED: Precision
PRECISION_FLOAT32: Precision
PRECISION_FLOAT16: Precision
PRECISION_INT8: Precision
PRECISION_UBINARY: Precision
TRUNCATION_DIRECTION_UNSPECIFIED: TruncationDirection
TRUNCATION_DIRECTION_RIGHT: TruncationDirection
TRUNCATION_DIRECTION_LEFT: TruncationDirection
SEARCH_MODE_UNSPECIFIED: SearchMode
SEARCH_MODE_DENSE: SearchMode
SEARCH_MODE_LEXICAL: SearchMode
SEARCH_MODE_HYBRID: SearchMode
FUSION_UNSPECIFIED: Fusion
FUSION_RRF: Fusion
FUSION_WEIGHTED: Fusion

class Vector(_message.Message):
    __slots__ = ("data", "dims", "precision")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dims: int
    precision: Precision
    def __init__(self, data: _Optional[bytes] = ..., dims: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ...) -> None: ...

class EmbedOptions(_message.Message):
    __slots__ = ("normalize", "dimensions", "precision", "prompt_name", "truncate", "truncation_direction", "chunking", "model", "bulk")
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BULK_FIELD_NUMBER: _ClassVar[int]
    normalize: bool
    dimensions: int
    precision: Precision
    prompt_name: str
    truncate: bool
    truncation_direction: TruncationDirection
    chunking: bool
    model: str
    bulk: bool
    def __init__(self, normalize: _Optional[bool] = ..., dimensions: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., prompt_name: _Optional[str] = ..., truncate: _Optional[bool] = ..., truncation_direction: _Optional[_Union[TruncationDirection, str]] = ..., chunking: _Optional[bool] = ..., model: _Optional[str] = ..., bulk: _Optional[bool] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ns", "tokenization_ns", "inference_ns", "total_ns", "tokens", "characters", "cache_hits")
    QUEUE_NS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZATION_NS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    queue_ns: int
    tokenization_ns: int
    inference_ns: int
    total_ns: int
    tokens: int
    characters: int
    cache_hits: int
    def __init__(self, queue_ns: _Optional[int] = ..., tokenization_ns: _Optional[int] = ..., inference_ns: _Optional[int] = ..., total_ns: _Optional[int] = ..., tokens: _Optional[int] = ..., characters: _Optional[int] = ..., cache_hits: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "documents", "sequence", "model_fingerprint", "stale", "incarnation", "model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    documents: int
    sequence: int
    model_fingerprint: str
    stale: bool
    incarnation: str
    model: str
    def __init__(self, name: _Optional[str] = ..., documents: _Optional[int] = ..., sequence: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., stale: _Optional[bool] = ..., incarnation: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Int8Calibration(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: _containers.RepeatedScalarFieldContainer[float]
    max: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, min: _Optional[_Iterable[float]] = ..., max: _Optional[_Iterable[float]] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "model_id", "model_fingerprint", "dimensions", "max_input_tokens", "pooling", "normalizes", "prompts", "query_prompt_name", "document_prompt_name", "matryoshka_dims", "backend", "device", "dtype", "workers", "max_batch_tokens", "max_client_batch_size", "int8_calibration", "collections", "edge_bundle_fingerprint", "compiled", "models")
    class PromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZES_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    QUERY_PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    MATRYOSHKA_DIMS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INT8_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    EDGE_BUNDLE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    COMPILED_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    version: str
    model_id: str
    model_fingerprint: str
    dimensions: int
    max_input_tokens: int
    pooling: str
    normalizes: bool
    prompts: _containers.ScalarMap[str, str]
    query_prompt_name: str
    document_prompt_name: str
    matryoshka_dims: _containers.RepeatedScalarFieldContainer[int]
    backend: str
    device: str
    dtype: str
    workers: int
    max_batch_tokens: int
    max_client_batch_size: int
    int8_calibration: Int8Calibration
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    edge_bundle_fingerprint: str
    compiled: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, version: _Optional[str] = ..., model_id: _Optional[str] = ..., model_fingerprint: _Optional[str] = ..., dimensions: _Optional[int] = ..., max_input_tokens: _Optional[int] = ..., pooling: _Optional[str] = ..., normalizes: _Optional[bool] = ..., prompts: _Optional[_Mapping[str, str]] = ..., query_prompt_name: _Optional[str] = ..., document_prompt_name: _Optional[str] = ..., matryoshka_dims: _Optional[_Iterable[int]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., workers: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_client_batch_size: _Optional[int] = ..., int8_calibration: _Optional[_Union[Int8Calibration, _Mapping]] = ..., collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ..., edge_bundle_fingerprint: _Optional[str] = ..., compiled: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "model_id", "fingerprint", "dimensions", "is_default", "workers", "edge_bundle_fingerprint")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    EDGE_BUNDLE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_id: str
    fingerprint: str
    dimensions: int
    is_default: bool
    workers: int
    edge_bundle_fingerprint: str
    def __init__(self, name: _Optional[str] = ..., model_id: _Optional[str] = ..., fingerprint: _Optional[str] = ..., dimensions: _Optional[int] = ..., is_default: _Optional[bool] = ..., workers: _Optional[int] = ..., edge_bundle_fingerprint: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "options")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    options: EmbedOptions
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "timing", "model_fingerprint", "chunked")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CHUNKED_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Vector]
    timing: Timing
    model_fingerprint: str
    chunked: _containers.RepeatedCompositeFieldContainer[ChunkedEmbedding]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Vector, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., model_fingerprint: _Optional[str] = ..., chunked: _Optional[_Iterable[_Union[ChunkedEmbedding, _Mapping]]] = ...) -> None: ...

class ChunkedEmbedding(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkEmbedding]
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkEmbedding, _Mapping]]] = ...) -> None: ...

class ChunkEmbedding(_message.Message):
    __slots__ = ("embedding", "start", "stop")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    embedding: Vector
    start: int
    stop: int
    def __init__(self, embedding: _Optional[_Union[Vector, _Mapping]] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class EmbedStreamRequest(_message.Message):
    __slots__ = ("id", "input", "options")
    ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    input: str
    options: EmbedOptions
    def __init__(self, id: _Optional[str] = ..., input: _Optional[str] = ..., options: _Optional[_Union[EmbedOptions, _Mapping]] = ...) -> None: ...

class EmbedStreamResponse(_message.Message):
    __slots__ = ("id", "embedding", "error", "chunks", "timing")
    ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    id: str
    embedding: Vector
    error: ItemError
    chunks: ChunkedEmbedding
    timing: Timing
    def __init__(self, id: _Optional[str] = ..., embedding: _Optional[_Union[Vector, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., chunks: _Optional[_Union[ChunkedEmbedding, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("inputs", "add_special_tokens", "prompt_name")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    add_special_tokens: bool
    prompt_name: str
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., add_special_tokens: _Optional[bool] = ..., prompt_name: _Optional[str] = ...) -> None: ...

class Token(_message.Message):
    __slots__ = ("id", "text", "special", "start", "stop")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    special: bool
    start: int
    stop: int
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., special: _Optional[bool] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class Tokenization(_message.Message):
    __slots__ = ("tokens", "exceeds_max")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    EXCEEDS_MAX_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[Token]
    exceeds_max: bool
    def __init__(self, tokens: _Optional[_Iterable[_Union[Token, _Mapping]]] = ..., exceeds_max: _Optional[bool] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Tokenization]
    def __init__(self, items: _Optional[_Iterable[_Union[Tokenization, _Mapping]]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("collection", "id", "text", "metadata", "store_text", "chunking")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    STORE_TEXT_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: str
    text: str
    metadata: _struct_pb2.Struct
    store_text: bool
    chunking: bool
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., store_text: _Optional[bool] = ..., chunking: _Optional[bool] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("collection", "id", "content_hash", "cached", "sequence", "error", "chunks_embedded", "chunks_cached", "unembedded_chars")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CACHED_FIELD_NUMBER: _ClassVar[int]
    UNEMBEDDED_CHARS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    id: str
    content_hash: str
    cached: bool
    sequence: int
    error: ItemError
    chunks_embedded: int
    chunks_cached: int
    unembedded_chars: int
    def __init__(self, collection: _Optional[str] = ..., id: _Optional[str] = ..., content_hash: _Optional[str] = ..., cached: _Optional[bool] = ..., sequence: _Optional[int] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., chunks_embedded: _Optional[int] = ..., chunks_cached: _Optional[int] = ..., unembedded_chars: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "query", "k", "exact", "dimensions", "precision", "rescore_multiplier", "prompt_name", "include_text", "filter", "vector", "mode", "fusion", "hybrid_alpha", "rrf_k")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RESCORE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    HYBRID_ALPHA_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    collection: str
    query: str
    k: int
    exact: bool
    dimensions: int
    precision: Precision
    rescore_multiplier: int
    prompt_name: str
    include_text: bool
    filter: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    mode: SearchMode
    fusion: Fusion
    hybrid_alpha: float
    rrf_k: int
    def __init__(self, collection: _Optional[str] = ..., query: _Optional[str] = ..., k: _Optional[int] = ..., exact: _Optional[bool] = ..., dimensions: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., rescore_multiplier: _Optional[int] = ..., prompt_name: _Optional[str] = ..., include_text: _Optional[bool] = ..., filter: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., fusion: _Optional[_Union[Fusion, str]] = ..., hybrid_alpha: _Optional[float] = ..., rrf_k: _Optional[int] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "text", "metadata", "text_truncated", "metadata_omitted", "snippet_start", "snippet_stop", "snippet")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    METADATA_OMITTED_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_START_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_STOP_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    text: str
    metadata: _struct_pb2.Struct
    text_truncated: bool
    metadata_omitted: bool
    snippet_start: int
    snippet_stop: int
    snippet: str
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., text_truncated: _Optional[bool] = ..., metadata_omitted: _Optional[bool] = ..., snippet_start: _Optional[int] = ..., snippet_stop: _Optional[int] = ..., snippet: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "timing", "sequence", "model_fingerprint")
    HITS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    timing: Timing
    sequence: int
    model_fingerprint: str
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., sequence: _Optional[int] = ..., model_fingerprint: _Optional[str] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SearchRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SearchRequest, _Mapping]]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CollectionSummary(_message.Message):
    __slots__ = ("name", "documents", "sequence", "model_fingerprint", "stale", "incarnation", "document_bytes", "vector_bytes", "index_bytes", "lexical_index_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    documents: int
    sequence: int
    model_fingerprint: str
    stale: bool
    incarnation: str
    document_bytes: int
    vector_bytes: int
    index_bytes: int
    lexical_index_bytes: int
    def __init__(self, name: _Optional[str] = ..., documents: _Optional[int] = ..., sequence: _Optional[int] = ..., model_fingerprint: _Optional[str] = ..., stale: _Optional[bool] = ..., incarnation: _Optional[str] = ..., document_bytes: _Optional[int] = ..., vector_bytes: _Optional[int] = ..., index_bytes: _Optional[int] = ..., lexical_index_bytes: _Optional[int] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionSummary]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionSummary, _Mapping]]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ("documents",)
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    documents: int
    def __init__(self, documents: _Optional[int] = ...) -> None: ...

class GetDocumentsRequest(_message.Message):
    __slots__ = ("collection", "ids", "include_text")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    include_text: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., include_text: _Optional[bool] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata", "content_hash", "chunks", "sequence", "text_truncated", "stored_text")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STORED_TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata: _struct_pb2.Struct
    content_hash: str
    chunks: int
    sequence: int
    text_truncated: bool
    stored_text: bool
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., content_hash: _Optional[str] = ..., chunks: _Optional[int] = ..., sequence: _Optional[int] = ..., text_truncated: _Optional[bool] = ..., stored_text: _Optional[bool] = ...) -> None: ...

class GetDocumentsResponse(_message.Message):
    __slots__ = ("documents", "missing", "sequence")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    missing: _containers.RepeatedScalarFieldContainer[str]
    sequence: int
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ..., sequence: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "sequence")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    sequence: int
    def __init__(self, deleted: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class SyncVectorsRequest(_message.Message):
    __slots__ = ("collection", "since_sequence", "bundle_fingerprint", "dimensions", "include_text", "incarnation")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TEXT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    since_sequence: int
    bundle_fingerprint: str
    dimensions: int
    include_text: bool
    incarnation: str
    def __init__(self, collection: _Optional[str] = ..., since_sequence: _Optional[int] = ..., bundle_fingerprint: _Optional[str] = ..., dimensions: _Optional[int] = ..., include_text: _Optional[bool] = ..., incarnation: _Optional[str] = ...) -> None: ...

class VectorChange(_message.Message):
    __slots__ = ("sequence", "op", "id", "vector", "text", "metadata", "text_truncated", "content_hash", "chunks")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[VectorChange.Op]
        OP_UPSERT: _ClassVar[VectorChange.Op]
        OP_DELETE: _ClassVar[VectorChange.Op]
    OP_UNSPECIFIED: VectorChange.Op
    OP_UPSERT: VectorChange.Op
    OP_DELETE: VectorChange.Op
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    op: VectorChange.Op
    id: str
    vector: Vector
    text: str
    metadata: _struct_pb2.Struct
    text_truncated: bool
    content_hash: str
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkVector]
    def __init__(self, sequence: _Optional[int] = ..., op: _Optional[_Union[VectorChange.Op, str]] = ..., id: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., text: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., text_truncated: _Optional[bool] = ..., content_hash: _Optional[str] = ..., chunks: _Optional[_Iterable[_Union[ChunkVector, _Mapping]]] = ...) -> None: ...

class ChunkVector(_message.Message):
    __slots__ = ("vector", "content_hash", "start", "stop")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    vector: Vector
    content_hash: str
    start: int
    stop: int
    def __init__(self, vector: _Optional[_Union[Vector, _Mapping]] = ..., content_hash: _Optional[str] = ..., start: _Optional[int] = ..., stop: _Optional[int] = ...) -> None: ...

class SyncVectorsResponse(_message.Message):
    __slots__ = ("changes", "head_sequence", "remaining", "incarnation", "reset")
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    changes: _containers.RepeatedCompositeFieldContainer[VectorChange]
    head_sequence: int
    remaining: int
    incarnation: str
    reset: bool
    def __init__(self, changes: _Optional[_Iterable[_Union[VectorChange, _Mapping]]] = ..., head_sequence: _Optional[int] = ..., remaining: _Optional[int] = ..., incarnation: _Optional[str] = ..., reset: _Optional[bool] = ...) -> None: ...

class GetEdgeBundleRequest(_message.Message):
    __slots__ = ("files", "collection")
    FILES_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, files: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class BundleFile(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BundleManifest(_message.Message):
    __slots__ = ("fingerprint", "manifest_json", "files")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    manifest_json: str
    files: _containers.RepeatedCompositeFieldContainer[BundleFile]
    def __init__(self, fingerprint: _Optional[str] = ..., manifest_json: _Optional[str] = ..., files: _Optional[_Iterable[_Union[BundleFile, _Mapping]]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "offset", "data")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    data: bytes
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class EdgeBundleChunk(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: BundleManifest
    chunk: FileChunk
    def __init__(self, manifest: _Optional[_Union[BundleManifest, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("collection", "to_model", "rollback", "abort")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TO_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    to_model: str
    rollback: bool
    abort: bool
    def __init__(self, collection: _Optional[str] = ..., to_model: _Optional[str] = ..., rollback: _Optional[bool] = ..., abort: _Optional[bool] = ...) -> None: ...

class MigrateProgress(_message.Message):
    __slots__ = ("state", "documents", "done", "embedded", "skipped", "fingerprint")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    state: str
    documents: int
    done: int
    embedded: int
    skipped: int
    fingerprint: str
    def __init__(self, state: _Optional[str] = ..., documents: _Optional[int] = ..., done: _Optional[int] = ..., embedded: _Optional[int] = ..., skipped: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...
