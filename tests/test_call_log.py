"""Failed calls in the server log: one line each at most, rate-limited per method and status,
summed up per interval; a traceback only for the server's own faults (server.call_log)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import pytest

from protos.embedding.v1 import embedding_pb2 as pb
from protos.embedding.v1.embedding_pb2_grpc import CollectionServiceStub, EmbeddingServiceStub
from server.call_log import FailureLog
from tests.server_harness import ServerProcess

BURST = 200


def test_a_burst_of_bad_requests_logs_a_bounded_number_of_lines_and_no_traceback(
    live_server: ServerProcess,
) -> None:
    before = len(live_server.log().splitlines())
    missing = f"calllog-{uuid.uuid4().hex[:8]}"
    raw_embed = "/embedding.v1.EmbeddingService/Embed"
    codes: set[grpc.StatusCode] = set()
    with grpc.insecure_channel(live_server.address) as channel:
        embed, collections = EmbeddingServiceStub(channel), CollectionServiceStub(channel)
        send_raw = channel.unary_unary(raw_embed, request_serializer=None, response_deserializer=None)
        for i in range(BURST):
            calls = (
                lambda: embed.Embed(pb.EmbedRequest(inputs=[]), timeout=30),  # empty inputs
                lambda: embed.Embed(pb.EmbedRequest(inputs=["ok", "nul\x00"]), timeout=30),
                lambda: send_raw(b"\x0a\x02\xed\xa0", timeout=30),  # inputs[0]: a lone surrogate
                lambda: collections.Search(pb.SearchRequest(collection=missing, query="q"), timeout=30),
            )
            with pytest.raises(grpc.RpcError) as err:
                calls[i % len(calls)]()
            codes.add(err.value.code())
        # Every call above has finished; one more good call makes sure its log lines are written.
        assert embed.Info(pb.InfoRequest(), timeout=30).dimensions > 0
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    log = live_server.log()
    added = log.splitlines()[before:]
    # Two (method, status) pairs were hit 200 times: at most one line each per minute, plus
    # lines of other work (index saves) and a summary if a minute boundary fell in between.
    assert len(added) <= 8, added
    assert "Traceback" not in "\n".join(added)
    # The bad requests are reported (in this burst or just before it, same rate limit), in one
    # line naming the method, the status and what was wrong.
    assert "EmbeddingService/Embed INVALID_ARGUMENT: " in log
    assert "CollectionService/Search NOT_FOUND: no collection " in log


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.summary = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if "more in the last" in record.getMessage():
            self.summary.set()


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-call-log-{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def test_one_line_per_method_and_status_per_interval_then_a_summary() -> None:
    now = [1000.0]
    lines = _Lines()
    failures = FailureLog(_logger(lines), interval_s=60.0, clock=lambda: now[0])
    for _ in range(100):
        failures.record("/embedding.v1.EmbeddingService/Embed", "INVALID_ARGUMENT", "inputs is empty")
    failures.record("/embedding.v1.CollectionService/Search", "NOT_FOUND", "no collection 'x'")
    assert [r.getMessage() for r in lines.records] == [
        "EmbeddingService/Embed INVALID_ARGUMENT: inputs is empty",
        "CollectionService/Search NOT_FOUND: no collection 'x'",
    ]
    assert all(r.exc_info is None and r.levelno == logging.INFO for r in lines.records)
    now[0] += 60.0  # the interval is over: the next record (or timer) writes the summary
    failures.record("/embedding.v1.EmbeddingService/Embed", "INVALID_ARGUMENT", "inputs is empty")
    messages = [r.getMessage() for r in lines.records[2:]]
    assert messages == [
        "EmbeddingService/Embed INVALID_ARGUMENT: 99 more in the last 60 s, not logged one by one",
        "EmbeddingService/Embed INVALID_ARGUMENT: inputs is empty",  # a new interval's first line
    ]


def test_server_faults_keep_their_traceback_within_their_own_allowance() -> None:
    lines = _Lines()
    failures = FailureLog(_logger(lines), faults_per_interval=5, clock=lambda: 0.0)
    for i in range(20):
        try:
            raise ValueError(f"bug {i}")
        except ValueError as exc:
            failures.record("/embedding.v1.EmbeddingService/Embed", "INTERNAL", repr(exc), exc)
    assert len(lines.records) == 5
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in lines.records)


async def test_the_summary_comes_at_the_end_of_the_interval_without_another_failure() -> None:
    lines = _Lines()
    failures = FailureLog(_logger(lines), interval_s=0.05)
    for _ in range(3):
        failures.record("/tei.v1.Embed/Embed", "INVALID_ARGUMENT", "inputs is empty")
    await asyncio.wait_for(lines.summary.wait(), timeout=10)  # the timer the first suppression set
    assert (
        lines.records[-1].getMessage()
        == "Embed/Embed INVALID_ARGUMENT: 2 more in the last 0.05 s, not logged one by one"
    )
