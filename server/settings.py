"""The server's configuration: one frozen, typed object; each option declared once.

Every field of :class:`Settings` is at the same time a command-line flag (``--max-batch-tokens``)
and an environment variable (``EMBED_MAX_BATCH_TOKENS``). Precedence: flag, then environment,
then the default written here. ``embed-server serve --help`` lists them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "EMBED_"
MIN_MESSAGE_BYTES = 1 << 20


def _opt(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Settings:
    # --- network ---
    host: str = _opt("127.0.0.1", "address to listen on (0.0.0.0 for all interfaces)")
    port: int = _opt(50051, "gRPC port (0 picks a free port)")
    metrics_port: int = _opt(0, "Prometheus /metrics HTTP port (0 = off)")
    # Same process, event loop, encoder, auth token and TLS as gRPC (server/http/).
    http_port: int = _opt(
        0,
        "HTTP port of the OpenAI-compatible (/v1/embeddings) and TEI-compatible (/embed, ...) API "
        "on --host, with the same token and TLS as gRPC (0 = off)",
    )
    max_message_bytes: int = _opt(
        16 * 1024 * 1024,
        "largest gRPC message sent (Search and SyncVectors cut texts to fit it) or accepted "
        "(Ingest accepts more: see --max-document-bytes); at least 1 MiB",
    )
    # A token given as a flag is visible to every local user in `ps`; the file (or the
    # environment, which only the same user can read) keeps it private.
    auth_token: str = field(
        default="",
        repr=False,
        metadata={
            "help": "if set, clients must send 'authorization: Bearer <token>' (a flag is visible to "
            "every local user in `ps`: prefer --auth-token-file or the environment variable)",
            "choices": None,
        },
    )
    auth_token_file: str = _opt("", "file holding the bearer token (instead of --auth-token)")
    tls_cert: str = _opt("", "PEM certificate file (chain); with --tls-key enables TLS")
    tls_key: str = _opt("", "PEM private key file for --tls-cert")
    tls_client_ca: str = _opt(
        "",
        "PEM CA certificate(s): require a client certificate signed by them (mutual TLS; needs --tls-cert)",
    )
    grace_seconds: float = _opt(20.0, "SIGTERM drain time before in-flight calls are cancelled")
    # --- storage ---
    data_dir: Path = _opt(Path("./data"), "directory for the LMDB store and vector indexes")
    # --- store, ingest and search (issue 4) ---
    store_float16: bool = _opt(False, "keep stored vectors as float16 (half the bytes) instead of float32")
    version_retention_hours: float = _opt(
        168.0,
        "how long a collection's previous model version is kept after a migration's cutover, for "
        "`embed-server migrate --rollback`; `embed-server gc` drops it afterwards",
    )
    store_map_size_mb: int = _opt(1024, "initial LMDB map size in MiB (sparse; grows by itself when full)")
    index_dtype: str = _opt(
        "f16", "element type of the per-collection usearch index", choices=("f32", "f16", "i8")
    )
    ingest_commit_docs: int = _opt(256, "documents per LMDB commit during Ingest (acks follow each commit)")
    ingest_max_pending: int = _opt(1024, "documents read ahead per Ingest stream before pushing back")
    # Items alone do not bound memory: 1024 read-ahead documents of 1 MB are 1 GB per stream.
    ingest_max_pending_bytes: int = _opt(
        32 * 1024 * 1024, "bytes of documents read ahead per Ingest stream before pushing back"
    )
    ingest_commit_bytes: int = _opt(
        16 * 1024 * 1024, "bytes of documents per LMDB commit during Ingest (a larger one alone)"
    )
    # A larger document must still arrive to get its in-band ItemError (gRPC refuses a message
    # over its receive limit by ending the whole stream), so requests may be up to
    # max_receive_bytes: four times this.
    max_document_bytes: int = _opt(
        8 * 1024 * 1024, "largest document text Ingest stores, in UTF-8 bytes (larger: an ItemError)"
    )
    search_max_k: int = _opt(1000, "largest k a Search may ask for")
    # usearch's Python binding cannot filter inside its graph walk: a filter keeping few
    # documents makes the oversampled index walk most of the collection. Measured on SciFact
    # (5,183 documents, k=10, benchmarks/bench_filter.py, README "Filtered search latency"):
    # exact over the kept documents 2.8-5.4 ms p50 up to 1,000 kept, the oversampled index
    # 33-50 ms at 5-25 kept, 5.1 ms at 500, 6.0 ms at 1,000, 3-4 ms from 2,000 (exact 9-12 ms
    # there): exact is as fast up to 1,000 kept (two loaded runs) and returns the exact top k.
    # A quiet run: exact 3.5 / index 3.6 ms at 500 kept, 3.6 / 2.9 at 1,000: kept at 1,000, the
    # exact answer for at most 0.7 ms more between the two.
    search_filter_exact_max: int = _opt(
        1000,
        "a Search whose metadata filter keeps at most this many documents scores them exactly "
        "instead of asking the approximate index (oversampled, exact when too few pass); 0 = "
        "always ask the index first",
    )
    search_batch_max_queries: int = _opt(64, "most searches in one SearchBatch call")
    # --- chunking of long documents (issue 13) ---
    # On by default: a document past the model's maximum is never cut silently (issue 13). The
    # memory bound of tests/test_faults_memory.py holds since the chunker tokenizes in slices
    # (server/chunking.py; README "Long documents" has the measurements).
    chunking: bool = _opt(
        True,
        "Ingest splits a document longer than the model reads into overlapping token windows, "
        "each embedded and stored under its own content hash (false: cut it at the model's "
        "maximum, as before; IngestRequest.chunking overrides this per document)",
    )
    chunk_tokens: int = _opt(
        0,
        "most tokens of one chunk window, overlap included (0 = the model's maximum minus its "
        "special tokens and the document prompt's tokens, 254 for all-MiniLM-L6-v2; larger is cut "
        "to that)",
    )
    chunk_overlap_tokens: int = _opt(
        32, "tokens a chunk window repeats of the text before it (less than half of a window)"
    )
    # Bounds the work and memory one document can cost: each chunk is embedded and stored. 64 Ki
    # characters of prose is ~15k tokens, ~65 chunks: a paper of 25-30 pages (short random words
    # tokenize to 4x that: 417 chunks). Measured (tests/test_faults_memory.py, 2 MiB documents):
    # the parent peaked 40-64 MiB above its baseline at 256 Ki, over that test's 48 MiB bound.
    chunk_max_chars: int = _opt(
        65_536,
        "characters of a document that chunking embeds; the rest is stored (returned, searchable "
        "by its chunks' text no further) but not embedded, and IngestAck.unembedded_chars says how "
        "much. An EmbedOptions.chunking input longer than this is refused",
    )
    # An index is a cache of the store (it catches up from the change log after a crash), so it
    # is written on a timer instead of after every call: one small Ingest or Delete must not
    # rewrite a large collection's whole index file.
    index_save_interval_s: float = _opt(30.0, "seconds between saves of changed usearch indexes")
    # --- model and compute ---
    model: str = _opt(
        "all-MiniLM-L6-v2",
        "local model directory, bundled alias or hub id: the default model. Repeat as "
        "--model NAME=MODEL to serve several models (the first is the default; requests name the "
        "others, see --extra-models)",
    )
    model_name: str = _opt("", "the name requests give the default model (default: its own name)")
    extra_models: str = _opt(
        "",
        "models served beside the default one, comma-separated NAME=MODEL (what the second and "
        "later --model NAME=MODEL give); each has its own encoder workers (--extra-model-workers)",
    )
    extra_model_workers: int = _opt(1, "encoder worker processes of each model besides the default")
    backend: str = _opt("torch", "inference backend", choices=("torch", "onnx"))
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N (auto: every GPU, else CPU)")
    dtype: str = _opt(
        "auto",
        "compute dtype (auto: float16 on GPU; on CPU bfloat16 where native for torch, else "
        "float32; int8 (per-channel dynamic quantization) for the onnx backend on CPU)",
        choices=("auto", "float32", "bfloat16", "float16", "int8"),
    )
    workers: int = _opt(
        0, "CPU worker processes (0 = auto: one per core, at most 4; GPU hosts: one per device)"
    )
    # off by default, by measurement (README, Interactive latency: AVX2 EPYC, 2 loaded cores,
    # fp32, one thread, 3 alternating rounds): a 16 x 256-token batch took 0.50-0.88x the eager
    # time compiled, other shapes within noise, but a worker took 448 s to load vs 31 s eager,
    # at every start and every restart of a worker; queries run on the interactive lane anyway.
    compile: str = _opt(
        "off",
        "torch.compile the model in each worker (auto: on for the torch backend on CPU): bulk "
        "batches up to 2x faster after minutes of start-up per worker (and per restart)",
        choices=("auto", "on", "off"),
    )
    # 4096 measured fastest on a 2-core AMX CPU (3.4x in-process ST vs 3.0x at 8192, 3.2x at
    # 2048); GPUs want far larger batches.
    max_batch_tokens: int = _opt(
        4096, "token budget of one model batch (padded tokens; GPU hosts: raise it, e.g. 32768)"
    )
    max_wait_ms: float = _opt(
        5.0, "longest bulk work (ingestion) waits for a batch to fill; interactive inputs never wait"
    )
    # While interactive inputs wait in the worker queue, a bulk batch holds at most this many
    # padded tokens, so the next worker to free up comes back to them soon.
    contended_batch_tokens: int = _opt(
        512, "token budget of a bulk batch taken while interactive inputs wait in the worker queue"
    )
    # On again (auto) since 970f541: the search that missed a document's own text with the lane
    # on was usearch stranding a node added by a parallel add (USearch #735), not the lane.
    interactive_lane: str = _opt(
        "auto",
        "compute interactive inputs (Embed, EmbedStream, TEI, Search queries) in the server "
        "process on ONNX Runtime, beside the workers, so they never wait behind bulk batches "
        "(auto: on with CPU workers; kept only where its vectors match the workers', cosine >= 0.999)",
        choices=("auto", "on", "off"),
    )
    interactive_lane_tokens: int = _opt(1024, "token budget of one interactive-lane batch (padded tokens)")
    interactive_lane_threads: int = _opt(
        0, "interactive-lane runners, one ONNX Runtime run at a time each (0 = one per CPU worker)"
    )
    # 0 = one per core: measured (README, Interactive latency) a single query's inference
    # 3.8 ms on one thread vs 2.2 ms on two, the ingest beside it keeping >= 0.85 of its docs/s.
    interactive_lane_op_threads: int = _opt(
        0, "threads one interactive-lane run may use (ONNX Runtime intra-op; 0 = one per core)"
    )
    max_client_batch_size: int = _opt(512, "most inputs in one Embed request")
    max_stream_in_flight: int = _opt(256, "items per stream being embedded at once (backpressure)")
    # Items alone do not bound memory: 256 stream items of 10 MB are 2.5 GB per stream.
    max_stream_bytes: int = _opt(
        32 * 1024 * 1024, "bytes of requests per EmbedStream or tei.v1 stream being worked on at once"
    )
    max_queue_items: int = _opt(
        20000,
        "inputs waiting for the encoder pool; past it unary calls get RESOURCE_EXHAUSTED, "
        "streams (EmbedStream, Ingest) wait for room",
    )
    # 10 MiB: a whole book is one input (truncated, only its first 256 tokens are tokenized);
    # below the default message limit, so the limit is this option and not a transport error.
    max_input_chars: int = _opt(
        10 * 1024 * 1024, "largest input accepted, in characters (Embed, Tokenize, Ingest, Search)"
    )
    query_cache_size: int = _opt(10000, "query-embedding LRU entries (0 = off)")
    # --- encoder pool (issue 3) ---
    threads_per_worker: int = _opt(0, "intra-op threads per CPU worker (0 = cores // workers)")
    batch_timeout_s: float = _opt(120.0, "a worker that takes longer on one batch is restarted")
    worker_start_timeout_s: float = _opt(300.0, "longest a worker may take to load the model")
    # Without it a worker's RSS grows with each new batch shape (glibc keeps the freed
    # activations resident): +30 to +100 MiB per 1,000 SciFact docs measured, without bound; one
    # trim took ~4 ms on a loaded 2-core host, against ~2 s of compute per 4096-token batch.
    worker_trim_tokens: int = _opt(
        16384,
        "padded tokens a worker computes between handing its freed heap memory back to the OS "
        "(glibc malloc_trim), which it also does after 1 s without work; 0 = never",
    )
    # --- edge ---
    edge_dims: int = _opt(128, "dimensions of the truncated vectors edge clients keep")
    edge_bundle_dir: str = _opt("", "edge bundle directory (default: DATA_DIR/edge_bundle)")
    edge_onnx_cache: str = _opt("", "exported ONNX graphs, per model (default: a per-user cache dir)")
    edge_int8: bool = _opt(True, "ship the int8 ONNX graph in the edge bundle")
    edge_fit_min_vectors: int = _opt(256, "stored vectors needed to fit the edge PCA rotation")
    edge_fit_sample: int = _opt(20000, "most stored vectors sampled to fit the edge rotation")
    # adaptor: linear Matryoshka adaptor fitted on stored vectors + their texts' sentences
    # (server/edge_adaptor.py); it keeps more of the full ranking at 64/128 dims than PCA.
    edge_projection: str = _opt(
        "adaptor", "edge projection fitted on the store", choices=("adaptor", "rotation")
    )
    # Below this many documents the adaptor overfits: fitted on 300 SciFact docs it keeps fewer
    # held-out top-10 neighbours than PCA (64 dims 0.88 vs 0.92 recall@20), so PCA is fitted then.
    edge_adaptor_min_docs: int = _opt(
        2000, "stored documents needed to fit the adaptor (fewer: the PCA rotation is fitted)"
    )
    # --- logging ---
    log_level: str = _opt("INFO", "logging level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    @property
    def max_receive_bytes(self) -> int:
        """The gRPC receive limit: room for an Ingest request with a document of up to 4x
        ``max_document_bytes`` (plus id and metadata), so it is refused in-band."""
        return max(self.max_message_bytes, 4 * self.max_document_bytes + (1 << 20))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``EMBED_*`` variables, then explicit ``overrides``."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_var(f.name))
            if raw is not None:
                values[f.name] = _convert(hints[f.name], raw, env_var(f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("auth_token") and values.get("auth_token_file"):
            raise ValueError("give --auth-token or --auth-token-file, not both")
        if values.get("auth_token_file"):
            from embedcore.transport import CredentialsError, read_token_file

            try:
                values["auth_token"] = read_token_file(values["auth_token_file"])
            except CredentialsError as exc:
                raise ValueError(str(exc)) from None
        settings = cls(**values)
        settings.validate()
        return settings

    def extra_model_refs(self) -> list[tuple[str, str]]:
        """(name, model) of every model served beside the default one, in the order given;
        ValueError for an entry without a name or a name given twice."""
        out: list[tuple[str, str]] = []
        for entry in filter(None, (e.strip() for e in self.extra_models.split(","))):
            name, model = split_model_arg(entry)
            if not name or not model:
                raise ValueError(f"--extra-models entry {entry!r} is not NAME=MODEL")
            if name == self.model_name or name in (n for n, _ in out):
                raise ValueError(f"model name {name!r} is given twice")
            out.append((name, model))
        return out

    def validate(self) -> None:
        """Raise ValueError naming the option for a value that cannot work."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"--{_flag(f.name)} must be one of {', '.join(choices)}")
        if self.dtype == "int8" and self.backend != "onnx":
            raise ValueError("--dtype int8 needs --backend onnx (the int8 graph is an ONNX export)")
        if self.interactive_lane_op_threads < 0:
            raise ValueError(
                "--interactive-lane-op-threads must be 0 (auto) or positive, "
                f"got {self.interactive_lane_op_threads}"
            )
        if self.interactive_lane_threads < 0:
            raise ValueError(
                "--interactive-lane-threads must be 0 (auto) or positive, "
                f"got {self.interactive_lane_threads}"
            )
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 (auto) or positive, got {self.workers}")
        if self.worker_trim_tokens < 0:
            raise ValueError(
                f"--worker-trim-tokens must be 0 (never) or positive, got {self.worker_trim_tokens}"
            )
        positive = (
            "chunk_max_chars",
            "max_batch_tokens",
            "contended_batch_tokens",
            "interactive_lane_tokens",
            "max_input_chars",
            "max_client_batch_size",
            "max_stream_in_flight",
            "max_stream_bytes",
            "max_queue_items",
            "max_message_bytes",
            "max_document_bytes",
            "edge_dims",
            "edge_fit_min_vectors",
            "edge_fit_sample",
            "edge_adaptor_min_docs",
            "store_map_size_mb",
            "ingest_commit_docs",
            "ingest_max_pending",
            "ingest_max_pending_bytes",
            "ingest_commit_bytes",
            "search_max_k",
            "search_batch_max_queries",
            "index_save_interval_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        listening = [(n, getattr(self, n)) for n in ("port", "metrics_port", "http_port") if getattr(self, n)]
        for i, (name, port) in enumerate(listening):
            for other, other_port in listening[:i]:
                if port == other_port:
                    raise ValueError(
                        f"--{_flag(name)} and --{_flag(other)} are both {port}; give each its own"
                    )
        if self.search_filter_exact_max < 0:
            raise ValueError(
                f"--search-filter-exact-max must be 0 or positive, got {self.search_filter_exact_max}"
            )
        if self.chunk_tokens < 0:
            raise ValueError(
                f"--chunk-tokens must be 0 (the model's maximum) or positive, got {self.chunk_tokens}"
            )
        if self.chunk_overlap_tokens < 0 or (
            self.chunk_tokens and 2 * self.chunk_overlap_tokens >= self.chunk_tokens
        ):
            raise ValueError(
                f"--chunk-overlap-tokens must be at least 0 and less than half of --chunk-tokens "
                f"({self.chunk_tokens}), got {self.chunk_overlap_tokens}"
            )
        if not self.version_retention_hours >= 0:
            raise ValueError(f"--version-retention-hours must be >= 0, got {self.version_retention_hours}")
        if self.extra_model_workers < 1:
            raise ValueError(f"--extra-model-workers must be at least 1, got {self.extra_model_workers}")
        self.extra_model_refs()
        if self.max_message_bytes < MIN_MESSAGE_BYTES:
            # one document's id, vector and metadata (at most 64 KiB as JSON) must fit a message
            raise ValueError(
                f"--max-message-bytes must be at least {MIN_MESSAGE_BYTES} (1 MiB), "
                f"got {self.max_message_bytes}"
            )
        self._validate_limits()
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key must be given together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")

    def _validate_limits(self) -> None:
        """Pairs of limits that, inconsistent, would make a stream wait for something that
        never comes. Checked: every limit a waiting (stream or bulk) submission depends on.
        Not a pair: --max-client-batch-size above --max-queue-items (a unary call is refused
        at once with RESOURCE_EXHAUSTED naming the limit, and its client can split it);
        --max-stream-in-flight (stream items wait one input at a time)."""
        # (smaller, larger, why): the first may not exceed the second.
        pairs = (
            # one Ingest commit is embedded in one call that waits for that much queue room
            ("ingest_commit_docs", "max_queue_items", "an Ingest batch could never be queued"),
        )
        for small, large, why in pairs:
            if getattr(self, small) > getattr(self, large):
                raise ValueError(
                    f"--{_flag(small)}={getattr(self, small)} is more than "
                    f"--{_flag(large)}={getattr(self, large)}: {why}; raise --{_flag(large)} "
                    f"or lower --{_flag(small)}"
                )


def split_model_arg(value: str) -> tuple[str, str]:
    """``NAME=MODEL`` -> (NAME, MODEL); a value without ``=`` (or whose part before it is a path)
    -> ("", value)."""
    name, sep, model = value.partition("=")
    if not sep or "/" in name or Path(value).expanduser().exists():
        return "", value
    return name.strip(), model.strip()


def env_var(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _convert(kind: Any, raw: str, source: str) -> Any:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{source}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Settings field; defaults stay None so the environment can fill them.
    ``--model`` may be repeated (:func:`from_args` splits it into model, model_name and
    extra_models)."""
    hints = get_type_hints(Settings)
    for f in dataclasses.fields(Settings):
        kind = hints[f.name]
        help_text = f"{f.metadata['help']} [env {env_var(f.name)}; default {f.default}]"
        if f.name == "model":
            parser.add_argument("--model", dest="model", default=None, action="append", help=help_text)
        elif kind is bool:
            parser.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_text,
            )
        else:
            parser.add_argument(
                f"--{_flag(f.name)}",
                dest=f.name,
                default=None,
                type=kind,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    values = {k: v for k, v in vars(args).items() if k in names}
    models = values.get("model")
    if isinstance(models, list):  # --model given once or more: the first is the default
        name, values["model"] = split_model_arg(models[0])
        values["model_name"] = values.get("model_name") or name or None
        extra = [m for m in (values.get("extra_models") or "").split(",") if m.strip()]
        values["extra_models"] = ",".join([*models[1:], *extra]) or values.get("extra_models")
    return Settings.from_env(environ, **values)
