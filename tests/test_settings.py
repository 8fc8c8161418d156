"""Each option is a flag and an env var; flag beats env beats default; bad values are named."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from server.settings import Settings, add_arguments, from_args


def _parse(argv: list[str], env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_args(parser.parse_args(argv), env)


def test_precedence_flag_env_default() -> None:
    assert _parse([], {}).port == 50051
    assert _parse([], {"EMBED_PORT": "6000"}).port == 6000
    assert _parse(["--port", "7000"], {"EMBED_PORT": "6000"}).port == 7000
    assert _parse([], {"EMBED_DATA_DIR": "/tmp/x"}).data_dir == Path("/tmp/x")


def test_bad_values_name_the_option() -> None:
    with pytest.raises(ValueError, match="EMBED_PORT"):
        _parse([], {"EMBED_PORT": "many"})
    with pytest.raises(ValueError, match="--workers"):
        _parse(["--workers", "-1"], {})
    with pytest.raises(ValueError, match="--backend"):
        Settings.from_env({"EMBED_BACKEND": "tensorflow"})
    with pytest.raises(ValueError, match="--tls-cert and --tls-key"):
        Settings.from_env({}, tls_cert="cert.pem")


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (
            {"max_queue_items": 100, "ingest_commit_docs": 256},
            ("--ingest-commit-docs=256", "--max-queue-items=100"),
        ),
        ({"max_input_chars": 0}, ("--max-input-chars",)),
    ],
)
def test_limits_that_can_never_work_together_are_refused_naming_both(
    overrides: dict[str, int], names: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError) as err:
        Settings.from_env({}, **overrides)
    for name in names:
        assert name in str(err.value)
    Settings.from_env({}, max_queue_items=256)  # equal limits are fine
