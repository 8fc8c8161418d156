"""A damaged cached ONNX export is set aside and exported again, never loaded (issue: resources,
4). One export (~30 s): the damage keeps the file's size, so only the recorded sha256 finds it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from server.onnx_export import CHECKSUMS, FP32_NAME, INT8_NAME, ensure_onnx


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


def test_an_fp32_only_export_gets_its_int8_graph_in_place(
    spec: Any, edge_onnx_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that asked for fp32 only (the lane) may be reading model.onnx when another asks
    for int8 too: the cache gains the int8 graph where it is, nothing is moved aside."""
    caplog.set_level(logging.INFO, logger="server.onnx_export")
    cache = tmp_path / "onnx"
    target = cache / edge_onnx_dir.name
    shutil.copytree(edge_onnx_dir, target)
    (target / INT8_NAME).unlink()
    sums = json.loads((target / CHECKSUMS).read_text())
    (target / CHECKSUMS).write_text(json.dumps({FP32_NAME: sums[FP32_NAME]}))
    assert ensure_onnx(spec, cache, int8=False) == target  # fp32 only: whole
    fp32_inode = (target / FP32_NAME).stat().st_ino
    assert ensure_onnx(spec, cache, int8=True) == target
    assert "adding the int8 graph" in caplog.text and "damaged" not in caplog.text
    assert not (cache / f"{target.name}.damaged").exists()
    assert (target / FP32_NAME).stat().st_ino == fp32_inode  # never replaced under a reader
    assert set(json.loads((target / CHECKSUMS).read_text())) == {FP32_NAME, INT8_NAME}
    ort.InferenceSession(str(target / INT8_NAME), providers=["CPUExecutionProvider"])
