"""One module per `crnet` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Registered in crnet.cli.SUBCOMMANDS; each builds its options from crnet.cli.arguments.
"""
