"""One module per ``embed-server`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
