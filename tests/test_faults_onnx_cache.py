"""A damaged cached ONNX export is set aside and exported again, never loaded (issue: resources,
4). One export (~30 s): the damage keeps the file's size, so only the recorded sha256 finds it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from server.onnx_export import CHECKSUMS, INT8_NAME, ensure_onnx


def test_damaged_onnx_export_is_set_aside_and_exported_again(
    spec: Any, edge_onnx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "onnx"
    target = cache / edge_onnx_dir.name
    shutil.copytree(edge_onnx_dir, target)
    assert (target / CHECKSUMS).is_file()
    assert ensure_onnx(spec, cache) == target  # whole: used as it is
    assert "exporting" not in caplog.text
    with (target / INT8_NAME).open("r+b") as handle:  # overwritten in place, size unchanged
        handle.seek(1 << 20)
        handle.write(b"\xff" * (1 << 20))
    assert ensure_onnx(spec, cache) == target
    assert "damaged" in caplog.text and "exporting" in caplog.text
    assert (cache / f"{target.name}.damaged" / INT8_NAME).is_file()  # kept for a post-mortem
    sums = json.loads((target / CHECKSUMS).read_text())
    assert sums[INT8_NAME][0] == (target / INT8_NAME).stat().st_size
    ort.InferenceSession(str(target / INT8_NAME), providers=["CPUExecutionProvider"])  # loads
