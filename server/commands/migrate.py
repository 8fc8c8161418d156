"""``embed-server migrate COLLECTION --to MODEL``: re-embed a collection with another model, cut
over in one transaction, keep the previous version for ``--rollback``.

With ``--server HOST:PORT``, a running server does it online (the Migrate RPC): MODEL is the name
of a model it serves (``serve --model NAME=MODEL``, repeatable), the collection keeps serving
searches, syncs and ingests on its current version meanwhile, and the bar follows the server's
progress (leaving early leaves the migration running; running the command again follows it).
The bearer token is the server's own setting (``--auth-token-file`` or ``EMBED_AUTH_TOKEN``);
plaintext only.

Without ``--server`` it runs on the store directly (stop the server first: the store refuses a
second process), like ``reembed`` but without losing the old version: the collection keeps its
current model's vectors until every document has its new vector, then switches in one LMDB
transaction (see server.migration and server.store.versions). Interrupted (Ctrl-C, kill -9),
run it again: it resumes without re-embedding what it finished. ``--rollback`` switches back to the version
the last cutover replaced, embedding nothing; ``gc`` drops that version after
``--version-retention-hours``. After a cutover, serve the collection with the new model
(``--model``); edges see a new bundle fingerprint and resync from scratch on their next sync.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

from server import settings as settings_module

if TYPE_CHECKING:
    from server.store import Store

PROG = "embed-server migrate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_module.add_arguments(parser)
    parser.add_argument("collection", metavar="COLLECTION", help="the collection to migrate")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="MODEL", help="the model to migrate to (directory or alias)")
    what.add_argument(
        "--rollback", action="store_true", help="switch back to the version the last cutover replaced"
    )
    what.add_argument("--abort", action="store_true", help="forget a migration in progress and its vectors")
    parser.add_argument(
        "--server",
        default="",
        metavar="HOST:PORT",
        help="migrate on this running server (MODEL: the name of a model it serves); "
        "default: on the store in --data-dir, with the server stopped",
    )


def _online(settings: settings_module.Settings, args: argparse.Namespace) -> int:
    import grpc
    from tqdm import tqdm

    from embedcore.transport import ClientCredentials, open_channel
    from protos.embedding.v1 import embedding_pb2 as pb
    from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub

    request = pb.MigrateRequest(
        collection=args.collection, to_model=args.to or "", rollback=args.rollback, abort=args.abort
    )
    metadata = [("authorization", f"Bearer {settings.auth_token}")] if settings.auth_token else []
    with open_channel(args.server, ClientCredentials()) as channel:
        bar: Any = None
        try:
            for step in CollectionServiceStub(channel).Migrate(request, metadata=metadata):
                if step.state == "copying":
                    if bar is None:
                        bar = tqdm(total=step.documents, unit="doc", desc=f"migrate {args.collection}")
                    bar.update(step.done - bar.n)
                    continue
                if bar is not None:
                    bar.update(step.done - bar.n)
                    bar.close()
                print(
                    f"{args.collection!r}: {step.state.replace('_', ' ')}; now {step.fingerprint}"
                    + (
                        f"; {step.done} docs, {step.embedded} embedded, {step.skipped} already migrated"
                        if step.state == "cut_over"
                        else ""
                    )
                )
        except grpc.RpcError as exc:
            if bar is not None:
                bar.close()
            print(f"{PROG}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 2
    return 0


async def _migrate(settings: settings_module.Settings, collection: str, model: str) -> int:
    from tqdm import tqdm

    from server.ingest import Ingestor
    from server.migration import migrate_collection
    from server.model import ModelNotFoundError, load_spec
    from server.pool import EncoderPool
    from server.store.versions import VersionError

    try:
        spec = load_spec(model)
    except ModelNotFoundError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    store = _open_store(settings)
    if store is None:
        return 2
    try:
        meta = store.collection(collection)
        if meta is None:
            print(f"{PROG}: no collection {collection!r}", file=sys.stderr)
            return 2
        # Bulk work only: no interactive lane (it would export the model to ONNX for nothing).
        embedder = EncoderPool(dataclasses.replace(settings, interactive_lane="off"), spec)
        await embedder.start()
        try:
            ingestor = Ingestor.from_settings(store, None, embedder, spec, settings, hidden_names=True)
            with tqdm(total=meta.documents, unit="doc", desc=f"migrate {collection}") as bar:
                report = await migrate_collection(store, ingestor, collection, bar.update)
        except VersionError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        finally:
            await embedder.close()
        print(
            f"{collection!r}: now {spec.fingerprint} (was {report.previous}); {report.documents} docs, "
            f"{report.embedded} embedded, {report.reused} reused, {report.skipped} already migrated"
            f"{' (resumed)' if report.resumed else ''}; the previous version is kept for "
            f"`{PROG} {collection} --rollback` for {settings.version_retention_hours:g} h"
        )
    finally:
        store.close()
    return 0


def _open_store(settings: settings_module.Settings) -> Store | None:
    """The server's store as its settings configure it; None (said on stderr) when it cannot open."""
    from server.store import StoreError, open_store

    try:
        return open_store(
            settings.data_dir, map_size=settings.store_map_size_mb << 20, float16=settings.store_float16
        )
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return None


def _switch(settings: settings_module.Settings, collection: str, *, rollback: bool) -> int:
    from server.store.versions import VersionError

    store = _open_store(settings)
    if store is None:
        return 2
    try:
        if rollback:
            retained = store.rollback(collection)
            now = store.collection(collection)
            print(
                f"{collection!r}: rolled back to {now.fingerprint if now else '?'}; "
                f"{retained.fingerprint} is kept for `--rollback` again"
            )
        elif store.abort_migration(collection):
            print(f"{collection!r}: migration aborted; `embed-server gc` frees its vectors")
        else:
            print(f"{PROG}: collection {collection!r} has no migration in progress", file=sys.stderr)
            return 2
    except VersionError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_module.from_args(args)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.server:
        return _online(settings, args)
    if args.to:
        return asyncio.run(_migrate(settings, args.collection, args.to))
    return _switch(settings, args.collection, rollback=args.rollback)
