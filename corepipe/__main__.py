"""``python -m corepipe``: the same command line as ``corepipe``."""

from .cli import main

main()
