"""The edge bundle on disk: manifest, integrity checks, fingerprint, and the encoder built from it.

A bundle directory holds ``manifest.json`` plus the files it lists (ONNX graphs, tokenizer,
projection), each with its size and sha256. The bundle fingerprint covers everything that
decides what an edge vector means (model fingerprint, which covers the weights and configs of
every module including a Dense head, tokenizer, pooling, normalization, projection) but not the
ONNX bytes, so re-exporting the same model does not force every edge to resync.

Formats: 1 = the graph's ``last_hidden_state`` pooled in numpy (Transformer + Pooling in one of
embedcore.pooling.NUMPY_MODES [+ Normalize]); 2 = the model's head (pooling, Dense, ...) is in the
graph's ``sentence_embedding`` output. A model whose head a format-1 reader would get wrong is
written as format 2, so an older client refuses it with a clear message instead of computing
wrong vectors; every other bundle stays format 1, readable by every client.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedcore.chunking import CHUNK_OVERLAP, Chunker, load_chunker
from embedcore.errors import BundleError, BundleIntegrityError
from embedcore.onnx_encoder import OnnxEncoder
from embedcore.pooling import NUMPY_MODES, PoolingMode
from embedcore.projection import Projection
from embedcore.tokenization import check_content

MANIFEST = "manifest.json"
FORMAT = 2  # the newest format this code reads and writes
FORMATS = (1, 2)  # formats this code reads


def format_for(head: Sequence[str], pooling: str) -> int:
    """The oldest format whose readers compute this model's vectors right (module docstring):
    1 for Transformer + one numpy pooling mode [+ Normalize], else 2."""
    core = tuple(head[:-1]) if tuple(head[-1:]) == ("Normalize",) else tuple(head)
    return 1 if core == ("Pooling",) and pooling in NUMPY_MODES else 2


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_fingerprint(
    *,
    model_fingerprint: str,
    tokenizer_sha256: str,
    projection_sha256: str,
    pooling: str,
    normalize: bool,
    max_tokens: int,
) -> str:
    """``edge-<hex16>`` over what makes an edge vector (not the ONNX bytes; see module doc)."""
    parts = [model_fingerprint, tokenizer_sha256, projection_sha256, pooling, str(normalize), str(max_tokens)]
    return "edge-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    fingerprint: str
    model_id: str
    model_fingerprint: str
    pooling: PoolingMode
    normalize: bool
    max_tokens: int
    dimension: int  # width of the model's full vectors
    default_dims: int
    matryoshka_dims: tuple[int, ...]
    prompts: Mapping[str, str]
    query_prompt_name: str
    document_prompt_name: str
    onnx_fp32: str
    onnx_int8: str  # "" when the bundle has no int8 graph
    tokenizer: str
    projection: str
    projection_kind: str
    files: Mapping[str, FileEntry]
    extra: Mapping[str, Any] = field(default_factory=dict)  # informational (fit details)
    head: tuple[str, ...] = ("Pooling",)  # the model's modules after the transformer
    format: int = 1

    def to_json(self) -> str:
        data = {
            "format": self.format,
            "fingerprint": self.fingerprint,
            "model_id": self.model_id,
            "model_fingerprint": self.model_fingerprint,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_tokens": self.max_tokens,
            "dimensions": self.dimension,
            "default_dims": self.default_dims,
            "matryoshka_dims": list(self.matryoshka_dims),
            "prompts": dict(self.prompts),
            "query_prompt_name": self.query_prompt_name,
            "document_prompt_name": self.document_prompt_name,
            "head": list(self.head),
            "onnx": {
                "fp32": self.onnx_fp32,
                "int8": self.onnx_int8,
                "output": "sentence_embedding" if self.format >= 2 else "last_hidden_state",
            },
            "tokenizer": self.tokenizer,
            "projection": {"file": self.projection, "kind": self.projection_kind},
            "files": {p: {"size": e.size, "sha256": e.sha256} for p, e in sorted(self.files.items())},
            "extra": dict(self.extra),
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
            if d.get("format") not in FORMATS:
                got = d.get("format")
                raise BundleError(
                    f"unsupported bundle format {got!r} (this client reads formats "
                    f"{', '.join(map(str, FORMATS))}); upgrade the edge client"
                )
            files = {str(p): FileEntry(int(e["size"]), str(e["sha256"])) for p, e in d["files"].items()}
            manifest = cls(
                fingerprint=str(d["fingerprint"]),
                model_id=str(d["model_id"]),
                model_fingerprint=str(d["model_fingerprint"]),
                pooling=d["pooling"],
                normalize=bool(d["normalize"]),
                max_tokens=int(d["max_tokens"]),
                dimension=int(d["dimensions"]),
                default_dims=int(d["default_dims"]),
                matryoshka_dims=tuple(int(x) for x in d["matryoshka_dims"]),
                prompts={str(k): str(v) for k, v in d["prompts"].items()},
                query_prompt_name=str(d["query_prompt_name"]),
                document_prompt_name=str(d["document_prompt_name"]),
                onnx_fp32=str(d["onnx"]["fp32"]),
                onnx_int8=str(d["onnx"]["int8"]),
                tokenizer=str(d["tokenizer"]),
                projection=str(d["projection"]["file"]),
                projection_kind=str(d["projection"]["kind"]),
                files=files,
                extra=dict(d.get("extra", {})),
                head=tuple(str(m) for m in d.get("head", ("Pooling",))),
                format=int(d["format"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bad bundle manifest: {type(exc).__name__}: {exc}") from exc
        for name in (manifest.onnx_fp32, manifest.tokenizer, manifest.projection, manifest.onnx_int8):
            if name and name not in files:
                raise BundleError(f"bad bundle manifest: {name!r} is not in its file list")
        for name in files:
            if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST:
                raise BundleError(f"bad bundle manifest: unsafe file path {name!r}")
        return manifest


def verify_file(path: Path, entry: FileEntry, *, full: bool = True) -> None:
    """Raise BundleIntegrityError unless ``path`` has the manifest's size (and sha256)."""
    if not path.is_file():
        raise BundleIntegrityError(f"bundle file {path.name} is missing")
    size = path.stat().st_size
    if size != entry.size:
        raise BundleIntegrityError(f"bundle file {path.name}: {size} bytes, manifest says {entry.size}")
    if full:
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleIntegrityError(
                f"bundle file {path.name}: sha256 {actual[:12]}..., manifest says {entry.sha256[:12]}..."
            )


class EdgeBundle:
    """An installed bundle: its manifest, its projection, and (lazily) its ONNX encoder."""

    def __init__(self, directory: Path, manifest: Manifest, projection: Projection) -> None:
        self.directory = directory
        self.manifest = manifest
        self.projection = projection
        self._encoders: dict[tuple[bool, int], OnnxEncoder] = {}
        self._chunkers: dict[tuple[int, int], Chunker] = {}

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @classmethod
    def load(cls, directory: Path, *, verify: bool = False) -> EdgeBundle:
        """Open ``directory``; sizes are always checked, sha256 too when ``verify``."""
        path = directory / MANIFEST
        if not path.is_file():
            raise BundleError(f"no {MANIFEST} in {directory}")
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
        for name, entry in manifest.files.items():
            verify_file(directory / name, entry, full=verify)
        try:
            projection = Projection.load(directory / manifest.projection)
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read the bundle's projection: {exc}") from exc
        if projection.dimension != manifest.dimension:
            raise BundleError("the bundle's projection does not match its model dimensions")
        return cls(directory, manifest, projection)

    def encoder(self, *, int8: bool = True, threads: int = 0) -> OnnxEncoder:
        """The ONNX encoder (int8 graph when asked for and present), built once per setting.
        BundleError when a file cannot be loaded (damaged with its size intact: sizes are
        checked at :meth:`load`, contents here)."""
        use_int8 = int8 and bool(self.manifest.onnx_int8)
        key = (use_int8, threads)
        if key not in self._encoders:
            name = self.manifest.onnx_int8 if use_int8 else self.manifest.onnx_fp32
            try:
                self._encoders[key] = OnnxEncoder(
                    self.directory / name,
                    self.directory / self.manifest.tokenizer,
                    max_tokens=self.manifest.max_tokens,
                    pooling=self.manifest.pooling,
                    normalize=self.manifest.normalize,
                    threads=threads,
                )
            except Exception as exc:  # ONNX Runtime or tokenizers on a damaged file (sizes match)
                raise BundleError(
                    f"cannot load the bundle's model {name}: {type(exc).__name__}: {exc}"
                ) from exc
        return self._encoders[key]

    def chunker(self, *, window: int = 0, overlap: int = CHUNK_OVERLAP) -> Chunker:
        """The chunker for documents of this bundle's model, built once per setting: the
        bundle's tokenizer, a budget of the model's maximum tokens minus special tokens minus
        the document prompt's tokens (all in the manifest, in every format), so its cuts are the
        server's (server.chunking.chunker_for with the same window and overlap). BundleError
        when the tokenizer file cannot be loaded."""
        key = (window, overlap)
        if key not in self._chunkers:
            try:
                self._chunkers[key] = load_chunker(
                    self.directory / self.manifest.tokenizer,
                    max_tokens=self.manifest.max_tokens,
                    prompt=self.prompt(self.manifest.document_prompt_name),
                    window=window,
                    overlap=overlap,
                )
            except Exception as exc:  # tokenizers on a damaged file (its size intact)
                name = self.manifest.tokenizer
                raise BundleError(
                    f"cannot load the bundle's tokenizer {name}: {type(exc).__name__}: {exc}"
                ) from exc
        return self._chunkers[key]

    def prompt(self, name: str) -> str:
        return self.manifest.prompts.get(name, "") if name else ""

    def embed(
        self, texts: Sequence[str], dims: int, *, kind: str = "query", int8: bool = True, threads: int = 0
    ) -> np.ndarray:
        """Texts -> edge vectors (n, dims): the model's prompt for ``kind`` (query|document),
        the ONNX encoder, then the bundle's projection. NoContentError naming ``texts[i]`` for
        a text with no content token (zero-width or control characters only)."""
        name = self.manifest.query_prompt_name if kind == "query" else self.manifest.document_prompt_name
        prefix = self.prompt(name)
        encoder = self.encoder(int8=int8, threads=threads)
        if prefix:  # the prompt's own tokens would hide a text without content
            tokens = encoder.tokenizer.encode_batch(list(texts))
            check_content(tokens, [f"texts[{i}]" for i in range(len(tokens))])
        full = encoder.encode([prefix + t for t in texts])
        return self.projection.apply(full, dims)


def swap_in_directory(stage: Path, target: Path) -> None:
    """Replace directory ``target`` with ``stage``; readers see the old or the new one, never a mix."""
    os.chmod(stage, 0o755)
    if not target.exists():
        os.replace(stage, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(stage, target)
    shutil.rmtree(old, ignore_errors=True)
