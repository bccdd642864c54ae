"""The ``chrysalis`` command line (see ``chrysalis --help``)."""
