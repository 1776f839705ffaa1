"""The command layer: the bodies of `factory …` subcommands, one module per command group.

A command reads its arguments, calls the domain modules (which return data) and prints; the
domain modules never print a result or parse a command line. Each module imports what it needs
inside its functions where that is heavy, so `factory --help` and `factory sql` stay light.
"""
