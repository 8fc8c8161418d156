"""``embed-server serve``."""

from __future__ import annotations

import argparse

from server.commands import not_built


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from server.settings import add_arguments as add_settings

    add_settings(parser)


def run(args: argparse.Namespace) -> int:
    return not_built("serve", 3)
