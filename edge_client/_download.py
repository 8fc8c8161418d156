"""Fetch the edge bundle over GetEdgeBundle, verify every file, install it atomically.

Each file must arrive in order (offsets contiguous), with the manifest's size and sha256, and
the manifest's fingerprint must be the one its fields and hashes give; otherwise the download
is rejected and retried from scratch. Nothing is installed until everything checks out.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from embedcore.transport import ClientCredentials, explain
from protos.embedding.v1 import embedding_pb2 as pb

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (bytes so far, total bytes)
Waiting = Callable[[float], None]  # seconds waited so far for the server's first message

# The server answers GetEdgeBundle only once the bundle is ready, which can mean fitting the
# projection on its store first (a minute on a large store): say so instead of hanging silently.
FIRST_NOTICE_S = 2.0
NOTICE_EVERY_S = 10.0


@contextmanager
def _notify_while_waiting(waiting: Waiting | None) -> Iterator[None]:
    """Call ``waiting(seconds)`` after FIRST_NOTICE_S, then every NOTICE_EVERY_S, until the block ends."""
    if waiting is None:
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def notify() -> None:
        pause = FIRST_NOTICE_S
        while not done.wait(pause):  # a timer between notices, not a wait for readiness
            waiting(time.monotonic() - started)
            pause = NOTICE_EVERY_S

    thread = threading.Thread(target=notify, name="bundle-wait-notice", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _receive(stream: Any, stage: Path, progress: Progress | None, waiting: Waiting | None) -> Manifest:
    with _notify_while_waiting(waiting):
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
    waiting: Waiting | None = None,
    server: str = "",
    credentials: ClientCredentials | None = None,
    collection: str = "",
) -> EdgeBundle:
    """Download into a staging directory beside ``target``, verify, then swap it in.
    ``collection``: the bundle of the model that collection is bound to ("" = the server's
    default model's).
    ``progress(bytes, total)`` follows the download; ``waiting(seconds)`` is called while the
    server is still preparing the bundle. ServerUnavailable (one line: ``server at HOST:PORT
    unreachable``) when it cannot be reached after ``attempts`` tries."""
    target.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        stage = Path(tempfile.mkdtemp(prefix=".bundle-download.", dir=target.parent))
        try:
            request = pb.GetEdgeBundleRequest(collection=collection)
            stream = stub.GetEdgeBundle(request, timeout=timeout, metadata=metadata)
            _receive(stream, stage, progress, waiting)
            swap_in_directory(stage, target)
            return EdgeBundle.load(target)
        except BundleError as exc:
            last = exc
            log.warning("bundle download %d/%d rejected: %s", attempt, attempts, exc)
        except grpc.RpcError as exc:
            last = exc
            failure = explain(exc, server or "the server", timeout=timeout, credentials=credentials)
            if not failure.unreachable:
                message = f"GetEdgeBundle failed: {failure.summary}"
                raise errors.ServerError(message, code=failure.code, detail=failure.detail) from exc
            # INFO: the final error says it all when every attempt fails (--verbose shows these).
            log.info("bundle download %d/%d interrupted: %s", attempt, attempts, failure.summary)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    if isinstance(last, grpc.RpcError):
        failure = explain(last, server or "the server", timeout=timeout, credentials=credentials)
        message = f"could not download the edge bundle: {failure.summary}"
        raise errors.ServerUnavailable(message, code=failure.code, detail=failure.detail) from last
    raise errors.BundleIntegrityError(f"edge bundle rejected after {attempts} attempts: {last}") from last
