"""``python -m corepipe.cli``: the same as the ``corepipe`` script."""

from . import main

main()
