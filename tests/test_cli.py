"""Commands that are not built yet say so and fail; they never pretend to work."""

from __future__ import annotations

import pytest

from server.cli import COMMANDS, build_parser


def test_every_command_parses_help() -> None:
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0
