"""``python -m chrysalis_memory.cli``: the ``chrysalis`` command."""

from chrysalis_memory.cli.app import main

main()
