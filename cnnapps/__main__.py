"""``python -m cnnapps`` is the same as the ``cnnapps`` command."""

from cnnapps.cli import main

main()
