"""``python -m streams`` is the ``spendstream`` command."""

from streams.cli.main import main

main()
