"""``embed-server demo`` runs end to end: server, ingest, edge init + sync, searches, fallback."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "demo"], capture_output=True, text=True, timeout=900
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "56 docs into 'demo'" in out + result.stderr
    assert "installed edge bundle edge-" in out
    assert "synced 'demo' (full resync): 56 upserts" in out
    assert out.count("source: local") >= 3 and out.count("source: server") == 3
    # The top hit of the first query, locally and on the server.
    assert out.count("astro-3") >= 2
    assert "source: local DEGRADED" in out and "server failed" in out
