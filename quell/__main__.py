"""``python -m quell`` is the same as the ``quell`` command."""

from quell.cli import main

main()
