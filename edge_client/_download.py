"""Fetch the edge bundle over GetEdgeBundle, verify every file, install it atomically.

Each file must arrive in order (offsets contiguous), with the manifest's size and sha256, and
the manifest's fingerprint must be the one its fields and hashes give; otherwise the download
is rejected and retried from scratch. Nothing is installed until everything checks out.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from edge_client import errors
from embedcore import (
    MANIFEST,
    BundleError,
    BundleIntegrityError,
    EdgeBundle,
    Manifest,
    bundle_fingerprint,
    swap_in_directory,
    verify_file,
)
from protos.embedding.v1 import embedding_pb2 as pb

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes so far, total bytes)


def _receive(stream: Any, stage: Path, progress: Progress | None) -> Manifest:
    first = next(iter(stream), None)
    if first is None or first.WhichOneof("part") != "manifest":
        raise BundleIntegrityError("the bundle stream did not start with its manifest")
    manifest = Manifest.from_json(first.manifest.manifest_json)
    if first.manifest.fingerprint != manifest.fingerprint:
        raise BundleIntegrityError("the manifest message and manifest.json disagree on the fingerprint")
    expected = bundle_fingerprint(
        model_fingerprint=manifest.model_fingerprint,
        tokenizer_sha256=manifest.files[manifest.tokenizer].sha256,
        projection_sha256=manifest.files[manifest.projection].sha256,
        pooling=manifest.pooling,
        normalize=manifest.normalize,
        max_tokens=manifest.max_tokens,
    )
    if expected != manifest.fingerprint:
        raise BundleIntegrityError(f"manifest fingerprint {manifest.fingerprint} should be {expected}")
    total = sum(e.size for e in manifest.files.values())
    written: dict[str, int] = {}
    handles: dict[str, Any] = {}
    done = 0
    try:
        for message in stream:
            chunk = message.chunk
            if message.WhichOneof("part") != "chunk" or chunk.path not in manifest.files:
                raise BundleIntegrityError(f"unexpected bundle message for {chunk.path!r}")
            if chunk.offset != written.get(chunk.path, 0):
                raise BundleIntegrityError(f"{chunk.path}: chunk at offset {chunk.offset} is out of order")
            if chunk.path not in handles:
                handles[chunk.path] = (stage / chunk.path).open("wb")
            handles[chunk.path].write(chunk.data)
            written[chunk.path] = chunk.offset + len(chunk.data)
            done += len(chunk.data)
            if progress:
                progress(done, total)
    finally:
        for handle in handles.values():
            handle.close()
    for name, entry in manifest.files.items():
        verify_file(stage / name, entry, full=True)  # missing, partial or corrupted: rejected
    (stage / MANIFEST).write_text(first.manifest.manifest_json, encoding="utf-8")
    return manifest


def install_bundle(
    stub: Any,
    target: Path,
    *,
    attempts: int = 3,
    timeout: float = 300.0,
    metadata: tuple[tuple[str, str], ...] = (),
    progress: Progress | None = None,
) -> EdgeBundle:
    """Download into a staging directory beside ``target``, verify, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        stage = Path(tempfile.mkdtemp(prefix=".bundle-download.", dir=target.parent))
        try:
            stream = stub.GetEdgeBundle(pb.GetEdgeBundleRequest(), timeout=timeout, metadata=metadata)
            _receive(stream, stage, progress)
            swap_in_directory(stage, target)
            return EdgeBundle.load(target)
        except BundleError as exc:
            last = exc
            log.warning("bundle download %d/%d rejected: %s", attempt, attempts, exc)
        except grpc.RpcError as exc:
            code = exc.code()
            last = exc
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                message = f"GetEdgeBundle failed: {code.name}: {exc.details()}"
                raise errors.ServerError(message, code=code.name) from exc
            log.warning("bundle download %d/%d interrupted: %s", attempt, attempts, code.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    if isinstance(last, grpc.RpcError):
        raise errors.ServerUnavailable(f"could not download the edge bundle: {last.code().name}") from last
    raise errors.BundleIntegrityError(f"edge bundle rejected after {attempts} attempts: {last}") from last
