"""``python -m streams`` is the ``spendstream`` command."""

from streams.cli import main

main()
