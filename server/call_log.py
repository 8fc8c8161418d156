"""Failed calls in the server log: one line each, rate-limited per method and status.

A client that sends malformed requests in a loop must not flood the log (2,000 fuzzed messages
once logged 596 tracebacks), and an operator still wants to know that it happens. So per
(method, status) the first failures of an interval get one line each, the rest are counted
and summed up in one line when the interval ends. Client errors carry no traceback; a real
server fault (INTERNAL, UNKNOWN) keeps its traceback, within its own (larger) allowance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

INTERVAL_S = 60.0
PER_INTERVAL = 1  # lines per method and status per interval for a client's error
FAULTS_PER_INTERVAL = 5  # tracebacks per method per interval for our own faults
FAULTS = ("INTERNAL", "UNKNOWN")
# The server's state rather than the client's request: worth a warning.
# (HTTP statuses as server.http.errors.record names them.)
WARN = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
        "HTTP 424", "HTTP 429", "HTTP 503", "HTTP 507")  # fmt: skip


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None


class FailureLog:
    """Rate-limited one-line logging of failed calls (see the module docstring).

    :meth:`record` is called on the event loop; the end-of-interval summary is scheduled on the
    running loop, or written by the next :meth:`record` / :meth:`flush` when there is none.
    """

    def __init__(
        self,
        logger: logging.Logger = log,
        *,
        interval_s: float = INTERVAL_S,
        per_interval: int = PER_INTERVAL,
        faults_per_interval: int = FAULTS_PER_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.per_interval = per_interval
        self.faults_per_interval = faults_per_interval
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def record(self, method: str, code: str, message: str, exc: BaseException | None = None) -> None:
        """One failed call: ``method`` as gRPC names it (``/pkg.Service/Method``), ``code`` the
        status name, ``message`` what the client was told, ``exc`` for a traceback (faults only)."""
        now = self.clock()
        self.flush(now)
        key = (method, code)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(start=now)
        fault = code in FAULTS
        if window.logged < (self.faults_per_interval if fault else self.per_interval):
            window.logged += 1
            name = method.rsplit(".", 1)[-1] or method  # "EmbeddingService/Embed"
            if fault:
                self.logger.error("%s %s: %s", name, code, message, exc_info=exc)
            else:
                level = logging.WARNING if code in WARN else logging.INFO
                self.logger.log(level, "%s %s: %s", name, code, message)
            return
        window.suppressed += 1
        if window.timer is None:
            with contextlib.suppress(RuntimeError):  # no running loop: the next record flushes
                loop = asyncio.get_running_loop()
                delay = max(0.0, window.start + self.interval_s - now)
                due = window.start + self.interval_s  # flush as of then, even if the timer fires early
                window.timer = loop.call_later(delay, lambda: self.flush(max(self.clock(), due)))

    def flush(self, now: float | None = None) -> None:
        """Write the summary of every interval that has ended, and forget those intervals."""
        now = self.clock() if now is None else now
        for key, window in list(self._windows.items()):
            if now - window.start < self.interval_s:
                continue
            del self._windows[key]
            if window.timer is not None:
                window.timer.cancel()
            if window.suppressed:
                method, code = key
                name = method.rsplit(".", 1)[-1] or method
                self.logger.warning(
                    "%s %s: %d more in the last %g s, not logged one by one",
                    name,
                    code,
                    window.suppressed,
                    self.interval_s,
                )


FAILURES = FailureLog()  # the server's one instance, like a logger
