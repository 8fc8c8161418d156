"""One module per ``embed-server`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import sys


def not_built(command: str, issue: int) -> int:
    """What a subcommand that is not implemented yet does: say so and fail."""
    print(f"embed-server {command}: not built yet (issue {issue}); nothing was done.", file=sys.stderr)
    return 2
